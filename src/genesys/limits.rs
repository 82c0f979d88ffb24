//! Genesys' own account of its limits: the `limit` a 429 names, and the org's effective token
//! limit from the organization limits API, which the budget paces at when it is below the
//! configuration (`GET /api/v2/organizations/limits/namespaces/platform.api`).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{GenesysClient, GenesysError, LaneClient};
use crate::lane::Lane;
use crate::limit::Budget;

/// The limits that are this OAuth client's token's own. Genesys' 429s for them name one of
/// these keys; any other key (an org-wide limit on a route family, a per-user limit) is a limit
/// other integrations spend too.
const TOKEN_LIMITS: [&str; 2] = [
    "client.credentials.token.rate.per.minute",
    "token.rate.per.minute",
];

/// The namespace of the token limits.
const PLATFORM_NAMESPACE: &str = "platform.api";

/// `Limit`, as in a 429's `ErrorBody.limit` and the limits API's entities.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Limit {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub value: Option<i64>,
}

impl Limit {
    pub fn is_the_clients_own(&self) -> bool {
        TOKEN_LIMITS.contains(&self.key.as_str())
    }
}

#[derive(Debug, Deserialize)]
struct LimitsListing {
    #[serde(default)]
    entities: Vec<Limit>,
}

/// Requests per minute Genesys allows this client's token (the lowest token limit the org
/// lists), or `None` when it lists none.
///
/// # Errors
/// When the limits API cannot be read (permissions, network).
pub async fn allowed_per_minute(genesys: LaneClient<'_>) -> Result<Option<u32>, GenesysError> {
    let path = format!("/api/v2/organizations/limits/namespaces/{PLATFORM_NAMESPACE}");
    let listing = genesys.get::<LimitsListing>(&path).await?.body;
    Ok(listing
        .entities
        .iter()
        .filter(|limit| limit.is_the_clients_own())
        .filter_map(|limit| limit.value)
        .filter(|value| *value > 0)
        .min()
        .map(|value| u32::try_from(value).unwrap_or(u32::MAX)))
}

/// Reads the org's effective token limit now and every `every`, until `cancel`, and paces the
/// budget at it when it is below the configuration. Says so in the log once per change. The
/// limits are read as the budget's own OAuth client ([`Budget::client`]) when it is one of the
/// pool's: each client of a pool follows its own (one task each).
pub async fn follow_allowed_rate(
    genesys: Arc<GenesysClient>,
    budget: Arc<Budget>,
    configured_rps: u32,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut unreadable_logged = false;
    let client = budget.client();
    loop {
        // A read now and then, in the single jobs' lane.
        let lane = genesys.in_lane(Lane::Single);
        let lane = lane.pinned_to_client(client).unwrap_or(lane);
        match allowed_per_minute(lane).await {
            Ok(allowed) => {
                unreadable_logged = false;
                if budget.set_allowed_per_minute(allowed) {
                    let pace = budget.per_second();
                    if pace < f64::from(configured_rps) {
                        tracing::warn!(
                            client,
                            allowed_per_minute = allowed,
                            configured_per_second = configured_rps,
                            pacing_per_second = pace,
                            "Genesys allows this OAuth client less than GENESYS_RATE_LIMIT_RPS; pacing at what it allows."
                        );
                    } else {
                        tracing::info!(
                            client,
                            allowed_per_minute = allowed,
                            pacing_per_second = pace,
                            "Pacing at GENESYS_RATE_LIMIT_RPS again."
                        );
                    }
                }
            }
            Err(err) if !unreadable_logged => {
                unreadable_logged = true;
                tracing::info!(client, error.message = %err, "Cannot read the org's rate limits; pacing at GENESYS_RATE_LIMIT_RPS.");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
