//! The pool handle, transactions and the dispatch onto each database's module.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use futures::future::BoxFuture;
use platform_core::{CheckOutcome, Error, HealthCheck, Result};
use tracing::Instrument;

#[allow(unused_imports)]
use crate::driver::Driver as _;
use crate::schema::MigrationState;
use crate::{DbOptions, Dialect, Row, Statement};

pub(crate) enum Pool {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "mysql")]
    Mysql(sqlx::MySqlPool),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "sqlserver")]
    SqlServer(crate::sqlserver::SqlServerPool),
    #[cfg(feature = "oracle")]
    Oracle(crate::oracle::OraclePool),
}

pub(crate) enum TxConn {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    #[cfg(feature = "mysql")]
    Mysql(sqlx::Transaction<'static, sqlx::MySql>),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    #[cfg(feature = "sqlserver")]
    SqlServer(crate::sqlserver::SqlServerTx),
    #[cfg(feature = "oracle")]
    Oracle(crate::oracle::OracleTx),
}

/// Runs `$body` with `$p` bound to the concrete pool and `$m` naming its [`Driver`](crate::driver::Driver).
macro_rules! on_pool {
    ($pool:expr, $p:ident, $m:ident => $body:expr) => {
        match $pool {
            #[cfg(feature = "postgres")]
            $crate::db::Pool::Postgres($p) => {
                #[allow(unused_imports)]
                use $crate::driver::Driver as _;
                #[allow(non_camel_case_types, dead_code)]
                type $m = $crate::postgres::Postgres;
                $body
            }
            #[cfg(feature = "mysql")]
            $crate::db::Pool::Mysql($p) => {
                #[allow(unused_imports)]
                use $crate::driver::Driver as _;
                #[allow(non_camel_case_types, dead_code)]
                type $m = $crate::mysql::Mysql;
                $body
            }
            #[cfg(feature = "sqlite")]
            $crate::db::Pool::Sqlite($p) => {
                #[allow(unused_imports)]
                use $crate::driver::Driver as _;
                #[allow(non_camel_case_types, dead_code)]
                type $m = $crate::sqlite::Sqlite;
                $body
            }
            #[cfg(feature = "sqlserver")]
            $crate::db::Pool::SqlServer($p) => {
                #[allow(non_camel_case_types, dead_code)]
                type $m = $crate::sqlserver::SqlServer;
                $body
            }
            #[cfg(feature = "oracle")]
            $crate::db::Pool::Oracle($p) => {
                #[allow(non_camel_case_types, dead_code)]
                type $m = $crate::oracle::Oracle;
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// Runs `$body` with `$c` bound to the transaction's connection and `$m` its driver.
macro_rules! on_tx {
    ($conn:expr, $c:ident, $m:ident => $body:expr) => {
        match $conn {
            #[cfg(feature = "postgres")]
            $crate::db::TxConn::Postgres(t) => {
                #[allow(unused_imports)]
                use $crate::driver::Driver as _;
                #[allow(non_camel_case_types, dead_code)]
                type $m = $crate::postgres::Postgres;
                let $c = &mut **t;
                $body
            }
            #[cfg(feature = "mysql")]
            $crate::db::TxConn::Mysql(t) => {
                #[allow(unused_imports)]
                use $crate::driver::Driver as _;
                #[allow(non_camel_case_types, dead_code)]
                type $m = $crate::mysql::Mysql;
                let $c = &mut **t;
                $body
            }
            #[cfg(feature = "sqlite")]
            $crate::db::TxConn::Sqlite(t) => {
                #[allow(unused_imports)]
                use $crate::driver::Driver as _;
                #[allow(non_camel_case_types, dead_code)]
                type $m = $crate::sqlite::Sqlite;
                let $c = &mut **t;
                $body
            }
            #[cfg(feature = "sqlserver")]
            $crate::db::TxConn::SqlServer(t) => {
                #[allow(non_camel_case_types, dead_code)]
                type $m = $crate::sqlserver::SqlServer;
                let $c = &mut *t;
                $body
            }
            #[cfg(feature = "oracle")]
            $crate::db::TxConn::Oracle(t) => {
                #[allow(non_camel_case_types, dead_code)]
                type $m = $crate::oracle::Oracle;
                let $c = &mut *t;
                $body
            }
        }
    };
}
pub(crate) use on_tx;

#[cfg(feature = "postgres")]
impl From<sqlx::Transaction<'static, sqlx::Postgres>> for TxConn {
    fn from(t: sqlx::Transaction<'static, sqlx::Postgres>) -> Self {
        Self::Postgres(t)
    }
}

#[cfg(feature = "mysql")]
impl From<sqlx::Transaction<'static, sqlx::MySql>> for TxConn {
    fn from(t: sqlx::Transaction<'static, sqlx::MySql>) -> Self {
        Self::Mysql(t)
    }
}

#[cfg(feature = "sqlite")]
impl From<sqlx::Transaction<'static, sqlx::Sqlite>> for TxConn {
    fn from(t: sqlx::Transaction<'static, sqlx::Sqlite>) -> Self {
        Self::Sqlite(t)
    }
}

#[cfg(feature = "sqlserver")]
impl From<crate::sqlserver::SqlServerTx> for TxConn {
    fn from(t: crate::sqlserver::SqlServerTx) -> Self {
        Self::SqlServer(t)
    }
}

#[cfg(feature = "oracle")]
impl From<crate::oracle::OracleTx> for TxConn {
    fn from(t: crate::oracle::OracleTx) -> Self {
        Self::Oracle(t)
    }
}

struct Inner {
    pool: Pool,
    options: DbOptions,
    migration_state: Mutex<Option<MigrationState>>,
}

/// A database: a connection pool and everything run on it.
///
/// Cheap to clone (one `Arc`). Opened with [`open`](crate::open); see the crate docs.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db").field("options", &self.inner.options).field("pool", &self.pool_status()).finish()
    }
}

impl fmt::Display for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Db({})", self.inner.options.masked())
    }
}

/// How busy the pool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The most connections the pool opens.
    pub max_size: u32,
    /// Connections open now.
    pub size: u32,
    /// Of those, idle.
    pub idle: u32,
}

impl Db {
    pub(crate) async fn connect(options: DbOptions) -> Result<Self> {
        let span = tracing::info_span!("db.open", backend = options.dialect.name(), url = %options.masked());
        let pool = async {
            match options.dialect {
                #[cfg(feature = "postgres")]
                Dialect::Postgres => crate::postgres::Postgres::connect(&options).await.map(Pool::Postgres),
                #[cfg(feature = "mysql")]
                Dialect::Mysql => crate::mysql::Mysql::connect(&options).await.map(Pool::Mysql),
                #[cfg(feature = "sqlite")]
                Dialect::Sqlite => crate::sqlite::Sqlite::connect(&options).await.map(Pool::Sqlite),
                #[cfg(feature = "sqlserver")]
                Dialect::SqlServer => crate::sqlserver::SqlServer::connect(&options).await.map(Pool::SqlServer),
                #[cfg(feature = "oracle")]
                Dialect::Oracle => crate::oracle::Oracle::connect(&options).await.map(Pool::Oracle),
                #[allow(unreachable_patterns)]
                other => Err(Error::invalid_input(format!("the `{}` feature is not enabled", other.feature()))),
            }
        }
        .instrument(span)
        .await
        .map_err(|e| e.with_op("open"))?;
        Ok(Self::from_pool(pool, options))
    }

    pub(crate) fn from_pool(pool: Pool, options: DbOptions) -> Self {
        Self { inner: Arc::new(Inner { pool, options, migration_state: Mutex::new(None) }) }
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The dialect statements are rendered in.
    pub fn dialect(&self) -> Dialect {
        self.inner.options.dialect
    }

    /// The options it was opened with.
    pub fn options(&self) -> &DbOptions {
        &self.inner.options
    }

    /// The sqlx pool, for PostgreSQL-specific work.
    #[cfg(feature = "postgres")]
    pub fn as_postgres(&self) -> Option<&sqlx::PgPool> {
        #[allow(irrefutable_let_patterns)]
        if let Pool::Postgres(p) = &self.inner.pool { Some(p) } else { None }
    }

    /// The sqlx pool, for MySQL-specific work.
    #[cfg(feature = "mysql")]
    pub fn as_mysql(&self) -> Option<&sqlx::MySqlPool> {
        #[allow(irrefutable_let_patterns)]
        if let Pool::Mysql(p) = &self.inner.pool { Some(p) } else { None }
    }

    /// The sqlx pool, for SQLite-specific work.
    #[cfg(feature = "sqlite")]
    pub fn as_sqlite(&self) -> Option<&sqlx::SqlitePool> {
        #[allow(irrefutable_let_patterns)]
        if let Pool::Sqlite(p) = &self.inner.pool { Some(p) } else { None }
    }

    /// Pool size and idle connections.
    pub fn pool_status(&self) -> PoolStatus {
        let max_size = self.inner.options.max_connections;
        on_pool!(&self.inner.pool, p, _m => PoolStatus { max_size, size: p.size(), idle: u32::try_from(p.num_idle()).unwrap_or(u32::MAX) })
    }

    /// Runs a statement; returns the number of rows it affected.
    pub async fn execute(&self, stmt: &(impl Statement + ?Sized)) -> Result<u64> {
        let (sql, values) = stmt.render(self.dialect());
        let span = tracing::debug_span!("db.execute", backend = self.dialect().name(), sql = %sql);
        on_pool!(&self.inner.pool, p, m => m::execute(p, sql, values).instrument(span).await)
    }

    /// Runs a query and returns all rows.
    pub async fn fetch_all(&self, stmt: &(impl Statement + ?Sized)) -> Result<Vec<Row>> {
        let (sql, values) = stmt.render(self.dialect());
        let span = tracing::debug_span!("db.fetch", backend = self.dialect().name(), sql = %sql);
        on_pool!(&self.inner.pool, p, m => m::fetch_all(p, sql, values).instrument(span).await)
    }

    /// Runs a query and returns its first row, if any.
    pub async fn fetch_optional(&self, stmt: &(impl Statement + ?Sized)) -> Result<Option<Row>> {
        Ok(self.fetch_all(stmt).await?.into_iter().next())
    }

    /// Runs a query that must return a row; `NotFound` when it returns none.
    pub async fn fetch_one(&self, stmt: &(impl Statement + ?Sized)) -> Result<Row> {
        self.fetch_optional(stmt).await?.ok_or_else(|| Error::not_found("the query returned no row").with_op("fetch"))
    }

    /// Starts a transaction; it rolls back when dropped without [`Tx::commit`].
    pub async fn begin(&self) -> Result<Tx> {
        let conn = on_pool!(&self.inner.pool, p, m => TxConn::from(m::begin(p).await?));
        Ok(Tx { conn, dialect: self.dialect(), tenant: None })
    }

    /// Runs `f` in a transaction: committed when it returns `Ok`, rolled back on `Err`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> platform_db::Result<()> {
    /// # let db = platform_db::open("sqlite::memory:").await?;
    /// use platform_db::Sql;
    /// db.execute(&Sql::new("CREATE TABLE t (n INTEGER)")).await?;
    /// let n = db
    ///     .tx(|tx| {
    ///         Box::pin(async move {
    ///             tx.execute(&Sql::new("INSERT INTO t VALUES (?)").bind(1)).await?;
    ///             tx.fetch_one(&Sql::new("SELECT COUNT(*) AS n FROM t")).await?.get::<i64>("n")
    ///         })
    ///     })
    ///     .await?;
    /// assert_eq!(n, 1);
    /// # Ok(()) }
    /// ```
    pub async fn tx<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<T>> + Send,
    {
        let tx = self.begin().await?;
        tx.run(f).await
    }

    /// The server's version string (`PostgreSQL 15.20`, `10.11.19-MariaDB`, `SQLite 3.46.0`).
    pub async fn server_version(&self) -> Result<String> {
        on_pool!(&self.inner.pool, p, m => m::server_version(p).await)
    }

    /// What the last migration run or check found, if one ran in this process.
    pub fn migration_state(&self) -> Option<MigrationState> {
        self.inner.migration_state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn set_migration_state(&self, state: MigrationState) {
        *self.inner.migration_state.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(state);
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        on_pool!(&self.inner.pool, p, _m => p.close().await);
    }
}

#[async_trait]
impl HealthCheck for Db {
    fn name(&self) -> String {
        self.dialect().name().to_owned()
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        let version = self.server_version().await.map_err(|e| e.with_op("health"))?;
        let latency = started.elapsed();
        match self.migration_state() {
            Some(MigrationState::Pending(n)) => {
                Err(Error::unavailable(format!("{n} migration(s) pending")).with_backend("db").with_op("health"))
            }
            Some(MigrationState::Drift(diff)) => {
                Err(Error::conflict(format!("schema drift: {diff}")).with_backend("db").with_op("health"))
            }
            _ => Ok(CheckOutcome::new(latency).with_version(version)),
        }
    }
}

/// A transaction. Rolls back when dropped without [`commit`](Self::commit).
pub struct Tx {
    pub(crate) conn: TxConn,
    pub(crate) dialect: Dialect,
    pub(crate) tenant: Option<String>,
}

impl fmt::Debug for Tx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx").field("dialect", &self.dialect).field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

impl Tx {
    /// The dialect statements are rendered in.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The tenant set by [`Db::with_tenant`], if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Runs a statement in the transaction; returns the number of rows it affected.
    pub async fn execute(&mut self, stmt: &(impl Statement + ?Sized)) -> Result<u64> {
        let (sql, values) = stmt.render(self.dialect);
        let span = tracing::debug_span!("db.execute", backend = self.dialect.name(), sql = %sql);
        on_tx!(&mut self.conn, c, m => m::execute(c, sql, values).instrument(span).await)
    }

    /// Runs a query in the transaction and returns all rows.
    pub async fn fetch_all(&mut self, stmt: &(impl Statement + ?Sized)) -> Result<Vec<Row>> {
        let (sql, values) = stmt.render(self.dialect);
        let span = tracing::debug_span!("db.fetch", backend = self.dialect.name(), sql = %sql);
        on_tx!(&mut self.conn, c, m => m::fetch_all(c, sql, values).instrument(span).await)
    }

    /// Runs a query and returns its first row, if any.
    pub async fn fetch_optional(&mut self, stmt: &(impl Statement + ?Sized)) -> Result<Option<Row>> {
        Ok(self.fetch_all(stmt).await?.into_iter().next())
    }

    /// Runs a query that must return a row; `NotFound` when it returns none.
    pub async fn fetch_one(&mut self, stmt: &(impl Statement + ?Sized)) -> Result<Row> {
        self.fetch_optional(stmt).await?.ok_or_else(|| Error::not_found("the query returned no row").with_op("fetch"))
    }

    /// Commits.
    pub async fn commit(self) -> Result<()> {
        match self.conn {
            #[cfg(feature = "postgres")]
            TxConn::Postgres(t) => t.commit().await.map_err(crate::postgres::map_err),
            #[cfg(feature = "mysql")]
            TxConn::Mysql(t) => t.commit().await.map_err(crate::mysql::map_err),
            #[cfg(feature = "sqlite")]
            TxConn::Sqlite(t) => t.commit().await.map_err(crate::sqlite::map_err),
            #[cfg(feature = "sqlserver")]
            TxConn::SqlServer(t) => t.commit().await,
            #[cfg(feature = "oracle")]
            TxConn::Oracle(t) => t.commit().await,
        }
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<()> {
        match self.conn {
            #[cfg(feature = "postgres")]
            TxConn::Postgres(t) => t.rollback().await.map_err(crate::postgres::map_err),
            #[cfg(feature = "mysql")]
            TxConn::Mysql(t) => t.rollback().await.map_err(crate::mysql::map_err),
            #[cfg(feature = "sqlite")]
            TxConn::Sqlite(t) => t.rollback().await.map_err(crate::sqlite::map_err),
            #[cfg(feature = "sqlserver")]
            TxConn::SqlServer(t) => t.rollback().await,
            #[cfg(feature = "oracle")]
            TxConn::Oracle(t) => t.rollback().await,
        }
    }

    /// Runs `f`, then commits on `Ok` and rolls back on `Err`.
    pub(crate) async fn run<T, F>(mut self, f: F) -> Result<T>
    where
        T: Send,
        F: for<'t> FnOnce(&'t mut Self) -> BoxFuture<'t, Result<T>> + Send,
    {
        match f(&mut self).await {
            Ok(v) => {
                self.commit().await?;
                Ok(v)
            }
            Err(e) => {
                // A failed rollback leaves nothing behind: the connection drops the transaction.
                let _ = self.rollback().await;
                Err(e)
            }
        }
    }
}
