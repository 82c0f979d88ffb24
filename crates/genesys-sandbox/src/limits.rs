//! The organization limits API and the `Limit` a 429 names (`ErrorBody.limit`).
//!
//! - `GET /api/v2/organizations/limits/namespaces` → the namespaces, paged
//!   (`{entities: [{name}], pageSize, pageNumber, total, pageCount}`; the SDK types it `object`)
//! - `GET /api/v2/organizations/limits/namespaces/{namespaceName}` → `LimitsEntityListing` of the
//!   org's effective values: what the sandbox enforces, so a worker that paces at them paces at
//!   the sandbox's limits
//! - `GET /api/v2/organizations/limits/namespaces/{namespaceName}/defaults` → Genesys' defaults
//!
//! A namespace outside the SDK's `Limit.namespace` enum (and not the org limit's) answers 404
//! `not.found`: the path names a resource that does not exist, as Genesys' JAX-RS services
//! answer a path parameter they cannot convert.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::api::{authorize, ApiError};
use super::behaviour::{Behaviour, OrgLimit};
use super::{RateLimit, Sandbox};

pub(crate) const PLATFORM_API: &str = "platform.api";
/// Requests per minute of a client-credentials token: the key public code matches in a 429.
pub(crate) const CLIENT_CREDENTIALS_TOKEN_RATE: &str = "client.credentials.token.rate.per.minute";
pub(crate) const TOKEN_RATE: &str = "token.rate.per.minute";
/// Genesys' default for both token keys: 300 requests a minute per token.
const DEFAULT_TOKEN_RATE_PER_MINUTE: i64 = 300;
/// Genesys pages listings by 25 unless asked otherwise.
const DEFAULT_PAGE_SIZE: usize = 25;

/// The SDK's `Limit.namespace` enum, in its order (`models/limit.py`).
#[rustfmt::skip]
pub(crate) const NAMESPACES: [&str; 95] = [
    "users.rules", "voice.transcription", "agent.assistant", "agentic.virtual.agents",
    "analytics.agents", "analytics.alerting", "analytics.data.extraction", "analytics",
    "analytics.realtime", "analytics.reporting.settings", "anomaly.detection", "architect",
    "audiohook", "audiohook.monitor", "audit", "auth.api", "authorization", "automation.testing",
    "bots", "bots.voice", "business.rules", "callback", "case.management", "cobrowse",
    "content.management", "conversation", "copilot", "dataactions", "datatables", "directory",
    "dsar", "email", "employee.engagement", "event.orchestration", "external.contacts",
    "external.events.data.ingestion", "gamification", "gcv", "gdpr", "groups", "guides",
    "historical.adherence", "infrastructureascode", "integrations", "intent.miner",
    "internal.messaging", "journey", "knowledge", "language.understanding", "learning",
    "limit.registry", "marketplace", "mcp.analytics.aggregates", "mcp", "media.communications",
    "messaging", "micro.frontend", "multi.org", "notifications", "onboarding",
    "organization.notice", "outbound", "platform.api", "predictive.routing", "presence", "quality",
    "recording", "response.management", "routing", "scim", "screen.monitoring", "sda", "search",
    "secondary.automation.testing", "skills", "social.media", "speech.and.text.analytics",
    "speech.integration", "supportability", "task.management", "telephony.configuration", "usage",
    "users", "web.deployments", "web.messaging", "webchat", "webhooks",
    "workforce.management.adherence", "workforce.management.agent.availability",
    "workforce.management.forecast", "workforce.management",
    "workforce.management.scheduling.preferences", "workforce.management.self.schedule",
    "workforce.management.shift.trading", "system",
];

/// The SDK's `Limit`: an entity of the limits API and `ErrorBody.limit` of a 429.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Limit {
    pub key: String,
    pub namespace: String,
    pub value: i64,
}

impl Limit {
    fn new(key: &str, namespace: &str, value: i64) -> Self {
        Self {
            key: key.into(),
            namespace: namespace.into(),
            value,
        }
    }

    /// The per-client rate limit as Genesys reports it: requests per minute of the token.
    pub(crate) fn client_rate(rate: RateLimit) -> Self {
        Self::new(
            CLIENT_CREDENTIALS_TOKEN_RATE,
            PLATFORM_API,
            i64::from(rate.requests_per_second) * 60,
        )
    }

    pub(crate) fn org(limit: &OrgLimit) -> Self {
        // Validated positive and finite; the cast saturates rather than wraps.
        let per_minute = (limit.requests_per_second * 60.0).round() as i64;
        Self::new(&limit.key, limit.namespace(), per_minute)
    }
}

/// The org's effective limits in `namespace`: only those the sandbox enforces.
fn effective(rate_limit: Option<RateLimit>, behaviour: &Behaviour, namespace: &str) -> Vec<Limit> {
    let mut limits = Vec::new();
    if namespace == PLATFORM_API {
        if let Some(rate) = rate_limit {
            // An unlimited sandbox lists no token limit: a worker pacing at it would otherwise
            // slow down for a limit that is not there.
            let client = Limit::client_rate(rate);
            let token = Limit::new(TOKEN_RATE, PLATFORM_API, client.value);
            limits.extend([client, token]);
        }
    }
    limits.extend(org_limit_in(behaviour, namespace));
    limits
}

/// Genesys' defaults in `namespace`. The org limit is played as one of Genesys' own (the
/// org-scoped limits being phased in), so its value is also its default.
fn defaults(behaviour: &Behaviour, namespace: &str) -> Vec<Limit> {
    let mut limits = Vec::new();
    if namespace == PLATFORM_API {
        for key in [CLIENT_CREDENTIALS_TOKEN_RATE, TOKEN_RATE] {
            limits.push(Limit::new(key, PLATFORM_API, DEFAULT_TOKEN_RATE_PER_MINUTE));
        }
    }
    limits.extend(org_limit_in(behaviour, namespace));
    limits
}

fn org_limit_in(behaviour: &Behaviour, namespace: &str) -> Option<Limit> {
    behaviour
        .org_limit
        .as_ref()
        .filter(|limit| limit.namespace() == namespace)
        .map(Limit::org)
}

/// Every namespace the API knows: the SDK's, and the org limit's if it names another.
fn namespaces(behaviour: &Behaviour) -> Vec<String> {
    let mut names: Vec<String> = NAMESPACES.iter().map(|name| name.to_string()).collect();
    if let Some(limit) = &behaviour.org_limit {
        if !names.iter().any(|name| name == limit.namespace()) {
            names.push(limit.namespace().to_string());
        }
    }
    names
}

fn known_namespace(behaviour: &Behaviour, namespace: &str) -> Result<(), ApiError> {
    if namespaces(behaviour).iter().any(|name| name == namespace) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "The limit namespace {namespace} was not found."
        )))
    }
}

fn listing(limits: Vec<Limit>) -> Json<Value> {
    Json(json!({"entities": limits}))
}

pub(crate) async fn effective_limits(
    State(sandbox): State<Arc<Sandbox>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let client = authorize(&sandbox, &headers)?;
    let behaviour = sandbox.behaviour();
    known_namespace(&behaviour, &namespace)?;
    // The token's own limit: its client's.
    let rate_limit = sandbox.world().rate_limit_of(&client);
    Ok(listing(effective(rate_limit, &behaviour, &namespace)))
}

pub(crate) async fn default_limits(
    State(sandbox): State<Arc<Sandbox>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    let behaviour = sandbox.behaviour();
    known_namespace(&behaviour, &namespace)?;
    Ok(listing(defaults(&behaviour, &namespace)))
}

fn page_parameter(query: &HashMap<String, String>, name: &str, default: usize) -> Result<usize, ApiError> {
    match query.get(name) {
        None => Ok(default),
        Some(raw) => {
            raw.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                ApiError::invalid_value(format!("{name} must be a positive integer, not {raw}"))
            })
        }
    }
}

pub(crate) async fn list_namespaces(
    State(sandbox): State<Arc<Sandbox>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&sandbox, &headers)?;
    let page_size = page_parameter(&query, "pageSize", DEFAULT_PAGE_SIZE)?;
    let page_number = page_parameter(&query, "pageNumber", 1)?;
    let names = namespaces(&sandbox.behaviour());
    let total = names.len();
    let entities: Vec<Value> = names
        .into_iter()
        .skip(page_size.saturating_mul(page_number - 1))
        .take(page_size)
        .map(|name| json!({"name": name}))
        .collect();
    Ok(Json(json!({
        "entities": entities,
        "pageSize": page_size,
        "pageNumber": page_number,
        "total": total,
        "pageCount": total.div_ceil(page_size),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org_limit(namespace: Option<&str>) -> OrgLimit {
        OrgLimit {
            family: "users".into(),
            requests_per_second: 2.5,
            burst: 1,
            other_integration_rps: 0.0,
            key: "org.requests.per.minute".into(),
            namespace: namespace.map(str::to_string),
        }
    }

    #[test]
    fn effective_token_limits_follow_the_rate_limit_and_vanish_without_one() {
        let rate = RateLimit {
            requests_per_second: 5,
            burst: 10,
        };
        let limits = effective(Some(rate), &Behaviour::default(), PLATFORM_API);
        let keys: Vec<(&str, i64)> = limits.iter().map(|l| (l.key.as_str(), l.value)).collect();
        assert_eq!(keys, [(CLIENT_CREDENTIALS_TOKEN_RATE, 300), (TOKEN_RATE, 300)]);
        assert!(effective(None, &Behaviour::default(), PLATFORM_API).is_empty());
        assert_eq!(defaults(&Behaviour::default(), PLATFORM_API).len(), 2);
    }

    #[test]
    fn the_org_limit_is_listed_under_its_namespace_per_minute() {
        let behaviour = Behaviour {
            org_limit: Some(org_limit(None)),
            ..Behaviour::default()
        };
        assert_eq!(
            effective(None, &behaviour, "users"),
            [Limit::new("org.requests.per.minute", "users", 150)]
        );
        assert!(effective(None, &behaviour, "presence").is_empty());
        let elsewhere = Behaviour {
            org_limit: Some(org_limit(Some("sandbox.custom"))),
            ..Behaviour::default()
        };
        assert!(known_namespace(&elsewhere, "sandbox.custom").is_ok());
        assert!(known_namespace(&Behaviour::default(), "sandbox.custom").is_err());
        assert!(known_namespace(&Behaviour::default(), "task.management").is_ok());
    }
}
