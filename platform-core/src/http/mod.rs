//! The service contract over HTTP (feature `http`, axum 0.8): what every service built
//! on the platform answers, added to the service's own `Router` in a few lines. No
//! lifecycle is imposed: the service keeps its `main`, its runtime and its router.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use platform_core::http::Contract;
//!
//! let contract = Contract::new("todo", "0.1.0"); // .with_check(db.clone()).with_openapi(spec)
//! contract.log_startup().await; // every dependency with latency and version, before binding
//! let app = contract.apply(Router::new().route("/v1/hello", get(|| async { "hi" })));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! platform_core::http::serve(listener, app, contract.shutdown()).await?; // or axum::serve(..).with_graceful_shutdown(..)
//! # Ok(()) }
//! ```
//!
//! [`Contract::apply`] adds:
//! - **Health**: `GET /up` (every dependency: status, latency, version, error; checks
//!   run concurrently, each with a timeout; 503 when a critical one is down;
//!   `application/health+json` in the IETF draft's shape when the client asks for it),
//!   `GET /livez` and `GET /healthz` (the process answers; no dependency is asked),
//!   `GET /readyz` (critical dependencies only; 503 while draining at shutdown).
//! - **Contract**: `GET /v1/contract`: name, version, deployment mode, API and event
//!   contract versions, migration version.
//! - **OpenAPI**: `GET /openapi` (the service's spec with these routes and the problem
//!   and health schemas merged in) and Swagger UI at `/swagger/`, its files compiled
//!   into the binary: nothing is fetched at build or run time.
//! - **Errors**: every error response is `application/problem+json` with a
//!   `correlation_id`: the service's own (`platform_core::Error` is `IntoResponse`) and
//!   everything else: axum's rejections (bad JSON, wrong content type), unknown routes
//!   (404), wrong methods (405, `Allow` kept), bodies over the limit (413), requests
//!   over the timeout (408) and panics (500, no detail), so no plain-text error escapes.
//! - **Correlation**: the id from `X-Correlation-Id` or `X-Request-Id` (or a new one) is
//!   the task's correlation id while the request runs, so queue messages and events sent
//!   by the handler carry it; `traceparent` likewise; the id is echoed in the response.
//!   One span per request (method, route, status, latency); the query string and
//!   headers are never logged.
//! - **Shutdown**: [`serve`] (or [`Shutdown::on_signal`] given to `axum::serve`) turns
//!   SIGTERM or Ctrl-C into readiness 503 for a grace, then stops accepting while
//!   in-flight requests finish, cut at a deadline; [`Shutdown::token`] stops workers.
//!
//! And, layered by the service on the routes it chooses, **rate limits** ([`RateLimit`]
//! with [`rate_limit`]): per route and per key (client IP, a header, the principal),
//! kept in the process ([`LocalLimiter`]) or on Redis ([`RedisLimiter`], feature
//! `redis`) so every instance holds one limit; 429 as problem+json with `Retry-After`
//! and the IETF `RateLimit` / `RateLimit-Policy` fields.
//!
//! Where the parts live: everything here needs only platform-core; idempotency keys
//! live in platform-db (its `http` feature), because a key is stored in the same
//! transaction as the handler's change.

mod correlate;
mod errors;
mod health;
mod openapi;
mod ratelimit;
mod shutdown;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use serde::{Deserialize, Serialize};

pub use correlate::{REQUEST_ID_HEADER, correlate};
pub use errors::{problem_responses, status_problem};
pub use health::HEALTH_JSON;
#[cfg(feature = "redis")]
pub use ratelimit::RedisLimiter;
pub use ratelimit::{Decision, KeyBy, KeyFn, LocalLimiter, Policy, RateLimit, RateLimiter, rate_limit};
pub use shutdown::{DEFAULT_DEADLINE, DEFAULT_GRACE, Shutdown, serve};

use crate::{HealthCheck, HealthReport};

/// What `GET /v1/contract` says about the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct ServiceInfo {
    /// The service's name.
    pub service: String,
    /// Its version.
    pub version: String,
    /// How it is deployed (`single`, `cluster`, …; default `single`).
    pub mode: String,
    /// The version of its HTTP API contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The version of the events it publishes (its AsyncAPI document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_version: Option<String>,
    /// The newest database migration applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_version: Option<i64>,
}

/// The contract routes and layers of one service: build it once at start, then
/// [`apply`](Self::apply) it to the service's router.
#[derive(Clone)]
pub struct Contract {
    info: ServiceInfo,
    checks: Vec<Arc<dyn HealthCheck>>,
    check_timeout: Duration,
    request_timeout: Duration,
    body_limit: usize,
    openapi: Option<utoipa::openapi::OpenApi>,
    shutdown: Shutdown,
}

impl std::fmt::Debug for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contract")
            .field("info", &self.info)
            .field("checks", &self.checks.iter().map(|c| c.name()).collect::<Vec<_>>())
            .field("check_timeout", &self.check_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

/// How long one health check may take unless [`Contract::with_check_timeout`] says.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take unless [`Contract::with_request_timeout`] says.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request body unless [`Contract::with_body_limit`] says: 2 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;

impl Contract {
    /// The contract of service `name` at `version`, with no dependencies yet.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            info: ServiceInfo {
                service: name.into(),
                version: version.into(),
                mode: "single".into(),
                api_version: None,
                events_version: None,
                migration_version: None,
            },
            checks: Vec::new(),
            check_timeout: DEFAULT_CHECK_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            body_limit: DEFAULT_BODY_LIMIT,
            openapi: None,
            shutdown: Shutdown::new(),
        }
    }

    /// Adds a dependency to `/up`, `/readyz` (when critical) and the startup log.
    #[must_use]
    pub fn with_check(mut self, check: Arc<dyn HealthCheck>) -> Self {
        self.checks.push(check);
        self
    }

    /// How long each health check may take (default 2 s); one that takes longer is
    /// `down` with `timed out`.
    #[must_use]
    pub fn with_check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// How long a request may take (default 30 s) before it is answered 408.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The largest request body in bytes (default 2 MiB); larger is 413.
    #[must_use]
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The deployment mode `/v1/contract` reports (default `single`).
    #[must_use]
    pub fn with_mode(mut self, mode: impl Into<String>) -> Self {
        self.info.mode = mode.into();
        self
    }

    /// The API contract version `/v1/contract` reports.
    #[must_use]
    pub fn with_api_version(mut self, version: impl Into<String>) -> Self {
        self.info.api_version = Some(version.into());
        self
    }

    /// The event contract version `/v1/contract` reports.
    #[must_use]
    pub fn with_events_version(mut self, version: impl Into<String>) -> Self {
        self.info.events_version = Some(version.into());
        self
    }

    /// The migration version `/v1/contract` reports.
    #[must_use]
    pub fn with_migration_version(mut self, version: i64) -> Self {
        self.info.migration_version = Some(version);
        self
    }

    /// The service's own OpenAPI document (utoipa's `OpenApi::openapi()`, or utoipa-axum's
    /// `OpenApiRouter::split_for_parts`); the contract's routes and schemas are merged into
    /// it for `/openapi`. Without one, `/openapi` documents the contract routes alone.
    #[must_use]
    pub fn with_openapi(mut self, spec: utoipa::openapi::OpenApi) -> Self {
        self.openapi = Some(spec);
        self
    }

    /// The shutdown state `/readyz` follows (a grace and a deadline of its own:
    /// `Shutdown::new().with_grace(..).with_deadline(..)`); by default, 5 s and 30 s.
    #[must_use]
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// What `/v1/contract` says.
    pub fn info(&self) -> &ServiceInfo {
        &self.info
    }

    /// The shutdown handle shared with the routes: readiness turns 503 once it began.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The full health report, as `/up` gives it.
    pub async fn report(&self) -> HealthReport {
        crate::probe_all(&self.checks, self.check_timeout).await.with_service(&self.info.service, &self.info.version)
    }

    /// Probes every dependency and logs each one (ok with latency and version, or the
    /// error), as a service does once before it binds. Returns the report.
    pub async fn log_startup(&self) -> HealthReport {
        let report = self.report().await;
        tracing::info!(
            target: "platform::http",
            service = %self.info.service, version = %self.info.version, mode = %self.info.mode,
            status = %report.status, "starting"
        );
        crate::log_startup(&report);
        report
    }

    /// The OpenAPI document `/openapi` serves.
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        openapi::document(&self.info, self.openapi.clone())
    }

    /// The contract's own routes alone (health, contract, OpenAPI, Swagger UI), without
    /// the layers.
    pub fn routes(&self) -> Router {
        health::routes(self).merge(openapi::routes(self.openapi()))
    }

    /// `app` with the contract's routes added and every route (the app's and the
    /// contract's) behind the layers: correlation and a span per request, problem+json
    /// for every error, the request timeout, the body limit, panics caught; unknown
    /// routes are a problem 404.
    pub fn apply(&self, app: Router) -> Router {
        use tower_http::catch_panic::CatchPanicLayer;
        use tower_http::limit::RequestBodyLimitLayer;
        use tower_http::timeout::TimeoutLayer;
        app.merge(self.routes())
            .fallback(errors::not_found)
            .layer(axum::extract::DefaultBodyLimit::max(self.body_limit))
            .layer(RequestBodyLimitLayer::new(self.body_limit))
            .layer(TimeoutLayer::with_status_code(::http::StatusCode::REQUEST_TIMEOUT, self.request_timeout))
            .layer(CatchPanicLayer::custom(errors::panicked))
            .layer(axum::middleware::from_fn(problem_responses))
            .layer(axum::middleware::from_fn(correlate))
    }
}
