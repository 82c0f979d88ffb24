//! What every Genesys request passes through, in the order the real service applies it:
//! counting (stats), the per-OAuth-client rate limit (429 with `Retry-After`), then the faults
//! set through the control API (latency, 5xx, or a response dropped after the change was made).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::{bearer_token, ApiError};
use super::faults::Injection;
use super::Sandbox;

/// The panic payload that ends a connection without a response: the connection task unwinds
/// and the socket closes, as when a server dies after applying a change. `resume_unwind` skips
/// the panic hook, so nothing is printed.
#[derive(Debug)]
struct DroppedResponse;

pub(crate) async fn gateway(State(sandbox): State<Arc<Sandbox>>, request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => format!("{} {}", request.method(), path.as_str()),
        None => format!("{} (unmatched)", request.method()),
    };
    if request.uri().path().starts_with("/api/") {
        let client = bearer_token(request.headers()).and_then(|token| sandbox.world().client_of(token));
        // Unauthenticated requests go on to get their 401 from the handler.
        if let Some(wait) = client.and_then(|client| sandbox.world().throttle(&client)) {
            let response = too_many_requests(wait);
            sandbox.world().stats.count(route, 429);
            return response;
        }
    }
    let (latency_ms, injection) = sandbox.world().faults.draw(&route);
    if latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    }
    match injection {
        Injection::Serve => {
            let response = next.run(request).await;
            sandbox.world().stats.count(route, response.status().as_u16());
            response
        }
        Injection::Error(status) => {
            sandbox.world().stats.count(route, status);
            injected_error(status).into_response()
        }
        Injection::DropResponse => {
            let response = next.run(request).await;
            {
                let mut world = sandbox.world();
                world.stats.count(route, response.status().as_u16());
                world.stats.dropped_responses += 1;
            }
            std::panic::resume_unwind(Box::new(DroppedResponse))
        }
    }
}

fn injected_error(status: u16) -> ApiError {
    let (status, code, message) = match status {
        500 => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal.server.error",
            "The server encountered an unexpected error.",
        ),
        502 => (
            StatusCode::BAD_GATEWAY,
            "bad.gateway",
            "The server received an invalid response from an upstream service.",
        ),
        504 => (
            StatusCode::GATEWAY_TIMEOUT,
            "request.timeout",
            "The request timed out.",
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "service.unavailable",
            "The service is currently unavailable.",
        ),
    };
    ApiError::new(status, code, message)
}

/// Genesys' normalised 429 (since November 2021): integer `Retry-After` seconds.
fn too_many_requests(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too.many.requests.retry.after",
        format!("Rate limit exceeded the maximum. Retry the request in [{seconds}] seconds"),
    )
    .into_response();
    response
        .headers_mut()
        .insert("Retry-After", HeaderValue::from(seconds));
    response
}
