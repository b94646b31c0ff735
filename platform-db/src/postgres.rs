//! PostgreSQL: `postgres://user:pass@host:5432/db` (or `postgresql://`), plus the pool
//! parameters and `schema` (the `search_path` of every connection).
//!
//! Migrations run in one transaction under `pg_advisory_xact_lock` keyed on the database
//! and schema, waiting at most `lock_timeout` (transaction-scoped, so it is safe behind
//! PgBouncer in transaction mode). The drift check compares with the schema recorded by
//! the last run, so a role that owns its schema and has no `CREATE` on the database
//! migrates and is checked. Tenant scope is enforced by
//! row-level security (see [`tenant`](crate::tenant)).

use std::str::FromStr;

use platform_core::{Error, ErrorKind, Result};
use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgRow};

use crate::driver::{Driver, Guard, lock_timeout_error, map_sqlx, pool_options, sql_fns, unsupported_type};
use crate::schema::Schema;
use crate::{DbOptions, Dialect, Sql, Statement, Value};

/// Maps a sqlx error from PostgreSQL onto the portable kinds, by SQLSTATE.
pub(crate) fn map_err(e: sqlx::Error) -> Error {
    map_sqlx("postgres", e, |db| platform_core::sql::postgres_kind(&db.code()?))
}

/// Reads a non-null column of database type `ty`.
fn decode(row: &PgRow, i: usize, column: &str, ty: &str) -> Result<Value> {
    let e = map_err;
    Ok(match ty {
        "BOOL" => Value::Bool(row.try_get_unchecked(i).map_err(e)?),
        "INT2" => Value::Int(row.try_get_unchecked::<i16, _>(i).map_err(e)?.into()),
        "INT4" => Value::Int(row.try_get_unchecked::<i32, _>(i).map_err(e)?.into()),
        "INT8" => Value::Int(row.try_get_unchecked(i).map_err(e)?),
        "FLOAT4" => Value::Float(row.try_get_unchecked::<f32, _>(i).map_err(e)?.into()),
        "FLOAT8" => Value::Float(row.try_get_unchecked(i).map_err(e)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CITEXT" | "UNKNOWN" => {
            Value::Text(row.try_get_unchecked(i).map_err(e)?)
        }
        "BYTEA" => Value::Bytes(row.try_get_unchecked(i).map_err(e)?),
        "UUID" => Value::Uuid(row.try_get_unchecked(i).map_err(e)?),
        "TIMESTAMPTZ" => Value::Timestamp(row.try_get_unchecked(i).map_err(e)?),
        "TIMESTAMP" => {
            Value::Timestamp(row.try_get_unchecked::<time::PrimitiveDateTime, _>(i).map_err(e)?.assume_utc())
        }
        "DATE" => Value::Text(row.try_get_unchecked::<time::Date, _>(i).map_err(e)?.to_string()),
        "JSON" | "JSONB" => Value::Json(row.try_get_unchecked(i).map_err(e)?),
        "VOID" => Value::Null,
        other => return Err(unsupported_type("postgres", column, other)),
    })
}

fn no_values() -> sea_query::Values {
    sea_query::Values(Vec::new())
}

/// PostgreSQL behind the [`Driver`] interface.
#[derive(Debug)]
pub(crate) struct Postgres;

impl Driver for Postgres {
    type Database = sqlx::Postgres;

    fn map_err(e: sqlx::Error) -> Error {
        map_err(e)
    }

    sql_fns!(sqlx::Postgres, decode, map_err);

    async fn connect(o: &DbOptions) -> Result<PgPool> {
        let mut options = PgConnectOptions::from_str(&o.driver_url).map_err(map_err)?;
        if let Some(schema) = &o.schema {
            options = options.options([("search_path", schema.as_str())]);
        }
        pool_options(o).connect_with(options).await.map_err(map_err)
    }

    async fn server_version(pool: &PgPool) -> Result<String> {
        let rows =
            Self::fetch_all(pool, "SELECT current_setting('server_version') AS v".to_owned(), no_values()).await?;
        let v: String = rows.first().map(|r| r.get("v")).transpose()?.unwrap_or_default();
        Ok(format!("PostgreSQL {}", v.split_whitespace().next().unwrap_or_default()))
    }

    async fn lock_for_migration(
        pool: &PgPool,
        timeout: std::time::Duration,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, Guard)> {
        let mut tx = pool.begin().await.map_err(map_err)?;
        Self::execute(&mut *tx, format!("SET LOCAL lock_timeout = '{}ms'", timeout.as_millis().max(1)), no_values())
            .await?;
        let lock = "SELECT pg_advisory_xact_lock(hashtext(current_database() || '.' || \
                    coalesce(current_schema(), '') || '.platform_db_migrations'))";
        if let Err(e) = Self::execute(&mut *tx, lock.to_owned(), no_values()).await {
            return Err(if e.kind() == ErrorKind::Timeout { lock_timeout_error("postgres", timeout) } else { e });
        }
        Self::execute(&mut *tx, "SET LOCAL lock_timeout TO DEFAULT".to_owned(), no_values()).await?;
        Ok((tx, None))
    }

    async fn table_exists(conn: &mut PgConnection, table: &str) -> Result<bool> {
        let (sql, values) = Sql::new("SELECT to_regclass(?) IS NOT NULL AS e").bind(table).render(Dialect::Postgres);
        Self::fetch_all(conn, sql, values).await?.first().map_or(Ok(false), |r| r.get("e"))
    }

    async fn live_schema(conn: &mut PgConnection) -> Result<Schema> {
        let rows = Self::fetch_all(&mut *conn, "SELECT current_schema()::text AS s".to_owned(), no_values()).await?;
        let name: Option<String> = rows.first().map(|r| r.get("s")).transpose()?.flatten();
        let name =
            name.ok_or_else(|| Error::not_found("no schema on the search_path exists").with_backend("postgres"))?;
        introspect(conn, &name).await
    }

    /// Refuses, before anything is applied, a role that cannot create in its schema.
    async fn check_can_migrate(conn: &mut PgConnection) -> Result<()> {
        let sql = "SELECT current_user::text AS u, current_schema()::text AS s, \
                   coalesce(has_schema_privilege(current_schema(), 'CREATE'), false) AS c";
        let rows = Self::fetch_all(&mut *conn, sql.to_owned(), no_values()).await?;
        let Some(row) = rows.first() else { return Ok(()) };
        let (user, schema): (String, Option<String>) = (row.get("u")?, row.get("s")?);
        let Some(schema) = schema else {
            return Err(Error::not_found(format!(
                "role {user} has no schema to migrate: none on its search_path exists (create it, or set ?schema=)"
            ))
            .with_backend("postgres")
            .with_op("migrate"));
        };
        if !row.get::<bool>("c")? {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("role {user} lacks CREATE on schema {schema}, which migrations need (GRANT CREATE ON SCHEMA {schema} TO {user}, or make it the owner)"),
            )
            .with_backend("postgres")
            .with_op("migrate"));
        }
        Ok(())
    }
}

async fn introspect(conn: &mut PgConnection, schema_name: &str) -> Result<Schema> {
    let mut schema = Schema::default();
    let (sql, values) = Sql::new(
        "SELECT c.relname::text AS t, a.attname::text AS c, format_type(a.atttypid, a.atttypmod) AS ty, \
         a.attnotnull AS nn FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = ? AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(schema_name)
    .render(Dialect::Postgres);
    for r in Postgres::fetch_all(&mut *conn, sql, values).await? {
        schema.column(&r.get::<String>("t")?, &r.get::<String>("c")?, r.get("ty")?, !r.get::<bool>("nn")?);
    }
    let (sql, values) = Sql::new(
        "SELECT tablename::text AS t, indexname::text AS i, indexdef AS d FROM pg_indexes WHERE schemaname = ?",
    )
    .bind(schema_name)
    .render(Dialect::Postgres);
    let qualified = format!(" ON {schema_name}.");
    for r in Postgres::fetch_all(&mut *conn, sql, values).await? {
        let def = r.get::<String>("d")?.replace(&qualified, " ON ");
        let unique = if def.starts_with("CREATE UNIQUE") { "unique " } else { "" };
        let tail = def.split_once(" USING ").map_or(def.as_str(), |(_, t)| t);
        schema.index(&r.get::<String>("t")?, &r.get::<String>("i")?, format!("{unique}{tail}"));
    }
    Ok(schema)
}
