//! The Genesys error body and bearer-token checks shared by the API handlers.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use uuid::Uuid;

use super::limits::Limit;
use super::Sandbox;

/// An API error, rendered as Genesys' `ErrorBody` with an `ININ-Correlation-Id` header equal to
/// its `contextId`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// `ErrorBody.limit`: the limit a 429 names.
    limit: Option<Limit>,
    /// The `Retry-After` header, in whole seconds.
    retry_after_secs: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            limit: None,
            retry_after_secs: None,
        }
    }

    /// Genesys' normalised 429 (since November 2021): an integer `Retry-After` (at least 1) and
    /// the limit that was hit.
    pub(crate) fn too_many_requests(retry_after_secs: u64, limit: Limit) -> Self {
        let seconds = retry_after_secs.max(1);
        Self {
            limit: Some(limit),
            retry_after_secs: Some(seconds),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too.many.requests.retry.after",
                format!("Rate limit exceeded the maximum. Retry the request in [{seconds}] seconds"),
            )
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad.request", message)
    }

    pub(crate) fn invalid_value(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid.value", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not.found", message)
    }

    /// A Task Management validation failure: 409 with a `pre.check.*` code, as the API does.
    pub(crate) fn pre_check(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let context_id = Uuid::new_v4().to_string();
        let mut body = json!({
            "message": self.message,
            "code": self.code,
            "status": self.status.as_u16(),
            "contextId": context_id,
            "details": [],
            "errors": [],
        });
        if let Some(limit) = &self.limit {
            body["limit"] = json!(limit);
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Ok(value) = HeaderValue::from_str(&context_id) {
            response.headers_mut().insert("ININ-Correlation-Id", value);
        }
        if let Some(seconds) = self.retry_after_secs {
            response
                .headers_mut()
                .insert("Retry-After", HeaderValue::from(seconds));
        }
        response
    }
}

/// Any path the sandbox does not serve answers as the API does for an unknown resource.
pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("The requested resource was not found.")
}

/// The bearer token of a request, if it carries one.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

/// The OAuth client behind the request's bearer token.
pub(crate) fn authorize(sandbox: &Sandbox, headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(token) = bearer_token(headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication.required",
            "No authentication bearer token specified in authorization header.",
        ));
    };
    sandbox.world().client_of(token).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad.credentials",
            "Invalid login credentials.",
        )
    })
}

/// Parses a path id the way the API does: anything that is not a known id is "not found".
pub(crate) fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(format!("The {what} {raw} was not found.")))
}

/// Reads a JSON body, answering malformed input with Genesys' 400.
pub(crate) fn json_body(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The request could not be understood: {e}")))
}
