//! Every answer the proxy makes itself, classified by who is at fault (client 4xx, upstream 502/504, internal
//! 500), built in one place with an OCI-style JSON error body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::forward::ProxyBody;

/// An answer the proxy gives without (or instead of) the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The request target is malformed or tries to escape its path (`..`, `//`, encoded dots, absolute form).
    BadRequest(&'static str),
    /// Credentials are missing or wrong.
    Unauthorized,
    /// The user is authenticated but the access rules do not let them do this (403 `DENIED`, with this
    /// message naming the action and the repository).
    Denied(String),
    /// Too many authentication attempts from this client: retry after this many seconds (429).
    Throttled(u64),
    /// Every password-check slot stayed busy for the longest wait (503, retry after a second).
    Busy,
    /// More header fields than `max_headers` (HTTP/2; the HTTP/1.1 parser answers this itself).
    TooManyHeaders,
    /// No such route on the proxy.
    NotFound,
    /// The client's user agent is refused by a rule.
    ClientRefused,
    /// The request body is larger than `max_body_size`.
    PayloadTooLarge,
    /// The client broke off its request body (connection closed or reset mid-body).
    ClientAborted,
    /// The client stopped sending its request body for longer than the read timeout.
    ClientTimeout,
    /// No upstream could be reached, or it broke the exchange.
    UpstreamUnavailable,
    /// The upstream did not answer within the read timeout.
    UpstreamTimeout,
    /// A bug or a resource problem in the proxy.
    Internal,
}

impl ProxyError {
    /// Status, OCI error code and message.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ProxyError::BadRequest(m) => (StatusCode::BAD_REQUEST, "UNSUPPORTED", m),
            ProxyError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required",
            ),
            ProxyError::Denied(_) => (
                StatusCode::FORBIDDEN,
                "DENIED",
                "requested access to the resource is denied",
            ),
            ProxyError::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND", "not found"),
            ProxyError::Throttled(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                "too many authentication attempts from this address; try again later",
            ),
            ProxyError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "too many logins are being checked; try again shortly",
            ),
            ProxyError::TooManyHeaders => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "UNSUPPORTED",
                "too many header fields",
            ),
            ProxyError::ClientRefused => (
                StatusCode::NOT_FOUND,
                "UNSUPPORTED",
                "this client version is not supported; upgrade it",
            ),
            ProxyError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "SIZE_INVALID",
                "request body larger than the proxy accepts",
            ),
            ProxyError::ClientAborted => (
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                "the request body ended before it was complete",
            ),
            ProxyError::ClientTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "BLOB_UPLOAD_INVALID",
                "the request body stopped arriving",
            ),
            ProxyError::UpstreamUnavailable => (
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                "the registry behind the proxy is unavailable",
            ),
            ProxyError::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "UNAVAILABLE",
                "the registry behind the proxy did not answer in time",
            ),
            ProxyError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "internal proxy error",
            ),
        }
    }

    /// The HTTP response. `challenge` is the `WWW-Authenticate` value of a 401.
    pub fn response(&self, challenge: &str) -> Response<ProxyBody> {
        let (status, code, message) = self.parts();
        let message = match self {
            ProxyError::Denied(m) => m.as_str(),
            _ => message,
        };
        let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
        let mut resp = json_response(status, &body);
        let h = resp.headers_mut();
        match self {
            ProxyError::Throttled(secs) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            ProxyError::Busy => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if *self == ProxyError::Unauthorized {
            if let Ok(v) = HeaderValue::from_str(challenge) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}

/// A small JSON answer made by the proxy itself (health, local ping, errors).
pub fn json_response(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    // Explicit, so that the answer to a HEAD (sent without its body) still says how long the GET's would be.
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    resp
}
