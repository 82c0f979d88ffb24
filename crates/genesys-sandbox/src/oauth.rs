//! `POST /oauth/token`: the client-credentials grant of the login host.
//!
//! Basic auth with the client id and secret, form body `grant_type=client_credentials`; errors
//! use the OAuth-style body (`error`, `description`, `error_description`), not `ErrorBody`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::json;

use super::Sandbox;

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "description": description, "error_description": description})),
    )
        .into_response()
}

pub(crate) async fn token(State(sandbox): State<Arc<Sandbox>>, headers: HeaderMap, body: Bytes) -> Response {
    let grant_type = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v.into_owned());
    if grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let credentials = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some((client_id, secret)) = credentials.as_deref().and_then(|c| c.split_once(':')) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client credentials are required",
        );
    };
    let known = sandbox
        .config()
        .clients
        .iter()
        .any(|(id, s)| id == client_id && s == secret);
    if !known {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client not found");
    }
    let ttl = sandbox.config().token_ttl_secs;
    let access_token = sandbox.world().issue_token(client_id, Duration::from_secs(ttl));
    Json(json!({"access_token": access_token, "token_type": "bearer", "expires_in": ttl})).into_response()
}
