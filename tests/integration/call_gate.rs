//! A job paused before its first Genesys call sends nothing, not even through a gathered call
//! another task makes for it (`CallGate`): the bulk presence writes and reads, and the gathered
//! reads of agents' state, leave out the changes of jobs whose gates were abandoned.

use std::sync::Arc;
use std::time::Duration;

use genesys_sandbox::{self as sandbox, user_id, SandboxConfig, SandboxHandle};
use genesys_worker::apply::bulk::{BulkOutcome, BulkPresence};
use genesys_worker::apply::users::UserReads;
use genesys_worker::config::{GenesysConfig, LaneWeights, Secret};
use genesys_worker::genesys::{CallGate, GenesysClient, GenesysError};
use genesys_worker::job::{IfInteracting, PresencePolicy};
use genesys_worker::lane::Lane;
use genesys_worker::limit::Budget;
use genesys_worker::retry::RetryPolicy;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::requests_in;

const BULK: &str = "PUT /api/v2/users/presences/bulk";
const READ_USERS: &str = "GET /api/v2/users";
/// Read once per user of a listing whose expansion the sandbox leaves out.
const READ_PRESENCE: &str = "GET /api/v2/users/{userId}/presences/purecloud";
/// Long enough to abandon a gate while the changes gather, on a loaded machine.
const WINDOW: Duration = Duration::from_millis(400);
const ABANDON_AFTER: Duration = Duration::from_millis(50);

async fn sandbox() -> SandboxHandle {
    let config = SandboxConfig {
        users: 5,
        ..SandboxConfig::default()
    };
    sandbox::spawn("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

fn client_for(sandbox: &SandboxHandle) -> Arc<GenesysClient> {
    let base = url::Url::parse(&sandbox.base_url()).unwrap();
    let config = GenesysConfig {
        api_base: base.clone(),
        login_base: base,
        client_id: sandbox::DEFAULT_CLIENT_ID.into(),
        client_secret: Secret::new(sandbox::DEFAULT_CLIENT_SECRET),
        rate_limit_rps: 1000,
        rate_limit_burst: 200,
        rate_limit_shared: false,
        request_timeout_ms: 5_000,
        max_attempts: 3,
        consistency_window_ms: 0,
        limits_refresh_secs: 0,
    };
    Arc::new(GenesysClient::new(
        &config,
        Arc::new(Budget::new(1000, 200, LaneWeights { single: 3, batch: 1 })),
    ))
}

use crate::helpers::sandbox_stats as stats;

/// Every listing of users comes back without its expanded fields, so each user a read carried
/// is read again on its own: [`READ_PRESENCE`] counts the users of the reads.
async fn expand_nothing(sandbox: &SandboxHandle) {
    let response = reqwest::Client::new()
        .put(format!("{}/sandbox/behaviour", sandbox.base_url()))
        .json(&json!({"expand_omitted_every": 1}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

/// The users whose presence the sandbox changed, in order.
fn changed(stats: &Value) -> Vec<String> {
    stats["mutations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["entity"].as_str().unwrap().to_string())
        .collect()
}

async fn break_id(client: &GenesysClient) -> String {
    client
        .presence
        .resolve(client.in_lane(Lane::Single), "Break")
        .await
        .unwrap()
        .id
}

/// `user`'s change to `definition`, gathered by `bulk` in `lane` for the job whose gate is
/// `gate`.
fn set(
    bulk: &BulkPresence,
    lane: Lane,
    gate: &CallGate,
    user: Uuid,
    definition: &str,
    policy: Option<PresencePolicy>,
) -> tokio::task::JoinHandle<BulkOutcome> {
    let (bulk, gate, definition) = (bulk.clone(), gate.clone(), definition.to_string());
    tokio::spawn(async move { bulk.set(lane, Some(gate), user, &definition, None, policy).await })
}

#[tokio::test]
async fn a_bulk_call_leaves_out_the_change_of_a_job_abandoned_while_it_gathered() {
    let sandbox = sandbox().await;
    let client = client_for(&sandbox);
    let definition = break_id(&client).await;
    let bulk = BulkPresence::start(client.clone(), RetryPolicy::default(), WINDOW, 50);
    let (paused, running) = (CallGate::new(), CallGate::new());
    let left = set(&bulk, Lane::Single, &paused, user_id(0), &definition, None);
    let set_alone = set(&bulk, Lane::Single, &running, user_id(1), &definition, None);
    tokio::time::sleep(ABANDON_AFTER).await;
    assert!(paused.abandon(), "nothing was sent for the job yet");

    assert!(matches!(left.await.unwrap(), BulkOutcome::Left));
    let outcome = set_alone.await.unwrap();
    assert!(
        matches!(outcome, BulkOutcome::Set { status: 200, .. }),
        "{outcome:?}"
    );
    assert!(running.sent() && !running.abandon());
    assert!(!paused.sent());
    let stats = stats(&sandbox).await;
    assert_eq!(requests_in(&stats, BULK, 200), 1);
    assert_eq!(changed(&stats), [format!("user:{}", user_id(1))]);
}

#[tokio::test]
async fn a_bulk_call_whose_jobs_were_all_abandoned_is_not_made() {
    let sandbox = sandbox().await;
    let client = client_for(&sandbox);
    let definition = break_id(&client).await;
    let bulk = BulkPresence::start(client.clone(), RetryPolicy::default(), WINDOW, 50);
    let gates = [CallGate::new(), CallGate::new()];
    let changes: Vec<_> = gates
        .iter()
        .enumerate()
        .map(|(n, gate)| set(&bulk, Lane::Batch, gate, user_id(n), &definition, None))
        .collect();
    tokio::time::sleep(ABANDON_AFTER).await;
    assert!(gates.iter().all(CallGate::abandon));
    for change in changes {
        assert!(matches!(change.await.unwrap(), BulkOutcome::Left));
    }
    // The gatherer still works for the jobs that come next.
    let next = CallGate::new();
    let outcome = set(&bulk, Lane::Batch, &next, user_id(2), &definition, None)
        .await
        .unwrap();
    assert!(
        matches!(outcome, BulkOutcome::Set { status: 200, .. }),
        "{outcome:?}"
    );
    let stats = stats(&sandbox).await;
    assert_eq!(requests_in(&stats, BULK, 200), 1, "only the next job's call");
    assert_eq!(changed(&stats), [format!("user:{}", user_id(2))]);
}

#[tokio::test]
async fn a_bulk_call_under_a_policy_reads_and_writes_only_the_jobs_not_abandoned() {
    let sandbox = sandbox().await;
    expand_nothing(&sandbox).await;
    let client = client_for(&sandbox);
    let definition = break_id(&client).await;
    let bulk = BulkPresence::start(client.clone(), RetryPolicy::default(), WINDOW, 50);
    let policy = PresencePolicy {
        if_interacting: IfInteracting::Apply,
        respect_out_of_office: true,
        skip_if_current: true,
    };
    let (paused, running) = (CallGate::new(), CallGate::new());
    let left = set(&bulk, Lane::Batch, &paused, user_id(0), &definition, Some(policy));
    let written = set(
        &bulk,
        Lane::Batch,
        &running,
        user_id(1),
        &definition,
        Some(policy),
    );
    tokio::time::sleep(ABANDON_AFTER).await;
    assert!(paused.abandon());

    assert!(matches!(left.await.unwrap(), BulkOutcome::Left));
    let outcome = written.await.unwrap();
    assert!(
        matches!(
            outcome,
            BulkOutcome::Set {
                status: 200,
                before: Some(_),
                ..
            }
        ),
        "{outcome:?}"
    );
    let stats = stats(&sandbox).await;
    assert_eq!(requests_in(&stats, READ_USERS, 200), 1);
    assert_eq!(
        requests_in(&stats, READ_PRESENCE, 200),
        1,
        "the read carried one user"
    );
    assert_eq!(requests_in(&stats, BULK, 200), 1);
    assert_eq!(changed(&stats), [format!("user:{}", user_id(1))]);
}

#[tokio::test]
async fn a_gathered_read_of_agents_leaves_out_the_jobs_abandoned_and_is_not_made_for_none() {
    let sandbox = sandbox().await;
    expand_nothing(&sandbox).await;
    let client = client_for(&sandbox);
    let reads = UserReads::start(client.clone(), RetryPolicy::default(), WINDOW);
    let read = |gate: &CallGate, user: Uuid| {
        let (reads, gate) = (reads.clone(), gate.clone());
        tokio::spawn(async move { reads.read(Lane::Batch, Some(gate), user).await })
    };

    // One of two abandoned: the read carries the other.
    let (paused, running) = (CallGate::new(), CallGate::new());
    let refused = read(&paused, user_id(0));
    let answered = read(&running, user_id(1));
    tokio::time::sleep(ABANDON_AFTER).await;
    assert!(paused.abandon());
    let err = refused.await.unwrap().unwrap_err();
    assert!(matches!(*err, GenesysError::Abandoned { .. }), "{err:?}");
    let (state, _) = answered.await.unwrap().unwrap();
    assert!(state.is_some(), "the agent's state was read");
    assert!(running.sent());
    let seen = stats(&sandbox).await;
    assert_eq!(requests_in(&seen, READ_USERS, 200), 1);
    assert_eq!(
        requests_in(&seen, READ_PRESENCE, 200),
        1,
        "the read carried one user"
    );

    // Both abandoned: no read at all.
    let gates = [CallGate::new(), CallGate::new()];
    let refused: Vec<_> = gates
        .iter()
        .enumerate()
        .map(|(n, gate)| read(gate, user_id(n + 2)))
        .collect();
    tokio::time::sleep(ABANDON_AFTER).await;
    assert!(gates.iter().all(CallGate::abandon));
    for answer in refused {
        assert!(answer.await.unwrap().is_err());
    }
    let seen = stats(&sandbox).await;
    assert_eq!(requests_in(&seen, READ_USERS, 200), 1, "no second read");
    assert_eq!(requests_in(&seen, READ_PRESENCE, 200), 1);
}

#[tokio::test]
async fn a_job_abandoned_before_its_own_call_sends_nothing_and_one_that_sent_runs_on() {
    let sandbox = sandbox().await;
    let client = client_for(&sandbox);
    let path = format!("/api/v2/users/{}/presences/purecloud", user_id(0));

    let paused = CallGate::new();
    assert!(paused.abandon());
    let job = client.in_lane(Lane::Single).gated(&paused);
    // The copies a job's calls go through carry its gate.
    assert!(job.pinned("user").gate().is_some());
    let err = job.get::<Value>(&path).await.unwrap_err();
    assert!(matches!(err, GenesysError::Abandoned { .. }), "{err:?}");
    assert_eq!(err.class(), genesys_worker::genesys::ErrorClass::Transient);
    let prepaid = job.prepay(&path).await.unwrap();
    assert!(prepaid.gate().is_some());
    assert!(matches!(
        prepaid.get_prepaid::<Value>(&path).await,
        Err(GenesysError::Abandoned { .. })
    ));
    assert_eq!(requests_in(&stats(&sandbox).await, READ_PRESENCE, 200), 0);

    let running = CallGate::new();
    let job = client.in_lane(Lane::Single).gated(&running);
    job.get::<Value>(&path).await.unwrap();
    assert!(!running.abandon(), "a job that sent runs on to its end");
    job.get::<Value>(&path).await.unwrap();
    assert_eq!(requests_in(&stats(&sandbox).await, READ_PRESENCE, 200), 2);
}
