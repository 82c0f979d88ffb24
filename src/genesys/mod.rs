//! The Genesys Cloud REST client every job kind applies its changes through.
//!
//! One place for what every call needs: a bearer token ([`auth`]), the shared [`Budget`] before
//! the request, a 401 answered by one fresh grant, a 429 answered by pausing the whole budget
//! for `Retry-After` (not charged to the job), and Genesys error bodies turned into
//! [`GenesysError`]s whose [`ErrorClass`] drives the retry policy.

pub mod architect;
pub mod auth;
pub mod error;
pub mod presence;
pub mod taskmanagement;

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

pub use auth::TokenSource;
pub use error::{ErrorClass, GenesysError};

use crate::config::GenesysConfig;
use crate::limit::Budget;
use crate::telemetry::names;

/// A 429 asking for a longer wait than this is not waited out in-process (as the Go SDK does).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(180);
/// Consecutive 429s one call waits out before giving up as rate-limited.
const MAX_THROTTLED_WAITS: u32 = 20;

/// A successful reply.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    pub status: u16,
    pub body: T,
}

/// The Genesys error body (`ErrorBody`); only the fields the worker reads.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    context_id: String,
}

#[derive(Debug)]
pub struct GenesysClient {
    http: reqwest::Client,
    api_base: Url,
    auth: TokenSource,
    budget: Arc<Budget>,
    pub presence: presence::PresenceDirectory,
    pub statuses: taskmanagement::StatusDirectory,
}

impl GenesysClient {
    pub fn new(config: &GenesysConfig, budget: Arc<Budget>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout())
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("genesys-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client configuration is static and valid");
        let auth = TokenSource::new(
            http.clone(),
            &config.login_base,
            &config.client_id,
            config.client_secret.clone(),
        );
        Self {
            http,
            api_base: config.api_base.clone(),
            auth,
            budget,
            presence: presence::PresenceDirectory::new(Duration::from_secs(300)),
            statuses: taskmanagement::StatusDirectory::new(Duration::from_secs(300)),
        }
    }

    /// The OAuth client this worker calls as: the holder of the locks it takes.
    pub fn client_id(&self) -> &str {
        self.auth.client_id()
    }

    /// The budget every call waits for (the bulk gatherer takes a call's token itself).
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    pub fn auth(&self) -> &TokenSource {
        &self.auth
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Reply<T>, GenesysError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<Reply<T>, GenesysError> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<Reply<T>, GenesysError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<Reply<T>, GenesysError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// One logical call: waits for the budget, authenticates, and absorbs 401 (once) and 429s.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply<T>, GenesysError> {
        let url = self
            .api_base
            .join(path.trim_start_matches('/'))
            .expect("API paths are relative URLs");
        let mut regranted = false;
        let mut throttled_waits = 0;
        loop {
            let token = self.auth.token().await?;
            self.budget
                .acquire()
                .await
                .map_err(|err| GenesysError::Budget(err.to_string()))?;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.bearer());
            if let Some(body) = body {
                request = request.json(body);
            }
            let route = format!("{method} {}", crate::telemetry::route_template(path));
            let sent = std::time::Instant::now();
            let response = request.send().await.map_err(|source| {
                metrics::counter!(names::GENESYS_REQUESTS, "route" => route.clone(), "status" => "error")
                    .increment(1);
                GenesysError::Network {
                    method: method.to_string(),
                    path: path.to_string(),
                    maybe_sent: !source.is_connect(),
                    source,
                }
            })?;
            let status = response.status().as_u16();
            metrics::histogram!(names::GENESYS_REQUEST_DURATION, "route" => route.clone())
                .record(sent.elapsed().as_secs_f64());
            metrics::counter!(names::GENESYS_REQUESTS, "route" => route, "status" => status.to_string())
                .increment(1);
            let retry_after = crate::retry::retry_after(response.headers());
            let bytes = response.bytes().await.map_err(|source| GenesysError::Network {
                method: method.to_string(),
                path: path.to_string(),
                maybe_sent: true,
                source,
            })?;
            if (200..300).contains(&status) {
                let body = if bytes.is_empty() {
                    b"null".as_slice()
                } else {
                    &bytes
                };
                let body = serde_json::from_slice(body).map_err(|source| GenesysError::Decode {
                    method: method.to_string(),
                    path: path.to_string(),
                    source,
                })?;
                return Ok(Reply { status, body });
            }
            let err_body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
            let error = GenesysError::Api {
                method: method.to_string(),
                path: path.to_string(),
                status,
                code: if err_body.code.is_empty() {
                    format!("http.{status}")
                } else {
                    err_body.code
                },
                message: err_body.message,
                context_id: err_body.context_id,
                retry_after,
            };
            match status {
                401 if !regranted => {
                    tracing::info!(path, "Genesys answered 401; requesting a new token once.");
                    self.auth.invalidate(&token).await;
                    regranted = true;
                }
                429 => {
                    let wait = retry_after.unwrap_or_else(|| backoff_without_retry_after(throttled_waits));
                    throttled_waits += 1;
                    if wait > MAX_RETRY_AFTER || throttled_waits > MAX_THROTTLED_WAITS {
                        return Err(error);
                    }
                    tracing::warn!(
                        path,
                        retry_after_secs = wait.as_secs(),
                        "Genesys returned 429; pausing the budget."
                    );
                    self.budget.pause_for(wait);
                    self.budget.pause_fleet(wait).await;
                }
                _ => return Err(error),
            }
        }
    }
}

/// A 429 without `Retry-After`: 1 s doubling to a 60 s cap.
fn backoff_without_retry_after(waits: u32) -> Duration {
    Duration::from_secs(1u64 << waits.min(6)).min(Duration::from_secs(60))
}
