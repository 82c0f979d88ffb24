//! `genesys-worker relay`: CRM events to a webhook, signed, retried, dead-lettered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use genesys_worker::relay::{signature, EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use genesys_worker::sandbox::user_id;
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use serde_json::{json, Value};

use crate::helpers::{agent_job, amqp_url, connect_broker, random_name, spawn_app, TestApp};

const SECRET: &str = "relay-test-secret";

/// The status a receiver answers to its n-th request, carrying `event`.
type Answer = dyn Fn(usize, &Value) -> u16 + Send + Sync;

/// A webhook receiver that checks every signature; `answer(n, event)` picks the status of the
/// n-th request.
#[derive(Clone)]
struct Receiver {
    requests: Arc<AtomicUsize>,
    bad_signatures: Arc<AtomicUsize>,
    /// Event id → deliveries accepted (2xx).
    accepted: Arc<Mutex<HashMap<String, usize>>>,
    answer: Arc<Answer>,
}

impl Receiver {
    async fn start(answer: impl Fn(usize, &Value) -> u16 + Send + Sync + 'static) -> (Self, String) {
        let receiver = Self {
            requests: Arc::default(),
            bad_signatures: Arc::default(),
            accepted: Arc::default(),
            answer: Arc::new(answer),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn accepted(&self) -> HashMap<String, usize> {
        self.accepted.lock().unwrap().clone()
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = receiver.requests.fetch_add(1, Ordering::SeqCst);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let timestamp = header(TIMESTAMP_HEADER);
    if header(SIGNATURE_HEADER) != signature(SECRET, &timestamp, &body) {
        receiver.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(header(EVENT_ID_HEADER), event["event_id"].as_str().unwrap());
    let status = StatusCode::from_u16((receiver.answer)(n, &event)).unwrap();
    if status.is_success() {
        *receiver
            .accepted
            .lock()
            .unwrap()
            .entry(header(EVENT_ID_HEADER))
            .or_default() += 1;
    }
    status
}

struct RelayProcess {
    child: tokio::process::Child,
    queue: String,
}

impl RelayProcess {
    /// Starts the relay of `app`'s CRM events to `url` and waits until its queue is bound.
    async fn start(app: &TestApp, url: &str) -> Self {
        let queue = format!("test.{}.relay", random_name());
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_genesys-worker"))
            .args(["relay", "--source", "crm", "--url", url, "--queue", &queue])
            .args(["--backoff-ms", "20", "--max-attempts", "10", "--concurrency", "4"])
            .env("RELAY_SECRET", SECRET)
            .env("AMQP_URL", amqp_url())
            .env("CRM_EXCHANGE", &app.config.topology.crm_exchange)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let connection = connect_broker().await;
        for _ in 0..100 {
            let channel = connection.create_channel().await.unwrap();
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            if channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Self { child, queue }
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
        let connection = connect_broker().await;
        let channel = connection.create_channel().await.unwrap();
        for queue in [self.queue.clone(), format!("{}.dead", self.queue)] {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

#[tokio::test]
async fn every_event_reaches_a_receiver_that_fails_half_the_time_signed() {
    let mut app = spawn_app().await;
    // Every other request fails: 503, or 429 with a Retry-After of 0.
    let (receiver, url) = Receiver::start(|n, _| match n % 4 {
        1 => 503,
        3 => 429,
        _ => 200,
    })
    .await;
    let relay = RelayProcess::start(&app, &url).await;
    let jobs = app.publish_agent_jobs(10, "Available").await;
    let crm: Vec<String> = app
        .crm_events(10)
        .await
        .iter()
        .map(|e| e.event.event_id.to_string())
        .collect();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while receiver.accepted().len() < 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let accepted = receiver.accepted();
    let mut delivered: Vec<&String> = accepted.keys().collect();
    delivered.sort();
    let mut expected: Vec<&String> = crm.iter().collect();
    expected.sort();
    assert_eq!(delivered, expected, "every CRM event delivered");
    assert_eq!(jobs.len(), 10);
    assert!(
        receiver.requests.load(Ordering::SeqCst) >= 19,
        "failures were retried"
    );
    assert_eq!(receiver.bad_signatures.load(Ordering::SeqCst), 0);
    relay.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn an_event_the_receiver_refuses_is_dead_lettered_with_the_reason() {
    let mut app = spawn_app().await;
    let refused_user = format!("user:{}", user_id(3));
    let refused = refused_user.clone();
    let (receiver, url) =
        Receiver::start(move |_, event| if event["entity"] == refused { 400 } else { 200 }).await;
    let relay = RelayProcess::start(&app, &url).await;
    for n in 2..5 {
        app.publish(&agent_job(user_id(n), json!({"presence": "Break"})))
            .await;
    }
    app.crm_events(3).await;
    let connection = connect_broker().await;
    let channel = connection.create_channel().await.unwrap();
    let dead = format!("{}.dead", relay.queue);
    let mut letter = None;
    for _ in 0..100 {
        letter = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if letter.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let letter = letter.expect("the refused event was dead-lettered");
    let event: Value = serde_json::from_slice(&letter.delivery.data).unwrap();
    assert_eq!(event["entity"], json!(refused_user));
    let headers = letter.delivery.properties.headers().clone().unwrap();
    let code = headers
        .inner()
        .iter()
        .find(|(k, _)| k.as_str() == "x-error-code")
        .map(|(_, v)| match v {
            lapin::types::AMQPValue::LongString(s) => s.to_string(),
            other => format!("{other:?}"),
        })
        .unwrap();
    assert_eq!(code, "http.400");
    // Refused at once (a 4xx is not retried), and the others were delivered.
    assert_eq!(receiver.accepted().len(), 2);
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 3);
    relay.stop().await;
    app.stop().await;
}
