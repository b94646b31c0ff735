#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(any(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "sqlserver",
    feature = "oracle"
)))]
compile_error!("platform-db needs at least one of the features `sqlite`, `postgres`, `mysql`, `sqlserver`, `oracle`");

mod db;
mod driver;
#[cfg(feature = "http")]
pub mod http;
pub mod idempotency;
pub mod inbox;
pub mod migrate;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "oracle")]
pub mod oracle;
pub mod oracle_sql;
pub mod outbox;
#[cfg(any(feature = "sqlserver", feature = "oracle"))]
mod pooled;
#[cfg(feature = "postgres")]
pub mod postgres;
mod render;
pub mod schema;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "sqlserver")]
pub mod sqlserver;
mod stmt;
pub mod tenant;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tsql;
mod url;
mod value;

pub use db::{Db, PoolStatus, Tx};
pub use oracle_sql::OracleQueryBuilder;
pub use platform_core::{Error, ErrorKind, Result};
pub use sea_query;
pub use stmt::{Sql, Statement};
pub use tsql::SqlServerQueryBuilder;
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
    /// Microsoft SQL Server and Azure SQL (T-SQL).
    SqlServer,
    /// Oracle Database 19c and later.
    Oracle,
}

impl Dialect {
    /// The lowercase name: `postgres`, `mysql`, `sqlite`, `sqlserver`, `oracle`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Sqlite => "sqlite",
            Self::SqlServer => "sqlserver",
            Self::Oracle => "oracle",
        }
    }

    /// The cargo feature that enables it.
    pub fn feature(self) -> &'static str {
        self.name()
    }

    /// Whether DDL commits the transaction around it (MySQL, Oracle), so a migration
    /// cannot be undone by a rollback.
    pub fn ddl_commits(self) -> bool {
        matches!(self, Self::Mysql | Self::Oracle)
    }

    /// Whether this build has it.
    pub fn enabled(self) -> bool {
        match self {
            Self::Postgres => cfg!(feature = "postgres"),
            Self::Mysql => cfg!(feature = "mysql"),
            Self::Sqlite => cfg!(feature = "sqlite"),
            Self::SqlServer => cfg!(feature = "sqlserver"),
            Self::Oracle => cfg!(feature = "oracle"),
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every scheme this build can open.
pub fn schemes() -> Vec<&'static str> {
    let mut all = Vec::new();
    if Dialect::Postgres.enabled() {
        all.extend(["postgres", "postgresql"]);
    }
    if Dialect::Mysql.enabled() {
        all.extend(["mysql", "mariadb"]);
    }
    if Dialect::Sqlite.enabled() {
        all.push("sqlite");
    }
    if Dialect::SqlServer.enabled() {
        all.extend(["sqlserver", "mssql"]);
    }
    if Dialect::Oracle.enabled() {
        all.push("oracle");
    }
    all
}

/// Opens a pool from a URL (`postgres://…`, `mysql://…`, `mariadb://…`, `sqlite://path`,
/// `sqlite::memory:`, `sqlserver://…`, `oracle://…`) and checks the connection with one round trip.
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
