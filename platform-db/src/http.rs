//! Idempotency keys over HTTP (feature `http`): the [`Idempotent`] extractor for axum
//! mutations, on the [`idempotency`](crate::idempotency) table, with the status codes of
//! the IETF draft (`draft-ietf-httpapi-idempotency-key-header`).
//!
//! ```rust,ignore
//! async fn create_todo(State(db): State<Db>, idem: Idempotent) -> Response {
//!     let todo: NewTodo = match idem.json() { Ok(t) => t, Err(e) => return e.into_response() };
//!     idem.run(&db, move |tx| Box::pin(async move {
//!         tx.execute(&Sql::new("INSERT INTO todos (title) VALUES (?)").bind(todo.title)).await?;
//!         StoredResponse::json(StatusCode::CREATED, &json!({"created": true}))
//!     }))
//!     .await
//! }
//! ```
//!
//! - The key comes from `Idempotency-Key` (the draft's name) or `X-Idempotency-Key`;
//!   missing, or not 1 to 200 printable characters: 400.
//! - Keys are scoped by client: the [`IdempotencyScope`] an authentication layer put in
//!   the request's extensions, else a hash of the `Authorization` header, else one
//!   anonymous scope. Two clients using the same key never see each other's responses.
//! - The request's fingerprint is its method, path, query and body bytes.
//! - The first request runs the work in a transaction and the response is stored **in
//!   that transaction**: the change and its response commit together.
//! - A retry after completion gets the stored response (status, content type, body)
//!   with `Idempotency-Replayed: true`; the work does not run again.
//! - The same key with another request: 422. The same key while the first request runs:
//!   409 with `Retry-After: 1` (the only answer the client may retry unchanged).
//! - Work that fails stores nothing: its error is answered and a retry runs afresh.
//! - [`IdempotencyKeyHeader`] documents the header in a route's OpenAPI (utoipa's
//!   `params(IdempotencyKeyHeader, …)`), with the rule above as its schema.
//! - Keys expire after [`Idempotent::with_ttl`] (24 hours by default), published in the
//!   `Idempotency-Key-Expires` response header (seconds).

use std::time::Duration;

use ::http::{HeaderValue, StatusCode};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use platform_core::{Error, ErrorKind, Problem};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::idempotency::IdempotencyKey;
use crate::{Db, Result, Tx};

/// The draft's header.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// The header seed 003 writes, accepted too.
pub const X_IDEMPOTENCY_KEY_HEADER: &str = "x-idempotency-key";
/// Set on a replayed response.
pub const REPLAYED_HEADER: &str = "idempotency-replayed";
/// How long keys are kept, in seconds, on every response [`Idempotent::run`] gives.
pub const EXPIRES_HEADER: &str = "idempotency-key-expires";
/// How long keys are kept unless [`Idempotent::with_ttl`] says.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 200;
/// The `Idempotency-Key` request header as an OpenAPI parameter, for utoipa's
/// `#[utoipa::path(params(IdempotencyKeyHeader, …))]`: required, 1 to [`MAX_KEY_LEN`]
/// printable ASCII characters (the pattern `^[!-~]+$`), as the extractor checks it.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKeyHeader;

impl utoipa::IntoParams for IdempotencyKeyHeader {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, Required, schema::Type};
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_KEY_LEN))
            .pattern(Some("^[!-~]+$"));
        vec![
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::True)
                .description(Some(
                    "A key unique to this change (a UUID, say): a retry with the same key and request \
                     gets the first answer again, with `Idempotency-Replayed: true`.",
                ))
                .schema(Some(schema))
                .build(),
        ]
    }
}

/// The largest request body the extractor reads.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The client a request's idempotency keys belong to: an authentication layer inserts
/// it into the request's extensions (the principal's id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyScope(pub String);

/// A response as stored with its key and replayed to retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoredResponse {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The body, as text.
    pub body: String,
}

impl StoredResponse {
    /// `value` as JSON with `status`.
    pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Result<Self> {
        Ok(Self {
            status: status.as_u16(),
            content_type: Some("application/json".into()),
            body: serde_json::to_string(value)?,
        })
    }

    /// An empty body with `status` (`204 No Content`).
    pub fn empty(status: StatusCode) -> Self {
        Self { status: status.as_u16(), content_type: None, body: String::new() }
    }
}

impl IntoResponse for StoredResponse {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let mut res = (status, self.body).into_response();
        match self.content_type.as_deref().and_then(|t| HeaderValue::from_str(t).ok()) {
            Some(t) => res.headers_mut().insert(::http::header::CONTENT_TYPE, t),
            None => res.headers_mut().remove(::http::header::CONTENT_TYPE),
        };
        res
    }
}

/// A mutation's idempotency key, client scope and request fingerprint, with the body
/// it read (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Idempotent {
    key: String,
    scope: String,
    fingerprint: Vec<u8>,
    body: Bytes,
    ttl: Duration,
}

fn bad_key(why: &str) -> Response {
    Error::invalid_input(format!("Idempotency-Key {why}"))
        .with_detail("Idempotency-Key", why.to_owned())
        .into_response()
}

impl<S: Send + Sync> FromRequest<S> for Idempotent {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> std::result::Result<Self, Response> {
        let headers = request.headers();
        let key = headers
            .get(IDEMPOTENCY_KEY_HEADER)
            .or_else(|| headers.get(X_IDEMPOTENCY_KEY_HEADER))
            .ok_or_else(|| bad_key("is required on this route"))?
            .to_str()
            .map_err(|_| bad_key("must be printable ASCII"))?;
        // The draft sends it as a structured-field string: quotes are allowed.
        let key = key.trim().trim_matches('"').to_owned();
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad_key(&format!("must be 1 to {MAX_KEY_LEN} printable characters")));
        }
        let scope = match request.extensions().get::<IdempotencyScope>() {
            Some(s) => format!("client:{}", s.0),
            None => match headers.get(::http::header::AUTHORIZATION) {
                Some(a) => format!("auth:{}", hex(&Sha256::digest(a.as_bytes()))),
                None => "anonymous".to_owned(),
            },
        };
        let mut fingerprint = Vec::new();
        fingerprint.extend_from_slice(request.method().as_str().as_bytes());
        fingerprint.push(b' ');
        fingerprint.extend_from_slice(request.uri().path_and_query().map_or("", |p| p.as_str()).as_bytes());
        fingerprint.push(b'\n');
        let body = Bytes::from_request(request, state).await.map_err(IntoResponse::into_response)?;
        if body.len() > MAX_BODY {
            return Err(StatusCode::PAYLOAD_TOO_LARGE.into_response());
        }
        fingerprint.extend_from_slice(&body);
        Ok(Self { key, scope, fingerprint, body, ttl: DEFAULT_TTL })
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().take(16).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Idempotent {
    /// How long the key and its response are kept (default [`DEFAULT_TTL`]).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The key as the client sent it.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The request body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body decoded as JSON; a body that does not decode is `InvalidInput`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::invalid_input(format!("the body is not the JSON this route takes: {e}"))
                .with_detail("body", e.to_string())
        })
    }

    /// Runs `work` once for this key (see the [module docs](self)) and answers with its
    /// response, or the stored one, or the problem that says why neither.
    pub async fn run<F>(self, db: &Db, work: F) -> Response
    where
        F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<StoredResponse>> + Send,
    {
        let scoped = format!("{}|{}", self.scope, self.key);
        let key = match IdempotencyKey::new(scoped, &self.fingerprint) {
            Ok(k) => k.with_ttl(self.ttl).with_wait(Duration::ZERO),
            Err(e) => return e.into_response(),
        };
        let expires = HeaderValue::from(self.ttl.as_secs());
        let mut res = match db.idempotent(&key, work).await {
            Ok(outcome) => {
                let replayed = outcome.replayed;
                let mut res = outcome.value.into_response();
                if replayed {
                    res.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
                }
                res
            }
            Err(e) if e.kind() == ErrorKind::Conflict && e.is_retryable() => {
                let why = "a request with this key is still being processed";
                let err = Error::conflict(why).with_retry_after(Duration::from_secs(1));
                let mut res = err.into_response();
                res.headers_mut().insert(::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                res
            }
            Err(e) if e.kind() == ErrorKind::Conflict && e.details().iter().any(|d| d.field == "idempotency_key") => {
                // The draft's 422: the body was understood, and contradicts the key's.
                let mut problem = Problem::from_error(
                    &Error::invalid_input("the Idempotency-Key was used before with a different request")
                        .with_detail("Idempotency-Key", "reused with a different request"),
                );
                problem.status = StatusCode::UNPROCESSABLE_ENTITY.as_u16();
                problem.into_response()
            }
            Err(e) => e.into_response(),
        };
        res.headers_mut().insert(EXPIRES_HEADER, expires);
        res
    }
}
