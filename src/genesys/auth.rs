//! OAuth client-credentials tokens for the Genesys API.
//!
//! One token is cached per client and refreshed ahead of expiry. The cache is single-flight:
//! callers that need a token while a grant is running wait for that grant instead of starting
//! their own, so a burst of 100 jobs costs one token request; when the login host refuses the
//! credentials, the callers that waited for that grant share its refusal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use super::error::GenesysError;
use crate::config::Secret;

/// A bearer token and when to replace it.
#[derive(Clone)]
pub struct AccessToken {
    value: Secret,
    /// Replace from here on, well before Genesys stops accepting it.
    refresh_at: Instant,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

impl AccessToken {
    pub fn bearer(&self) -> &str {
        self.value.expose()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

/// The token, and the last refusal of the credentials (when, status, error, description).
#[derive(Default)]
struct Cached {
    token: Option<AccessToken>,
    refused: Option<(Instant, u16, String, String)>,
}

/// OAuth-style error body of the login host (not the API's ErrorBody).
#[derive(Deserialize, Default)]
struct AuthErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    error_description: String,
}

pub struct TokenSource {
    http: reqwest::Client,
    token_url: Url,
    client_id: String,
    client_secret: Secret,
    current: Mutex<Cached>,
    /// Grants requested so far: observable proof of single-flight.
    grants: AtomicU64,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(http: reqwest::Client, login_base: &Url, client_id: &str, client_secret: Secret) -> Self {
        let token_url = login_base
            .join("oauth/token")
            .expect("a base URL joins a relative path");
        Self {
            http,
            token_url,
            client_id: client_id.to_string(),
            client_secret,
            current: Mutex::new(Cached::default()),
            grants: AtomicU64::new(0),
        }
    }

    /// A valid token, from the cache or from a new grant.
    pub async fn token(&self) -> Result<AccessToken, GenesysError> {
        let asked = Instant::now();
        // Holding the lock across the grant is the single-flight: others queue behind it.
        let mut current = self.current.lock().await;
        if let Some(token) = current.token.as_ref() {
            if Instant::now() < token.refresh_at {
                return Ok(token.clone());
            }
        }
        // A grant refused while this caller waited for it is this caller's answer too.
        if let Some((at, status, error, description)) = &current.refused {
            if *at >= asked {
                return Err(GenesysError::Auth {
                    status: *status,
                    error: error.clone(),
                    description: description.clone(),
                });
            }
        }
        match self.grant().await {
            Ok(token) => {
                current.token = Some(token.clone());
                current.refused = None;
                Ok(token)
            }
            Err(GenesysError::Auth {
                status,
                error,
                description,
            }) => {
                current.refused = Some((Instant::now(), status, error.clone(), description.clone()));
                Err(GenesysError::Auth {
                    status,
                    error,
                    description,
                })
            }
            Err(err) => Err(err),
        }
    }

    /// Drops `rejected` (the API answered 401 to it) unless another caller already replaced it.
    pub async fn invalidate(&self, rejected: &AccessToken) {
        let mut current = self.current.lock().await;
        if current.token.as_ref().is_some_and(|t| t.value == rejected.value) {
            current.token = None;
        }
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn grants(&self) -> u64 {
        self.grants.load(Ordering::Relaxed)
    }

    async fn grant(&self) -> Result<AccessToken, GenesysError> {
        self.grants.fetch_add(1, Ordering::Relaxed);
        let response = self
            .http
            .post(self.token_url.clone())
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(GenesysError::AuthNetwork)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(GenesysError::AuthNetwork)?;
        if status != 200 {
            let err: AuthErrorBody = serde_json::from_slice(&body).unwrap_or_default();
            let description = [err.description, err.error_description]
                .into_iter()
                .find(|d| !d.is_empty())
                .unwrap_or_else(|| "no description".into());
            let error = if err.error.is_empty() {
                "unknown".into()
            } else {
                err.error
            };
            return Err(GenesysError::Auth {
                status,
                error,
                description,
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|source| GenesysError::Decode {
            method: "POST".into(),
            path: "/oauth/token".into(),
            source,
        })?;
        let lifetime = Duration::from_secs(parsed.expires_in.max(1));
        tracing::info!(
            expires_in_secs = parsed.expires_in,
            "Obtained a Genesys access token."
        );
        Ok(AccessToken {
            value: Secret::new(parsed.access_token),
            refresh_at: Instant::now() + refresh_after(lifetime),
        })
    }
}

/// When to refresh a token of `lifetime`: at 80%, and never later than a minute before expiry.
fn refresh_after(lifetime: Duration) -> Duration {
    let at_80 = lifetime.mul_f64(0.8);
    at_80
        .min(lifetime.saturating_sub(Duration::from_secs(60)))
        .max(lifetime / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_well_before_expiry() {
        assert_eq!(
            refresh_after(Duration::from_secs(86_400)),
            Duration::from_secs(69_120)
        );
        assert_eq!(refresh_after(Duration::from_secs(300)), Duration::from_secs(240));
        // Very short lifetimes still get half their life.
        assert_eq!(refresh_after(Duration::from_secs(10)), Duration::from_secs(5));
    }
}
