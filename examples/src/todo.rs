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
//! - The contract: `/up`, `/livez`, `/readyz`, `/v1/contract`, `/openapi`, `/swagger/`,
//!   problem+json errors with a correlation id.
//!
//! Configuration ([`Settings::from_env`]): `DATABASE_URL` (`sqlite://todo.db`),
//! `EVENTS_URL` (`memory://todo`), `BROADCAST_URL` (`memory://todo`), `SHARED_WS_KEY`
//! (made up per start when unset), `TODO_ADDR` (`127.0.0.1:8080`).

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
use platform_db::http::{Idempotent, StoredResponse};
use platform_db::migrate::{Migration, Migrator};
use platform_db::{Db, Dialect, Sql, Tx};
use platform_events::EventBus;
use platform_events::hub::{Access, Hub, HubConfig};
use platform_events::relay::{self, Relay, RelayConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi as _;

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
            ("JWT_SIGNING_KEY", if self.jwt_signing_key.is_some() { "****" } else { "(made up per start)" }.to_owned()),
        ]
    }
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

/// A todo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Todo {
    /// Its id.
    pub id: String,
    /// The workspace it belongs to.
    pub workspace_id: String,
    /// What to do.
    pub title: String,
    /// Whether it is done.
    pub done: bool,
    /// When it was created (Unix milliseconds).
    pub created_at: i64,
    /// When it last changed (Unix milliseconds).
    pub updated_at: i64,
}

/// A workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Workspace {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
}

/// An email and a password (and, once TOTP is on, the code of the user's app).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Credentials {
    /// The email address.
    pub email: String,
    /// The password (8 to 256 characters).
    pub password: String,
    /// The 6-digit code of the user's authenticator app, when TOTP is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<String>,
}

/// TOTP being turned on: the URI the user's app scans.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TotpEnrolment {
    /// `otpauth://totp/…`, for a QR code.
    pub otpauth_uri: String,
}

/// A code of the user's app.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TotpCode {
    /// The 6-digit code.
    pub code: String,
}

/// A registered user.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    /// Its id.
    pub id: String,
    /// Its email address.
    pub email: String,
}

/// An access token.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Token {
    /// The bearer token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds it is good for.
    pub expires_in: u64,
}

/// What creating a workspace takes.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewWorkspace {
    /// Its name (1 to 200 characters).
    pub name: String,
}

/// What creating a todo takes.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewTodo {
    /// What to do (1 to 500 characters).
    pub title: String,
}

/// What changing a todo takes; absent fields stay.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TodoPatch {
    /// A new title.
    #[serde(default)]
    pub title: Option<String>,
    /// Done or not.
    #[serde(default)]
    pub done: Option<bool>,
}

macro_rules! todo_event {
    ($name:ident, $type:literal) => {
        /// A todo event.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub struct $name {
            /// The todo as it is after the change.
            pub todo: Todo,
        }

        impl Event for $name {
            const TYPE: &'static str = $type;
            const VERSION: u32 = 1;
        }
    };
}

todo_event!(TodoCreated, "todo.created");
todo_event!(TodoUpdated, "todo.updated");
todo_event!(TodoCompleted, "todo.completed");
todo_event!(TodoDeleted, "todo.deleted");

#[derive(Clone)]
struct AppState {
    db: Db,
    passwords: Arc<Passwords>,
    totp: Arc<platform_auth::totp::Totp>,
    minter: Arc<TokenMinter>,
    hub: Arc<Hub>,
    jobs: Arc<dyn platform_queue::Queue>,
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

fn check_email(email: &str) -> Result<()> {
    check_len("email", email, 254)?;
    let ok = email.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    if !ok {
        return Err(Error::invalid_input("email is not an address").with_detail("email", "not an address"));
    }
    Ok(())
}

/// Registers a user.
#[utoipa::path(post, path = "/v1/auth/register", request_body = Credentials, tag = "auth",
    responses((status = 201, description = "Registered", body = User),
        (status = 409, description = "The email is taken", body = platform_core::Problem),
        (status = 400, description = "Invalid input", body = platform_core::Problem)))]
async fn register(State(st): State<AppState>, Json(c): Json<Credentials>) -> Result<(StatusCode, Json<User>)> {
    check_email(&c.email)?;
    if !(8..=256).contains(&c.password.chars().count()) {
        return Err(Error::invalid_input("password must be 8 to 256 characters").with_detail("password", "length"));
    }
    let passwords = Arc::clone(&st.passwords);
    let password = c.password.clone();
    let hash = tokio::task::spawn_blocking(move || passwords.hash(&password))
        .await
        .map_err(|e| Error::internal(format!("hashing stopped: {e}")))??;
    let id = uuid::Uuid::now_v7().to_string();
    let email = c.email.to_lowercase();
    let insert = Sql::new("INSERT INTO users (id, email, password_hash, created_at) VALUES (?, ?, ?, ?)")
        .bind(id.clone())
        .bind(email.clone())
        .bind(hash)
        .bind(now_ms());
    st.db.execute(&insert).await.map_err(|e| {
        if e.kind() == ErrorKind::AlreadyExists {
            Error::new(ErrorKind::Conflict, "that email is registered")
        } else {
            e
        }
    })?;
    Ok((StatusCode::CREATED, Json(User { id, email })))
}

/// Logs in: an access token for the user.
#[utoipa::path(post, path = "/v1/auth/login", request_body = Credentials, tag = "auth",
    responses((status = 200, description = "Logged in", body = Token),
        (status = 401, description = "Wrong email or password", body = platform_core::Problem)))]
async fn login(State(st): State<AppState>, Json(c): Json<Credentials>) -> Result<Json<Token>> {
    let row = st
        .db
        .fetch_optional(
            &Sql::new("SELECT id, password_hash, totp_secret, totp_on FROM users WHERE email = ?")
                .bind(c.email.to_lowercase()),
        )
        .await?;
    let passwords = Arc::clone(&st.passwords);
    let totp_secret = match &row {
        Some(r) if r.get::<bool>("totp_on")? => r.get::<Option<String>>("totp_secret")?,
        _ => None,
    };
    let found = row.map(|r| Ok::<_, Error>((r.get::<String>("id")?, r.get::<String>("password_hash")?))).transpose()?;
    let password = c.password.clone();
    let (user, check) = tokio::task::spawn_blocking(move || match found {
        Some((id, hash)) => passwords.verify(&password, &hash).map(|check| (Some(id), check)),
        // The same work for an unknown email, so timing tells nothing.
        None => Ok((None, passwords.verify_unknown(&password))),
    })
    .await
    .map_err(|e| Error::internal(format!("verifying stopped: {e}")))??;
    let user = match (user, check) {
        (Some(user), PasswordCheck::Right | PasswordCheck::RightRehash(_)) => user,
        _ => return Err(Error::new(ErrorKind::Unauthenticated, "wrong email or password")),
    };
    // The second factor, once the user turned it on: each code taken once.
    if let Some(secret) = totp_secret {
        let code = c.totp.as_deref().ok_or_else(|| {
            Error::new(ErrorKind::Unauthenticated, "this account needs the code of its authenticator app")
                .with_detail("totp", "required")
        })?;
        st.totp.check(&user, &decode_totp(&secret)?, code, unix_secs())?;
    }
    let access_token = st.minter.mint(&user, AUDIENCE, &[])?;
    Ok(Json(Token { access_token, token_type: "Bearer".into(), expires_in: TOKEN_TTL.as_secs() }))
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn decode_totp(secret: &str) -> Result<platform_core::Secret<Vec<u8>>> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .map_err(|_| Error::internal("a stored TOTP secret is not base64"))?;
    Ok(platform_core::Secret::new(bytes))
}

/// Starts turning TOTP on: a new secret, kept until a code of it confirms it.
#[utoipa::path(post, path = "/v1/auth/totp", tag = "auth",
    responses((status = 200, description = "Scan this, then confirm with a code", body = TotpEnrolment)),
    security(("bearer" = [])))]
async fn enrol_totp(State(st): State<AppState>, who: Principal) -> Result<Json<TotpEnrolment>> {
    use base64::Engine as _;
    let row =
        st.db.fetch_one(&Sql::new("SELECT email, totp_on FROM users WHERE id = ?").bind(who.subject.clone())).await?;
    if row.get::<bool>("totp_on")? {
        return Err(Error::new(ErrorKind::Conflict, "TOTP is on already"));
    }
    let enrolment = st.totp.enrol(&row.get::<String>("email")?)?;
    let secret = base64::engine::general_purpose::STANDARD.encode(enrolment.secret.expose());
    st.db.execute(&Sql::new("UPDATE users SET totp_secret = ? WHERE id = ?").bind(secret).bind(who.subject)).await?;
    Ok(Json(TotpEnrolment { otpauth_uri: enrolment.uri.expose().clone() }))
}

/// Turns TOTP on with a code of the new secret: from then on, logins need a code.
#[utoipa::path(post, path = "/v1/auth/totp/confirm", request_body = TotpCode, tag = "auth",
    responses((status = 204, description = "On"),
        (status = 401, description = "Wrong code", body = platform_core::Problem)),
    security(("bearer" = [])))]
async fn confirm_totp(State(st): State<AppState>, who: Principal, Json(code): Json<TotpCode>) -> Result<StatusCode> {
    let row =
        st.db.fetch_one(&Sql::new("SELECT totp_secret FROM users WHERE id = ?").bind(who.subject.clone())).await?;
    let secret = row
        .get::<Option<String>>("totp_secret")?
        .ok_or_else(|| Error::new(ErrorKind::Conflict, "start with POST /v1/auth/totp"))?;
    st.totp.check(&who.subject, &decode_totp(&secret)?, &code.code, unix_secs())?;
    st.db.execute(&Sql::new("UPDATE users SET totp_on = ? WHERE id = ?").bind(true).bind(who.subject)).await?;
    Ok(StatusCode::NO_CONTENT)
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

fn stored<T: Serialize>(status: StatusCode, value: &T) -> Result<StoredResponse> {
    StoredResponse::json(status, value)
}

/// Creates a workspace; its creator is its first member.
#[utoipa::path(post, path = "/v1/workspaces", request_body = NewWorkspace, tag = "workspaces",
    params(("Idempotency-Key" = String, Header, description = "Makes a retry safe")),
    responses((status = 201, description = "Created", body = Workspace)),
    security(("bearer" = [])))]
async fn create_workspace(State(st): State<AppState>, who: Principal, idem: Idempotent) -> Response {
    let new: NewWorkspace = match idem.json().and_then(|n: NewWorkspace| check_len("name", &n.name, 200).map(|()| n)) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    idem.run(&st.db, move |tx| {
        Box::pin(async move {
            let ws = Workspace { id: uuid::Uuid::now_v7().to_string(), name: new.name };
            let insert = Sql::new("INSERT INTO workspaces (id, name, owner_id, created_at) VALUES (?, ?, ?, ?)")
                .bind(ws.id.clone())
                .bind(ws.name.clone())
                .bind(who.subject.clone())
                .bind(now_ms());
            tx.execute(&insert).await?;
            let member = Sql::new("INSERT INTO members (workspace_id, user_id) VALUES (?, ?)")
                .bind(ws.id.clone())
                .bind(who.subject.clone());
            tx.execute(&member).await?;
            stored(StatusCode::CREATED, &ws)
        })
    })
    .await
}

/// The workspaces one is a member of.
#[utoipa::path(get, path = "/v1/workspaces", tag = "workspaces",
    responses((status = 200, description = "Mine", body = [Workspace])), security(("bearer" = [])))]
async fn list_workspaces(State(st): State<AppState>, who: Principal) -> Result<Json<Vec<Workspace>>> {
    let rows = st
        .db
        .fetch_all(
            &Sql::new(
                "SELECT w.id, w.name FROM workspaces w JOIN members m ON m.workspace_id = w.id \
                 WHERE m.user_id = ? ORDER BY w.created_at, w.id",
            )
            .bind(who.subject),
        )
        .await?;
    let list = rows.iter().map(|r| Ok(Workspace { id: r.get("id")?, name: r.get("name")? })).collect::<Result<_>>()?;
    Ok(Json(list))
}

fn todo_of(r: &platform_db::Row) -> Result<Todo> {
    Ok(Todo {
        id: r.get("id")?,
        workspace_id: r.get("workspace_id")?,
        title: r.get("title")?,
        done: r.get("done")?,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
    })
}

const TODO_COLUMNS: &str = "id, workspace_id, title, done, created_at, updated_at";

async fn find_todo(tx: &mut Tx, id: &str) -> Result<Todo> {
    let ws = tx.tenant().unwrap_or_default().to_owned();
    let sql = format!("SELECT {TODO_COLUMNS} FROM todos WHERE id = ? AND workspace_id = ?");
    let row = tx.fetch_optional(&Sql::new(sql).bind(id).bind(ws)).await?;
    row.as_ref().map(todo_of).transpose()?.ok_or_else(|| Error::not_found(format!("todo {id} does not exist")))
}

async fn insert_todo(tx: &mut Tx, todo: &Todo) -> Result<()> {
    let insert = Sql::new(format!("INSERT INTO todos ({TODO_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"))
        .bind(todo.id.clone())
        .bind(todo.workspace_id.clone())
        .bind(todo.title.clone())
        .bind(todo.done)
        .bind(todo.created_at)
        .bind(todo.updated_at);
    tx.execute(&insert).await.map(|_| ())
}

/// Writes `event` about `todo` to the outbox, in the change's transaction.
async fn stage<E: Event>(tx: &mut Tx, event: E, ws: &str) -> Result<()> {
    let envelope = Envelope::new(event).with_tenant(ws).into_json()?;
    relay::stage(tx, &envelope.event_type.clone(), &envelope).await
}

/// Creates a todo.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/todos", request_body = NewTodo, tag = "todos",
    params(("ws" = String, Path, description = "The workspace"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe")),
    responses((status = 201, description = "Created", body = Todo),
        (status = 404, description = "No such workspace", body = platform_core::Problem)),
    security(("bearer" = [])))]
async fn create_todo(State(st): State<AppState>, who: Principal, Path(ws): Path<String>, idem: Idempotent) -> Response {
    let new: NewTodo = match idem.json().and_then(|n: NewTodo| check_len("title", &n.title, 500).map(|()| n)) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    idem.run(&st.db, move |tx| {
        Box::pin(async move {
            tx.enter_tenant(&ws).await?;
            require_member(tx, &ws, &who.subject).await?;
            let now = now_ms();
            let todo = Todo {
                id: uuid::Uuid::now_v7().to_string(),
                workspace_id: ws.clone(),
                title: new.title,
                done: false,
                created_at: now,
                updated_at: now,
            };
            insert_todo(tx, &todo).await?;
            stage(tx, TodoCreated { todo: todo.clone() }, &ws).await?;
            stored(StatusCode::CREATED, &todo)
        })
    })
    .await
}

/// The workspace's todos, oldest first.
#[utoipa::path(get, path = "/v1/workspaces/{ws}/todos", tag = "todos",
    params(("ws" = String, Path, description = "The workspace")),
    responses((status = 200, description = "Its todos", body = [Todo]),
        (status = 404, description = "No such workspace", body = platform_core::Problem)),
    security(("bearer" = [])))]
async fn list_todos(State(st): State<AppState>, who: Principal, Path(ws): Path<String>) -> Result<Json<Vec<Todo>>> {
    let todos = st
        .db
        .with_tenant(&ws.clone(), move |tx| {
            Box::pin(async move {
                require_member(tx, &ws, &who.subject).await?;
                let sql = format!("SELECT {TODO_COLUMNS} FROM todos WHERE workspace_id = ? ORDER BY created_at, id");
                let rows = tx.fetch_all(&Sql::new(sql).bind(ws)).await?;
                rows.iter().map(todo_of).collect::<Result<Vec<_>>>()
            })
        })
        .await?;
    Ok(Json(todos))
}

/// One todo.
#[utoipa::path(get, path = "/v1/workspaces/{ws}/todos/{id}", tag = "todos",
    params(("ws" = String, Path, description = "The workspace"), ("id" = String, Path, description = "The todo")),
    responses((status = 200, description = "The todo", body = Todo),
        (status = 404, description = "No such todo", body = platform_core::Problem)),
    security(("bearer" = [])))]
async fn get_todo(
    State(st): State<AppState>,
    who: Principal,
    Path((ws, id)): Path<(String, String)>,
) -> Result<Json<Todo>> {
    let todo = st
        .db
        .with_tenant(&ws.clone(), move |tx| {
            Box::pin(async move {
                require_member(tx, &ws, &who.subject).await?;
                find_todo(tx, &id).await
            })
        })
        .await?;
    Ok(Json(todo))
}

/// What a change does.
enum Change {
    Patch(TodoPatch),
    Complete,
    Delete,
}

async fn change(st: AppState, who: Principal, ws: String, id: String, idem: Idempotent, what: Change) -> Response {
    idem.run(&st.db, move |tx| {
        Box::pin(async move {
            tx.enter_tenant(&ws).await?;
            require_member(tx, &ws, &who.subject).await?;
            let mut todo = find_todo(tx, &id).await?;
            let was_done = todo.done;
            match what {
                Change::Delete => {
                    let delete =
                        Sql::new("DELETE FROM todos WHERE id = ? AND workspace_id = ?").bind(id).bind(ws.clone());
                    tx.execute(&delete).await?;
                    stage(tx, TodoDeleted { todo }, &ws).await?;
                    return Ok(StoredResponse::empty(StatusCode::NO_CONTENT));
                }
                Change::Complete => todo.done = true,
                Change::Patch(patch) => {
                    if let Some(title) = patch.title {
                        check_len("title", &title, 500)?;
                        todo.title = title;
                    }
                    if let Some(done) = patch.done {
                        todo.done = done;
                    }
                }
            }
            todo.updated_at = now_ms();
            let update =
                Sql::new("UPDATE todos SET title = ?, done = ?, updated_at = ? WHERE id = ? AND workspace_id = ?")
                    .bind(todo.title.clone())
                    .bind(todo.done)
                    .bind(todo.updated_at)
                    .bind(todo.id.clone())
                    .bind(ws.clone());
            tx.execute(&update).await?;
            // Done now and not before: completed; anything else: updated.
            if todo.done && !was_done {
                stage(tx, TodoCompleted { todo: todo.clone() }, &ws).await?;
            } else {
                stage(tx, TodoUpdated { todo: todo.clone() }, &ws).await?;
            }
            stored(StatusCode::OK, &todo)
        })
    })
    .await
}

/// Changes a todo's title or state.
#[utoipa::path(patch, path = "/v1/workspaces/{ws}/todos/{id}", request_body = TodoPatch, tag = "todos",
    params(("ws" = String, Path, description = "The workspace"), ("id" = String, Path, description = "The todo"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe")),
    responses((status = 200, description = "Changed", body = Todo),
        (status = 404, description = "No such todo", body = platform_core::Problem)),
    security(("bearer" = [])))]
async fn update_todo(
    State(st): State<AppState>,
    who: Principal,
    Path((ws, id)): Path<(String, String)>,
    idem: Idempotent,
) -> Response {
    match idem.json::<TodoPatch>() {
        Ok(patch) => change(st, who, ws, id, idem, Change::Patch(patch)).await,
        Err(e) => e.into_response(),
    }
}

/// Marks a todo done.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/todos/{id}/complete", tag = "todos",
    params(("ws" = String, Path, description = "The workspace"), ("id" = String, Path, description = "The todo"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe")),
    responses((status = 200, description = "Done", body = Todo),
        (status = 404, description = "No such todo", body = platform_core::Problem)),
    security(("bearer" = [])))]
async fn complete_todo(
    State(st): State<AppState>,
    who: Principal,
    Path((ws, id)): Path<(String, String)>,
    idem: Idempotent,
) -> Response {
    change(st, who, ws, id, idem, Change::Complete).await
}

/// Deletes a todo.
#[utoipa::path(delete, path = "/v1/workspaces/{ws}/todos/{id}", tag = "todos",
    params(("ws" = String, Path, description = "The workspace"), ("id" = String, Path, description = "The todo"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe")),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such todo", body = platform_core::Problem)),
    security(("bearer" = [])))]
async fn delete_todo(
    State(st): State<AppState>,
    who: Principal,
    Path((ws, id)): Path<(String, String)>,
    idem: Idempotent,
) -> Response {
    change(st, who, ws, id, idem, Change::Delete).await
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

/// The `/ws` credential of a user: its access token (`?access_token=` from a browser,
/// or `Bearer`), with the workspaces it is a member of as scopes `workspace:{id}`.
#[derive(Debug)]
struct WsUser {
    jwt: Arc<Jwt>,
    db: Db,
}

#[async_trait::async_trait]
impl Authenticator for WsUser {
    fn method(&self) -> &'static str {
        "jwt"
    }

    async fn authenticate(&self, request: &RequestParts<'_>) -> Result<AuthOutcome> {
        let AuthOutcome::Authenticated(user) = self.jwt.authenticate(request).await? else {
            return Ok(AuthOutcome::Absent);
        };
        let rows = self
            .db
            .fetch_all(&Sql::new("SELECT workspace_id FROM members WHERE user_id = ?").bind(user.subject.clone()))
            .await?;
        let scopes = rows.iter().map(|r| r.get::<String>("workspace_id").map(|w| format!("workspace:{w}")));
        let scopes = scopes.collect::<Result<Vec<_>>>()?;
        Ok(AuthOutcome::Authenticated(user.with_scopes(scopes)))
    }
}

/// Who may do what on `/ws`: the shared key anything; a user subscribes to
/// `workspaces.{ws}.…` of its own workspaces and to `jobs.{id}.events` of a job whose id
/// it was given, with no wildcard, and publishes on `jobs.enqueue` only.
fn ws_authorizer(who: &Principal, channel: &str, access: Access) -> bool {
    if who.method == "shared_key" {
        return true;
    }
    if access == Access::Publish {
        // Checked by the hook against the user's workspaces.
        return channel == platform_events::hub::JOBS_ENQUEUE;
    }
    if channel.contains(['*', '>']) {
        return false;
    }
    // A job's channel: its id is the capability, handed only to who started it.
    if let Some(job) = channel.strip_prefix("jobs.").and_then(|rest| rest.strip_suffix(".events")) {
        return !job.is_empty() && !job.contains('.');
    }
    let ws = channel.strip_prefix("workspaces.").and_then(|rest| rest.split('.').next());
    ws.is_some_and(|ws| who.scopes.contains(&format!("workspace:{ws}")))
}

/// The hub channel of a workspace's todo events.
pub fn channel_of(ws: &str) -> String {
    format!("workspaces.{ws}.todos")
}

/// Moves todo events from the bus to the hub, one consumer group for every instance of
/// the service (each event is shown once, through the broadcast every node shares).
async fn forward(bus: Arc<dyn EventBus>, hub: Arc<Hub>, stop: CancellationToken) {
    let group = loop {
        match bus.subscribe("todo.>", "todo-hub").await {
            Ok(g) => break g,
            Err(e) => {
                tracing::warn!(error = %e, "subscribing to todo events failed; again in 1 s");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    while !stop.is_cancelled() {
        let batch = tokio::select! {
            () = stop.cancelled() => return,
            b = group.receive(64, Duration::from_secs(1)) => b,
        };
        let deliveries = match batch {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "receiving todo events failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for d in deliveries {
            let event = d.envelope();
            let Some(ws) = event.tenant_id.clone() else {
                let _ = d.dead_letter("a todo event without its workspace").await;
                continue;
            };
            let frame = json!({
                "type": event.full_type(), "event_id": event.event_id, "occurred_at": event.occurred_at.unix_timestamp(),
                "data": event.payload,
            });
            match hub.publish(&channel_of(&ws), frame).await {
                Ok(()) => {
                    let _ = d.ack().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the hub refused a todo event; redelivered in 1 s");
                    let _ = d.nack(Some(Duration::from_secs(1))).await;
                }
            }
        }
    }
}

/// What an export job carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExportJob {
    workspace_id: String,
    requested_by: String,
}

/// An export under way: its job id, the channel its progress goes to, and where in the
/// hub's history to start following it so that nothing is missed.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportStarted {
    /// The job's id.
    pub job_id: String,
    /// Subscribe here on `/ws` for `queued`, `running`, `progress`, `succeeded` (with
    /// `result.url`, a download link) or `failed`.
    pub channel: String,
    /// Give this as `since` when subscribing: the events from the job's start on.
    pub since: Since,
}

/// A position in the hub's history.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Since {
    /// The history's epoch.
    pub epoch: String,
    /// The offset.
    pub offset: u64,
}

/// Starts an export of the workspace's todos: a job on the queue, its progress on
/// `/ws`, a download link and a notification when it is done.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/exports", tag = "exports",
    params(("ws" = String, Path, description = "The workspace"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe")),
    responses((status = 202, description = "Started", body = ExportStarted),
        (status = 404, description = "No such workspace", body = platform_core::Problem)),
    security(("bearer" = [])))]
async fn start_export(
    State(st): State<AppState>,
    who: Principal,
    Path(ws): Path<String>,
    idem: Idempotent,
) -> Response {
    let (hub, queue) = (Arc::clone(&st.hub), Arc::clone(&st.jobs));
    idem.run(&st.db, move |tx| {
        Box::pin(async move {
            require_member(tx, &ws, &who.subject).await?;
            let job = ExportJob { workspace_id: ws, requested_by: who.subject };
            let started = enqueue_export(&hub, queue.as_ref(), job).await?;
            stored(StatusCode::ACCEPTED, &started)
        })
    })
    .await
}

/// Enqueues `job`: where to follow it from is taken before, so nothing is missed.
async fn enqueue_export(hub: &Hub, queue: &dyn platform_queue::Queue, job: ExportJob) -> Result<ExportStarted> {
    let (epoch, offset) = hub.position();
    let job_id = hub.enqueue_job(queue, serde_json::to_value(&job)?).await?;
    Ok(ExportStarted { channel: format!("jobs.{job_id}.events"), job_id, since: Since { epoch, offset } })
}

/// `{"op":"publish","channel":"jobs.enqueue","data":{"workspace_id":…}}` on `/ws`: an
/// export of a workspace the connection's user is a member of (as its token said when
/// it connected); answered with what `POST …/exports` answers.
fn ws_enqueue(
    hub: Arc<std::sync::OnceLock<Arc<Hub>>>,
    queue: Arc<dyn platform_queue::Queue>,
) -> platform_events::hub::PublishHook {
    Arc::new(move |who: &Principal, data: serde_json::Value| {
        let (hub, queue) = (Arc::clone(&hub), Arc::clone(&queue));
        let ws = data.get("workspace_id").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
        let member = who.method == "shared_key" || who.scopes.contains(&format!("workspace:{ws}"));
        let requested_by = who.subject.clone();
        Box::pin(async move {
            if ws.is_empty() || !member {
                return Err(Error::not_found(format!("workspace {ws:?} does not exist")));
            }
            let hub = hub.get().ok_or_else(|| Error::new(ErrorKind::Unavailable, "starting"))?;
            let job = ExportJob { workspace_id: ws, requested_by };
            let started = enqueue_export(hub, queue.as_ref(), job).await?;
            Ok(serde_json::to_value(started)?)
        })
    })
}

/// What the export worker needs.
#[derive(Clone)]
struct Exporter {
    db: Db,
    hub: Arc<Hub>,
    store: Arc<dyn platform_store::BlobStore>,
    notify: Arc<platform_notify::Dispatcher>,
}

impl Exporter {
    async fn run(&self, delivery: Arc<platform_queue::Delivery>) -> Result<()> {
        use platform_events::hub::JobEvent;
        use platform_store::BlobStoreExt as _;
        let id = platform_events::hub::job_id(&delivery).unwrap_or_default().to_owned();
        let job: ExportJob = delivery.json()?;
        self.hub.job_event(&id, JobEvent::Running).await?;
        let outcome = async {
            let ws = job.workspace_id.clone();
            let todos = self
                .db
                .with_tenant(&ws.clone(), move |tx| {
                    Box::pin(async move {
                        let sql =
                            format!("SELECT {TODO_COLUMNS} FROM todos WHERE workspace_id = ? ORDER BY created_at, id");
                        let rows = tx.fetch_all(&Sql::new(sql).bind(ws)).await?;
                        rows.iter().map(todo_of).collect::<Result<Vec<_>>>()
                    })
                })
                .await?;
            self.hub.job_event(&id, JobEvent::Progress(50)).await?;
            let body = serde_json::to_vec(&json!({
                "workspace_id": job.workspace_id, "exported_at": now_ms(), "todos": todos,
            }))?;
            let key = format!("exports/{}/{id}.json", job.workspace_id);
            self.store.as_ref().put_bytes(&key, body).await?;
            let url = self.store.presign(platform_store::PresignMethod::Get, &key, Duration::from_secs(3600)).await?;
            Ok::<_, Error>((url, todos.len()))
        }
        .await;
        let (url, count) = match outcome {
            Ok(done) => done,
            Err(e) => {
                let last = delivery.attempt() >= 3;
                if last {
                    self.hub.job_event(&id, JobEvent::Failed(e.message().to_owned())).await?;
                }
                return Err(e);
            }
        };
        self.hub.job_event(&id, JobEvent::Succeeded(json!({"url": url.as_str(), "count": count}))).await?;
        let note = platform_notify::Notification::new(format!("{count} todos exported: {url}"))
            .title("Export ready")
            .tag("exports")
            .data("workspace_id", job.workspace_id.clone())
            .data("url", url.as_str())
            .with_id(id.clone());
        let report = self.notify.notify(&note, &platform_notify::Address::Configured).await;
        if !report.delivered() {
            tracing::warn!(target: "todo", job = %id, "the export notification was not delivered: {report:?}");
        }
        Ok(())
    }
}

/// Serves what the local store's presigned URLs point at (`/files/{key}?X-Platform-…`).
async fn download(
    State(files): State<Files>,
    Path(key): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response> {
    use platform_store::BlobStoreExt as _;
    let Some(verifier) = &files.verifier else { return Err(Error::not_found("no such file")) };
    let encoded: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
    let key = verifier.verify("GET", &encoded.replace("%2F", "/"), query.as_deref().unwrap_or_default())?;
    let bytes = files.store.as_ref().get_bytes(&key).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

#[derive(Clone)]
struct Files {
    store: Arc<dyn platform_store::BlobStore>,
    verifier: Option<Arc<platform_store::presign::Verifier>>,
}

/// The store URL with a presigning secret and base for the local stores (which have no
/// HTTP server of their own: the service serves `/files/`), and that secret.
fn with_presigning(store_url: &str, public_url: &str) -> Result<(String, Option<String>)> {
    let mut url =
        url::Url::parse(store_url).map_err(|e| Error::invalid_input(format!("STORE_URL is not a URL: {e}")))?;
    if !matches!(url.scheme(), "file" | "memory") {
        return Ok((store_url.to_owned(), None));
    }
    if let Some((_, secret)) = url.query_pairs().find(|(k, _)| k == "presign_secret") {
        return Ok((store_url.to_owned(), Some(secret.into_owned())));
    }
    let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let base = format!("{}/files/", public_url.trim_end_matches('/'));
    url.query_pairs_mut().append_pair("presign_secret", &secret).append_pair("presign_base", &base);
    Ok((url.to_string(), Some(secret)))
}

/// A signed-import endpoint of a workspace: another system posts todos to `url`,
/// signed as Standard Webhooks with `secret`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IngestEndpoint {
    /// Its id (the last segment of `url`).
    pub endpoint_id: String,
    /// Where to post: `/v1/ingest/{endpoint_id}`.
    pub url: String,
    /// The signing secret (`whsec_…`), shown once.
    pub secret: String,
}

/// What a signed import carries.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportBatch {
    /// The todos to create (at most 500).
    pub todos: Vec<NewTodo>,
}

/// What a signed import did.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Imported {
    /// Todos created by this delivery (0 for a repeated one).
    pub imported: usize,
    /// Whether this `webhook-id` was imported before (a sender's retry): nothing was
    /// done again.
    pub duplicate: bool,
}

/// Makes a signed-import endpoint for the workspace.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/ingest-endpoints", tag = "ingest",
    params(("ws" = String, Path, description = "The workspace"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe")),
    responses((status = 201, description = "Made", body = IngestEndpoint),
        (status = 404, description = "No such workspace", body = platform_core::Problem)),
    security(("bearer" = [])))]
async fn create_ingest_endpoint(
    State(st): State<AppState>,
    who: Principal,
    Path(ws): Path<String>,
    idem: Idempotent,
) -> Response {
    idem.run(&st.db, move |tx| {
        Box::pin(async move {
            require_member(tx, &ws, &who.subject).await?;
            let key: Vec<u8> =
                uuid::Uuid::new_v4().as_bytes().iter().chain(uuid::Uuid::new_v4().as_bytes()).copied().collect();
            let secret = {
                use base64::Engine as _;
                format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
            };
            let id = uuid::Uuid::now_v7().to_string();
            let insert =
                Sql::new("INSERT INTO ingest_endpoints (id, workspace_id, secret, created_at) VALUES (?, ?, ?, ?)")
                    .bind(id.clone())
                    .bind(ws)
                    .bind(secret.clone())
                    .bind(now_ms());
            tx.execute(&insert).await?;
            stored(StatusCode::CREATED, &IngestEndpoint { url: format!("/v1/ingest/{id}"), endpoint_id: id, secret })
        })
    })
    .await
}

/// Imports todos another system sends, signed (`webhook-id`, `webhook-timestamp`,
/// `webhook-signature`); each `webhook-id` is imported once, however often it comes.
#[utoipa::path(post, path = "/v1/ingest/{endpoint}", request_body = ImportBatch, tag = "ingest",
    params(("endpoint" = String, Path, description = "The endpoint"),
        ("webhook-id" = String, Header, description = "The delivery's id"),
        ("webhook-timestamp" = String, Header, description = "Seconds since the epoch"),
        ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256>`")),
    responses((status = 200, description = "Imported", body = Imported),
        (status = 401, description = "Not signed with the endpoint's secret", body = platform_core::Problem)))]
async fn ingest(
    State(st): State<AppState>,
    who: Principal,
    Path(endpoint): Path<String>,
    headers: axum::http::HeaderMap,
    Json(batch): Json<ImportBatch>,
) -> Result<Json<Imported>> {
    if who.method != "hmac" || who.subject != format!("ingest:{endpoint}") {
        return Err(Error::new(ErrorKind::Unauthenticated, "sign the delivery with the endpoint's secret"));
    }
    if batch.todos.len() > 500 {
        return Err(Error::invalid_input("at most 500 todos a delivery").with_detail("todos", "over 500"));
    }
    for t in &batch.todos {
        check_len("title", &t.title, 500)?;
    }
    let delivery = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let row = st
        .db
        .fetch_optional(&Sql::new("SELECT workspace_id FROM ingest_endpoints WHERE id = ?").bind(endpoint.clone()))
        .await?;
    let ws: String = row.ok_or_else(|| Error::not_found("no such endpoint"))?.get("workspace_id")?;
    let done = st
        .db
        .with_tenant(&ws.clone(), move |tx| {
            Box::pin(async move {
                if !platform_db::inbox::record(tx, &format!("ingest:{endpoint}"), &delivery).await? {
                    return Ok(Imported { imported: 0, duplicate: true });
                }
                let imported = batch.todos.len();
                for new in batch.todos {
                    let now = now_ms();
                    let todo = Todo {
                        id: uuid::Uuid::now_v7().to_string(),
                        workspace_id: ws.clone(),
                        title: new.title,
                        done: false,
                        created_at: now,
                        updated_at: now,
                    };
                    insert_todo(tx, &todo).await?;
                    stage(tx, TodoCreated { todo }, &ws).await?;
                }
                Ok(Imported { imported, duplicate: false })
            })
        })
        .await?;
    Ok(Json(done))
}

/// Endpoint secrets, from the database.
#[derive(Debug)]
struct DbIngestSecrets(Db);

#[async_trait::async_trait]
impl platform_auth::ingest::IngestSecrets for DbIngestSecrets {
    async fn secrets(&self, endpoint: &str) -> Result<Vec<platform_core::Secret<Vec<u8>>>> {
        let row =
            self.0.fetch_optional(&Sql::new("SELECT secret FROM ingest_endpoints WHERE id = ?").bind(endpoint)).await?;
        row.map(|r| platform_auth::ingest::decode_secret(&r.get::<String>("secret")?)).into_iter().collect()
    }
}

/// Repeated `webhook-id`s pass the signature check: the inbox (in the import's own
/// transaction) makes each one count once, so a sender's retry gets a 200 and a replayed
/// capture changes nothing.
#[derive(Debug)]
struct InboxDeduplicates;

#[async_trait::async_trait]
impl platform_auth::ingest::ReplayGuard for InboxDeduplicates {
    async fn first_seen(&self, _scope: &str, _id: &str, _ttl: Duration) -> Result<bool> {
        Ok(true)
    }
}

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

    let (store_url, secret) = with_presigning(&settings.store_url, &settings.public_url)?;
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
    let exporter =
        Exporter { db: db.clone(), hub: Arc::clone(&hub), store: Arc::clone(&store), notify: Arc::new(notify) };
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
    let r = Arc::clone(&relay);
    let s = stop.clone();
    tokio::spawn(async move { r.run(s).await });
    tokio::spawn(forward(Arc::clone(&bus), Arc::clone(&hub), stop.clone()));

    let state = AppState {
        db: db.clone(),
        passwords: Arc::new(Passwords::new()?),
        totp: Arc::new(platform_auth::totp::Totp::new("todo")),
        minter,
        hub: Arc::clone(&hub),
        jobs: Arc::clone(&jobs),
    };
    // Password guessing is slowed per client address; each user's requests per user.
    let limiter: Arc<dyn platform_core::http::RateLimiter> = Arc::new(platform_core::http::LocalLimiter::new());
    let login_limit = platform_core::http::RateLimit::new(
        Arc::clone(&limiter),
        platform_core::http::Policy::new("login", LOGIN_LIMIT, Duration::from_secs(60))?,
        platform_core::http::KeyBy::ClientIp,
    );
    let by_user: platform_core::http::KeyFn =
        Arc::new(|r: &axum::extract::Request| r.extensions().get::<Principal>().map(|p| p.subject.clone()));
    let write_limit = platform_core::http::RateLimit::new(
        limiter,
        platform_core::http::Policy::new("requests", REQUEST_LIMIT, Duration::from_secs(60))?,
        platform_core::http::KeyBy::With(by_user),
    );
    let files = Files {
        store: Arc::clone(&store),
        verifier: secret.map(|s| Arc::new(platform_store::presign::Verifier::new(s.into_bytes()))),
    };
    let authenticated = Router::new()
        .route("/v1/auth/totp", post(enrol_totp))
        .route("/v1/auth/totp/confirm", post(confirm_totp))
        .route("/v1/workspaces", post(create_workspace).get(list_workspaces))
        .route("/v1/workspaces/{ws}/todos", post(create_todo).get(list_todos))
        .route("/v1/workspaces/{ws}/todos/{id}", get(get_todo).patch(update_todo).delete(delete_todo))
        .route("/v1/workspaces/{ws}/todos/{id}/complete", post(complete_todo))
        .route("/v1/workspaces/{ws}/exports", post(start_export))
        .route("/v1/workspaces/{ws}/ingest-endpoints", post(create_ingest_endpoint))
        // Counted per user, so it runs inside the authentication.
        .route_layer(axum::middleware::from_fn_with_state(write_limit, platform_core::http::rate_limit))
        .layer(axum::middleware::from_fn_with_state(chain, platform_auth::layer::authenticate));
    let signed =
        platform_auth::ingest::SignedIngest::new(Arc::new(DbIngestSecrets(db.clone())), Arc::new(InboxDeduplicates));
    let ingest_chain = Arc::new(AuthChain::new().with(Arc::new(signed)));
    let signed_routes = Router::new()
        .route("/v1/ingest/{endpoint}", post(ingest))
        .layer(axum::middleware::from_fn_with_state(ingest_chain, platform_auth::layer::authenticate));
    let app = Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/login", post(login))
        .route_layer(axum::middleware::from_fn_with_state(login_limit, platform_core::http::rate_limit))
        .merge(authenticated)
        .merge(signed_routes)
        .with_state(state)
        .merge(Router::new().route("/files/{*key}", get(download)).with_state(files))
        .merge(hub.routes());

    let mut contract = Contract::new("todo", env!("CARGO_PKG_VERSION"))
        .with_api_version("1")
        .with_events_version("1")
        .with_openapi(TodoApi::openapi())
        .with_check(Arc::new(db) as Arc<dyn HealthCheck>)
        .with_check(Arc::clone(&bus) as Arc<dyn HealthCheck>)
        .with_check(relay as Arc<dyn HealthCheck>)
        .with_check(Arc::clone(&hub) as Arc<dyn HealthCheck>)
        .with_check(Arc::clone(&jobs) as Arc<dyn HealthCheck>)
        .with_check(Arc::clone(&store) as Arc<dyn HealthCheck>);
    if let platform_db::schema::MigrationState::UpToDate(version) = report.state {
        contract = contract.with_migration_version(version);
    }
    let router = contract.apply(app);
    Ok(Service { router, contract, hub })
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
    println!("todo is up: open http://{addr}/swagger/ (health at http://{addr}/up, events at ws://{addr}/ws)");
    let shutdown = service.contract.shutdown();
    let served = platform_core::http::serve(listener, service.router, shutdown).await;
    stop.cancel();
    served.map_err(|e| Error::internal(format!("serving stopped: {e}")))
}
