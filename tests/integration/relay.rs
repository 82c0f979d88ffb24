//! `genesys-worker relay`: CRM events to a webhook, signed, retried, dead-lettered.
//!
//! The receivers here check what the README tells a receiver to check: the signature over
//! `<event id>.<timestamp>.<body>`, a timestamp within 5 minutes of their clock, and dedupe on
//! the event id.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use genesys_sandbox::user_id;
use genesys_worker::relay::{EVENT_ID_HEADER, REDIRECT_CODE, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use hmac::{Hmac, Mac};
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::helpers::{agent_job, amqp_url, connect_broker, random_name, spawn_app, TestApp};

const SECRET: &str = "relay-test-secret";

/// The documented tolerance, written out rather than read from the relay: it is the contract.
const WINDOW_SECS: i64 = 5 * 60;

/// Why a receiver refused a request (it answers 401 to each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejection {
    Malformed,
    BadSignature,
    OutsideWindow,
}

/// The status a receiver answers to its n-th request, carrying `event`, once it verified it.
type Answer = dyn Fn(usize, &Value) -> u16 + Send + Sync;

/// How far the receiver's clock is from the real one, in seconds, for a request carrying
/// `event`: a skewed clock stands in for a delivery captured minutes ago and replayed.
type Skew = dyn Fn(&Value) -> i64 + Send + Sync;

/// A webhook receiver that verifies every request as the README says, then answers
/// `answer(n, event)` to the n-th; a 3xx carries `Location: redirect_to`.
#[derive(Clone)]
struct Receiver {
    requests: Arc<AtomicUsize>,
    rejected: Arc<Mutex<Vec<Rejection>>>,
    /// Event ids accepted (answered 2xx), each once.
    accepted: Arc<Mutex<HashSet<String>>>,
    /// Verified requests for an event already accepted: answered 2xx, not processed again.
    duplicates: Arc<AtomicUsize>,
    /// The accepted requests as they arrived, for replaying.
    captured: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    /// Every verified request's (event id, timestamp).
    attempts: Arc<Mutex<Vec<(String, i64)>>>,
    answer: Arc<Answer>,
    skew: Arc<Skew>,
    retry_after_secs: u64,
    redirect_to: Option<String>,
}

impl Receiver {
    fn new(answer: impl Fn(usize, &Value) -> u16 + Send + Sync + 'static) -> Self {
        Self {
            requests: Arc::default(),
            rejected: Arc::default(),
            accepted: Arc::default(),
            duplicates: Arc::default(),
            captured: Arc::default(),
            attempts: Arc::default(),
            answer: Arc::new(answer),
            skew: Arc::new(|_| 0),
            retry_after_secs: 0,
            redirect_to: None,
        }
    }

    fn skewed(mut self, skew: impl Fn(&Value) -> i64 + Send + Sync + 'static) -> Self {
        self.skew = Arc::new(skew);
        self
    }

    /// Serves on a new loopback port; returns the webhook URL.
    async fn start(self) -> (Self, String) {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (self, url)
    }

    fn accepted(&self) -> HashSet<String> {
        self.accepted.lock().unwrap().clone()
    }

    fn rejected(&self) -> Vec<Rejection> {
        self.rejected.lock().unwrap().clone()
    }

    async fn wait_for_accepted(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.accepted().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The README's receiver check; returns the event id and the timestamp. The HMAC is computed
/// here from the documented bytes, not with `relay::signature`, so the test pins the contract.
fn verify(headers: &HeaderMap, body: &[u8], now: i64) -> Result<(String, i64), Rejection> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(Rejection::Malformed)
    };
    let (id, timestamp, signature) = (
        header(EVENT_ID_HEADER)?,
        header(TIMESTAMP_HEADER)?,
        header(SIGNATURE_HEADER)?,
    );
    if id.is_empty() || timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::Malformed);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let claimed = signature
        .strip_prefix("sha256=")
        .and_then(unhex)
        .ok_or(Rejection::BadSignature)?;
    mac.verify_slice(&claimed).map_err(|_| Rejection::BadSignature)?;
    let timestamp: i64 = timestamp.parse().map_err(|_| Rejection::Malformed)?;
    if (now - timestamp).abs() > WINDOW_SECS {
        return Err(Rejection::OutsideWindow);
    }
    Ok((id.to_string(), timestamp))
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let n = receiver.requests.fetch_add(1, Ordering::SeqCst);
    // Read before verifying only to pick the simulated clock; nothing else trusts it yet.
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let now = unix_now() + (receiver.skew)(&event);
    let (id, timestamp) = match verify(&headers, &body, now) {
        Ok(verified) => verified,
        Err(rejection) => {
            receiver.rejected.lock().unwrap().push(rejection);
            return StatusCode::UNAUTHORIZED.into_response();
        }
    };
    assert_eq!(id, event["event_id"].as_str().unwrap());
    receiver.attempts.lock().unwrap().push((id.clone(), timestamp));
    if receiver.accepted.lock().unwrap().contains(&id) {
        receiver.duplicates.fetch_add(1, Ordering::SeqCst);
        return StatusCode::OK.into_response();
    }
    let status = StatusCode::from_u16((receiver.answer)(n, &event)).unwrap();
    let mut answer_headers = HeaderMap::new();
    if status == StatusCode::TOO_MANY_REQUESTS {
        answer_headers.insert("retry-after", receiver.retry_after_secs.into());
    }
    if let (true, Some(to)) = (status.is_redirection(), &receiver.redirect_to) {
        answer_headers.insert("location", HeaderValue::from_str(to).unwrap());
    }
    if status.is_success() {
        receiver.accepted.lock().unwrap().insert(id);
        receiver.captured.lock().unwrap().push((headers, body));
    }
    (status, answer_headers).into_response()
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
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, queue }
    }

    /// The next `n` events in the relay's dead-letter queue, or those that arrived in 20 s.
    async fn dead_letters(&self, n: usize) -> Vec<DeadLetter> {
        let connection = connect_broker().await;
        let channel = connection.create_channel().await.unwrap();
        let dead = format!("{}.dead", self.queue);
        let mut letters = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while letters.len() < n && tokio::time::Instant::now() < deadline {
            let Some(letter) = channel
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let headers = letter.delivery.properties.headers().clone().unwrap();
            let header = |name: &str| {
                headers
                    .inner()
                    .iter()
                    .find(|(k, _)| k.as_str() == name)
                    .map(|(_, v)| match v {
                        AMQPValue::LongString(s) => s.to_string(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default()
            };
            letters.push(DeadLetter {
                event: serde_json::from_slice(&letter.delivery.data).unwrap(),
                code: header("x-error-code"),
                message: header("x-error-message"),
            });
        }
        letters
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

#[derive(Debug)]
struct DeadLetter {
    event: Value,
    code: String,
    message: String,
}

#[tokio::test]
async fn every_event_reaches_a_receiver_that_fails_half_the_time_signed() {
    let mut app = spawn_app().await;
    // Every other request fails: 503, or 429 with a Retry-After of 0.
    let (receiver, url) = Receiver::new(|n, _| match n % 4 {
        1 => 503,
        3 => 429,
        _ => 200,
    })
    .start()
    .await;
    let relay = RelayProcess::start(&app, &url).await;
    let jobs = app.publish_agent_jobs(10, "Available").await;
    let crm: HashSet<String> = app
        .crm_events(10)
        .await
        .iter()
        .map(|e| e.event.event_id.to_string())
        .collect();
    receiver.wait_for_accepted(10).await;
    assert_eq!(receiver.accepted(), crm, "every CRM event delivered");
    assert_eq!(jobs.len(), 10);
    assert!(
        receiver.requests.load(Ordering::SeqCst) >= 19,
        "failures were retried"
    );
    assert_eq!(receiver.rejected(), vec![], "every request verified");
    relay.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn an_event_the_receiver_refuses_is_dead_lettered_with_the_reason() {
    let mut app = spawn_app().await;
    let refused_user = format!("user:{}", user_id(3));
    let refused = refused_user.clone();
    let (receiver, url) = Receiver::new(move |_, event| if event["entity"] == refused { 400 } else { 200 })
        .start()
        .await;
    let relay = RelayProcess::start(&app, &url).await;
    for n in 2..5 {
        app.publish(&agent_job(user_id(n), json!({"presence": "Break"})))
            .await;
    }
    app.crm_events(3).await;
    let letters = relay.dead_letters(1).await;
    assert_eq!(letters.len(), 1, "the refused event was dead-lettered");
    assert_eq!(letters[0].event["entity"], json!(refused_user));
    assert_eq!(letters[0].code, "http.400");
    // Refused at once (a 4xx is not retried), and the others were delivered.
    receiver.wait_for_accepted(2).await;
    assert_eq!(receiver.accepted().len(), 2);
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 3);
    relay.stop().await;
    app.stop().await;
}

/// POSTs a captured delivery again, as someone who saw it on the wire could, with `changed`
/// headers replaced.
async fn replay(url: &str, (headers, body): &(HeaderMap, Bytes), changed: &[(&str, String)]) -> u16 {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json");
    for name in [EVENT_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER] {
        let value = changed
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| headers[name].to_str().unwrap().to_string());
        request = request.header(name, value);
    }
    request.body(body.clone()).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_delivery_replayed_under_a_new_event_id_or_timestamp_is_rejected() {
    let mut app = spawn_app().await;
    let (receiver, url) = Receiver::new(|_, _| 200).start().await;
    let relay = RelayProcess::start(&app, &url).await;
    app.publish(&agent_job(user_id(2), json!({"presence": "Break"})))
        .await;
    let crm = app.crm_events(1).await;
    receiver.wait_for_accepted(1).await;
    assert_eq!(
        receiver.accepted(),
        HashSet::from([crm[0].event.event_id.to_string()]),
        "the relay's delivery verifies over <event id>.<timestamp>.<body>"
    );
    let delivered = receiver.captured.lock().unwrap()[0].clone();

    // A new id would pass the receiver's dedupe: the signature covers the id, so it fails.
    let new_id = uuid::Uuid::new_v4().to_string();
    assert_eq!(replay(&url, &delivered, &[(EVENT_ID_HEADER, new_id)]).await, 401);
    // A fresh timestamp would pass the window: the signature covers it too.
    let later = (unix_now() + 1).to_string();
    assert_eq!(replay(&url, &delivered, &[(TIMESTAMP_HEADER, later)]).await, 401);
    assert_eq!(
        receiver.rejected(),
        vec![Rejection::BadSignature, Rejection::BadSignature]
    );
    // Unchanged, it verifies and dedupe on the id makes it harmless.
    assert_eq!(replay(&url, &delivered, &[]).await, 200);
    assert_eq!(receiver.duplicates.load(Ordering::SeqCst), 1);
    assert_eq!(receiver.accepted().len(), 1);
    relay.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_delivery_more_than_five_minutes_from_the_receivers_clock_is_rejected() {
    let mut app = spawn_app().await;
    let (late, early, inside) = (
        format!("user:{}", user_id(2)),
        format!("user:{}", user_id(3)),
        format!("user:{}", user_id(4)),
    );
    let (l, e) = (late.clone(), early.clone());
    // The receiver's clock, per event: 6 minutes ahead (the delivery looks 6 minutes old, as a
    // replay would), 6 minutes behind, and 4 minutes ahead (inside the window).
    let (receiver, url) = Receiver::new(|_, _| 200)
        .skewed(move |event| {
            if event["entity"] == l {
                WINDOW_SECS + 60
            } else if event["entity"] == e {
                -(WINDOW_SECS + 60)
            } else {
                WINDOW_SECS - 60
            }
        })
        .start()
        .await;
    let relay = RelayProcess::start(&app, &url).await;
    for n in 2..5 {
        app.publish(&agent_job(user_id(n), json!({"presence": "Break"})))
            .await;
    }
    let crm = app.crm_events(3).await;
    let mut letters = relay.dead_letters(2).await;
    assert_eq!(letters.len(), 2, "both were dead-lettered: {letters:?}");
    letters.sort_by_key(|l| l.event["entity"].as_str().unwrap().to_string());
    let mut outside = vec![late, early];
    outside.sort();
    for (letter, entity) in letters.iter().zip(&outside) {
        assert_eq!(&letter.event["entity"], entity);
        assert_eq!(letter.code, "http.401");
    }
    // Refused for the window, not the signature: it verified.
    assert_eq!(
        receiver.rejected(),
        vec![Rejection::OutsideWindow, Rejection::OutsideWindow]
    );
    receiver.wait_for_accepted(1).await;
    let inside_id = crm
        .iter()
        .find(|e| e.event.entity == inside)
        .map(|e| e.event.event_id.to_string())
        .unwrap();
    assert_eq!(receiver.accepted(), HashSet::from([inside_id]));
    relay.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn every_attempt_is_signed_with_the_time_it_is_sent() {
    let mut app = spawn_app().await;
    // The first attempt is throttled for 2 s; the retry must carry a new timestamp (and a
    // signature over it), or a long Retry-After or backoff would push retries out of the window.
    let mut receiver = Receiver::new(|n, _| if n == 0 { 429 } else { 200 });
    receiver.retry_after_secs = 2;
    let (receiver, url) = receiver.start().await;
    let relay = RelayProcess::start(&app, &url).await;
    app.publish(&agent_job(user_id(2), json!({"presence": "Break"})))
        .await;
    app.crm_events(1).await;
    receiver.wait_for_accepted(1).await;
    let attempts = receiver.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].0, attempts[1].0, "one event");
    assert!(
        attempts[1].1 >= attempts[0].1 + 2,
        "the retry was signed afresh: {attempts:?}"
    );
    assert!((unix_now() - attempts[1].1).abs() <= 5, "signed when sent");
    assert_eq!(receiver.rejected(), vec![]);
    relay.stop().await;
    app.stop().await;
}

/// A listener on another origin that records every request, whatever its method.
async fn elsewhere() -> (Arc<AtomicUsize>, String) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/moved", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (calls, url)
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_not_followed_and_the_event_is_dead_lettered() {
    let mut app = spawn_app().await;
    let (elsewhere_calls, elsewhere_url) = elsewhere().await;
    let temporary = format!("user:{}", user_id(3));
    // 302 (a follower would GET the target with the signed headers) and 307 (a follower would
    // POST the signed body too).
    let mut receiver = Receiver::new(move |_, event| if event["entity"] == temporary { 307 } else { 302 });
    receiver.redirect_to = Some(elsewhere_url.clone());
    let (receiver, url) = receiver.start().await;
    let relay = RelayProcess::start(&app, &url).await;
    for n in 2..4 {
        app.publish(&agent_job(user_id(n), json!({"presence": "Break"})))
            .await;
    }
    app.crm_events(2).await;
    let letters = relay.dead_letters(2).await;
    assert_eq!(
        elsewhere_calls.load(Ordering::SeqCst),
        0,
        "the other origin got nothing"
    );
    assert_eq!(letters.len(), 2, "both were dead-lettered: {letters:?}");
    let origin = url::Url::parse(&elsewhere_url)
        .unwrap()
        .origin()
        .ascii_serialization();
    for letter in &letters {
        assert_eq!(letter.code, REDIRECT_CODE);
        assert!(
            letter.message.contains("redirects are not followed") && letter.message.contains(&origin),
            "{}",
            letter.message
        );
    }
    // Permanent: each asked once, not retried.
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 2);
    relay.stop().await;
    app.stop().await;
}
