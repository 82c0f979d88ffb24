//! What every Genesys request passes through, in the order the real service applies it:
//! counting (stats), the rate limits (429 with `Retry-After` and the `limit` hit), then the
//! faults set through the control API and the behaviour's gateway errors (latency, 5xx with a
//! Genesys, HTML or empty body, a connection reset before any answer, or a response dropped
//! after the change was made).
//!
//! The rate limits, for authenticated `/api/` requests: the per-OAuth-client limit first, then
//! the behaviour's org limit when the path's first segment after `/api/v2/` is its family. A
//! request refused by one spends nothing of the other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::{bearer_token, ApiError};
use super::behaviour::{Behaviour, ErrorBodyKind};
use super::faults::Injection;
use super::state::Refusal;
use super::Sandbox;

/// The panic payload that ends a connection without a response: the connection task unwinds
/// and the socket closes, as when a server dies after applying a change, or a load balancer
/// drops a connection. `resume_unwind` skips the panic hook, so nothing is printed.
#[derive(Debug)]
struct ClosedConnection;

pub(crate) async fn gateway(State(sandbox): State<Arc<Sandbox>>, request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => format!("{} {}", request.method(), path.as_str()),
        None => format!("{} (unmatched)", request.method()),
    };
    let behaviour = request
        .uri()
        .path()
        .starts_with("/api/")
        .then(|| sandbox.behaviour());
    if let Some(behaviour) = &behaviour {
        let client = bearer_token(request.headers()).and_then(|token| sandbox.world().client_of(token));
        // Unauthenticated requests go on to get their 401 from the handler.
        if let Some(client) = client {
            let admitted = admit(&sandbox, behaviour, &client, request.uri().path());
            sandbox.world().stats.count_client(&client, admitted.is_err());
            if let Err(refusal) = admitted {
                sandbox.world().stats.count_throttled(route, &refusal.limit);
                return too_many_requests(refusal);
            }
        }
    }
    let gateway_errors = behaviour.and_then(|behaviour| behaviour.gateway);
    let (latency_ms, injection) = sandbox.world().faults.draw(&route, gateway_errors.as_ref());
    if latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    }
    match injection {
        Injection::Serve => {
            let response = next.run(request).await;
            sandbox.world().stats.count(route, response.status().as_u16());
            response
        }
        Injection::Error(status, body) => {
            sandbox.world().stats.count(route, status);
            injected_error(status, body)
        }
        Injection::DropResponse => {
            let response = next.run(request).await;
            {
                let mut world = sandbox.world();
                world.stats.count(route, response.status().as_u16());
                world.stats.dropped_responses += 1;
            }
            std::panic::resume_unwind(Box::new(ClosedConnection))
        }
        Injection::Reset => {
            sandbox.world().stats.reset_connections += 1;
            std::panic::resume_unwind(Box::new(ClosedConnection))
        }
    }
}

fn admit(sandbox: &Sandbox, behaviour: &Behaviour, client: &str, path: &str) -> Result<(), Refusal> {
    let org_limit = behaviour.org_limit.as_ref();
    let applies = org_limit.is_some_and(|limit| route_family(path) == Some(limit.family.as_str()));
    sandbox.world().admit(client, org_limit, applies, Instant::now())
}

/// The first path segment after `/api/v2/`: `users` for `/api/v2/users/{id}/presences/purecloud`.
fn route_family(path: &str) -> Option<&str> {
    path.strip_prefix("/api/v2/")?.split('/').next()
}

fn injected_error(status: u16, body: ErrorBodyKind) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match body {
        ErrorBodyKind::Genesys => genesys_error(status).into_response(),
        // What a load balancer in front of the API serves: no correlation id, no JSON.
        ErrorBodyKind::Html => {
            let title = format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("Error")
            );
            let page = format!(
                "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n</body>\r\n</html>\r\n"
            );
            (status, [(header::CONTENT_TYPE, "text/html")], page).into_response()
        }
        ErrorBodyKind::Empty => status.into_response(),
    }
}

fn genesys_error(status: StatusCode) -> ApiError {
    let (code, message) = match status {
        StatusCode::INTERNAL_SERVER_ERROR => (
            "internal.server.error",
            "The server encountered an unexpected error.",
        ),
        StatusCode::BAD_GATEWAY => (
            "bad.gateway",
            "The server received an invalid response from an upstream service.",
        ),
        StatusCode::GATEWAY_TIMEOUT => ("request.timeout", "The request timed out."),
        _ => ("service.unavailable", "The service is currently unavailable."),
    };
    ApiError::new(status, code, message)
}

/// Whole seconds until a token would be there, rounded up; while another integration spends
/// everything no time is right, so 1 (try again soon).
fn too_many_requests(refusal: Refusal) -> Response {
    let seconds = refusal
        .wait
        .map_or(1, |wait| wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
    ApiError::too_many_requests(seconds, refusal.limit).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_family_is_the_first_segment_after_api_v2() {
        assert_eq!(
            route_family("/api/v2/users/abc/presences/purecloud"),
            Some("users")
        );
        assert_eq!(route_family("/api/v2/users/presences/bulk"), Some("users"));
        assert_eq!(route_family("/api/v2/flows"), Some("flows"));
        assert_eq!(route_family("/oauth/token"), None);
    }
}
