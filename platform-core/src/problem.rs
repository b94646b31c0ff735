//! RFC 9457 problem details, built from an [`Error`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{CorrelationId, Error, ErrorKind, FieldError};

/// The media type of a problem document.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Where problem `type` URIs point unless [`Problem::with_type_base`] says otherwise.
pub const DEFAULT_TYPE_BASE: &str = "/problems/";

/// An RFC 9457 problem document.
///
/// ```
/// use platform_core::{Error, Problem};
/// let p = Problem::from_error(&Error::not_found("todo 42 does not exist"));
/// assert_eq!(p.status, 404);
/// assert_eq!(p.code, "not_found");
/// assert_eq!(p.detail.as_deref(), Some("todo 42 does not exist"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub struct Problem {
    /// A URI naming the problem type (`/problems/not_found`).
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What happened this time. Internal errors carry no detail, so nothing internal leaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The portable error code (`not_found`).
    pub code: String,
    /// The request's correlation id; always present.
    pub correlation_id: String,
    /// Field-level complaints; always present for `invalid_input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<FieldError>>,
    /// A URI for this occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// How long to wait before retrying; sent as the `Retry-After` header, not in the body.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

/// The HTTP status that stands for `kind`.
pub const fn http_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::NotFound => 404,
        ErrorKind::AlreadyExists | ErrorKind::Conflict => 409,
        ErrorKind::InvalidInput => 400,
        ErrorKind::Unauthenticated => 401,
        ErrorKind::PermissionDenied => 403,
        ErrorKind::RateLimited => 429,
        ErrorKind::Unavailable => 503,
        ErrorKind::Timeout => 504,
        ErrorKind::Cancelled => 499,
        ErrorKind::Unsupported => 501,
        _ => 500,
    }
}

impl Problem {
    /// A problem for `error`, with the current task's correlation id (or a fresh one).
    pub fn from_error(error: &Error) -> Self {
        Self::from_error_with(error, &CorrelationId::current_or_new())
    }

    /// A problem for `error` with the given correlation id.
    pub fn from_error_with(error: &Error, correlation_id: &CorrelationId) -> Self {
        let kind = error.kind();
        let detail = match kind {
            ErrorKind::Internal => None,
            _ if error.message().is_empty() => None,
            _ => Some(error.message().to_owned()),
        };
        let details = match kind {
            ErrorKind::InvalidInput => Some(error.details().to_vec()),
            _ if error.details().is_empty() => None,
            _ => Some(error.details().to_vec()),
        };
        let retry_after = match kind {
            ErrorKind::RateLimited | ErrorKind::Unavailable => error.retry_after(),
            _ => None,
        };
        Self {
            type_uri: format!("{DEFAULT_TYPE_BASE}{}", kind.code()),
            title: kind.title().to_owned(),
            status: http_status(kind),
            detail,
            code: kind.code().to_owned(),
            correlation_id: correlation_id.to_string(),
            details,
            instance: None,
            retry_after,
        }
    }

    /// Rebases the `type` URI (`https://errors.example.com/problems/` + code).
    #[must_use]
    pub fn with_type_base(mut self, base: &str) -> Self {
        self.type_uri = format!("{base}{}", self.code);
        self
    }

    /// Sets the `instance` URI.
    #[must_use]
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// The `Retry-After` header value in whole seconds (rounded up), when there is one.
    pub fn retry_after_header(&self) -> Option<String> {
        self.retry_after.map(|d| d.as_secs_f64().ceil().max(1.0).to_string())
    }

    /// The problem as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"status\":500}"))
    }

    /// The status as an `http::StatusCode`.
    #[cfg(feature = "http")]
    pub fn status_code(&self) -> http::StatusCode {
        http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The headers to send with the problem: content type, correlation id, `Retry-After`.
    #[cfg(feature = "http")]
    pub fn headers(&self) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        if let Ok(v) = http::HeaderValue::from_str(&self.correlation_id) {
            h.insert(crate::CORRELATION_ID_HEADER, v);
        }
        if let Some(v) = self.retry_after_header().and_then(|s| http::HeaderValue::from_str(&s).ok()) {
            h.insert(http::header::RETRY_AFTER, v);
        }
        h
    }
}

impl From<&Error> for Problem {
    fn from(e: &Error) -> Self {
        Self::from_error(e)
    }
}

#[cfg(feature = "http")]
impl axum::response::IntoResponse for Problem {
    fn into_response(self) -> axum::response::Response {
        let mut res = (self.status_code(), self.to_json()).into_response();
        res.headers_mut().extend(self.headers());
        res
    }
}

#[cfg(feature = "http")]
impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        if self.kind() == ErrorKind::Internal {
            tracing::error!(error = ?self, "internal error");
        }
        Problem::from_error(&self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let id = CorrelationId::parse("c-1").unwrap();
        let p = Problem::from_error_with(&Error::not_found("todo 42 does not exist"), &id);
        let json: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"/problems/not_found","title":"Not found","status":404,
                "detail":"todo 42 does not exist","code":"not_found","correlation_id":"c-1"})
        );
        let back: Problem = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn status_per_kind() {
        let expected = [404, 409, 409, 400, 401, 403, 429, 503, 504, 499, 501, 500];
        for (kind, status) in ErrorKind::ALL.into_iter().zip(expected) {
            let p = Problem::from_error(&Error::new(kind, "x"));
            assert_eq!(p.status, status, "{kind:?}");
            assert_eq!(p.code, kind.code());
            assert!(!p.correlation_id.is_empty());
        }
    }

    #[test]
    fn invalid_input_always_has_details() {
        let p = Problem::from_error(&Error::invalid_input("bad"));
        assert_eq!(p.details, Some(vec![]));
        assert!(p.to_json().contains("\"details\":[]"));
        let p = Problem::from_error(&Error::invalid_input("bad").with_detail("email", "not an address"));
        assert_eq!(p.details.unwrap()[0], FieldError::new("email", "not an address"));
    }

    #[test]
    fn internal_detail_does_not_leak() {
        let p = Problem::from_error(&Error::internal("password=hunter2 in /etc/x"));
        assert_eq!(p.detail, None);
        assert!(!p.to_json().contains("hunter2"));
    }

    #[test]
    fn retry_after_for_rate_limited() {
        let p = Problem::from_error(
            &Error::new(ErrorKind::RateLimited, "slow down").with_retry_after(Duration::from_millis(1500)),
        );
        assert_eq!(p.retry_after_header().as_deref(), Some("2"));
        assert!(!p.to_json().contains("retry_after"));
        let p = Problem::from_error(&Error::not_found("x").with_retry_after(Duration::from_secs(1)));
        assert_eq!(p.retry_after_header(), None);
    }

    #[tokio::test]
    async fn uses_current_correlation_id() {
        let id = CorrelationId::parse("req-7").unwrap();
        let p = crate::with_correlation(id, async { Problem::from_error(&Error::conflict("stale")) }).await;
        assert_eq!(p.correlation_id, "req-7");
        assert_eq!(
            p.clone().with_type_base("https://errors.example.com/p/").type_uri,
            "https://errors.example.com/p/conflict"
        );
        assert_eq!(p.with_instance("/todos/1").instance.as_deref(), Some("/todos/1"));
    }

    #[cfg(feature = "http")]
    #[test]
    fn http_headers() {
        let p = Problem::from_error(&Error::new(ErrorKind::RateLimited, "x").with_retry_after(Duration::from_secs(3)));
        assert_eq!(p.status_code(), http::StatusCode::TOO_MANY_REQUESTS);
        let h = p.headers();
        assert_eq!(h[http::header::CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
        assert_eq!(h[http::header::RETRY_AFTER], "3");
        assert_eq!(h[crate::CORRELATION_ID_HEADER], p.correlation_id.as_str());
    }

    #[cfg(feature = "http")]
    #[test]
    fn axum_response() {
        use axum::response::IntoResponse;
        let res = Error::not_found("nope").into_response();
        assert_eq!(res.status(), http::StatusCode::NOT_FOUND);
        assert_eq!(res.headers()[http::header::CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
        let report = crate::HealthReport::from_checks(vec![]);
        assert_eq!(report.into_response().status(), http::StatusCode::OK);
    }
}
