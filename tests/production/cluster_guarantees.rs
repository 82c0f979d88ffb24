//! In a Redis Cluster the keys of one script share a hash slot (README, "Running in
//! production"); these are the guarantees that layout must keep, checked through the worker
//! against a 6-node cluster: a key reused with another payload (for another entity too) is
//! still rejected, a burst on one agent still ends on its newest sequence, a created workitem's
//! chain (another slot than the job's record) still links once, a batch still ends in one
//! summary, and no key is written without an expiry (but the audit log's own state).

use genesys_sandbox::{user_id, worktype_id, SandboxConfig};
use genesys_worker::events::Outcome;
use serde_json::json;
use testkit::topology::{one_at_a_time, RedisCluster};
use testkit::{agent_job, job, spawn_app_with};
use uuid::Uuid;

#[tokio::test]
async fn on_a_redis_cluster_reuse_order_created_workitems_and_batches_keep_their_guarantees() {
    let _turn = one_at_a_time().await;
    let redis = RedisCluster::start().await;
    let settings = redis.redis_env();
    let mut overrides: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    overrides.extend([("WORKER_CONCURRENCY", "16"), ("WORKER_PREFETCH", "32")]);
    let mut app = spawn_app_with(
        SandboxConfig {
            users: 20,
            ..SandboxConfig::default()
        },
        &overrides,
    )
    .await;

    // A key reused with another payload: for the same agent, and for another agent (whose
    // record lives in another slot).
    let key = format!("wfm-shift-{}", Uuid::new_v4());
    let mut first = agent_job(user_id(1), json!({"presence": "Available"}));
    first["idempotency_key"] = json!(key);
    app.publish(&first).await;
    assert_eq!(app.audit_events(1).await[0].event.outcome, Outcome::Applied);
    for user in [1, 2] {
        let mut reused = agent_job(user_id(user), json!({"presence": "Break"}));
        reused["idempotency_key"] = json!(key);
        app.publish(&reused).await;
        let event = app.audit_events(1).await.remove(0);
        assert_eq!(event.event.outcome, Outcome::Rejected, "user {user}");
        assert_eq!(event.event.error.as_ref().unwrap().code, "idempotency_key_reused");
    }
    assert_eq!(app.user(user_id(1)).await["presence"], "Available");
    assert_ne!(app.user(user_id(2)).await["presence"], "Break");

    // A burst on one agent, published out of order, ends on its newest sequence.
    let presences = ["Available", "Break", "Meal", "Busy", "Away", "Training"];
    for sequence in [4u64, 2, 6, 1, 5, 3] {
        let mut job = agent_job(user_id(7), json!({"presence": presences[sequence as usize - 1]}));
        job["sequence"] = json!(sequence);
        app.publish(&job).await;
    }
    let burst = app.audit_events(6).await;
    assert!(burst
        .iter()
        .all(|e| matches!(e.event.outcome, Outcome::Applied | Outcome::Superseded)));
    assert_eq!(app.user(user_id(7)).await["presence"], "Training");

    // A created workitem: claimed as workitem:new:<key>, linked as workitem:<id>, once; a
    // status change then links version 2 onto it.
    let mut create = job(
        "interaction.create",
        json!({"type_id": worktype_id(), "name": "Call back", "priority": 10, "queue_id": Uuid::new_v4(), "skill_ids": [Uuid::new_v4()]}),
    );
    create["idempotency_key"] = json!(format!("crm-ticket-{}", Uuid::new_v4()));
    app.publish(&create).await;
    let created = app.audit_events(1).await.remove(0);
    assert_eq!(
        created.event.outcome,
        Outcome::Applied,
        "{:?}",
        created.event.error
    );
    assert_eq!(created.event.entity_version, 1);
    let workitem: Uuid = created
        .event
        .entity
        .trim_start_matches("workitem:")
        .parse()
        .unwrap();
    app.publish(&create).await;
    let again = app.audit_events(1).await.remove(0);
    assert_eq!(again.event.outcome, Outcome::Duplicate);
    assert_eq!(again.event.entity, created.event.entity);
    let status = job(
        "interaction.status",
        json!({"workitem_id": workitem, "status": "In Progress"}),
    );
    app.publish(&status).await;
    let changed = app.audit_events(1).await.remove(0);
    assert_eq!(
        changed.event.outcome,
        Outcome::Applied,
        "{:?}",
        changed.event.error
    );
    assert_eq!(changed.event.entity_version, 2);
    assert_eq!(Some(changed.event.prev_checksum.clone()), created.event.checksum);

    // A batch fans out and ends in one summary.
    let children: Vec<_> = (10..15)
        .map(|n| agent_job(user_id(n), json!({"presence": "Meal"})))
        .collect();
    let mut batch = job("batch", json!({"jobs": children}));
    batch["idempotency_key"] = json!(format!("handover-{}", Uuid::new_v4()));
    app.publish(&batch).await;
    let events = app.audit_events(6).await;
    let summary: Vec<_> = events.iter().filter(|e| e.event.kind == "batch").collect();
    assert_eq!(summary.len(), 1, "{events:#?}");
    assert_eq!(summary[0].event.outcome, Outcome::Applied);
    assert_eq!(summary[0].event.summary.as_ref().unwrap()["counts"]["applied"], 5);
    for n in 10..15 {
        assert_eq!(app.user(user_id(n)).await["presence"], "Meal");
    }
    let prefix = app.config.redis_key_prefix.clone();
    app.stop().await;

    // Every key the worker wrote expires (in every primary's slots), but the audit log's own
    // state: its size, its tree (O(log n) hashes), its latest checkpoint, and the leaves the
    // sealer has not folded yet.
    let permanent: Vec<String> = ["size", "tree", "checkpoint", "leaves"]
        .iter()
        .map(|part| format!("{prefix}log:{{log}}:{part}"))
        .collect();
    for port in redis.primaries().await {
        let keys = testkit::topology::redis_cli(port, &["--scan"]).await.unwrap();
        for key in keys.lines().filter(|k| !k.is_empty()) {
            if permanent.iter().any(|p| p == key) {
                continue;
            }
            let ttl = testkit::topology::redis_cli(port, &["TTL", key]).await.unwrap();
            assert_ne!(ttl.trim(), "-1", "{key} never expires");
        }
    }
}
