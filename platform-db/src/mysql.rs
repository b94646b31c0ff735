//! MySQL and MariaDB: `mysql://user:pass@host:3306/db` (or `mariadb://`), plus the pool
//! parameters.
//!
//! Migrations run under `GET_LOCK('<db>.platform_db_migrations', lock_timeout)`. MySQL
//! commits DDL implicitly, so a migration is not atomic: each is recorded as started
//! before it runs and as done after; one that fails partway refuses startup until the
//! schema is repaired by hand and its row deleted. The drift check compares with the
//! schema recorded by the last run, so a user with privileges on its own database only
//! (no `CREATE DATABASE`) migrates and is checked. No row-level security: tenant scope is the [`tenant::filter`](crate::tenant::filter)
//! helper only.

use std::str::FromStr;

use platform_core::{Error, Result};
use sqlx::Row as _;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlRow};

use crate::driver::{Driver, Guard, lock_timeout_error, map_sqlx, pool_options, sql_fns, unsupported_type};
use crate::schema::Schema;
use crate::{DbOptions, Dialect, Sql, Statement, Value};

/// Maps a sqlx error from MySQL or MariaDB onto the portable kinds, by error number.
pub(crate) fn map_err(e: sqlx::Error) -> Error {
    map_sqlx("mysql", e, |db| platform_core::sql::mysql_kind(db.try_downcast_ref::<MySqlDatabaseError>()?.number()))
}

/// Reads a non-null column of database type `ty`.
fn decode(row: &MySqlRow, i: usize, column: &str, ty: &str) -> Result<Value> {
    let e = map_err;
    Ok(match ty {
        "BOOLEAN" => Value::Bool(row.try_get_unchecked(i).map_err(e)?),
        "TINYINT" | "SMALLINT" | "INT" | "MEDIUMINT" | "BIGINT" | "TINYINT UNSIGNED" | "SMALLINT UNSIGNED"
        | "MEDIUMINT UNSIGNED" | "INT UNSIGNED" | "YEAR" => Value::Int(row.try_get_unchecked(i).map_err(e)?),
        "BIGINT UNSIGNED" => {
            let v: u64 = row.try_get_unchecked(i).map_err(e)?;
            i64::try_from(v).map(Value::Int).unwrap_or_else(|_| Value::Text(v.to_string()))
        }
        "FLOAT" => Value::Float(row.try_get_unchecked::<f32, _>(i).map_err(e)?.into()),
        "DOUBLE" => Value::Float(row.try_get_unchecked(i).map_err(e)?),
        "CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET" | "DECIMAL" => {
            Value::Text(row.try_get_unchecked(i).map_err(e)?)
        }
        "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" | "BIT" => {
            Value::Bytes(row.try_get_unchecked(i).map_err(e)?)
        }
        "DATETIME" | "TIMESTAMP" => {
            Value::Timestamp(row.try_get_unchecked::<time::PrimitiveDateTime, _>(i).map_err(e)?.assume_utc())
        }
        "DATE" => Value::Text(row.try_get_unchecked::<time::Date, _>(i).map_err(e)?.to_string()),
        "JSON" => Value::Json(row.try_get_unchecked(i).map_err(e)?),
        "NULL" => Value::Null,
        other => return Err(unsupported_type("mysql", column, other)),
    })
}

fn no_values() -> sea_query::Values {
    sea_query::Values(Vec::new())
}

/// MySQL and MariaDB behind the [`Driver`] interface.
#[derive(Debug)]
pub(crate) struct Mysql;

impl Driver for Mysql {
    type Database = sqlx::MySql;

    fn map_err(e: sqlx::Error) -> Error {
        map_err(e)
    }

    sql_fns!(sqlx::MySql, decode, map_err);

    async fn connect(o: &DbOptions) -> Result<MySqlPool> {
        let options = MySqlConnectOptions::from_str(&o.driver_url).map_err(map_err)?;
        pool_options(o).connect_with(options).await.map_err(map_err)
    }

    async fn server_version(pool: &MySqlPool) -> Result<String> {
        let rows = Self::fetch_all(pool, "SELECT VERSION() AS v".to_owned(), no_values()).await?;
        let v: String = rows.first().map(|r| r.get("v")).transpose()?.unwrap_or_default();
        Ok(if v.contains("MariaDB") {
            format!("MariaDB {}", v.split('-').next().unwrap_or_default())
        } else {
            format!("MySQL {v}")
        })
    }

    /// The lock is held by a connection of its own, outside the pool: if the migration is
    /// cancelled or panics, dropping it closes the session and the server frees the lock.
    async fn lock_for_migration(
        pool: &MySqlPool,
        timeout: std::time::Duration,
    ) -> Result<(sqlx::Transaction<'static, sqlx::MySql>, Guard)> {
        let mut holder = pool.acquire().await.map_err(map_err)?.detach();
        let secs = timeout.as_secs_f64().max(0.001);
        let (sql, values) =
            Sql::new(format!("SELECT GET_LOCK({LOCK_NAME}, ?) AS got")).bind(secs).render(Dialect::Mysql);
        let got: Option<i64> =
            Self::fetch_all(&mut holder, sql, values).await?.first().map(|r| r.get("got")).transpose()?.flatten();
        if got != Some(1) {
            return Err(lock_timeout_error("mysql", timeout));
        }
        let tx = pool.begin().await.map_err(map_err)?;
        Ok((tx, Some(Box::new(holder))))
    }

    async fn unlock_after_migration(guard: Guard) -> Result<()> {
        let Some(mut holder) = guard.and_then(|g| g.downcast::<MySqlConnection>().ok()) else { return Ok(()) };
        let released =
            Self::execute(&mut *holder, format!("DO RELEASE_LOCK({LOCK_NAME})"), no_values()).await.map(|_| ());
        let _ = sqlx::Connection::close(*holder).await;
        released
    }

    async fn table_exists(conn: &mut MySqlConnection, table: &str) -> Result<bool> {
        let (sql, values) = Sql::new(
            "SELECT 1 AS one FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
        )
        .bind(table)
        .render(Dialect::Mysql);
        Ok(!Self::fetch_all(conn, sql, values).await?.is_empty())
    }

    async fn live_schema(conn: &mut MySqlConnection) -> Result<Schema> {
        let database = current_database(conn).await?;
        introspect(conn, &database).await
    }
}

const LOCK_NAME: &str = "CONCAT(COALESCE(DATABASE(), ''), '.platform_db_migrations')";

async fn introspect(conn: &mut MySqlConnection, database: &str) -> Result<Schema> {
    let mut schema = Schema::default();
    let (sql, values) = Sql::new(
        "SELECT table_name AS t, column_name AS c, column_type AS ty, is_nullable AS n \
         FROM information_schema.columns WHERE table_schema = ?",
    )
    .bind(database)
    .render(Dialect::Mysql);
    for r in Mysql::fetch_all(&mut *conn, sql, values).await? {
        schema.column(&r.get::<String>("t")?, &r.get::<String>("c")?, r.get("ty")?, r.get::<String>("n")? == "YES");
    }
    let (sql, values) = Sql::new(
        "SELECT table_name AS t, index_name AS i, (non_unique = 0) AS u, column_name AS c \
         FROM information_schema.statistics WHERE table_schema = ? ORDER BY table_name, index_name, seq_in_index",
    )
    .bind(database)
    .render(Dialect::Mysql);
    schema.index_columns(&Mysql::fetch_all(&mut *conn, sql, values).await?)?;
    Ok(schema)
}

async fn current_database(conn: &mut MySqlConnection) -> Result<String> {
    let rows = Mysql::fetch_all(conn, "SELECT DATABASE() AS d".to_owned(), no_values()).await?;
    rows.first()
        .map(|r| r.get::<Option<String>>("d"))
        .transpose()?
        .flatten()
        .ok_or_else(|| Error::invalid_input("the database URL names no database").with_backend("mysql"))
}
