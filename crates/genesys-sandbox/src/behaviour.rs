//! Behaviour profiles: the ways the real Genesys Cloud answers within its contract, each chosen
//! independently (`PUT /sandbox/behaviour`, `--behaviour`). The default is the sandbox's first
//! reading of the API, so nothing changes unless a test or the demo asks.
//!
//! | field | plays |
//! |---|---|
//! | `flow_operations` | how checkin and publish report their `Operation` ([`FlowOperations`]) |
//! | `stale_operation_ms` | with `stale_operation`: how long the flow keeps showing the older operation |
//! | `org_limit` | an org-wide limit on one route family, shared with a simulated other integration ([`OrgLimit`]) |
//! | `consistency_lag_ms` | for this long after a write, reads may show the old state or 404 (a new entity), a publish right after a checkin may answer 409 |
//! | `gateway` | errors from the gateway in front of the API: 502/504 with an HTML or empty body, connections reset before an answer ([`GatewayErrors`]) |
//! | `expand_omitted_every` | expansion as the best effort the API documents: in every `GET /api/v2/users` listing, every Nth entity (N, 2N, … counting from 1) comes without `presence`, `routingStatus` and `outOfOffice`; 0 (the default) never |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How Architect's asynchronous actions (checkin, publish) answer and show their progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowOperations {
    /// The action answers an incomplete `Operation`; the flow's `currentOperation` shows it
    /// until and after it completes.
    #[default]
    AsyncVisible,
    /// The action's answer is the complete `Operation` (`complete: true`, `actionStatus`
    /// SUCCESS or FAILURE); the flow carries no `currentOperation`.
    CompleteInResponse,
    /// The action answers an incomplete `Operation` that the flow never shows; only
    /// `checkedInVersion`/`publishedVersion` change, after the operation's time.
    AsyncHidden,
    /// As `async_visible`, but for `stale_operation_ms` after an action the flow keeps showing
    /// the previous, complete operation.
    StaleOperation,
}

/// An org-wide rate limit on one route family, which every integration of the org shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgLimit {
    /// The first path segment after `/api/v2/`: `users` covers every `/api/v2/users/*` route
    /// (presence, bulk presence, routing status).
    pub family: String,
    /// What the whole org may spend on the family, requests per second.
    pub requests_per_second: f64,
    #[serde(default = "default_org_burst")]
    pub burst: u32,
    /// A simulated other integration of the org spends this much of it, requests per second
    /// (at or above `requests_per_second`, nothing is left for anyone else).
    #[serde(default)]
    pub other_integration_rps: f64,
    /// `limit.key` of its 429s and of the limits API.
    #[serde(default = "default_org_key")]
    pub key: String,
    /// `limit.namespace` of its 429s; the limits API lists it under this namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

fn default_org_burst() -> u32 {
    1
}

fn default_org_key() -> String {
    "org.requests.per.minute".into()
}

impl OrgLimit {
    /// The namespace it is reported under: the family's unless set.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(&self.family)
    }
}

/// The body of a gateway error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorBodyKind {
    /// Genesys' `ErrorBody` (JSON).
    #[default]
    Genesys,
    /// An HTML page, as a load balancer serves it.
    Html,
    /// No body at all.
    Empty,
}

/// Errors from the gateway in front of every API route (probabilities per request).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayErrors {
    /// Probability of answering each status (502, 503 or 504) instead of serving.
    pub errors: BTreeMap<u16, f64>,
    /// The body those errors come with.
    pub body: ErrorBodyKind,
    /// Probability of closing the connection before any answer (nothing is served).
    pub reset: f64,
}

/// Every behaviour the sandbox can play, each independent of the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    pub flow_operations: FlowOperations,
    pub stale_operation_ms: u64,
    pub org_limit: Option<OrgLimit>,
    pub consistency_lag_ms: u64,
    pub gateway: Option<GatewayErrors>,
    /// In every `GET /api/v2/users` listing, every Nth entity comes without its expanded
    /// fields; 0: never.
    pub expand_omitted_every: u32,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            flow_operations: FlowOperations::default(),
            stale_operation_ms: 2_000,
            org_limit: None,
            consistency_lag_ms: 0,
            gateway: None,
            expand_omitted_every: 0,
        }
    }
}

impl Behaviour {
    /// Why this behaviour cannot be played.
    pub fn problem(&self) -> Option<String> {
        if let Some(limit) = &self.org_limit {
            if limit.family.is_empty() || limit.family.contains('/') {
                return Some("org_limit.family: one path segment after /api/v2/, e.g. \"users\"".into());
            }
            let positive_rate = limit.requests_per_second.is_finite() && limit.requests_per_second > 0.0;
            if !positive_rate || limit.other_integration_rps < 0.0 || limit.burst == 0 {
                return Some(
                    "org_limit: requests_per_second and burst must be positive, other_integration_rps not negative"
                        .into(),
                );
            }
        }
        if let Some(gateway) = &self.gateway {
            if let Some(status) = gateway.errors.keys().find(|s| ![502, 503, 504].contains(*s)) {
                return Some(format!(
                    "gateway.errors: status {status} is not one of 502, 503, 504"
                ));
            }
            let probabilities = gateway.errors.values().chain(std::iter::once(&gateway.reset));
            if probabilities.clone().any(|p| !(0.0..=1.0).contains(p)) {
                return Some("gateway: probabilities must be between 0 and 1".into());
            }
            if probabilities.sum::<f64>() > 1.0 + f64::EPSILON {
                return Some("gateway: errors and reset together must not exceed 1".into());
            }
        }
        None
    }

    /// Reads `--behaviour`: a JSON object of the fields to set (the rest keep their defaults).
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let behaviour: Self = serde_json::from_str(text).map_err(|err| err.to_string())?;
        match behaviour.problem() {
            Some(problem) => Err(problem),
            None => Ok(behaviour),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_not_given_keep_their_defaults() {
        let behaviour = Behaviour::parse(r#"{"flow_operations": "complete_in_response"}"#).unwrap();
        assert_eq!(behaviour.flow_operations, FlowOperations::CompleteInResponse);
        assert_eq!(behaviour.consistency_lag_ms, 0);
        assert_eq!(Behaviour::parse("{}").unwrap(), Behaviour::default());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_explained() {
        assert!(Behaviour::parse(r#"{"flow_ops": "x"}"#)
            .unwrap_err()
            .contains("flow_ops"));
        assert!(Behaviour::parse(r#"{"flow_operations": "eventually"}"#).is_err());
        let bad_status = r#"{"gateway": {"errors": {"500": 0.5}}}"#;
        assert!(Behaviour::parse(bad_status).unwrap_err().contains("500"));
        let no_rate = r#"{"org_limit": {"family": "users", "requests_per_second": 0}}"#;
        assert!(Behaviour::parse(no_rate).is_err());
    }
}
