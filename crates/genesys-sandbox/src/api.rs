//! The Genesys error body and bearer-token checks shared by the API handlers.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
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

/// The checks of a request on one resource, in the API's order: the bearer token (401), then
/// the path's id (404). Gives the client and the id.
pub(crate) fn authorize_on(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    raw_id: &str,
    what: &str,
) -> Result<(String, Uuid), ApiError> {
    let client_id = authorize(sandbox, headers)?;
    Ok((client_id, parse_id(raw_id, what)?))
}

/// The values of query parameter `name`, given repeated (`id=a&id=b`, as the SDK's collection
/// format `multi` sends lists) or comma-separated (`id=a,b`, as the Python SDK sends them), or
/// both; empty values are dropped.
pub(crate) fn query_list(query: Option<&str>, name: &str) -> Vec<String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == name)
        .flat_map(|(_, value)| {
            value
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The last value of query parameter `name`.
pub(crate) fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
        .last()
}

/// A page of a listing: `pageNumber` (from 1) and `pageSize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    pub number: usize,
    pub size: usize,
}

impl Page {
    /// `pageNumber` and `pageSize` of the query (defaults 1 and `default_size`); a size above
    /// `max_size`, below 1 or not a number answers 400.
    pub(crate) fn from_query(
        query: Option<&str>,
        default_size: usize,
        max_size: usize,
    ) -> Result<Self, ApiError> {
        let number = |name: &str, default: usize| match query_value(query, name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("{name} must be a positive integer, got {raw:?}."))
                }),
        };
        let page = Self {
            number: number("pageNumber", 1)?,
            size: number("pageSize", default_size)?,
        };
        if page.size > max_size {
            return Err(ApiError::bad_request(format!(
                "pageSize must be at most {max_size}, got {}.",
                page.size
            )));
        }
        Ok(page)
    }

    /// The items of this page.
    pub(crate) fn of<T>(self, items: impl IntoIterator<Item = T>) -> impl Iterator<Item = T> {
        items
            .into_iter()
            .skip((self.number - 1).saturating_mul(self.size))
            .take(self.size)
    }

    /// A listing's body (`…EntityListing`): `entities` of `total`, with `pageSize`,
    /// `pageNumber`, `total`, `pageCount`, and `selfUri`, `firstUri`, `lastUri`, `nextUri` and
    /// `previousUri` (the last two when there is such a page) of `path` with `query` (`a=b&…`,
    /// or empty) before the paging parameters.
    pub(crate) fn listing(self, entities: Vec<Value>, total: usize, path: &str, query: &str) -> Value {
        let page_count = total.div_ceil(self.size);
        let uri = |number: usize| {
            let prefix = if query.is_empty() {
                String::new()
            } else {
                format!("{query}&")
            };
            format!("{path}?{prefix}pageSize={}&pageNumber={number}", self.size)
        };
        let mut body = json!({
            "entities": entities,
            "pageSize": self.size,
            "pageNumber": self.number,
            "total": total,
            "pageCount": page_count,
            "selfUri": uri(self.number),
            "firstUri": uri(1),
            "lastUri": uri(page_count.max(1)),
        });
        if self.number < page_count {
            body["nextUri"] = json!(uri(self.number + 1));
        }
        if self.number > 1 {
            body["previousUri"] = json!(uri((self.number - 1).min(page_count.max(1))));
        }
        body
    }
}

/// Reads a JSON body, answering malformed input with Genesys' 400.
pub(crate) fn json_body(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The request could not be understood: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parameters_may_be_repeated_comma_separated_or_both() {
        let query = Some("id=a&expand=presence&id=b,c&id=&id=%20d%20,");
        assert_eq!(query_list(query, "id"), ["a", "b", "c", "d"]);
        assert_eq!(query_list(query, "expand"), ["presence"]);
        assert!(query_list(None, "id").is_empty());
    }

    #[test]
    fn a_listing_pages_and_links_its_neighbours() {
        let page = Page::from_query(Some("pageSize=2&pageNumber=2"), 25, 10).unwrap();
        assert_eq!(page.of(1..=5).collect::<Vec<_>>(), [3, 4]);
        let body = page.listing(Vec::new(), 5, "/api/v2/x", "a=b");
        assert_eq!(body["pageCount"], 3);
        assert_eq!(body["selfUri"], "/api/v2/x?a=b&pageSize=2&pageNumber=2");
        assert_eq!(body["previousUri"], "/api/v2/x?a=b&pageSize=2&pageNumber=1");
        assert_eq!(body["nextUri"], "/api/v2/x?a=b&pageSize=2&pageNumber=3");
        let empty = Page::from_query(None, 25, 500)
            .unwrap()
            .listing(Vec::new(), 0, "/api/v2/x", "");
        assert_eq!(
            (&empty["pageCount"], &empty["lastUri"]),
            (&json!(0), &json!("/api/v2/x?pageSize=25&pageNumber=1"))
        );
        assert!(empty.get("nextUri").is_none() && empty.get("previousUri").is_none());
        assert!(Page::from_query(Some("pageSize=11"), 25, 10).is_err());
        assert!(Page::from_query(Some("pageNumber=0"), 25, 10).is_err());
    }
}
