//! `genesys-worker relay`: the bundled downstream consumer. It forwards the worker's CRM or audit
//! events to a webhook (a CRM, payroll or VCS system) over HTTP, at least once.
//!
//! Each event is POSTed as the JSON the worker published, with headers the receiver checks:
//! `X-Genesys-Worker-Event-Id` (dedupe on it: at-least-once means a receiver may see an event
//! twice), `X-Genesys-Worker-Timestamp` (Unix seconds) and `X-Genesys-Worker-Signature`
//! (`sha256=` + hex HMAC-SHA256 over `<event id>.<timestamp>.<body>` with `RELAY_SECRET`).
//! The id is signed so a captured delivery cannot be replayed under a new id past the
//! receiver's dedupe, and the timestamp so it cannot be replayed with a fresh one: receivers
//! reject a timestamp more than [`TIMESTAMP_TOLERANCE`] from their clock, and every attempt is
//! signed afresh so retries stay inside it. A 2xx delivers it; 5xx, 408, 429 (waiting at least
//! its `Retry-After`) and network errors are retried with exponential backoff and full jitter;
//! a 3xx (redirects are never followed: the signed event goes to `--url` only), any other 4xx,
//! or retries exhausted, dead-letters it into the relay's own dead-letter queue with the reason
//! in `x-error-*` headers. The event is acked from the relay's queue only after it was
//! delivered or its dead letter confirmed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::broker::publisher::DeadLetter;
use crate::broker::{self, BrokerError, Publisher};
use crate::config::{Secret, ServiceUrls};
use crate::retry::RetryPolicy;

pub const EVENT_ID_HEADER: &str = "x-genesys-worker-event-id";
pub const TIMESTAMP_HEADER: &str = "x-genesys-worker-timestamp";
pub const SIGNATURE_HEADER: &str = "x-genesys-worker-signature";

/// How far a delivery's timestamp may be from a receiver's clock before the receiver rejects
/// it (either way, for clock skew). Part of the contract receivers implement; the relay signs
/// each attempt with the time it is sent, so only a replay or a skewed clock falls outside.
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// The `x-error-code` of an event whose receiver answered a redirect.
pub const REDIRECT_CODE: &str = "http.redirect";

/// `sha256=<hex HMAC-SHA256(secret, "<event id>.<timestamp>.<body>")>`: what a receiver
/// recomputes. The timestamp is decimal digits and the body a JSON object, so the fields cannot
/// be shifted into each other even if an id held a dot.
pub fn signature(secret: &str, event_id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(event_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub amqp_url: ServiceUrls,
    /// The exchange relayed (`genesys.crm` or `genesys.audit`).
    pub exchange: String,
    /// The relay's own durable queue on `exchange`; its dead letters go to `<queue>.dead`.
    pub queue: String,
    pub url: url::Url,
    pub secret: Secret,
    /// Deliveries attempted per event before it is dead-lettered, and the backoff between
    /// them (exponential with full jitter, as for Genesys calls).
    pub retry: RetryPolicy,
    /// Events POSTed at once.
    pub concurrency: usize,
    pub request_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl From<lapin::Error> for RelayError {
    fn from(err: lapin::Error) -> Self {
        Self::Broker(err.into())
    }
}

/// Why an event could not be delivered.
struct Undeliverable {
    code: String,
    message: String,
    attempts: u32,
}

/// Relays until `shutdown`; in-flight deliveries finish first.
pub async fn run(options: RelayOptions, shutdown: CancellationToken) -> Result<(), RelayError> {
    let connection = broker::connect(&options.amqp_url).await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            options.exchange.as_str().into(),
            ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let dead = format!("{}.dead", options.queue);
    channel
        .queue_declare(dead.as_str().into(), durable, quorum.clone())
        .await?;
    channel
        .queue_declare(options.queue.as_str().into(), durable, quorum)
        .await?;
    channel
        .queue_bind(
            options.queue.as_str().into(),
            options.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_qos(
            options.concurrency.min(u16::MAX as usize) as u16,
            BasicQosOptions::default(),
        )
        .await?;
    let publisher = Publisher::open(&connection).await?;
    let http = reqwest::Client::builder()
        .timeout(options.request_timeout)
        .user_agent(concat!("genesys-worker-relay/", env!("CARGO_PKG_VERSION")))
        // Following one would send the signed event to whatever origin the receiver names.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client configuration is static and valid");
    let mut consumer = channel
        .basic_consume(
            options.queue.as_str().into(),
            "genesys-worker-relay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(exchange = %options.exchange, queue = %options.queue, url = %shown(&options.url), "Relaying events.");
    let options = Arc::new(options);
    let slots = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let tasks = tokio_util::task::TaskTracker::new();
    let result = loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(err)) => break Err(RelayError::from(err)),
            None => break Ok(()),
        };
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let (options, http, publisher, dead) =
            (options.clone(), http.clone(), publisher.clone(), dead.clone());
        tasks.spawn(async move {
            relay_one(&options, &http, &publisher, &dead, delivery).await;
            drop(slot);
        });
    };
    tasks.close();
    tasks.wait().await;
    let _ = channel.close(200, "relay stopping".into()).await;
    let _ = connection.close(200, "relay stopping".into()).await;
    result
}

async fn relay_one(
    options: &RelayOptions,
    http: &reqwest::Client,
    publisher: &Publisher,
    dead: &str,
    delivery: Delivery,
) {
    let event_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(ToString::to_string)
        .or_else(|| {
            serde_json::from_slice::<serde_json::Value>(&delivery.data)
                .ok()?
                .get("event_id")?
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default();
    let settled = match deliver(options, http, &event_id, &delivery.data).await {
        Ok(attempts) => {
            tracing::debug!(event_id, attempts, "Event delivered.");
            delivery.ack(BasicAckOptions::default()).await
        }
        Err(failure) => {
            tracing::warn!(event_id, code = %failure.code, error.message = %failure.message, "Event dead-lettered.");
            let letter = DeadLetter {
                body: &delivery.data,
                properties: &delivery.properties,
                exchange: delivery.exchange.as_str(),
                routing_key: delivery.routing_key.as_str(),
                error_code: &failure.code,
                error_message: &failure.message,
                error_details: None,
                attempts: failure.attempts,
            };
            match publisher.dead_letter(("", dead), letter).await {
                Ok(()) => delivery.ack(BasicAckOptions::default()).await,
                Err(err) => {
                    tracing::error!(error.message = %err, "Could not dead-letter an event; it will be relayed again.");
                    delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            multiple: false,
                        })
                        .await
                }
            }
        }
    };
    if let Err(err) = settled {
        tracing::error!(error.message = %err, "Could not settle an event; the broker will redeliver it.");
    }
}

/// POSTs one event until it is delivered (returns the attempts) or cannot be.
async fn deliver(
    options: &RelayOptions,
    http: &reqwest::Client,
    event_id: &str,
    body: &[u8],
) -> Result<u32, Undeliverable> {
    let mut attempt = 1;
    loop {
        // Signed per attempt, so a retry after a long backoff or Retry-After is still inside
        // the receiver's window.
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
        let sent = http
            .post(options.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, event_id)
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(
                SIGNATURE_HEADER,
                signature(options.secret.expose(), event_id, &timestamp, body),
            )
            .body(body.to_vec())
            .send()
            .await;
        let failure = match sent {
            Ok(response) if response.status().is_success() => return Ok(attempt),
            Ok(response) => refusal(&options.url, response.status(), response.headers()),
            // The URL may carry a token in its query: the message names only origin and path.
            Err(err) if err.is_builder() => Failure {
                // The event itself cannot be sent (an id that is no header value): retrying
                // cannot help.
                retryable: false,
                retry_after: None,
                code: "request.invalid".into(),
                message: format!("{}: {}", shown(&options.url), err.without_url()),
            },
            Err(err) => Failure {
                retryable: true,
                retry_after: None,
                code: if err.is_timeout() {
                    "timeout".into()
                } else {
                    "network".into()
                },
                message: format!("{}: {}", shown(&options.url), err.without_url()),
            },
        };
        if !failure.retryable || attempt >= options.retry.max_attempts {
            return Err(Undeliverable {
                code: failure.code,
                message: failure.message,
                attempts: attempt,
            });
        }
        let wait = options
            .retry
            .backoff(attempt)
            .max(failure.retry_after.unwrap_or_default());
        tracing::debug!(event_id, attempt, wait_ms = wait.as_millis() as u64, code = %failure.code, "Delivery failed; retrying.");
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// One failed attempt.
#[derive(Debug)]
struct Failure {
    retryable: bool,
    retry_after: Option<Duration>,
    code: String,
    message: String,
}

/// What a non-2xx answer means for the event.
fn refusal(url: &url::Url, status: reqwest::StatusCode, headers: &reqwest::header::HeaderMap) -> Failure {
    if status.is_redirection() {
        // Permanent: a redirect says where the receiver lives now (or that it wants HTTPS or a
        // login), which asking again does not change; retries would hold a slot for minutes
        // per event. Set --url to the final address, then replay the dead letters. Only the
        // target's origin is named: its path or query may carry a token.
        let to = headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|location| url.join(location).ok())
            .map_or_else(|| "no Location".into(), |to| to.origin().ascii_serialization());
        return Failure {
            retryable: false,
            retry_after: None,
            code: REDIRECT_CODE.into(),
            message: format!(
                "{} answered {status} to {to}: redirects are not followed; set --url to the final address",
                shown(url)
            ),
        };
    }
    let code = status.as_u16();
    Failure {
        retryable: code >= 500 || code == 408 || code == 429,
        retry_after: crate::http::retry_after(headers),
        code: format!("http.{code}"),
        message: format!("{} answered {code}", shown(url)),
    }
}

/// `url` for logs and dead letters: origin and path, without credentials or query.
fn shown(url: &url::Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_documented_hmac() {
        // Computed independently: Python's
        // hmac.new(b"Jefe", b'e1.1700000000.{"event_id":"e1"}', sha256).
        assert_eq!(
            signature("Jefe", "e1", "1700000000", br#"{"event_id":"e1"}"#),
            "sha256=224b18a0594d6f3de70fd4c758cb5a43cbf755ef82db212612c63ff3326ebaa4"
        );
    }

    #[test]
    fn the_signature_covers_the_event_id_and_the_timestamp() {
        let body = br#"{"event_id":"e1"}"#;
        let signed = signature("Jefe", "e1", "1700000000", body);
        assert_ne!(signed, signature("Jefe", "e2", "1700000000", body));
        assert_ne!(signed, signature("Jefe", "e1", "1700000001", body));
        // The previous scheme, `<timestamp>.<body>`, no longer verifies.
        assert_ne!(
            signed,
            "sha256=4fac3ddc72a0ee85c4163c1b1fc8541f2d7a23880c3970622da5987e22021842"
        );
    }

    #[test]
    fn a_redirect_is_permanent_and_names_only_the_target_origin() {
        let url = url::Url::parse("https://crm.example.com/hooks/genesys?token=s3cret").unwrap();
        for status in [301, 302, 303, 307, 308] {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::LOCATION,
                "https://elsewhere.example.net:8443/in?key=abc".parse().unwrap(),
            );
            let failure = refusal(&url, reqwest::StatusCode::from_u16(status).unwrap(), &headers);
            assert!(!failure.retryable, "{status}");
            assert_eq!(failure.code, REDIRECT_CODE);
            assert!(
                failure.message.contains("https://elsewhere.example.net:8443"),
                "{}",
                failure.message
            );
            assert!(!failure.message.contains("key=abc") && !failure.message.contains("s3cret"));
        }
        let relative = {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::LOCATION, "/login".parse().unwrap());
            refusal(&url, reqwest::StatusCode::FOUND, &headers)
        };
        assert!(
            relative.message.contains("to https://crm.example.com: redirects"),
            "{}",
            relative.message
        );
    }

    #[test]
    fn other_answers_keep_their_classification() {
        let url = url::Url::parse("https://crm.example.com/hooks").unwrap();
        let headers = reqwest::header::HeaderMap::new();
        for (status, retryable) in [
            (500, true),
            (503, true),
            (408, true),
            (429, true),
            (400, false),
            (401, false),
            (404, false),
        ] {
            let failure = refusal(&url, reqwest::StatusCode::from_u16(status).unwrap(), &headers);
            assert_eq!(failure.retryable, retryable, "{status}");
            assert_eq!(failure.code, format!("http.{status}"));
        }
    }
}
