//! The console in a real browser (headless Chromium over WebDriver, `testkit::browser`), against
//! a running worker and sandbox: an operator logs in, follows a batch, pauses it (the sandbox
//! stops being called), resumes it, cancels another, and replays a dead letter.
//!
//! With `CONSOLE_SCREENSHOTS=1` it also saves the README's screenshots of the overview and a
//! batch page (`docs/console-overview.png`, `docs/console-batch.png`).

use std::time::Duration;

use genesys_sandbox::{user_id, SandboxConfig};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::browser::Browser;
use crate::helpers::{agent_job, job, random_name, spawn_app_with, TestApp};

const TOKEN: &str = "console-browser-token-0123456789";
const PATCH_PRESENCE: &str = "PATCH /api/v2/users/{userId}/presences/purecloud";

/// One PATCH per agent, no read first: the sandbox's request count is the jobs' progress.
fn change(n: usize, presence: &str) -> Value {
    agent_job(
        user_id(n),
        json!({"presence": presence, "respect_out_of_office": false, "if_interacting": "apply"}),
    )
}

fn batch(children: Vec<Value>) -> (Uuid, Value) {
    let mut batch = job("batch", json!({"jobs": children}));
    batch["idempotency_key"] = json!(format!("handover-{}", random_name()));
    batch["actor"] = json!("wfm-scheduler");
    (batch["job_id"].as_str().unwrap().parse().unwrap(), batch)
}

fn url(app: &TestApp, path: &str) -> String {
    format!("http://{}{path}", app.config.admin_addr)
}

/// Every request the sandbox answered so far.
async fn sandbox_requests(app: &TestApp) -> u64 {
    app.sandbox_stats().await["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .sum()
}

/// The `finished` of "N of M children final (P%)".
fn finished(text: &str) -> u64 {
    text.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The console's confirm dialogs (cancel, replay all) say yes: WebDriver and dialogs do not mix.
async fn confirm_everything(browser: &Browser) {
    browser
        .client()
        .execute("window.confirm = function () { return true; };", vec![])
        .await
        .unwrap();
}

fn screenshots() -> Option<std::path::PathBuf> {
    (std::env::var("CONSOLE_SCREENSHOTS").as_deref() == Ok("1"))
        .then(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"))
}

#[tokio::test]
async fn an_operator_follows_pauses_resumes_and_cancels_batches_and_replays_a_dead_letter() {
    // 4 requests/s: a 40-agent handover takes about 10 s, time enough to watch and pause it.
    let app = spawn_app_with(
        SandboxConfig {
            users: 100,
            ..SandboxConfig::default()
        },
        &[
            ("ADMIN_TOKEN", TOKEN),
            ("BULK_PRESENCE", "off"),
            ("GENESYS_RATE_LIMIT_RPS", "4"),
            ("GENESYS_RATE_LIMIT_BURST", "1"),
            ("GENESYS_MAX_ATTEMPTS", "1"),
            ("RETRY_DELAYS_MS", "none"),
        ],
    )
    .await;
    let browser = Browser::start().await;

    // Log in: the buttons come alive.
    browser.goto(&url(&app, "/console")).await;
    browser.fill("[data-testid=login-actor]", "alice").await;
    browser.fill("[data-testid=login-token]", TOKEN).await;
    browser.click("[data-testid=login-submit]").await;
    browser
        .wait_for_text("[data-testid=actor-name]", |t| t == "alice")
        .await;

    // A freeze of flow releases for the shift, from the overview's pause form.
    browser.fill("[data-testid=pause-value]", "flow.deploy").await;
    browser
        .client()
        .execute(
            "document.querySelector('[data-testid=pause-scope]').value = 'kind';",
            vec![],
        )
        .await
        .unwrap();
    browser
        .fill("[data-testid=pause-reason]", "release freeze during the handover")
        .await;
    browser.click("[data-testid=pause-submit]").await;
    browser
        .wait_for(r#"[data-testid=control-row][data-scope=kind][data-value="flow.deploy"]"#)
        .await;

    // A handover of 40 agents, two of them to a presence that does not exist.
    let mut children: Vec<Value> = (0..38).map(|n| change(n, "On Queue")).collect();
    children.push(change(38, "Teleporting"));
    children.push(change(39, "Teleporting"));
    let (first, handover) = batch(children);
    app.publish(&handover).await;

    // The overview follows it.
    browser
        .wait_for_text("[data-testid=in-flight-batch]", |t| t != "0")
        .await;
    browser
        .wait_for_text("[data-testid=jobs-per-second]", |t| t != "0")
        .await;
    if let Some(docs) = screenshots() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        browser.screenshot_png(docs.join("console-overview.png")).await;
    }

    // Its page: progress while it runs.
    browser
        .goto(&url(&app, &format!("/console/batches/{first}")))
        .await;
    browser
        .wait_for_text("[data-testid=batch-progress-text]", |t| {
            (5..30).contains(&finished(t))
        })
        .await;

    // Paused: the sandbox is called no more.
    browser
        .fill("[data-testid=batch-reason]", "roster under review")
        .await;
    browser.click("[data-testid=batch-pause]").await;
    browser
        .wait_for_text("[data-testid=batch-state]", |t| t.starts_with("paused by alice"))
        .await;
    browser.wait_for("[data-testid=batch-resume]:not([hidden])").await;
    // A call already past its checks may finish.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = sandbox_requests(&app).await;
    // The page polls every 2 s: what it shows once the last jobs in flight are in.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let progress_held = browser.text("[data-testid=batch-progress-text]").await;
    if let Some(docs) = screenshots() {
        browser.screenshot_png(docs.join("console-batch.png")).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sandbox_requests(&app).await,
        held,
        "the sandbox was called while the batch was paused"
    );
    assert!(finished(&progress_held) < 40, "{progress_held}");
    assert_eq!(
        browser.text("[data-testid=batch-progress-text]").await,
        progress_held
    );

    // Resumed: it finishes, the two bad children among its first errors.
    browser.click("[data-testid=batch-resume]").await;
    browser
        .wait_for_text("[data-testid=batch-progress-text]", |t| t.starts_with("40 of 40"))
        .await;
    browser
        .wait_for_text("[data-testid=batch-summary]", |t| t == "announced")
        .await;
    assert_eq!(browser.text("[data-testid=count-applied] td.num").await, "38");
    assert_eq!(browser.text("[data-testid=count-rejected] td.num").await, "2");
    assert!(browser
        .text("[data-testid=batch-errors]")
        .await
        .contains("unknown_presence"));
    assert_eq!(app.requests(PATCH_PRESENCE, 200).await, 38);

    // Another handover, cancelled at once: its children end as cancelled, unapplied.
    let (second, handover) = batch((40..80).map(|n| change(n, "Available")).collect());
    app.publish(&handover).await;
    browser
        .goto(&url(&app, &format!("/console/batches/{second}")))
        .await;
    confirm_everything(&browser).await;
    browser.click("[data-testid=batch-cancel]").await;
    browser
        .wait_for_text("[data-testid=batch-state]", |t| {
            t.starts_with("cancelled by alice")
        })
        .await;
    browser
        .wait_for_text("[data-testid=batch-progress-text]", |t| t.starts_with("40 of 40"))
        .await;
    let cancelled: u64 = browser
        .text("[data-testid=count-cancelled] td.num")
        .await
        .parse()
        .unwrap();
    assert!(cancelled > 30, "{cancelled} of 40 cancelled");
    assert_eq!(
        app.requests(PATCH_PRESENCE, 200).await,
        38 + (40 - cancelled),
        "a cancelled child calls nothing"
    );

    // A dead letter of a failure since fixed, replayed from the console.
    app.set_fault(json!({"route": PATCH_PRESENCE, "errors": {"502": 1.0}}))
        .await;
    let failing = change(90, "Break");
    let failing_id = failing["job_id"].as_str().unwrap().to_string();
    app.publish(&failing).await;
    let letter = format!(r#"[data-testid=dlq-select][value="{failing_id}"]"#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        browser
            .goto(&url(&app, "/console/dead-letters?code=genesys.bad.gateway"))
            .await;
        let shown = browser
            .client()
            .execute(
                "return !!document.querySelector(arguments[0]);",
                vec![json!(letter)],
            )
            .await
            .unwrap();
        if shown == json!(true) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead letter never showed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let cleared = app
        .http
        .delete(format!("{}/sandbox/faults", app.sandbox.base_url()))
        .send()
        .await
        .unwrap();
    assert!(cleared.status().is_success());
    browser.click(&letter).await;
    // A dry run first (the default), then for real.
    browser.click("[data-testid=dlq-replay-selected]").await;
    browser
        .wait_for_text("[data-testid=dlq-result-summary]", |t| {
            t.starts_with("Would replay 1")
        })
        .await;
    browser.click("[data-testid=dlq-dry-run]").await;
    browser.click("[data-testid=dlq-replay-selected]").await;
    browser
        .wait_for_text("[data-testid=dlq-result-summary]", |t| {
            t.starts_with("Replayed 1")
        })
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while app.user(user_id(90)).await["presence"] != "Break" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replayed job was not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    browser.close().await;
    app.stop().await;
}
