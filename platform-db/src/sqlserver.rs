//! SQL Server and Azure SQL: `sqlserver://user:password@host:1433/database` (or
//! `mssql://`), with tiberius over rustls and a deadpool pool.
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `encrypt` | `required` | TLS: `required` (the whole session), `on` (login and session when the server can), `off` (the login only), `not_supported` (none) |
//! | `trust_server_certificate` | `false` | accept any certificate (a test server's self-signed one) |
//! | `ca_file` | — | a PEM file of the CA to trust, besides the system's |
//! | `application_name` | — | shown in `sys.dm_exec_sessions` |
//!
//! The pool parameters of every database apply (`max_connections`, `acquire_timeout`,
//! `idle_timeout` and `max_lifetime` checked when a connection is taken,
//! `min_connections` opened at start, `lock_timeout` for migrations).
//!
//! Every connection runs with `XACT_ABORT ON` (an error inside a transaction rolls all of
//! it back, as PostgreSQL does), `QUOTED_IDENTIFIER ON` and the ANSI settings. Statements
//! are sent with `sp_executesql` and `@P1…` parameters; a statement without values is
//! sent as a batch when it returns rows.
//!
//! | portable type | SQL Server column |
//! |---|---|
//! | `bool` | `bit` |
//! | `i64`, `i32`, `i16` | `bigint`, `int`, `smallint` |
//! | `f64` | `float` |
//! | `String`, JSON | `nvarchar(n)`, `nvarchar(max)` |
//! | `Vec<u8>` | `varbinary(max)` |
//! | [`Uuid`](uuid::Uuid) | `uniqueidentifier` |
//! | [`OffsetDateTime`] | `datetimeoffset` (`datetime2` reads as UTC) |
//!
//! Migrations run in one transaction (DDL is transactional) under `sp_getapplock` with
//! `@LockOwner = 'Transaction'` and `lock_timeout`; the drift check reads
//! `INFORMATION_SCHEMA.COLUMNS` and `sys.indexes` of the login's default schema. No
//! row-level security is set up: tenant scope is the [`tenant::filter`](crate::tenant::filter)
//! helper only. Errors map by error number (2627 → `AlreadyExists`, 1205 → retryable
//! `Conflict`, 18456 → `Unauthenticated`, …; `platform_core::sql::sqlserver_kind`).

use std::borrow::Cow;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, RecycleResult};
use platform_core::{Error, ErrorKind, Result};
use tiberius::{AuthMethod, Client, ColumnData, Config, EncryptionLevel, FromSql, ToSql};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use crate::driver::{Guard, lock_timeout_error};
use crate::pooled::{HeldTx, Pooled, recycle_by_age};
use crate::schema::Schema;
use crate::{DbOptions, Dialect, Row, Sql, Statement, Value};

const BACKEND: &str = "sqlserver";

/// What every connection sets before its first statement.
pub(crate) const SESSION: &str = "SET XACT_ABORT ON; SET QUOTED_IDENTIFIER ON; SET ANSI_NULLS ON; \
    SET ANSI_PADDING ON; SET ANSI_WARNINGS ON; SET CONCAT_NULL_YIELDS_NULL ON; SET ARITHABORT ON";

type Conn = Client<Compat<TcpStream>>;

fn bad(key: &str, why: &str) -> Error {
    platform_core::config::url_error("database", key, why)
}

/// The tiberius configuration a `sqlserver://` URL describes; errors name the part.
pub(crate) fn config(raw: &str) -> Result<Config> {
    let masked = platform_core::mask_url(raw);
    let normalized = raw.strip_prefix("mssql:").map_or_else(|| raw.to_owned(), |rest| format!("sqlserver:{rest}"));
    let url = url::Url::parse(&normalized).map_err(|e| bad("url", &format!("{masked:?} is not a URL: {e}")))?;
    let mut config = Config::new();
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("host", "is missing"))?;
    config.host(host.trim_start_matches('[').trim_end_matches(']'));
    config.port(url.port().unwrap_or(1433));
    let database = url.path().trim_start_matches('/');
    if !database.is_empty() {
        config.database(platform_core::config::url_decode(database));
    }
    let user = platform_core::config::url_decode(url.username());
    if user.is_empty() {
        return Err(bad("user", "is missing (SQL Server logins need a user and password)"));
    }
    config.authentication(AuthMethod::sql_server(
        user,
        platform_core::config::url_decode(url.password().unwrap_or_default()),
    ));
    config.encryption(EncryptionLevel::Required);
    for (key, value) in url.query_pairs() {
        match &*key {
            "encrypt" => config.encryption(match &*value {
                "required" | "strict" | "true" => EncryptionLevel::Required,
                "on" => EncryptionLevel::On,
                "off" | "false" => EncryptionLevel::Off,
                "not_supported" => EncryptionLevel::NotSupported,
                other => {
                    return Err(bad("encrypt", &format!("{other:?} is not required, on, off or not_supported")));
                }
            }),
            "trust_server_certificate" => match &*value {
                "true" | "1" => config.trust_cert(),
                "false" | "0" => {}
                other => return Err(bad("trust_server_certificate", &format!("{other:?} is not true or false"))),
            },
            "ca_file" => {
                let pem =
                    std::fs::read(&*value).map_err(|e| bad("ca_file", &format!("{value:?} cannot be read: {e}")))?;
                config.trust_cert_ca_bundle(pem);
            }
            "application_name" => config.application_name(&*value),
            other => return Err(bad(other, "is not a SQL Server parameter")),
        }
    }
    Ok(config)
}

/// Maps a tiberius error onto the portable kinds, by SQL Server error number.
pub(crate) fn map_err(e: tiberius::error::Error) -> Error {
    use tiberius::error::Error as E;
    let (kind, retryable, message) = match &e {
        E::Server(t) => {
            let (kind, retryable) =
                platform_core::sql::sqlserver_kind(t.code()).unwrap_or((ErrorKind::Internal, false));
            (kind, retryable, format!("{} (error {})", t.message(), t.code()))
        }
        E::Io { .. } | E::Routing { .. } => (ErrorKind::Unavailable, true, e.to_string()),
        E::Tls(_) => (ErrorKind::Unavailable, false, e.to_string()),
        E::Conversion(_) | E::Encoding(_) | E::Utf8 | E::Utf16 | E::ParseInt(_) | E::BulkInput(_) => {
            (ErrorKind::InvalidInput, false, e.to_string())
        }
        _ => (ErrorKind::Internal, false, e.to_string()),
    };
    Error::new(kind, message).with_backend(BACKEND).with_retryable(retryable).with_source(e)
}

/// Opens and recycles connections.
#[derive(Debug)]
pub(crate) struct Manager {
    config: Config,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
}

impl managed::Manager for Manager {
    /// Boxed: a client holds its buffers inline.
    type Type = Box<Conn>;
    type Error = tiberius::error::Error;

    async fn create(&self) -> std::result::Result<Box<Conn>, tiberius::error::Error> {
        let tcp = TcpStream::connect(self.config.get_addr()).await?;
        tcp.set_nodelay(true)?;
        // Boxed: the TLS handshake and login make a large future.
        let mut client = Box::pin(Client::connect(self.config.clone(), tcp.compat_write())).await?;
        client.simple_query(SESSION).await?.into_results().await?;
        Ok(Box::new(client))
    }

    async fn recycle(&self, _conn: &mut Box<Conn>, metrics: &Metrics) -> RecycleResult<tiberius::error::Error> {
        recycle_by_age(metrics, self.idle_timeout, self.max_lifetime)
    }
}

/// The pool.
pub(crate) type SqlServerPool = Pooled<Manager>;

/// A transaction: a connection taken from the pool after `BEGIN TRANSACTION`.
pub(crate) type SqlServerTx = HeldTx<Manager>;

impl HeldTx<Manager> {
    fn conn(&mut self) -> Result<&mut Conn> {
        self.conn
            .as_deref_mut()
            .map(|c| &mut **c)
            .ok_or_else(|| Error::internal("the transaction has ended").with_backend(BACKEND))
    }

    async fn end(&mut self, sql: &str) -> Result<()> {
        let result = batch(self.conn()?, sql).await;
        if result.is_ok() {
            self.open = false;
        }
        result
    }

    pub(crate) async fn commit(mut self) -> Result<()> {
        self.end("COMMIT TRANSACTION").await
    }

    pub(crate) async fn rollback(mut self) -> Result<()> {
        self.end("IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION").await
    }
}

/// Where a statement runs: a pooled connection, or a transaction's.
pub(crate) enum Target<'a> {
    Pool(&'a SqlServerPool),
    Tx(&'a mut SqlServerTx),
}

impl<'a> From<&'a SqlServerPool> for Target<'a> {
    fn from(p: &'a SqlServerPool) -> Self {
        Self::Pool(p)
    }
}

impl<'a> From<&'a mut SqlServerTx> for Target<'a> {
    fn from(t: &'a mut SqlServerTx) -> Self {
        Self::Tx(t)
    }
}

/// A connection held for one statement.
enum Held<'a> {
    Pooled(Option<Object<Manager>>),
    Borrowed(&'a mut SqlServerTx),
}

impl Held<'_> {
    async fn take(target: Target<'_>) -> Result<Held<'_>> {
        Ok(match target {
            Target::Pool(p) => Held::Pooled(Some(p.get().await?)),
            Target::Tx(t) => Held::Borrowed(t),
        })
    }

    fn conn(&mut self) -> Result<&mut Conn> {
        match self {
            Held::Pooled(c) => {
                c.as_deref_mut().map(|c| &mut **c).ok_or_else(|| Error::internal("no connection").with_backend(BACKEND))
            }
            Held::Borrowed(t) => t.conn(),
        }
    }

    /// A pooled connection that failed below SQL (I/O, TLS, protocol) is closed, not
    /// returned to the pool.
    fn settle<T>(&mut self, result: &Result<T>) {
        if let (Held::Pooled(c), Err(e)) = (self, result)
            && matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Internal)
            && let Some(c) = c.take()
        {
            drop(Object::take(c));
        }
    }
}

/// A bound value.
#[derive(Debug)]
enum Param {
    Bool(Option<bool>),
    Int(Option<i64>),
    Float(Option<f64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Uuid(Option<uuid::Uuid>),
    Timestamp(Option<OffsetDateTime>),
    DateTime(Option<time::PrimitiveDateTime>),
    Date(Option<time::Date>),
    Time(Option<time::Time>),
}

impl ToSql for Param {
    fn to_sql(&self) -> ColumnData<'_> {
        match self {
            Self::Bool(v) => ColumnData::Bit(*v),
            Self::Int(v) => ColumnData::I64(*v),
            Self::Float(v) => ColumnData::F64(*v),
            Self::Text(v) => ColumnData::String(v.as_deref().map(Cow::Borrowed)),
            Self::Bytes(v) => ColumnData::Binary(v.as_deref().map(Cow::Borrowed)),
            Self::Uuid(v) => ColumnData::Guid(*v),
            Self::Timestamp(Some(t)) => t.to_sql(),
            Self::Timestamp(None) => ColumnData::DateTimeOffset(None),
            Self::DateTime(Some(t)) => t.to_sql(),
            Self::DateTime(None) => ColumnData::DateTime2(None),
            Self::Date(Some(d)) => d.to_sql(),
            Self::Date(None) => ColumnData::Date(None),
            Self::Time(Some(t)) => t.to_sql(),
            Self::Time(None) => ColumnData::Time(None),
        }
    }
}

fn param(value: sea_query::Value) -> Result<Param> {
    use sea_query::Value as V;
    Ok(match value {
        V::Bool(v) => Param::Bool(v),
        V::TinyInt(v) => Param::Int(v.map(i64::from)),
        V::SmallInt(v) => Param::Int(v.map(i64::from)),
        V::Int(v) => Param::Int(v.map(i64::from)),
        V::BigInt(v) => Param::Int(v),
        V::TinyUnsigned(v) => Param::Int(v.map(i64::from)),
        V::SmallUnsigned(v) => Param::Int(v.map(i64::from)),
        V::Unsigned(v) => Param::Int(v.map(i64::from)),
        V::BigUnsigned(v) => Param::Int(
            v.map(|u| i64::try_from(u).map_err(|_| Error::invalid_input(format!("{u} does not fit in a bigint"))))
                .transpose()?,
        ),
        V::Float(v) => Param::Float(v.map(f64::from)),
        V::Double(v) => Param::Float(v),
        V::String(v) => Param::Text(v),
        V::Char(v) => Param::Text(v.map(String::from)),
        V::Bytes(v) => Param::Bytes(v),
        V::Json(v) => Param::Text(v.map(|j| j.to_string())),
        V::Uuid(v) => Param::Uuid(v),
        V::TimeDateTimeWithTimeZone(v) => Param::Timestamp(v),
        V::TimeDateTime(v) => Param::DateTime(v),
        V::TimeDate(v) => Param::Date(v),
        V::TimeTime(v) => Param::Time(v),
        other => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("a {other:?} value has no SQL Server parameter type here"),
            )
            .with_backend(BACKEND));
        }
    })
}

fn params(values: sea_query::Values) -> Result<Vec<Param>> {
    values.0.into_iter().map(param).collect()
}

/// Reads one column value.
fn decode(data: ColumnData<'static>, column: &str) -> Result<Value> {
    let e = map_err;
    Ok(match data {
        ColumnData::U8(v) => v.map(|v| Value::Int(v.into())),
        ColumnData::I16(v) => v.map(|v| Value::Int(v.into())),
        ColumnData::I32(v) => v.map(|v| Value::Int(v.into())),
        ColumnData::I64(v) => v.map(Value::Int),
        ColumnData::F32(v) => v.map(|v| Value::Float(v.into())),
        ColumnData::F64(v) => v.map(Value::Float),
        ColumnData::Bit(v) => v.map(Value::Bool),
        ColumnData::String(v) => v.map(|s| Value::Text(s.into_owned())),
        ColumnData::Guid(v) => v.map(Value::Uuid),
        ColumnData::Binary(v) => v.map(|b| Value::Bytes(b.into_owned())),
        ColumnData::Numeric(v) => v.map(|n| Value::Text(n.to_string())),
        ref d @ (ColumnData::DateTime(_) | ColumnData::SmallDateTime(_) | ColumnData::DateTime2(_)) => {
            time::PrimitiveDateTime::from_sql(d).map_err(e)?.map(|t| Value::Timestamp(t.assume_utc()))
        }
        ref d @ ColumnData::DateTimeOffset(_) => OffsetDateTime::from_sql(d).map_err(e)?.map(Value::Timestamp),
        ref d @ ColumnData::Date(_) => time::Date::from_sql(d).map_err(e)?.map(|d| Value::Text(d.to_string())),
        ref d @ ColumnData::Time(_) => time::Time::from_sql(d).map_err(e)?.map(|t| Value::Text(t.to_string())),
        ColumnData::Xml(_) => return Err(crate::driver::unsupported_type(BACKEND, column, "xml")),
    }
    .unwrap_or(Value::Null))
}

fn rows(raw: Vec<tiberius::Row>) -> Result<Vec<Row>> {
    let Some(first) = raw.first() else { return Ok(Vec::new()) };
    let columns: std::sync::Arc<[String]> = first.columns().iter().map(|c| c.name().to_owned()).collect();
    raw.into_iter()
        .map(|row| {
            let values = row
                .into_iter()
                .zip(columns.iter())
                .map(|(data, name)| decode(data, name))
                .collect::<Result<Vec<_>>>()?;
            Ok(Row::new(std::sync::Arc::clone(&columns), values))
        })
        .collect()
}

async fn batch(conn: &mut Conn, sql: &str) -> Result<()> {
    conn.simple_query(sql).await.map_err(map_err)?.into_results().await.map_err(map_err).map(|_| ())
}

async fn run_execute(conn: &mut Conn, sql: &str, params: &[Param]) -> Result<u64> {
    let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
    Ok(Box::pin(conn.execute(sql, &refs)).await.map_err(map_err)?.total())
}

async fn run_fetch(conn: &mut Conn, sql: &str, params: &[Param]) -> Result<Vec<Row>> {
    let raw = if params.is_empty() {
        Box::pin(conn.simple_query(sql)).await.map_err(map_err)?.into_first_result().await.map_err(map_err)?
    } else {
        let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
        Box::pin(conn.query(sql, &refs)).await.map_err(map_err)?.into_first_result().await.map_err(map_err)?
    };
    rows(raw)
}

/// The batches of a script: split at lines that are only `GO`, as SQL Server's tools do.
pub(crate) fn batches(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in script.lines() {
        if line.trim().eq_ignore_ascii_case("go") {
            if !current.trim().is_empty() {
                out.push(std::mem::take(&mut current));
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// The statement that takes the migration lock for the transaction.
pub(crate) fn lock_statement(timeout: Duration) -> Sql {
    let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX).clamp(0, i64::from(i32::MAX));
    Sql::new(
        "DECLARE @got int; EXEC @got = sp_getapplock @Resource = N'platform_db_migrations', \
         @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = ?; SELECT @got AS got",
    )
    .bind(ms)
}

/// The catalog queries of the drift check: columns, then index columns.
pub(crate) const COLUMNS_QUERY: &str = "SELECT c.TABLE_NAME AS t, c.COLUMN_NAME AS c, \
     c.DATA_TYPE + COALESCE('(' + CASE WHEN c.CHARACTER_MAXIMUM_LENGTH = -1 THEN 'max' \
     ELSE CAST(c.CHARACTER_MAXIMUM_LENGTH AS varchar(11)) END + ')', '') AS ty, c.IS_NULLABLE AS n \
     FROM INFORMATION_SCHEMA.COLUMNS c JOIN INFORMATION_SCHEMA.TABLES tb \
     ON tb.TABLE_SCHEMA = c.TABLE_SCHEMA AND tb.TABLE_NAME = c.TABLE_NAME \
     WHERE c.TABLE_SCHEMA = SCHEMA_NAME() AND tb.TABLE_TYPE = 'BASE TABLE'";
/// See [`COLUMNS_QUERY`].
pub(crate) const INDEXES_QUERY: &str = "SELECT t.name AS t, i.name AS i, i.is_unique AS u, col.name AS c \
     FROM sys.indexes i JOIN sys.tables t ON t.object_id = i.object_id \
     JOIN sys.index_columns ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id \
     JOIN sys.columns col ON col.object_id = ic.object_id AND col.column_id = ic.column_id \
     WHERE t.schema_id = SCHEMA_ID() AND i.name IS NOT NULL AND ic.is_included_column = 0 \
     ORDER BY t.name, i.name, ic.key_ordinal";

/// SQL Server behind the same calls `Db` and the migrator make on the sqlx drivers.
#[derive(Debug)]
pub(crate) struct SqlServer;

impl SqlServer {
    pub(crate) async fn connect(o: &DbOptions) -> Result<SqlServerPool> {
        let manager =
            Manager { config: config(&o.driver_url)?, idle_timeout: o.idle_timeout, max_lifetime: o.max_lifetime };
        Pooled::open(manager, o, BACKEND, map_err).await
    }

    pub(crate) async fn begin(pool: &SqlServerPool) -> Result<SqlServerTx> {
        let mut conn = pool.get().await?;
        match batch(&mut conn, "BEGIN TRANSACTION").await {
            Ok(()) => Ok(HeldTx::new(conn)),
            Err(e) => {
                drop(Object::take(conn));
                Err(e)
            }
        }
    }

    pub(crate) async fn server_version(pool: &SqlServerPool) -> Result<String> {
        let rows = Self::fetch_all(pool, "SELECT @@VERSION AS v".to_owned(), sea_query::Values(Vec::new())).await?;
        let v: String = rows.first().map(|r| r.get("v")).transpose()?.unwrap_or_default();
        Ok(v.lines().next().unwrap_or_default().trim().to_owned())
    }

    pub(crate) async fn execute<'a>(
        target: impl Into<Target<'a>>,
        sql: String,
        values: sea_query::Values,
    ) -> Result<u64> {
        let params = params(values)?;
        let mut held = Held::take(target.into()).await?;
        let result = run_execute(held.conn()?, &sql, &params).await;
        held.settle(&result);
        result
    }

    pub(crate) async fn fetch_all<'a>(
        target: impl Into<Target<'a>>,
        sql: String,
        values: sea_query::Values,
    ) -> Result<Vec<Row>> {
        let params = params(values)?;
        let mut held = Held::take(target.into()).await?;
        let result = run_fetch(held.conn()?, &sql, &params).await;
        held.settle(&result);
        result
    }

    pub(crate) async fn execute_script<'a>(target: impl Into<Target<'a>>, sql: String) -> Result<()> {
        let mut held = Held::take(target.into()).await?;
        for b in batches(&sql) {
            let result = batch(held.conn()?, &b).await;
            held.settle(&result);
            result?;
        }
        Ok(())
    }

    pub(crate) async fn lock_for_migration(pool: &SqlServerPool, timeout: Duration) -> Result<(SqlServerTx, Guard)> {
        let mut tx = Self::begin(pool).await?;
        let (sql, values) = lock_statement(timeout).render(Dialect::SqlServer);
        let got: Option<i64> =
            Self::fetch_all(&mut tx, sql, values).await?.first().map(|r| r.get("got")).transpose()?.flatten();
        if got.is_none_or(|g| g < 0) {
            let _ = tx.rollback().await;
            return Err(lock_timeout_error(BACKEND, timeout));
        }
        Ok((tx, None))
    }

    #[allow(clippy::unused_async, reason = "the migrator awaits it on every driver")]
    pub(crate) async fn unlock_after_migration(_guard: Guard) -> Result<()> {
        Ok(())
    }

    #[allow(clippy::unused_async, reason = "the migrator awaits it on every driver")]
    pub(crate) async fn check_can_migrate(_tx: &mut SqlServerTx) -> Result<()> {
        Ok(())
    }

    pub(crate) async fn table_exists(tx: &mut SqlServerTx, table: &str) -> Result<bool> {
        let (sql, values) = Sql::new(
            "SELECT 1 AS one FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = SCHEMA_NAME() AND TABLE_NAME = ?",
        )
        .bind(table)
        .render(Dialect::SqlServer);
        Ok(!Self::fetch_all(tx, sql, values).await?.is_empty())
    }

    pub(crate) async fn live_schema(tx: &mut SqlServerTx) -> Result<Schema> {
        let none = || sea_query::Values(Vec::new());
        let mut schema = Schema::default();
        for r in Self::fetch_all(&mut *tx, COLUMNS_QUERY.to_owned(), none()).await? {
            schema.column(&r.get::<String>("t")?, &r.get::<String>("c")?, r.get("ty")?, r.get::<String>("n")? == "YES");
        }
        schema.index_columns(&Self::fetch_all(&mut *tx, INDEXES_QUERY.to_owned(), none()).await?)?;
        Ok(schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let c = config("sqlserver://sa:p%40ss@db.internal:14330/app?encrypt=off&application_name=svc").unwrap();
        assert_eq!(c.get_addr(), "db.internal:14330");
        assert!(config("mssql://sa:x@h/app").is_ok());
        let err = config("sqlserver://h/app").unwrap_err();
        assert!(err.to_string().contains("user"), "{err}");
        let err = config("sqlserver://sa:hunter2@h/app?encrypt=maybe").unwrap_err();
        assert!(err.to_string().contains("encrypt") && !err.to_string().contains("hunter2"), "{err}");
        let err = config("sqlserver://sa:hunter2@h/app?ca_file=/nonexistent.pem").unwrap_err();
        assert!(err.to_string().contains("ca_file"), "{err}");
    }

    #[test]
    fn values_bind_and_decode_as_their_sql_server_types() {
        let id = uuid::Uuid::new_v4();
        let at = time::macros::datetime!(2026-12-07 10:11:12.5 +01:00);
        let values = sea_query::Values(vec![
            true.into(),
            7_i32.into(),
            u64::MAX.into(),
            "é".into(),
            vec![0_u8, 255].into(),
            id.into(),
            at.into(),
            serde_json::json!({"a": 1}).into(),
            sea_query::Value::String(None),
        ]);
        let err = params(values.clone()).unwrap_err();
        assert!(err.is_invalid_input() && err.to_string().contains("bigint"), "{err}");
        let mut values = values;
        values.0.remove(2);
        let p = params(values).unwrap();
        let data: Vec<ColumnData<'_>> = p.iter().map(ToSql::to_sql).collect();
        assert!(matches!(data[0], ColumnData::Bit(Some(true))));
        assert!(matches!(data[1], ColumnData::I64(Some(7))));
        assert!(matches!(&data[2], ColumnData::String(Some(s)) if s == "é"));
        assert!(matches!(&data[3], ColumnData::Binary(Some(b)) if **b == [0, 255]));
        assert!(matches!(data[4], ColumnData::Guid(Some(u)) if u == id));
        assert!(matches!(data[5], ColumnData::DateTimeOffset(Some(_))));
        assert!(matches!(&data[6], ColumnData::String(Some(s)) if s == "{\"a\":1}"));
        assert!(matches!(data[7], ColumnData::String(None)));
        let back: Vec<Value> = data
            .into_iter()
            .map(|d| {
                let owned = match d {
                    ColumnData::String(s) => ColumnData::String(s.map(|s| Cow::Owned(s.into_owned()))),
                    ColumnData::Binary(b) => ColumnData::Binary(b.map(|b| Cow::Owned(b.into_owned()))),
                    ColumnData::DateTimeOffset(v) => ColumnData::DateTimeOffset(v),
                    ColumnData::Bit(v) => ColumnData::Bit(v),
                    ColumnData::I64(v) => ColumnData::I64(v),
                    ColumnData::Guid(v) => ColumnData::Guid(v),
                    other => panic!("{other:?}"),
                };
                decode(owned, "c").unwrap()
            })
            .collect();
        assert_eq!(back[0], Value::Bool(true));
        assert_eq!(back[3], Value::Bytes(vec![0, 255]));
        assert_eq!(back[4], Value::Uuid(id));
        assert_eq!(back[5], Value::Timestamp(at));
        assert_eq!(back[7], Value::Null);
    }

    #[test]
    fn scripts_split_at_go() {
        assert_eq!(
            batches("CREATE TABLE a (x int);\nGO\ncreate view v as select 1 as x\n  go  \n"),
            vec!["CREATE TABLE a (x int);\n".to_owned(), "create view v as select 1 as x\n".to_owned()]
        );
    }

    #[test]
    fn the_migration_lock_is_an_applock() {
        let (sql, values) = lock_statement(Duration::from_secs(60)).render(Dialect::SqlServer);
        assert_eq!(
            sql,
            "DECLARE @got int; EXEC @got = sp_getapplock @Resource = N'platform_db_migrations', \
             @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = @P1; SELECT @got AS got"
        );
        assert_eq!(values.0, vec![sea_query::Value::BigInt(Some(60_000))]);
    }
}
