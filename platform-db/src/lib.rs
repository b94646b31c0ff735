//! SQL databases with one API on PostgreSQL, MySQL/MariaDB and SQLite.
//!
//! - [`Db`]: a pool opened from a URL ([`open`], [`open_from_env`]), statements written
//!   once with [sea-query](sea_query) and rendered for the database in use, portable
//!   [`Row`]s, transactions ([`Db::tx`], [`Db::begin`]), pool status and a
//!   [`HealthCheck`](platform_core::HealthCheck) that reports the server version and the
//!   migration state.
//! - [`migrate`]: embedded, checksummed migrations applied under a lock with a timeout
//!   on every database; a changed, unknown or skipped migration and any **drift** of the
//!   live schema from what the migrations produce refuse startup with a readable diff.
//! - [`tenant`]: [`Db::with_tenant`] runs work in a transaction scoped to a tenant
//!   (PostgreSQL row-level security), with a startup check that RLS really applies.
//! - [`idempotency`]: idempotency keys for HTTP mutations: a retry gets the stored
//!   response, never a second run.
//! - [`outbox`]: the transactional outbox table: enqueue in the caller's transaction,
//!   claim with `SKIP LOCKED`, mark sent.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> platform_db::Result<()> {
//! use platform_db::migrate::{Migration, Migrator};
//! use platform_db::{Sql, Statement};
//!
//! let db = platform_db::open("sqlite::memory:").await?;
//! Migrator::new(vec![Migration::new(1, "notes", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")])
//!     .run(&db)
//!     .await?;
//! db.execute(&Sql::new("INSERT INTO notes (id, body) VALUES (?, ?)").bind(1).bind("hello")).await?;
//! let row = db.fetch_one(&Sql::new("SELECT body FROM notes WHERE id = ?").bind(1)).await?;
//! assert_eq!(row.get::<String>("body")?, "hello");
//! # Ok(()) }
//! ```
//!
//! | | PostgreSQL | MySQL / MariaDB | SQLite |
//! |---|---|---|---|
//! | migration lock | `pg_advisory_xact_lock` + `lock_timeout` | `GET_LOCK(name, timeout)` | `BEGIN EXCLUSIVE` + busy timeout |
//! | migrations atomic | yes (one transaction) | no: DDL commits itself; a failed one is recorded and refuses startup | yes (one transaction) |
//! | drift check | scratch schema, rolled back | scratch database, dropped | scratch in-memory database |
//! | tenant scope | enforced by RLS (`app.tenant_id`) | helper filter only | helper filter only |
//! | outbox claim | `FOR UPDATE SKIP LOCKED` | `FOR UPDATE SKIP LOCKED` | one writer at a time |
//!
//! More databases (SQL Server, Oracle) come as further [`Dialect`]s and modules; the
//! document and search stores get their own traits.

#[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
compile_error!("platform-db needs at least one of the features `sqlite`, `postgres`, `mysql`");

mod db;
pub mod idempotency;
pub mod migrate;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod outbox;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod schema;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod stmt;
pub mod tenant;
#[cfg(feature = "testkit")]
pub mod testkit;
mod url;
mod value;

pub use db::{Db, PoolStatus, Tx};
pub use platform_core::{Error, ErrorKind, Result};
pub use sea_query;
pub use stmt::{Sql, Statement};
pub use url::DbOptions;
pub use value::{FromValue, Row, Value};

/// The SQL dialect of a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
    /// SQLite.
    Sqlite,
}

impl Dialect {
    /// The lowercase name: `postgres`, `mysql`, `sqlite`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Sqlite => "sqlite",
        }
    }

    /// The cargo feature that enables it.
    pub fn feature(self) -> &'static str {
        self.name()
    }

    /// Whether this build has it.
    pub fn enabled(self) -> bool {
        match self {
            Self::Postgres => cfg!(feature = "postgres"),
            Self::Mysql => cfg!(feature = "mysql"),
            Self::Sqlite => cfg!(feature = "sqlite"),
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Opens a pool from a URL (`postgres://…`, `mysql://…`, `mariadb://…`, `sqlite://path`,
/// `sqlite::memory:`) and checks the connection with one round trip.
pub async fn open(url: &str) -> Result<Db> {
    Db::connect(DbOptions::parse(url)?).await
}

/// Opens the database named by `{PREFIX}_URL` (`open_from_env("DATABASE")` reads
/// `DATABASE_URL`).
pub async fn open_from_env(prefix: &str) -> Result<Db> {
    let env = platform_core::config::Env::new(prefix);
    let url: String = env.require("URL")?;
    open(&url).await
}
