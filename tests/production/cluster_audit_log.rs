//! The verifiable audit log on a Redis Cluster (docs/architecture.md, "The verifiable audit
//! log"): the log's keys share one slot, and a recorded event takes its index after its commit,
//! in a repeatable step. Through the worker: jobs on agents in different slots, a created
//! workitem (committed in two slots), a batch, a duplicate, an invalid message and a control
//! change all take indexes 0..n-1, without a gap or a double, and `audit verify --key` accepts
//! the capture. Through the store: a crash between the commit and the index step, and the
//! step run twice, take one index and one leaf.

use std::collections::BTreeMap;
use std::time::Duration;

use genesys_sandbox::{worktype_id, SandboxConfig};
use genesys_worker::config::{RedisSettings, RedisTopology, ServiceUrls, Topology};
use genesys_worker::events::{self, AuditEvent, Outcome};
use genesys_worker::record;
use genesys_worker::store::{Claim, Store};
use serde_json::{json, Value};
use testkit::audit::{batch_and_pause, capture_until, presence_job, signing_key, verify_capture};
use testkit::topology::{one_at_a_time, redis_cli, RedisCluster};
use testkit::{job, random_name, spawn_app_with};
use uuid::Uuid;

/// The idempotency TTL the worker runs with: a per-event log key is kept that long until its
/// events are confirmed.
const IDEMPOTENCY_TTL_SECS: &str = "7200";

#[tokio::test]
async fn on_a_redis_cluster_every_audit_event_takes_one_log_index_and_the_signed_log_verifies() {
    let _turn = one_at_a_time().await;
    let redis = RedisCluster::start().await;
    let dir = std::env::temp_dir().join(format!("cluster-audit-log-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key_path, verifier) = signing_key(&dir);
    let settings = redis.redis_env();
    let mut overrides: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    overrides.extend([
        ("AUDIT_SIGNING_KEY_FILE", key_path.as_str()),
        ("AUDIT_CHECKPOINT_SECS", "1"),
        ("IDEMPOTENCY_TTL_SECS", IDEMPOTENCY_TTL_SECS),
    ]);
    let app = spawn_app_with(
        SandboxConfig {
            users: 20,
            ..SandboxConfig::default()
        },
        &overrides,
    )
    .await;
    let mut audit = app.capture_audit_log().await;

    // Agents in different slots, and a second copy of the first job (its own job id, the same
    // key): a duplicate's announcement (and, if it comes before the first's events are
    // confirmed, the first's stored events re-published: same bytes, same index).
    let jobs: Vec<Value> = (0..8).map(|n| presence_job(n, "Break")).collect();
    for job in &jobs {
        app.publish(job).await;
    }
    let mut copy = jobs[0].clone();
    copy["job_id"] = json!(Uuid::new_v4());
    app.publish(&copy).await;
    // An invalid message that names its job: rejected, announced, recorded nowhere.
    app.publish(&json!({"job_id": Uuid::new_v4(), "kind": "agent.status", "payload": {"presence": "Break"}}))
        .await;
    // A created workitem: claimed in one slot, linked in the workitem's.
    let mut create = job(
        "interaction.create",
        json!({"type_id": worktype_id(), "name": "Call back", "priority": 10, "queue_id": Uuid::new_v4(), "skill_ids": [Uuid::new_v4()]}),
    );
    create["idempotency_key"] = json!(format!("crm-ticket-{}", Uuid::new_v4()));
    app.publish(&create).await;
    let (code, output) = batch_and_pause(&app, "cluster-audit-test").await;
    assert_eq!(code, 0, "control pause: {output}");
    // 8 applied + 1 duplicate + 1 rejected + 1 created + 3 children + the batch summary + the
    // pause.
    let expected: u64 = 8 + 1 + 1 + 1 + 3 + 1 + 1;
    // Sealed: a checkpoint covers `expected` leaves and that many distinct indexes arrived (an
    // event re-published counts once).
    let lines = capture_until(&mut audit, Duration::from_secs(90), |capture| {
        capture.checkpoints.iter().any(|c| c.tree_size >= expected)
            && capture.indexes.len() as u64 >= expected
    })
    .await
    .lines;

    let mut by_index: BTreeMap<u64, &String> = BTreeMap::new();
    let mut kinds = Vec::new();
    for line in &lines {
        let value: Value = serde_json::from_str(line).unwrap();
        if value.get("note").is_some() {
            continue;
        }
        let index = value["log_index"].as_u64().unwrap();
        if let Some(first) = by_index.insert(index, line) {
            // The same index twice is one event published twice, byte for byte.
            assert_eq!(first, line, "index {index} doubled");
        }
        kinds.push(format!("{}:{}", value["kind"], value["outcome"]));
    }
    assert_eq!(
        by_index.keys().copied().collect::<Vec<_>>(),
        (0..expected).collect::<Vec<_>>(),
        "indexes without gaps or doubles: {kinds:?}"
    );
    for wanted in [
        "\"agent.status\":\"duplicate\"",
        "\"agent.status\":\"rejected\"",
        "\"interaction.create\":\"applied\"",
        "\"batch\":\"applied\"",
    ] {
        assert!(kinds.iter().any(|k| k == wanted), "no {wanted} in {kinds:?}");
    }

    let (code, output) = verify_capture(&app, &lines, &verifier).await;
    assert_eq!(code, 0, "audit verify --key: {output}");
    let prefix = app.config.redis_key_prefix.clone();
    app.stop().await;

    // The log's keys are in one slot; the per-event keys expire soon after their events are
    // confirmed, and only the log's own state (its size, tree, checkpoint and unsealed leaves)
    // lives on, with the controls (a pause stands until it is resumed).
    let log = format!("{prefix}log:{{log}}:");
    let mut permanent: Vec<String> = ["size", "tree", "checkpoint", "leaves"]
        .iter()
        .map(|part| format!("{log}{part}"))
        .collect();
    permanent.push(format!("{prefix}control"));
    let mut event_keys = 0;
    let mut log_nodes = Vec::new();
    for port in redis.primaries().await {
        let pattern = format!("{prefix}*");
        let keys = redis_cli(port, &["--scan", "--pattern", &pattern]).await.unwrap();
        for key in keys.lines().filter(|k| !k.is_empty()) {
            if key.starts_with(&log) {
                log_nodes.push(port);
            }
            if permanent.iter().any(|p| p == key) {
                continue;
            }
            let ttl: i64 = redis_cli(port, &["TTL", key])
                .await
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            // -2: gone since it was listed; 0: going (a lease, a budget in milliseconds).
            assert_ne!(ttl, -1, "{key} never expires");
            if key.starts_with(&format!("{log}event:")) {
                event_keys += 1;
                // Every event was confirmed: its key lives a minute more, not the idempotency
                // TTL (which would keep one key per event on the log's primary for days).
                assert!(ttl <= 60, "{key}: TTL {ttl}");
            }
        }
    }
    log_nodes.dedup();
    assert_eq!(log_nodes.len(), 1, "the log's keys on one node: {log_nodes:?}");
    // One per recorded event: 8 jobs, the workitem, 3 children and the summary.
    assert_eq!(event_keys, 8 + 1 + 3 + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The worker's Redis settings for `cluster`.
fn cluster_settings(cluster: &RedisCluster) -> RedisSettings {
    let env = cluster.redis_env();
    let url = &env.iter().find(|(k, _)| k == "REDIS_URL").unwrap().1;
    RedisSettings {
        urls: ServiceUrls::parse(url).unwrap(),
        topology: RedisTopology::Cluster,
        sentinel_master: "mymaster".into(),
        wait_replicas: 0,
        wait_timeout_ms: 1000,
    }
}

/// Commits job `job_id` (key `key`) on `entity` with `outcome` as the pipeline does, without
/// the index step: the worker dies right after the commit.
async fn commit_only(
    store: &Store,
    key: &str,
    entity: &str,
    job_id: Uuid,
    outcome: Outcome,
) -> (AuditEvent, Vec<events::OutboundEvent>) {
    let Claim::Owned(lease, locked) = store.claim(key, "fingerprint", entity).await.unwrap() else {
        panic!("{key} is not claimed afresh")
    };
    let topology = Topology::default();
    let committed = store
        .commit(
            &lease,
            entity,
            outcome == Outcome::Applied,
            None,
            locked.map(|state| state.head),
            |head| {
                let mut event = AuditEvent::new(job_id, "agent.status", key, entity, outcome);
                record::link(&mut event, head);
                let messages = events::outbound(&topology, &event);
                (event, messages)
            },
        )
        .await
        .unwrap();
    // The entity's lock, for the next job (a finish would also mark the events confirmed).
    store.release_entity(entity, &lease.owner).await.unwrap();
    committed
}

/// The stored events of finished job `key`, not confirmed, as a redelivery finds them.
async fn stored_events(store: &Store, key: &str, entity: &str) -> Vec<events::OutboundEvent> {
    match store.claim(key, "fingerprint", entity).await.unwrap() {
        Claim::Done {
            events,
            confirmed: false,
            ..
        } => events,
        other => panic!("{key}: {other:?}"),
    }
}

#[tokio::test]
async fn on_a_redis_cluster_a_crash_between_commit_and_index_neither_skips_nor_doubles_an_index() {
    let _turn = one_at_a_time().await;
    let redis = RedisCluster::start().await;
    let prefix = format!("test:{}:", random_name());
    let store = Store::connect(&cluster_settings(&redis), &prefix, 3600, 30_000)
        .await
        .unwrap()
        .with_audit_log(true);
    let before = store.log_state().await.unwrap().size;

    // Committed; the worker dies before the index step: nothing taken, the stored event
    // without an index.
    let entity = format!("user:{}", Uuid::new_v4());
    let key = format!("crash-{}", Uuid::new_v4());
    let (event, messages) = commit_only(&store, &key, &entity, Uuid::new_v4(), Outcome::Applied).await;
    assert_eq!(event.log_index, None, "in a cluster the commit takes no index");
    assert!(messages[0].body.starts_with(r#"{"log_index":null,"#));
    assert_eq!(store.log_state().await.unwrap().size, before);

    // The redelivery re-publishes the stored events: they take the next index. A second crash
    // before the publication, and the next redelivery finds the same index, with the same
    // bytes: one leaf, the log one longer.
    let mut first = stored_events(&store, &key, &entity).await;
    assert_eq!(first, messages, "the record keeps the events as committed");
    let index = store
        .log_index_once(&mut first)
        .await
        .unwrap()
        .expect("an index")
        .index;
    assert_eq!(index, before);
    let mut second = stored_events(&store, &key, &entity).await;
    assert!(
        second[0].body.starts_with(r#"{"log_index":null,"#),
        "the record keeps log_index null"
    );
    let again = store.log_index_once(&mut second).await.unwrap();
    assert_eq!(again.as_ref().map(|i| i.index), Some(index));
    assert_eq!(second, first, "the same bytes on every re-publication");
    assert!(first[0].body.starts_with(&format!("{{\"log_index\":{index},")));
    let published: AuditEvent = serde_json::from_str(&first[0].body).unwrap();
    assert_eq!(published.log_index, Some(index));
    assert_eq!(
        AuditEvent {
            log_index: None,
            ..published
        },
        event,
        "only the index differs from the event committed"
    );
    assert_eq!(store.log_state().await.unwrap().size, before + 1);
    assert_eq!(
        store.log_leaves(index, index + 1).await.unwrap(),
        [first[0].body.clone()],
        "the leaf is the event as published"
    );
    // A message that carries its index already is left alone.
    assert!(store.log_index_once(&mut first).await.unwrap().is_none());
    assert_eq!(store.log_state().await.unwrap().size, before + 1);

    // One event id recorded twice (an outcome that is not remembered, run again: a rejection
    // replayed from the dead letters): two events, two indexes.
    let key = format!("replayed-{}", Uuid::new_v4());
    let job_id = Uuid::new_v4();
    let mut given = Vec::new();
    for _ in 0..2 {
        let (event, mut messages) = commit_only(&store, &key, &entity, job_id, Outcome::Rejected).await;
        let index = store.log_index_once(&mut messages).await.unwrap().unwrap().index;
        given.push((event.event_id, index));
        // The next run is another millisecond: another event.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(given[0].0, given[1].0, "one event id");
    assert_eq!(
        [given[0].1, given[1].1],
        [before + 1, before + 2],
        "two events, two indexes"
    );
    assert_eq!(store.log_state().await.unwrap().size, before + 3);

    // Every key the store wrote for the log (its size, leaves and the per-event keys; read
    // from the nodes, not named here) is in one slot.
    let mut slots = std::collections::BTreeSet::new();
    let mut keys = 0;
    for port in redis.primaries().await {
        let pattern = format!("{prefix}log*");
        let found = redis_cli(port, &["--scan", "--pattern", &pattern]).await.unwrap();
        for key in found.lines().filter(|k| !k.is_empty()) {
            keys += 1;
            slots.insert(redis_cli(port, &["CLUSTER", "KEYSLOT", key]).await.unwrap());
        }
    }
    assert!(keys >= 5, "the log's size, leaves and 3 event keys: {keys}");
    assert_eq!(slots.len(), 1, "the log's keys in one slot: {slots:?}");
}
