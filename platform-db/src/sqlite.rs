//! SQLite: `sqlite://data.db` (relative, created when missing), `sqlite:///abs/data.db`,
//! or `sqlite::memory:` (a private in-memory database on one connection).
//!
//! Files use WAL journaling and foreign keys are on. The busy timeout is the URL's
//! `lock_timeout`: a writer waits that long for another before failing. Migrations run
//! inside `BEGIN EXCLUSIVE`, which is also the migration lock. There is no row-level
//! security: [`Db::with_tenant`](crate::Db::with_tenant) only records the tenant for
//! [`tenant::filter`](crate::tenant::filter).

use std::str::FromStr;

use platform_core::{Error, ErrorKind, Result};
use sqlx::Row as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqliteRow};

use crate::driver::{Driver, Guard, lock_timeout_error, map_sqlx, pool_options, sql_fns, unsupported_type};
use crate::schema::Schema;
use crate::{DbOptions, Sql, Statement, Value};

/// Maps a sqlx error from SQLite onto the portable kinds, by extended result code.
pub(crate) fn map_err(e: sqlx::Error) -> Error {
    map_sqlx("sqlite", e, |db| platform_core::sql::sqlite_kind(db.code()?.parse().ok()?, db.message()))
}

/// Reads a non-null column of database type `ty`.
fn decode(row: &SqliteRow, i: usize, column: &str, ty: &str) -> Result<Value> {
    Ok(match ty {
        "INTEGER" | "BOOLEAN" => Value::Int(row.try_get_unchecked(i).map_err(map_err)?),
        "REAL" => Value::Float(row.try_get_unchecked(i).map_err(map_err)?),
        "TEXT" | "NUMERIC" | "DATE" | "TIME" | "DATETIME" => Value::Text(row.try_get_unchecked(i).map_err(map_err)?),
        "BLOB" => Value::Bytes(row.try_get_unchecked(i).map_err(map_err)?),
        other => return Err(unsupported_type("sqlite", column, other)),
    })
}

/// SQLite behind the [`Driver`] interface.
#[derive(Debug)]
pub(crate) struct Sqlite;

impl Driver for Sqlite {
    type Database = sqlx::Sqlite;

    fn map_err(e: sqlx::Error) -> Error {
        map_err(e)
    }

    sql_fns!(sqlx::Sqlite, decode, map_err);

    async fn connect(o: &DbOptions) -> Result<SqlitePool> {
        let mut options = SqliteConnectOptions::from_str(&o.driver_url)
            .map_err(map_err)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(o.lock_timeout);
        if !o.in_memory {
            options = options.journal_mode(SqliteJournalMode::Wal);
        }
        pool_options(o).connect_with(options).await.map_err(map_err)
    }

    /// `BEGIN IMMEDIATE`: a transaction takes the write lock when it starts, so two
    /// that read and then write never deadlock upgrading their locks.
    async fn begin(pool: &SqlitePool) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        pool.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)
    }

    async fn server_version(pool: &SqlitePool) -> Result<String> {
        let rows =
            Self::fetch_all(pool, "SELECT sqlite_version() AS v".to_owned(), sea_query::Values(Vec::new())).await?;
        Ok(format!("SQLite {}", rows.first().map(|r| r.get::<String>("v")).transpose()?.unwrap_or_default()))
    }

    async fn lock_for_migration(
        pool: &SqlitePool,
        timeout: std::time::Duration,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Sqlite>, Guard)> {
        match pool.begin_with("BEGIN EXCLUSIVE").await {
            Ok(tx) => Ok((tx, None)),
            Err(e) => {
                let e = map_err(e);
                Err(if e.kind() == ErrorKind::Unavailable { lock_timeout_error("sqlite", timeout) } else { e })
            }
        }
    }

    async fn table_exists(conn: &mut SqliteConnection, table: &str) -> Result<bool> {
        let (sql, values) = Sql::new("SELECT 1 AS one FROM sqlite_master WHERE type = 'table' AND name = ?")
            .bind(table)
            .render(crate::Dialect::Sqlite);
        Ok(!Self::fetch_all(conn, sql, values).await?.is_empty())
    }

    async fn live_schema(conn: &mut SqliteConnection) -> Result<Schema> {
        introspect(conn).await
    }
}

async fn introspect(conn: &mut SqliteConnection) -> Result<Schema> {
    let mut schema = Schema::default();
    let q = |s: &str| (s.to_owned(), sea_query::Values(Vec::new()));
    let (sql, values) = q("SELECT m.name AS t, p.name AS c, p.type AS ty, p.\"notnull\" AS nn, p.pk AS pk \
         FROM sqlite_master m JOIN pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'");
    for r in Sqlite::fetch_all(&mut *conn, sql, values).await? {
        let pk: i64 = r.get("pk")?;
        let ty: String = r.get("ty")?;
        let ty = if pk > 0 { format!("{ty} primary key {pk}") } else { ty };
        schema.column(&r.get::<String>("t")?, &r.get::<String>("c")?, ty, !r.get::<bool>("nn")?);
    }
    let (sql, values) = q("SELECT m.name AS t, il.name AS i, il.\"unique\" AS u, ii.name AS c \
         FROM sqlite_master m JOIN pragma_index_list(m.name) il JOIN pragma_index_info(il.name) ii \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' ORDER BY m.name, il.name, ii.seqno");
    schema.index_columns(&Sqlite::fetch_all(&mut *conn, sql, values).await?)?;
    Ok(schema)
}
