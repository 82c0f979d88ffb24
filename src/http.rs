//! What the worker's HTTP clients (the Genesys client, the relay) read alike from an answer.

use std::time::Duration;

/// A response's `Retry-After`, when given in seconds (the form Genesys and most webhooks use).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}
