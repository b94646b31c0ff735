//! The todo service: users, workspaces (the tenant) and their todos, on every crate of
//! the family, with no server needed by default.
//!
//! - Accounts: `POST /v1/auth/register`, `POST /v1/auth/login` (Argon2id passwords,
//!   an EdDSA access token of an hour, verified as any JWT would be).
//! - Workspaces and todos under `/v1/workspaces/{ws}/todos`: every query in the
//!   workspace's tenant scope (row-level security on PostgreSQL), every mutation behind
//!   an `Idempotency-Key`, every change with its event (`todo.created.v1`,
//!   `todo.updated.v1`, `todo.completed.v1`, `todo.deleted.v1`) written to the outbox
//!   in the same transaction.
//! - The relay publishes the outbox to the event bus; one consumer group puts each event
//!   on the hub's channel `workspaces.{ws}.todos`, where `/ws` clients of that
//!   workspace (with their access token as `?access_token=` or `Bearer`) see it.
//! - Exports as jobs on platform-queue, followed on `/ws`, written to platform-store
//!   with a presigned link, announced through platform-notify; signed imports from
//!   other systems, each delivery once.
//! - `GET /`: a page that signs in and shows the workspace's todos live.
//! - The contract: `/up`, `/livez`, `/readyz`, `/v1/contract`, `/openapi`, `/swagger/`,
//!   problem+json errors with a correlation id.
//!
//! One module per part: `accounts`, `todos`, `live` (`/ws`), `exports`, `ingest`, and
//! `model` (what is kept and said); this file wires them ([`build`]).
//!
//! Configuration ([`Settings::from_env`]): `DATABASE_URL` (`sqlite://todo.db`),
//! `EVENTS_URL` (`memory://todo`), `BROADCAST_URL` (`memory://todo`), `QUEUE_URL`
//! (`sqlite://todo-jobs.db?queue=exports`), `STORE_URL` (`./todo-files`), `NOTIFY_URLS`
//! (`memory://`), `SHARED_WS_KEY` and `JWT_SIGNING_KEY` (made up per start when unset),
//! `MIGRATE_ON_START` (`true`), `TODO_ADDR` (`127.0.0.1:8080`), `TODO_PUBLIC_URL`,
//! `TODO_LOGIN_LIMIT` and `TODO_REQUEST_LIMIT` (per minute), `TODO_EVENTS` (`true`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use platform_auth::jwt::{Algorithm, Issuer, Jwt, SigningKey, StaticKeys, TokenMinter};
use platform_auth::password::{PasswordCheck, Passwords};
use platform_auth::{AuthChain, AuthOutcome, Authenticator, Principal, RequestParts};
use platform_core::http::Contract;
use platform_core::{Envelope, Error, ErrorKind, Event, HealthCheck, Result};
use platform_db::http::{IdempotencyKeyHeader, Idempotent, StoredResponse};
use platform_db::migrate::{Migration, Migrator};
use platform_db::{Db, Dialect, Sql, Tx};
use platform_events::EventBus;
use platform_events::hub::{Access, Hub, HubConfig};
use platform_events::relay::{self, Relay, RelayConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi as _;

mod accounts;
mod exports;
mod ingest;
mod live;
mod model;
mod todos;

use accounts::*;
use exports::*;
pub use exports::{ExportStarted, Since};
use ingest::*;
pub use ingest::{ImportBatch, Imported, IngestEndpoint};
pub use live::channel_of;
use live::*;
pub use model::*;
use todos::*;

/// The issuer and audience of the service's access tokens.
pub const ISSUER: &str = "urn:platform:todo";
/// The audience of its access tokens.
pub const AUDIENCE: &str = "todo";
/// How long an access token is good for.
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Registrations and logins per client address per minute.
pub const LOGIN_LIMIT: u32 = 30;
/// Requests per user per minute on the authenticated routes.
pub const REQUEST_LIMIT: u32 = 600;

/// Where the parts are.
#[derive(Clone)]
pub struct Settings {
    /// The database (`DATABASE_URL`).
    pub database_url: String,
    /// The event bus (`EVENTS_URL`).
    pub events_url: String,
    /// The broadcast behind the hub (`BROADCAST_URL`).
    pub broadcast_url: String,
    /// The key services use on `/ws` (`SHARED_WS_KEY`).
    pub shared_ws_key: platform_core::Secret<String>,
    /// Where to listen (`TODO_ADDR`).
    pub addr: String,
    /// The queue export jobs run on (`QUEUE_URL`).
    pub queue_url: String,
    /// Where exports are written (`STORE_URL`).
    pub store_url: String,
    /// Where notifications about exports go (`NOTIFY_URLS`, comma-separated).
    pub notify_urls: Vec<String>,
    /// The URL clients reach the service at (`TODO_PUBLIC_URL`), for download links.
    pub public_url: String,
    /// The Ed25519 key access tokens are signed with, PKCS#8 DER in base64
    /// (`JWT_SIGNING_KEY`): every instance needs the same one, and tokens outlive a
    /// restart only with it. Unset: a key made up per start.
    pub jwt_signing_key: Option<platform_core::Secret<String>>,
    /// Whether to apply pending migrations at start (`MIGRATE_ON_START`, default
    /// true). Off, as when the service runs as a role that may not change the schema,
    /// it only checks them: pending ones or a drifted schema stop it.
    pub migrate_on_start: bool,
    /// Registrations and logins per client address per minute (`TODO_LOGIN_LIMIT`,
    /// default [`LOGIN_LIMIT`]).
    pub login_limit: u32,
    /// Requests per user per minute on the authenticated routes (`TODO_REQUEST_LIMIT`,
    /// default [`REQUEST_LIMIT`]).
    pub request_limit: u32,
    /// Whether each change stages its event in the outbox, for the relay, the bus and
    /// `/ws` (`TODO_EVENTS`, default true). Off, the todo routes do the same work without
    /// the events and no relay runs: what the load test compares with, to price them.
    pub events: bool,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &platform_core::config::mask_url(&self.database_url))
            .field("events_url", &platform_core::config::mask_url(&self.events_url))
            .field("broadcast_url", &platform_core::config::mask_url(&self.broadcast_url))
            .field("addr", &self.addr)
            .field("queue_url", &platform_core::config::mask_url(&self.queue_url))
            .field("store_url", &platform_core::config::mask_url(&self.store_url))
            .field(
                "notify_urls",
                &self.notify_urls.iter().map(|u| platform_core::config::mask_url(u)).collect::<Vec<_>>(),
            )
            .field("public_url", &self.public_url)
            .field("login_limit", &self.login_limit)
            .field("request_limit", &self.request_limit)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// From the environment, with the embedded defaults.
    pub fn from_env() -> Result<Self> {
        let var =
            |k: &str, default: &str| std::env::var(k).ok().filter(|v| !v.is_empty()).unwrap_or(default.to_owned());
        let key = match std::env::var("SHARED_WS_KEY").ok().filter(|v| !v.is_empty()) {
            Some(k) => k,
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        let addr = var("TODO_ADDR", "127.0.0.1:8080");
        let cwd = std::env::current_dir().map_err(|e| Error::internal(format!("no working directory: {e}")))?;
        let files = url::Url::from_directory_path(cwd.join("todo-files"))
            .map_err(|()| Error::internal("the working directory is not an absolute path"))?;
        Ok(Self {
            database_url: var("DATABASE_URL", "sqlite://todo.db"),
            events_url: var("EVENTS_URL", "memory://todo"),
            broadcast_url: var("BROADCAST_URL", "memory://todo"),
            shared_ws_key: platform_core::Secret::new(key),
            queue_url: var("QUEUE_URL", "sqlite://todo-jobs.db?queue=exports"),
            store_url: var("STORE_URL", files.as_str()),
            notify_urls: var("NOTIFY_URLS", "memory://")
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
            public_url: var("TODO_PUBLIC_URL", &format!("http://{addr}")),
            jwt_signing_key: std::env::var("JWT_SIGNING_KEY")
                .ok()
                .filter(|v| !v.is_empty())
                .map(platform_core::Secret::new),
            migrate_on_start: platform_core::config::parse_bool(&var("MIGRATE_ON_START", "true"))?,
            login_limit: limit("TODO_LOGIN_LIMIT", &var("TODO_LOGIN_LIMIT", &LOGIN_LIMIT.to_string()))?,
            request_limit: limit("TODO_REQUEST_LIMIT", &var("TODO_REQUEST_LIMIT", &REQUEST_LIMIT.to_string()))?,
            events: platform_core::config::parse_bool(&var("TODO_EVENTS", "true"))?,
            addr,
        })
    }

    /// The effective configuration, secrets masked, for the startup log.
    pub fn effective(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", platform_core::config::mask_url(&self.database_url)),
            ("EVENTS_URL", platform_core::config::mask_url(&self.events_url)),
            ("BROADCAST_URL", platform_core::config::mask_url(&self.broadcast_url)),
            ("SHARED_WS_KEY", "****".to_owned()),
            ("TODO_ADDR", self.addr.clone()),
            ("QUEUE_URL", platform_core::config::mask_url(&self.queue_url)),
            ("STORE_URL", platform_core::config::mask_url(&self.store_url)),
            (
                "NOTIFY_URLS",
                self.notify_urls.iter().map(|u| platform_core::config::mask_url(u)).collect::<Vec<_>>().join(","),
            ),
            ("TODO_PUBLIC_URL", self.public_url.clone()),
            ("MIGRATE_ON_START", self.migrate_on_start.to_string()),
            ("TODO_LOGIN_LIMIT", self.login_limit.to_string()),
            ("TODO_REQUEST_LIMIT", self.request_limit.to_string()),
            ("TODO_EVENTS", self.events.to_string()),
            ("JWT_SIGNING_KEY", if self.jwt_signing_key.is_some() { "****" } else { "(made up per start)" }.to_owned()),
        ]
    }
}

/// A per-minute limit: a positive whole number.
fn limit(var: &str, value: &str) -> Result<u32> {
    value.trim().parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
        Error::invalid_input(format!("{var} must be a positive whole number of requests a minute, not {value:?}"))
            .with_detail(var, "not a positive whole number")
    })
}

/// The schema.
pub fn migrations() -> Vec<Migration> {
    vec![
        Migration::new(
            1,
            "accounts",
            "CREATE TABLE users (id VARCHAR(36) PRIMARY KEY, email VARCHAR(254) NOT NULL UNIQUE, \
             password_hash VARCHAR(255) NOT NULL, created_at BIGINT NOT NULL);\n\
             CREATE TABLE workspaces (id VARCHAR(36) PRIMARY KEY, name VARCHAR(200) NOT NULL, \
             owner_id VARCHAR(36) NOT NULL, created_at BIGINT NOT NULL);\n\
             CREATE TABLE members (workspace_id VARCHAR(36) NOT NULL, user_id VARCHAR(36) NOT NULL, \
             PRIMARY KEY (workspace_id, user_id));\n\
             CREATE INDEX members_by_user ON members (user_id)",
        ),
        Migration::new(
            2,
            "todos",
            "CREATE TABLE todos (id VARCHAR(36) PRIMARY KEY, workspace_id VARCHAR(36) NOT NULL, \
             title VARCHAR(500) NOT NULL, done BOOLEAN NOT NULL, created_at BIGINT NOT NULL, \
             updated_at BIGINT NOT NULL);\n\
             CREATE INDEX todos_by_workspace ON todos (workspace_id, created_at)",
        )
        .with_sql(
            Dialect::Postgres,
            "CREATE TABLE todos (id VARCHAR(36) PRIMARY KEY, workspace_id VARCHAR(36) NOT NULL, \
             title VARCHAR(500) NOT NULL, done BOOLEAN NOT NULL, created_at BIGINT NOT NULL, \
             updated_at BIGINT NOT NULL);\n\
             CREATE INDEX todos_by_workspace ON todos (workspace_id, created_at);\n\
             ALTER TABLE todos ENABLE ROW LEVEL SECURITY;\n\
             ALTER TABLE todos FORCE ROW LEVEL SECURITY;\n\
             CREATE POLICY todos_tenant ON todos USING (workspace_id = current_setting('app.tenant_id', true)) \
             WITH CHECK (workspace_id = current_setting('app.tenant_id', true))",
        ),
        platform_db::idempotency::migration(3),
        platform_db::outbox::migration(4),
        Migration::new(
            5,
            "ingest endpoints",
            "CREATE TABLE ingest_endpoints (id VARCHAR(36) PRIMARY KEY, workspace_id VARCHAR(36) NOT NULL, \
             secret VARCHAR(100) NOT NULL, created_at BIGINT NOT NULL)",
        ),
        platform_db::inbox::migration(6),
        Migration::new(
            7,
            "totp",
            "ALTER TABLE users ADD COLUMN totp_secret VARCHAR(64);\n\
             ALTER TABLE users ADD COLUMN totp_on BOOLEAN NOT NULL DEFAULT FALSE",
        ),
    ]
}

#[derive(Clone)]
struct AppState {
    db: Db,
    passwords: Arc<Passwords>,
    totp: Arc<platform_auth::totp::Totp>,
    minter: Arc<TokenMinter>,
    hub: Arc<Hub>,
    jobs: Arc<dyn platform_queue::Queue>,
    /// Whether changes stage their events ([`Settings::events`]).
    events: bool,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn check_len(field: &str, value: &str, max: usize) -> Result<()> {
    let len = value.chars().count();
    if len == 0 || len > max || value.chars().any(char::is_control) {
        return Err(Error::invalid_input(format!("{field} must be 1 to {max} printable characters"))
            .with_detail(field, "empty, too long or has control characters"));
    }
    Ok(())
}

/// The rule `Credentials::email` documents: up to 254 characters, one `@` with something
/// before it, a dot inside the domain, no spaces or control characters.
fn check_email(email: &str) -> Result<()> {
    let allowed = |c: &char| *c != '@' && *c != ' ' && !c.is_control();
    let ok = email.chars().count() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            let domain: Vec<char> = domain.chars().collect();
            !local.is_empty()
                && local.chars().all(|c| allowed(&c))
                && domain.iter().all(allowed)
                && domain.len() >= 3
                && domain[1..domain.len() - 1].contains(&'.')
        });
    if !ok {
        return Err(Error::invalid_input("email is not an address").with_detail("email", "not an address"));
    }
    Ok(())
}

/// Refuses unless `user` is a member of `ws` (a workspace one is not in does not exist
/// for one).
async fn require_member(tx: &mut Tx, ws: &str, user: &str) -> Result<()> {
    let found = tx
        .fetch_optional(
            &Sql::new("SELECT user_id FROM members WHERE workspace_id = ? AND user_id = ?").bind(ws).bind(user),
        )
        .await?;
    found.map(|_| ()).ok_or_else(|| Error::not_found(format!("workspace {ws} does not exist")))
}

/// Every id in a path (workspace, todo, endpoint) is a UUID, as the API documents: any
/// other names nothing, so it is a 404 before any work.
async fn ids_are_uuids(
    params: axum::extract::RawPathParams,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    for (name, value) in &params {
        if uuid::Uuid::try_parse(value).is_err() {
            return Error::not_found(format!("no {name} {value:?}")).into_response();
        }
    }
    next.run(request).await
}

fn stored<T: Serialize>(status: StatusCode, value: &T) -> Result<StoredResponse> {
    StoredResponse::json(status, value)
}

struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The service's API, for `/openapi`.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "todo", description = "The example service of the platform crates"),
    paths(register, login, enrol_totp, confirm_totp, create_workspace, list_workspaces, create_todo, list_todos, get_todo, update_todo,
        complete_todo, delete_todo, start_export, create_ingest_endpoint, ingest),
    components(schemas(Todo, Workspace, Credentials, User, Token, NewWorkspace, NewTodo, TodoPatch, ExportStarted,
        Since, IngestEndpoint, ImportBatch, Imported, TotpEnrolment, TotpCode)),
    modifiers(&BearerSecurity)
)]
pub struct TodoApi;

/// The service, built: its router (contract applied) and the contract (for the startup
/// log and shutdown). Its background work (the relay, the event forwarder) runs until
/// `stop`.
#[derive(Debug)]
pub struct Service {
    /// The router, ready to serve.
    pub router: Router,
    /// The contract.
    pub contract: Contract,
    /// The hub, for services that publish more.
    pub hub: Arc<Hub>,
}

/// Builds the service from `settings`: opens every part, runs the migrations (a drifted
/// schema stops it here), starts the relay and the forwarder.
pub async fn build(settings: &Settings, stop: CancellationToken) -> Result<Service> {
    let db = platform_db::open(&settings.database_url).await?;
    let migrator = Migrator::new(migrations());
    let report = if settings.migrate_on_start { migrator.run(&db).await? } else { migrator.check(&db).await? };
    if let platform_db::schema::MigrationState::Pending(n) = report.state {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("{n} migrations are pending: apply them as the schema's owner (MIGRATE_ON_START=true)"),
        ));
    }
    if db.dialect() == Dialect::Postgres
        && let Err(e) = platform_db::tenant::check_row_level_security(&db, &["todos"]).await
    {
        // A superuser (or BYPASSRLS) role reads every workspace: run as a plain role.
        tracing::warn!(target: "todo", "row-level security is not in force: {e}");
    }
    let bus = platform_events::open_bus(&settings.events_url).await?;
    let broadcast = platform_events::open_broadcast(&settings.broadcast_url).await?;

    let signing_key = match &settings.jwt_signing_key {
        Some(b64) => {
            use base64::Engine as _;
            let der = base64::engine::general_purpose::STANDARD.decode(b64.expose().trim()).map_err(|_| {
                Error::invalid_input("JWT_SIGNING_KEY is not base64").with_detail("JWT_SIGNING_KEY", "not base64")
            })?;
            SigningKey::from_pkcs8_der(&der, Algorithm::EdDSA).map_err(|_| {
                Error::invalid_input("JWT_SIGNING_KEY is not an Ed25519 private key in PKCS#8 DER")
                    .with_detail("JWT_SIGNING_KEY", "not an Ed25519 PKCS#8 key")
            })?
        }
        None => SigningKey::generate(Algorithm::EdDSA)?,
    };
    let minter = Arc::new(TokenMinter::new(ISSUER, signing_key).ttl(TOKEN_TTL)?);
    let keys = Arc::new(StaticKeys(minter.key_set()));
    let jwt = Arc::new(Jwt::new().issuer(Issuer::new(ISSUER, AUDIENCE, keys)));
    let chain = Arc::new(AuthChain::new().with(Arc::clone(&jwt) as Arc<dyn Authenticator>));

    let jobs = platform_queue::open(&settings.queue_url).await?;
    let hub_cell = Arc::new(std::sync::OnceLock::new());
    let hub_config = HubConfig::new(settings.shared_ws_key.expose().clone())?
        .with_authenticator(Arc::new(WsUser { jwt, db: db.clone() }))
        .with_authorizer(Arc::new(ws_authorizer))
        .on_publish(platform_events::hub::JOBS_ENQUEUE, ws_enqueue(Arc::clone(&hub_cell), Arc::clone(&jobs)));
    let hub = Hub::start(broadcast, hub_config).await?;
    let _ = hub_cell.set(Arc::clone(&hub));

    let (store_url, secret) =
        with_presigning(&settings.store_url, &settings.public_url, settings.jwt_signing_key.as_ref())?;
    let store = platform_store::open(&store_url).await?;
    let mut notify = platform_notify::Dispatcher::new();
    let mut names = Vec::new();
    for (i, url) in settings.notify_urls.iter().enumerate() {
        let name = format!("notify-{i}");
        notify = notify.notifier(name.clone(), platform_notify::open(url)?);
        names.push(name);
    }
    if !names.is_empty() {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        notify = notify.route(platform_notify::Route::new("exports", &names).tag("exports"))?;
    }
    let max_attempts = platform_queue::driver::QueueUrl::parse(&settings.queue_url)?.options.max_attempts;
    let exporter = Exporter {
        db: db.clone(),
        hub: Arc::clone(&hub),
        store: Arc::clone(&store),
        notify: Arc::new(notify),
        max_attempts,
    };
    let worker = platform_queue::Worker::new(Arc::clone(&jobs), move |d: Arc<platform_queue::Delivery>| {
        let exporter = exporter.clone();
        async move { exporter.run(d).await }
    });
    let s = stop.clone();
    tokio::spawn(async move {
        if let Err(e) = worker.run(s).await {
            tracing::error!(target: "todo", error = %e, "the export worker stopped");
        }
    });

    let relay = Arc::new(Relay::new(db.clone(), Arc::clone(&bus), RelayConfig::default()));
    if settings.events {
        let r = Arc::clone(&relay);
        let s = stop.clone();
        tokio::spawn(async move { r.run(s).await });
        tokio::spawn(forward(Arc::clone(&bus), Arc::clone(&hub), stop.clone()));
    }

    let state = AppState {
        db: db.clone(),
        passwords: Arc::new(Passwords::new()?),
        totp: Arc::new(platform_auth::totp::Totp::new("todo")),
        minter,
        hub: Arc::clone(&hub),
        jobs: Arc::clone(&jobs),
        events: settings.events,
    };
    // Password guessing is slowed per client address; each user's requests per user.
    let limiter: Arc<dyn platform_core::http::RateLimiter> = Arc::new(platform_core::http::LocalLimiter::new());
    let login_limit = axum::middleware::from_fn_with_state(
        platform_core::http::RateLimit::new(
            Arc::clone(&limiter),
            platform_core::http::Policy::new("login", settings.login_limit, Duration::from_secs(60))?,
            platform_core::http::KeyBy::ClientIp,
        ),
        platform_core::http::rate_limit,
    );
    let by_user: platform_core::http::KeyFn =
        Arc::new(|r: &axum::extract::Request| r.extensions().get::<Principal>().map(|p| p.subject.clone()));
    let write_limit = platform_core::http::RateLimit::new(
        limiter,
        platform_core::http::Policy::new("requests", settings.request_limit, Duration::from_secs(60))?,
        platform_core::http::KeyBy::With(by_user),
    );
    let files = Files {
        store: Arc::clone(&store),
        verifier: secret.map(|s| Arc::new(platform_store::presign::Verifier::new(s.into_bytes()))),
    };
    // Each route's own layers (not the router's), so that a method a path does not
    // take is a 405 for anyone, before any authentication.
    let ids = axum::middleware::from_fn(ids_are_uuids);
    let limit = axum::middleware::from_fn_with_state(write_limit, platform_core::http::rate_limit);
    let auth = axum::middleware::from_fn_with_state(chain, platform_auth::layer::authenticate);
    // Counted per user, so the limit runs inside the authentication.
    let user = move |route: axum::routing::MethodRouter<AppState>| {
        route.route_layer(ids.clone()).route_layer(limit.clone()).route_layer(auth.clone())
    };
    let authenticated = Router::new()
        .route("/v1/auth/totp", user(post(enrol_totp)))
        .route("/v1/auth/totp/confirm", user(post(confirm_totp)))
        .route("/v1/workspaces", user(post(create_workspace).get(list_workspaces)))
        .route("/v1/workspaces/{ws}/todos", user(post(create_todo).get(list_todos)))
        .route("/v1/workspaces/{ws}/todos/{id}", user(get(get_todo).patch(update_todo).delete(delete_todo)))
        .route("/v1/workspaces/{ws}/todos/{id}/complete", user(post(complete_todo)))
        .route("/v1/workspaces/{ws}/exports", user(post(start_export)))
        .route("/v1/workspaces/{ws}/ingest-endpoints", user(post(create_ingest_endpoint)));
    let signed =
        platform_auth::ingest::SignedIngest::new(Arc::new(DbIngestSecrets(db.clone())), Arc::new(InboxDeduplicates));
    let ingest_chain = Arc::new(AuthChain::new().with(Arc::new(signed)));
    let signed_routes = Router::new().route(
        "/v1/ingest/{endpoint}",
        post(ingest)
            .route_layer(axum::middleware::from_fn(ids_are_uuids))
            .route_layer(axum::middleware::from_fn_with_state(ingest_chain, platform_auth::layer::authenticate)),
    );
    let app = Router::new()
        .route("/v1/auth/register", post(register).route_layer(login_limit.clone()))
        .route("/v1/auth/login", post(login).route_layer(login_limit))
        .merge(authenticated)
        .merge(signed_routes)
        .with_state(state)
        .merge(Router::new().route("/files/{*key}", get(download)).with_state(files))
        .route("/", get(page))
        .merge(hub.routes());

    let mut contract = Contract::new("todo", env!("CARGO_PKG_VERSION"))
        .with_api_version("1")
        .with_events_version("1")
        .with_openapi(TodoApi::openapi())
        .with_check(Arc::new(db) as Arc<dyn HealthCheck>)
        .with_check(Arc::clone(&bus) as Arc<dyn HealthCheck>)
        .with_check(Arc::clone(&hub) as Arc<dyn HealthCheck>)
        .with_check(Arc::clone(&jobs) as Arc<dyn HealthCheck>)
        .with_check(Arc::clone(&store) as Arc<dyn HealthCheck>);
    if settings.events {
        contract = contract.with_check(relay as Arc<dyn HealthCheck>);
    }
    if let platform_db::schema::MigrationState::UpToDate(version) = report.state {
        contract = contract.with_migration_version(version);
    }
    let router = contract.apply(app);
    Ok(Service { router, contract, hub })
}

/// `GET /`: a page that signs in, adds and completes todos, and shows the workspace's
/// events live from `/ws`.
async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("page.html"))
}

/// Runs the service until SIGTERM or Ctrl-C: the effective configuration and every
/// dependency (latency, version) logged before it binds; in-flight requests drained.
pub async fn run(settings: Settings) -> Result<()> {
    let stop = CancellationToken::new();
    for (k, v) in settings.effective() {
        tracing::info!(target: "todo", "{k}={v}");
    }
    let service = build(&settings, stop.clone()).await?;
    service.contract.log_startup().await;
    let listener = tokio::net::TcpListener::bind(&settings.addr)
        .await
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("cannot listen on {}: {e}", settings.addr)))?;
    let addr = listener.local_addr().map_err(|e| Error::internal(e.to_string()))?;
    println!(
        "todo is up: open http://{addr}/ (the API at http://{addr}/swagger/, health at http://{addr}/up, \
         events at ws://{addr}/ws)"
    );
    let shutdown = service.contract.shutdown();
    let served = platform_core::http::serve(listener, service.router, shutdown).await;
    stop.cancel();
    served.map_err(|e| Error::internal(format!("serving stopped: {e}")))
}
