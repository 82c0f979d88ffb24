//! Redis stays bounded: every key the worker writes expires, entity records included (created
//! workitems and batches grow with the jobs).

use genesys_sandbox::{flow_id, user_id, workitem_id, worktype_id, SandboxConfig};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{agent_job, job, redis_url, spawn_app_with};

#[tokio::test]
async fn every_key_the_worker_writes_expires() {
    let sandbox = SandboxConfig {
        users: 4,
        workitems: 2,
        flows: 1,
        flow_operation_ms: 50,
        ..SandboxConfig::default()
    };
    let mut app = spawn_app_with(
        sandbox,
        &[
            ("ENTITY_TTL_SECS", "3600"),
            ("IDEMPOTENCY_TTL_SECS", "7200"),
            ("FLOW_POLL_MS", "20"),
        ],
    )
    .await;
    let mut create = job(
        "interaction.create",
        json!({"type_id": worktype_id(), "name": "Bounded keys"}),
    );
    create["idempotency_key"] = json!(format!("crm-{}", Uuid::new_v4()));
    let children = vec![
        agent_job(user_id(1), json!({"presence": "Break"})),
        agent_job(user_id(2), json!({"presence": "Meal"})),
    ];
    let jobs = [
        agent_job(user_id(0), json!({"presence": "Available"})),
        create,
        job(
            "interaction.status",
            json!({"workitem_id": workitem_id(0), "status": "In Progress"}),
        ),
        job(
            "flow.deploy",
            json!({"flow_id": flow_id(0), "flow": {"name": "Main IVR", "type": "inboundcall", "start": "start",
                "nodes": {"start": {"type": "start", "transitions": []}}}}),
        ),
        job("batch", json!({"jobs": children})),
    ];
    for job in &jobs {
        app.publish(job).await;
    }
    // Four single jobs, two children and the batch's summary.
    app.audit_events(7).await;

    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}*", app.config.redis_key_prefix);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    let families = |prefix: &str| keys.iter().filter(|k| k.contains(prefix)).count();
    assert!(families(":entity:workitem:") >= 2, "{keys:#?}");
    assert!(families(":entity:batch:") == 1, "{keys:#?}");
    for key in &keys {
        // The audit log's state lives as long as the log: its size, its tree (O(log n)
        // hashes), its latest checkpoint, and the leaves the sealer has not folded yet.
        let log = format!("{}log:", app.config.redis_key_prefix);
        if ["size", "tree", "checkpoint", "leaves"]
            .iter()
            .any(|part| *key == format!("{log}{part}"))
        {
            continue;
        }
        let ttl: i64 = redis::cmd("TTL").arg(key).query_async(&mut conn).await.unwrap();
        if ttl == -2 {
            continue; // gone since it was listed (a lock released)
        }
        assert!(ttl > 0, "{key} never expires (TTL {ttl})");
        if key.contains(":entity:") {
            assert!(ttl <= 3600, "{key}: TTL {ttl} above ENTITY_TTL_SECS");
        } else {
            assert!(ttl <= 7200, "{key}: TTL {ttl} above IDEMPOTENCY_TTL_SECS");
        }
    }
    app.stop().await;
}
