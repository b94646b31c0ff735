//! The interface each database module (`postgres`, `mysql`, `sqlite`) implements, and
//! what they share. `db.rs` and `migrate.rs` dispatch onto it; the database modules
//! depend on this module, never on those. SQL Server's module (tiberius, not sqlx)
//! answers the same calls with inherent functions, so a build with only `sqlserver`
//! leaves the sqlx half of this module unused.
#![cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code, unused_imports, unused_macros)
)]

use std::time::Duration;

use platform_core::{Error, Result};

use crate::schema::Schema;
use crate::{DbOptions, Row};

/// What holds a migration lock besides the transaction (MySQL: its own connection).
pub(crate) type Guard = Option<Box<dyn std::any::Any + Send>>;

/// A driver's connection.
pub(crate) type Conn<D> = <<D as Driver>::Database as sqlx::Database>::Connection;

/// A driver's pool.
pub(crate) type PoolOf<D> = sqlx::Pool<<D as Driver>::Database>;

/// One database: what `Db` and the migrator need of it.
pub(crate) trait Driver: Sized {
    /// The sqlx database.
    type Database: sqlx::Database;

    /// Maps the driver's errors onto the portable kinds.
    fn map_err(e: sqlx::Error) -> Error;

    /// Opens the pool.
    async fn connect(o: &DbOptions) -> Result<PoolOf<Self>>;

    /// Starts a transaction.
    async fn begin(pool: &PoolOf<Self>) -> Result<sqlx::Transaction<'static, Self::Database>> {
        pool.begin().await.map_err(Self::map_err)
    }

    /// The server's name and version, for health.
    async fn server_version(pool: &PoolOf<Self>) -> Result<String>;

    /// A transaction holding the migration lock, waiting at most `timeout`.
    async fn lock_for_migration(
        pool: &PoolOf<Self>,
        timeout: Duration,
    ) -> Result<(sqlx::Transaction<'static, Self::Database>, Guard)>;

    /// Lets go of what [`lock_for_migration`](Self::lock_for_migration) held besides
    /// its transaction.
    async fn unlock_after_migration(_guard: Guard) -> Result<()> {
        Ok(())
    }

    /// Whether `table` exists where migrations create tables.
    async fn table_exists(conn: &mut Conn<Self>, table: &str) -> Result<bool>;

    /// The tables, columns and indexes where migrations create them.
    async fn live_schema(conn: &mut Conn<Self>) -> Result<Schema>;

    /// Refuses, before anything is applied, a role that cannot migrate; the
    /// migrations table, created first, stops one otherwise.
    async fn check_can_migrate(_conn: &mut Conn<Self>) -> Result<()> {
        Ok(())
    }

    /// Runs one statement; the rows it affected.
    async fn execute<'c, E>(ex: E, sql: String, values: sea_query::Values) -> Result<u64>
    where
        E: sqlx::Executor<'c, Database = Self::Database>;

    /// Runs statements separated by `;`, unprepared.
    async fn execute_script<'c, E>(ex: E, sql: String) -> Result<()>
    where
        E: sqlx::Executor<'c, Database = Self::Database>;

    /// Runs a query; its rows as portable values.
    async fn fetch_all<'c, E>(ex: E, sql: String, values: sea_query::Values) -> Result<Vec<Row>>
    where
        E: sqlx::Executor<'c, Database = Self::Database>;
}

/// `execute`, `execute_script` and `fetch_all` of a [`Driver`] impl, written once for
/// every database: each module expands it inside its impl.
macro_rules! sql_fns {
    ($db:ty, $decode:path, $map_err:path) => {
        async fn execute<'c, E>(ex: E, sql: String, values: sea_query::Values) -> platform_core::Result<u64>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            sqlx::query_with(sqlx::AssertSqlSafe(sql), sea_query_sqlx::SqlxValues(values))
                .execute(ex)
                .await
                .map(|r| r.rows_affected())
                .map_err($map_err)
        }

        async fn execute_script<'c, E>(ex: E, sql: String) -> platform_core::Result<()>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(ex).await.map(|_| ()).map_err($map_err)
        }

        async fn fetch_all<'c, E>(
            ex: E,
            sql: String,
            values: sea_query::Values,
        ) -> platform_core::Result<Vec<$crate::Row>>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), sea_query_sqlx::SqlxValues(values))
                .fetch_all(ex)
                .await
                .map_err($map_err)?;
            let Some(first) = rows.first() else { return Ok(Vec::new()) };
            let columns: std::sync::Arc<[String]> =
                sqlx::Row::columns(first).iter().map(|c| sqlx::Column::name(c).to_owned()).collect();
            rows.iter()
                .map(|row| {
                    let values = columns
                        .iter()
                        .enumerate()
                        .map(|(i, name)| {
                            let raw = sqlx::Row::try_get_raw(row, i).map_err($map_err)?;
                            if sqlx::ValueRef::is_null(&raw) {
                                return Ok($crate::Value::Null);
                            }
                            let ty = sqlx::TypeInfo::name(&*sqlx::ValueRef::type_info(&raw)).to_owned();
                            $decode(row, i, name, &ty)
                        })
                        .collect::<platform_core::Result<Vec<_>>>()?;
                    Ok($crate::Row::new(std::sync::Arc::clone(&columns), values))
                })
                .collect()
        }
    };
}
pub(crate) use sql_fns;

pub(crate) use platform_core::sql::map_sqlx;

/// An error for a column type with no portable reading.
pub(crate) fn unsupported_type(backend: &'static str, column: &str, ty: &str) -> Error {
    Error::new(
        platform_core::ErrorKind::Unsupported,
        format!("column {column:?} has type {ty}, which has no portable reading (cast it in the query)"),
    )
    .with_backend(backend)
    .with_op("fetch")
}

pub(crate) fn pool_options<DB: sqlx::Database>(o: &DbOptions) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(o.max_connections)
        .min_connections(o.min_connections)
        .acquire_timeout(o.acquire_timeout)
        .idle_timeout(o.idle_timeout)
        .max_lifetime(o.max_lifetime)
}

/// The lock holder's error when the migration lock was not free in time.
pub(crate) fn lock_timeout_error(backend: &'static str, timeout: Duration) -> Error {
    Error::new(
        platform_core::ErrorKind::Timeout,
        format!("another instance held the migration lock for longer than lock_timeout ({timeout:?})"),
    )
    .with_backend(backend)
    .with_op("migrate")
}
