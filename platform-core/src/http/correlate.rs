//! The correlation id and trace context of a request, and its span.

use std::time::Instant;

use ::http::HeaderValue;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use crate::{CORRELATION_ID_HEADER, CorrelationId, TRACEPARENT_HEADER, is_valid_traceparent};

/// The other header a correlation id is taken from (`X-Request-Id`, as proxies and
/// tower-http's request-id layer write it).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A middleware (`axum::middleware::from_fn`) that runs the request with its correlation
/// id (from `X-Correlation-Id`, else `X-Request-Id`, else a new one; an invalid one is
/// replaced) and its `traceparent` (when well-formed) as the task's, so what the handler
/// sends carries them; echoes the id in `X-Correlation-Id`; and wraps the request in a
/// span (`method`, `route`: the matched route, never the query string;
/// `correlation_id`; `status` and `latency_ms` once answered).
pub async fn correlate(request: Request, next: Next) -> Response {
    // Read in a block: a borrow of the request (its body is not `Sync`) must not live
    // across the await below.
    let (id, traceparent, span) = {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        let id = header(CORRELATION_ID_HEADER)
            .or_else(|| header(REQUEST_ID_HEADER))
            .and_then(|v| CorrelationId::parse(v).ok())
            .unwrap_or_default();
        let traceparent = header(TRACEPARENT_HEADER).filter(|t| is_valid_traceparent(t)).map(str::to_owned);
        let route = request.extensions().get::<MatchedPath>().map_or_else(|| request.uri().path(), |m| m.as_str());
        let span = tracing::info_span!(
            target: "platform::http",
            "request",
            method = %request.method(),
            route = %route,
            correlation_id = %id,
            status = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
        );
        (id, traceparent, span)
    };
    let started = Instant::now();
    let run = crate::correlation::scope_correlation(id.clone(), next.run(request));
    let mut response = match traceparent {
        Some(tp) => crate::with_traceparent(tp, run).instrument(span.clone()).await,
        None => run.instrument(span.clone()).await,
    };
    span.record("status", response.status().as_u16());
    span.record("latency_ms", started.elapsed().as_secs_f64() * 1000.0);
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(CORRELATION_ID_HEADER, v);
    }
    response
}
