//! What operators see: `/metrics`, and the trace context carried from a job into its events.

use std::collections::HashMap;

use genesys_sandbox::{user_id, SandboxConfig};
use genesys_worker::events::Outcome;
use serde_json::json;

use crate::helpers::{agent_job, job, spawn_app_without_worker};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// `name{labels} value` lines of a Prometheus text page, by name and labels.
fn samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn metrics_count_jobs_calls_and_dead_letters_with_low_cardinality_labels() {
    let sandbox = SandboxConfig {
        users: 10,
        ..SandboxConfig::default()
    };
    // A worker process of its own: the counts below are this worker's alone.
    let mut app = spawn_app_without_worker(sandbox, &[]).await;
    for n in 0..3 {
        app.publish(&agent_job(user_id(n), json!({"presence": "Available"})))
            .await;
    }
    app.publish(&job("agent.teleport", json!({}))).await;
    let mut worker = app.start_worker_process();
    let events = app.audit_events(4).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.outcome == Outcome::Applied)
            .count(),
        3
    );
    app.dead_letters(1).await;

    // Counted once a job is settled, just after its events: look until all four are.
    let url = format!("http://{}/metrics", worker.admin_addr);
    let mut page = String::new();
    for _ in 0..50 {
        page = app.http.get(&url).send().await.unwrap().text().await.unwrap();
        let settled: f64 = samples(&page)
            .iter()
            .filter(|(series, _)| series.starts_with("genesys_worker_jobs_total{"))
            .map(|(_, v)| v)
            .sum();
        let dead = samples(&page)
            .iter()
            .any(|(series, _)| series.starts_with("genesys_worker_dead_letters_total{"));
        let idle = samples(&page).get(r#"genesys_worker_jobs_in_flight{lane="single"}"#) == Some(&0.0);
        if settled >= 4.0 && dead && idle {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let metrics = samples(&page);
    let value = |series: &str| {
        *metrics
            .get(series)
            .unwrap_or_else(|| panic!("{series} missing from\n{page}"))
    };
    assert_eq!(
        value(r#"genesys_worker_jobs_total{kind="agent.status",outcome="applied"}"#),
        3.0
    );
    // An unknown kind is labelled `invalid`, not with the message's own text.
    assert_eq!(
        value(r#"genesys_worker_jobs_total{kind="invalid",outcome="rejected"}"#),
        1.0
    );
    assert_eq!(
        value(r#"genesys_worker_dead_letters_total{code="unknown_kind"}"#),
        1.0
    );
    assert_eq!(
        value(r#"genesys_worker_job_duration_seconds_count{kind="agent.status"}"#),
        3.0
    );
    assert!(
        value(
            r#"genesys_worker_genesys_requests_total{route="PUT /api/v2/users/presences/bulk",status="200"}"#
        ) >= 1.0
    );
    assert!(
        value(
            r#"genesys_worker_genesys_request_duration_seconds_count{route="GET /api/v2/presence/definitions"}"#
        ) >= 1.0
    );
    assert!(value(r#"genesys_worker_rate_limit_wait_seconds_count{lane="single"}"#) >= 2.0);
    assert!(value("genesys_worker_bulk_batch_size_count") >= 1.0);
    assert_eq!(value(r#"genesys_worker_jobs_in_flight{lane="single"}"#), 0.0);
    assert_eq!(value("genesys_worker_oldest_job_age_seconds"), 0.0);
    // No id ever becomes a label.
    let user = user_id(0).to_string();
    assert!(!page.contains(&user), "{page}");
    for event in &events {
        assert!(!page.contains(&event.event.job_id.to_string()));
    }

    worker.terminate();
    worker.wait(std::time::Duration::from_secs(10)).await;
    app.stop().await;
}

#[tokio::test]
async fn every_route_the_worker_calls_is_labelled_by_its_template() {
    use genesys_sandbox::{flow_id, workitem_id, worktype_id};
    let sandbox = SandboxConfig {
        users: 4,
        workitems: 2,
        flows: 1,
        flow_operation_ms: 50,
        ..SandboxConfig::default()
    };
    let mut app =
        spawn_app_without_worker(sandbox, &[("FLOW_POLL_MS", "20"), ("BULK_PRESENCE", "off")]).await;
    let mut create = job(
        "interaction.create",
        json!({"type_id": worktype_id(), "name": "Labelled"}),
    );
    create["idempotency_key"] = json!(format!("crm-{}", uuid::Uuid::new_v4()));
    let ivr = json!({"name": "Main IVR", "type": "inboundcall", "start": "start",
        "nodes": {"start": {"type": "start", "transitions": []}}});
    // Every kind, a create of a flow, and a rollback (which reads a version's configuration).
    app.http
        .post(format!(
            "{}/sandbox/flows/{}/fail-next-publish",
            app.sandbox.base_url(),
            flow_id(0)
        ))
        .send()
        .await
        .unwrap();
    for job in [
        agent_job(
            user_id(0),
            json!({"presence": "Available", "routing_status": "IDLE"}),
        ),
        create,
        job(
            "interaction.status",
            json!({"workitem_id": workitem_id(0), "status": "In Progress"}),
        ),
        job("flow.deploy", json!({"flow_id": flow_id(0), "flow": ivr})),
        job(
            "flow.deploy",
            json!({"create": {"name": format!("New {}", uuid::Uuid::new_v4()), "type": "inboundcall"}, "flow": ivr}),
        ),
    ] {
        app.publish(&job).await;
    }
    let mut worker = app.start_worker_process();
    app.audit_events(5).await;
    let url = format!("http://{}/metrics", worker.admin_addr);
    let page = app.http.get(&url).send().await.unwrap().text().await.unwrap();
    let routes: std::collections::BTreeSet<&str> = page
        .lines()
        .filter(|line| line.starts_with("genesys_worker_genesys_requests_total{"))
        .filter_map(|line| line.split("route=\"").nth(1)?.split('"').next())
        .collect();
    for expected in [
        "GET /api/v2/flows/{id}/versions/{id}/configuration",
        "POST /api/v2/flows",
        "PUT /api/v2/users/{id}/routingstatus",
        "GET /api/v2/organizations/limits/namespaces/{id}",
    ] {
        assert!(routes.contains(expected), "{expected} not in {routes:#?}");
    }
    for route in &routes {
        let (_, path) = route.split_once(' ').unwrap();
        for segment in path.split('/').skip(1) {
            assert!(
                segment == "v2" || segment == "{id}" || segment.bytes().all(|b| b.is_ascii_lowercase()),
                "{route}: {segment} is not a template segment"
            );
        }
    }
    worker.terminate();
    worker.wait(std::time::Duration::from_secs(10)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_jobs_traceparent_is_carried_into_its_events() {
    let mut app = spawn_app_without_worker(SandboxConfig::default(), &[]).await;
    let traced = agent_job(user_id(1), json!({"presence": "Break"}));
    app.publish_with_headers(&traced, &[("traceparent", TRACEPARENT)])
        .await;
    // A malformed one is not carried.
    app.publish_with_headers(
        &agent_job(user_id(2), json!({"presence": "Break"})),
        &[("traceparent", "not-a-trace")],
    )
    .await;
    let mut worker = app.start_worker_process();
    let audit = app.audit_events(2).await;
    let crm = app.crm_events(2).await;
    for (audit, crm) in audit.iter().zip(&crm) {
        let expected =
            (audit.event.job_id.to_string() == traced["job_id"].as_str().unwrap()).then_some(TRACEPARENT);
        assert_eq!(audit.event.traceparent.as_deref(), expected, "{}", audit.raw);
        let crm_expected =
            (crm.event.job_id.to_string() == traced["job_id"].as_str().unwrap()).then_some(TRACEPARENT);
        assert_eq!(crm.event.traceparent.as_deref(), crm_expected, "{}", crm.raw);
    }
    worker.terminate();
    worker.wait(std::time::Duration::from_secs(10)).await;
    app.stop().await;
}
