//! problem+json for every error response, including the ones axum and tower write.

use std::any::Any;

use ::http::header::{CONTENT_TYPE, HeaderValue};
use ::http::{HeaderMap, StatusCode};
use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{CorrelationId, ErrorKind, FieldError, PROBLEM_CONTENT_TYPE, Problem};

/// The most of a plain-text error body kept as the problem's `detail`.
const MAX_DETAIL: usize = 512;

/// The problem for a bare `status` (with `detail` when there is one to tell), coded as
/// the portable kind that stands for it where one does (`not_found`, `invalid_input`,
/// `rate_limited`), else after the status (`method_not_allowed`, `payload_too_large`).
pub fn status_problem(status: StatusCode, detail: Option<String>) -> Problem {
    let kind = match status.as_u16() {
        400 | 422 => Some(ErrorKind::InvalidInput),
        401 => Some(ErrorKind::Unauthenticated),
        403 => Some(ErrorKind::PermissionDenied),
        404 => Some(ErrorKind::NotFound),
        409 => Some(ErrorKind::Conflict),
        429 => Some(ErrorKind::RateLimited),
        500 => Some(ErrorKind::Internal),
        501 => Some(ErrorKind::Unsupported),
        503 => Some(ErrorKind::Unavailable),
        504 => Some(ErrorKind::Timeout),
        _ => None,
    };
    let reason = status.canonical_reason().unwrap_or("Error");
    let (code, title) = match kind {
        Some(k) => (k.code().to_owned(), k.title().to_owned()),
        None => (reason.to_ascii_lowercase().replace([' ', '-'], "_"), reason.to_owned()),
    };
    let detail = if status.is_server_error() { None } else { detail.filter(|d| !d.is_empty()) };
    let details = (kind == Some(ErrorKind::InvalidInput))
        .then(|| vec![FieldError::new("request", detail.clone().unwrap_or_else(|| reason.to_owned()))]);
    Problem {
        type_uri: format!("{}{code}", crate::DEFAULT_TYPE_BASE),
        title,
        status: status.as_u16(),
        detail,
        code,
        correlation_id: CorrelationId::current_or_new().to_string(),
        details,
        instance: None,
        retry_after: None,
    }
}

/// Whether a response's body is a document of its own (JSON of any kind), which is left
/// as it is; plain text and empty bodies are rewritten.
fn is_document(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/") && (t.contains("json") || t.contains("+json")))
}

/// A middleware (`axum::middleware::from_fn`) that turns every error response that is not
/// a JSON document (axum's plain-text rejections, empty 404 and 405, the timeout's 408,
/// the body limit's 413) into problem+json: the status kept, the text as `detail` (for
/// client errors), `Allow`, `Retry-After` and the other headers kept.
pub async fn problem_responses(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_document(response.headers()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let detail = std::str::from_utf8(&text).ok().map(str::trim).filter(|t| !t.is_empty()).map(|t| {
        let mut end = t.len().min(MAX_DETAIL);
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        t[..end].to_owned()
    });
    let problem = status_problem(status, detail);
    parts.headers.remove(::http::header::CONTENT_LENGTH);
    parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
    if let Ok(v) = HeaderValue::from_str(&problem.correlation_id) {
        parts.headers.insert(crate::CORRELATION_ID_HEADER, v);
    }
    Response::from_parts(parts, Body::from(problem.to_json()))
}

/// The fallback for routes nobody serves: a problem 404.
pub(super) async fn not_found(request: Request) -> Response {
    let detail = format!("no route for {} {}", request.method(), request.uri().path());
    status_problem(StatusCode::NOT_FOUND, Some(detail)).into_response()
}

/// What a panicking handler answers: a problem 500 with no detail; the panic is logged.
pub(super) fn panicked(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(target: "platform::http", panic = message, "a handler panicked");
    status_problem(StatusCode::INTERNAL_SERVER_ERROR, None).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_get_codes() {
        let p = status_problem(StatusCode::METHOD_NOT_ALLOWED, Some("x".into()));
        assert_eq!((p.code.as_str(), p.title.as_str(), p.status), ("method_not_allowed", "Method Not Allowed", 405));
        assert_eq!(status_problem(StatusCode::PAYLOAD_TOO_LARGE, None).code, "payload_too_large");
        assert_eq!(status_problem(StatusCode::NOT_FOUND, None).code, "not_found");
        let bad = status_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("missing field `title`".into()));
        assert_eq!(bad.code, "invalid_input");
        assert_eq!(bad.details.unwrap()[0].reason, "missing field `title`");
        assert_eq!(status_problem(StatusCode::INTERNAL_SERVER_ERROR, Some("secret".into())).detail, None);
    }
}
