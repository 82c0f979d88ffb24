//! The Genesys Cloud REST client every job kind applies its changes through.
//!
//! One place for what every call needs: a bearer token ([`auth`]), the shared [`Budget`] before
//! the request, a 401 answered by one fresh grant, a 429 answered by a pause for `Retry-After`
//! (not charged to the job: of the whole budget when the limit hit is the OAuth client's own, of
//! the request's route family when it is another, such as an org-wide limit), and Genesys error
//! bodies, JSON or not, turned into [`GenesysError`]s whose [`ErrorClass`] drives the retry
//! policy.

pub mod architect;
pub mod auth;
pub mod error;
pub mod limits;
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
use crate::lane::Lane;
use crate::limit::{route_family, Budget, BudgetError, MAX_FAMILY_WAIT};
use crate::telemetry;

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
    /// On a 429: which of the limits applied to the request was hit.
    #[serde(default)]
    limit: Option<limits::Limit>,
}

impl ErrorBody {
    /// Reads an error answer. Gateways in front of the API answer some errors with an HTML page
    /// or nothing at all: those are described by what came back, and classified by status.
    fn read(status: u16, bytes: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(bytes) {
            Ok(body) => body,
            Err(_) if bytes.iter().all(u8::is_ascii_whitespace) => Self {
                message: format!("{status} with an empty body"),
                ..Self::default()
            },
            Err(_) => Self {
                message: format!("{status} with a non-JSON body of {} bytes", bytes.len()),
                ..Self::default()
            },
        }
    }
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

    /// The client as the calls of one lane see it: every call waits for the budget in `lane`.
    pub fn in_lane(&self, lane: Lane) -> LaneClient<'_> {
        LaneClient { client: self, lane }
    }

    /// One logical call: waits for the budget in `lane` (unless `paid`: the caller took this
    /// call's token itself), authenticates, and absorbs 401 (once) and 429s.
    pub async fn call<T: DeserializeOwned>(
        &self,
        lane: Lane,
        mut paid: bool,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply<T>, GenesysError> {
        let url = self
            .api_base
            .join(path.trim_start_matches('/'))
            .expect("API paths are relative URLs");
        let family = route_family(path);
        let mut regranted = false;
        let mut throttled_waits = 0;
        let mut first_throttled = None;
        loop {
            let token = self.auth.token().await?;
            if std::mem::take(&mut paid) {
                // Its token was taken; a family paused since still holds it back.
                self.budget.wait_family(family).await.map_err(budget_error)?;
            } else {
                self.budget.acquire(lane, family).await.map_err(budget_error)?;
            }
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
                telemetry::genesys_unanswered(&route);
                GenesysError::Network {
                    method: method.to_string(),
                    path: path.to_string(),
                    maybe_sent: !source.is_connect(),
                    source,
                }
            })?;
            let status = response.status().as_u16();
            telemetry::genesys_answered(&route, status, sent.elapsed().as_secs_f64());
            let retry_after = crate::http::retry_after(response.headers());
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
            let err_body = ErrorBody::read(status, &bytes);
            let limit = err_body.limit.clone();
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
                    let key = limit.as_ref().map_or("unnamed", |l| l.key.as_str());
                    telemetry::genesys_throttled(key, family);
                    // The pause holds every other call back even when this one gives up.
                    let own = limit.as_ref().is_none_or(limits::Limit::is_the_clients_own);
                    if own {
                        tracing::warn!(
                            path,
                            limit = key,
                            retry_after_secs = wait.as_secs(),
                            "Genesys returned 429 on this client's limit; pausing the budget."
                        );
                        self.budget.pause(wait).await;
                    } else {
                        // A limit others spend too (an org-wide one on a route family): only the
                        // calls that count against it wait.
                        tracing::warn!(path, limit = key, family, retry_after_secs = wait.as_secs(), "Genesys returned 429 on a limit shared beyond this client; pausing this route family only.");
                        self.budget.pause_family(family, wait).await;
                    }
                    if wait > MAX_RETRY_AFTER || throttled_waits > MAX_THROTTLED_WAITS {
                        return Err(error);
                    }
                    // ... and not for ever: the job is parked in a retry queue instead.
                    let since = *first_throttled.get_or_insert_with(std::time::Instant::now);
                    if !own && since.elapsed() + wait > MAX_FAMILY_WAIT {
                        return Err(error);
                    }
                }
                _ => return Err(error),
            }
        }
    }
}

/// The Genesys client as one lane's calls see it (a job's calls run in its lane): cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct LaneClient<'a> {
    client: &'a GenesysClient,
    lane: Lane,
}

impl<'a> LaneClient<'a> {
    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// The client underneath: its caches and the OAuth client id.
    pub fn client(&self) -> &'a GenesysClient {
        self.client
    }

    /// The OAuth client this worker calls as: the holder of the locks it takes.
    pub fn client_id(&self) -> &'a str {
        self.client.client_id()
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Reply<T>, GenesysError> {
        self.client.call(self.lane, false, Method::GET, path, None).await
    }

    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<Reply<T>, GenesysError> {
        self.client
            .call(self.lane, false, Method::PATCH, path, Some(body))
            .await
    }

    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<Reply<T>, GenesysError> {
        self.client
            .call(self.lane, false, Method::PUT, path, Some(body))
            .await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<Reply<T>, GenesysError> {
        self.client
            .call(self.lane, false, Method::POST, path, Some(body))
            .await
    }

    /// A `PUT` whose budget token the caller already took ([`Budget::acquire`]): a gathered
    /// bulk call takes it first and keeps gathering while it waits.
    pub async fn put_prepaid<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<Reply<T>, GenesysError> {
        self.client
            .call(self.lane, true, Method::PUT, path, Some(body))
            .await
    }
}

fn budget_error(err: BudgetError) -> GenesysError {
    match err {
        BudgetError::Store(err) => GenesysError::Budget(err.to_string()),
        BudgetError::FamilyPaused { family, wait } => GenesysError::FamilyPaused { family, wait },
    }
}

/// A 429 without `Retry-After`: 1 s doubling to a 60 s cap.
fn backoff_without_retry_after(waits: u32) -> Duration {
    Duration::from_secs(1u64 << waits.min(6)).min(Duration::from_secs(60))
}
