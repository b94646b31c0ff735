//! The axum side (feature `axum`): [`authenticate`] as a layer over a router, and
//! [`Principal`] as an extractor in its handlers.
//!
//! ```rust,ignore
//! let chain = Arc::new(AuthChain::new().with(Arc::new(api_keys)).with(Arc::new(ingest)));
//! let app = Router::new()
//!     .route("/v1/todos", post(create_todo)) // async fn create_todo(who: Principal, …)
//!     .layer(axum::middleware::from_fn_with_state(chain, platform_auth::layer::authenticate));
//! ```
//!
//! A request that upgrades to a WebSocket (`GET` with `Upgrade: websocket`) is
//! authenticated as [`RequestKind::WebSocketUpgrade`], so the query and subprotocol
//! forms of the shared key count there only. A request carrying `webhook-signature`
//! has its body read (up to [`MAX_SIGNED_BODY`]) for signed ingest and handed on
//! unchanged. Errors are problem+json: 401 with `WWW-Authenticate: Bearer`, 403, 503.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use platform_core::{Error, ErrorKind};

use crate::{AuthChain, PeerCertificates, Principal, RequestKind, RequestParts};

/// The largest body read for a signature check.
pub const MAX_SIGNED_BODY: usize = 2 << 20;

fn kind_of(parts: &Parts) -> RequestKind {
    let upgrade = parts.headers.get("upgrade").and_then(|v| v.to_str().ok());
    if parts.method == axum::http::Method::GET && upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        RequestKind::WebSocketUpgrade
    } else {
        RequestKind::Http
    }
}

/// An error as the response a client gets; a 401 says how to authenticate.
fn refused(e: Error) -> Response {
    let challenge = e.kind() == ErrorKind::Unauthenticated;
    let mut response = e.into_response();
    if challenge {
        response.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
    }
    response
}

/// Authenticates the request with the chain; the principal goes into the request's
/// extensions (take it with the [`Principal`] extractor), an error becomes the response.
pub async fn authenticate(State(chain): State<Arc<AuthChain>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let kind = kind_of(&parts);
    let (signed, body) = if parts.headers.contains_key("webhook-signature") {
        match axum::body::to_bytes(body, MAX_SIGNED_BODY).await {
            Ok(bytes) => (Some(bytes), None),
            Err(_) => {
                let why = format!("a signed body is read up to {MAX_SIGNED_BODY} bytes");
                return refused(Error::invalid_input(why));
            }
        }
    } else {
        (None, Some(body))
    };
    let mut seen = RequestParts::new(&parts.method, &parts.uri, &parts.headers, kind);
    if let Some(bytes) = &signed {
        seen = seen.with_body(bytes);
    }
    let certs = parts.extensions.get::<PeerCertificates>().map(|c| Arc::clone(&c.0));
    if let Some(certs) = &certs {
        seen = seen.with_peer_certs(certs);
    }
    let principal = match chain.authenticate(&seen).await {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    parts.extensions.insert(principal);
    let body = match (signed, body) {
        (Some(bytes), _) => Body::from(bytes),
        (None, body) => body.unwrap_or_else(Body::empty),
    };
    next.run(Request::from_parts(parts, body)).await
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Self>().cloned().ok_or_else(|| {
            refused(Error::internal("no principal: the route is not behind platform_auth::layer::authenticate"))
        })
    }
}
