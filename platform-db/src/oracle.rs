//! Oracle Database: `oracle://user:password@host:1521/service_name`, with Oracle's
//! pure-Rust thin driver (`oracledb`) on blocking threads and a deadpool pool.
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `call_timeout` | — | the longest one round trip may take (`30s`) |
//!
//! The pool parameters of every database apply, as for SQL Server.
//!
//! - **Statements** are rendered by [`OracleQueryBuilder`](crate::OracleQueryBuilder)
//!   (`:1` binds, `OFFSET … FETCH`, guarded DDL; see [`oracle_sql`](crate::oracle_sql)).
//!   A statement run on the pool commits; in a [`Tx`](crate::Tx) it commits with the
//!   transaction (Oracle opens one implicitly). Column names come back lower-case, as
//!   the other databases give unquoted names.
//! - **Migrations**: Oracle commits DDL itself, so, as on MySQL, each migration is
//!   recorded as started, run, then marked done; one that fails partway refuses startup
//!   until repaired. The lock is `DBMS_LOCK` (exclusive, held by a session of its own
//!   across commits, waiting `lock_timeout`), which needs `EXECUTE ON DBMS_LOCK`.
//!   Scripts are split into statements at `;` ending a line, PL/SQL blocks at a line
//!   holding `/` ([`oracle_sql::statements`](crate::oracle_sql::statements)).
//! - **Values**: `NUMBER` reads as an integer when it is one, else a float;
//!   `BINARY_DOUBLE` a float; `VARCHAR2`/`CLOB` text; `RAW`/`BLOB` bytes (a `RAW(16)` is a
//!   UUID); `DATE`/`TIMESTAMP` a timestamp in UTC. Booleans bind as `1`/`0`. An empty
//!   string is `NULL` in Oracle.
//! - **Errors** map by ORA number (`platform_core::sql::oracle_kind`): ORA-00001 →
//!   `AlreadyExists`, ORA-00060 → retryable `Conflict`, ORA-01017 → `Unauthenticated`,
//!   ORA-00942 → `NotFound`, ORA-20999 (a statement the renderer cannot express) →
//!   `Unsupported`, …
//!
//! The adapter speaks to a connection through [`OracleSession`]: the thin driver's, or
//! one a test or a wrapper supplies ([`open_with`]). No Oracle Database runs here, so
//! this module has run against scripted sessions only; the README's matrix says so.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, RecycleError, RecycleResult};
use platform_core::{Error, ErrorKind, Result};
use time::OffsetDateTime;

use crate::db::Pool;
use crate::driver::{Guard, lock_timeout_error};
use crate::pooled::{HeldTx, Pooled, recycle_by_age};
use crate::schema::Schema;
use crate::{Db, DbOptions, Dialect, Row, Sql, Statement, Value};

const BACKEND: &str = "oracle";

/// A value bound to a `:n` placeholder.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Bind {
    /// `NULL`.
    Null,
    /// A number (booleans bind as 1 and 0).
    Int(i64),
    /// A binary double.
    Float(f64),
    /// Text.
    Text(String),
    /// Bytes (a UUID binds as its 16 bytes).
    Bytes(Vec<u8>),
    /// A timestamp, in UTC.
    Timestamp(OffsetDateTime),
}

/// What a query returns: column names (lower-case) and rows.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Rows {
    /// The column names.
    pub columns: Vec<String>,
    /// The rows, each value decoded as [`Value`].
    pub rows: Vec<Vec<Value>>,
}

impl Rows {
    /// Rows with these columns.
    pub fn new(columns: Vec<String>, rows: Vec<Vec<Value>>) -> Self {
        Self { columns, rows }
    }
}

/// One connection, as the adapter uses it. Calls block; the adapter runs them on
/// blocking threads. Errors carry the portable kind ([`ora_error`]).
pub trait OracleSession: Send + 'static {
    /// Runs a statement; the rows it affected.
    fn execute(&mut self, sql: &str, binds: &[Bind]) -> Result<u64>;
    /// Runs a query.
    fn query(&mut self, sql: &str, binds: &[Bind]) -> Result<Rows>;
    /// Commits.
    fn commit(&mut self) -> Result<()>;
    /// Rolls back.
    fn rollback(&mut self) -> Result<()>;
    /// The server's version (`Oracle Database 23.4.0.24.5`).
    fn server_version(&mut self) -> Result<String>;
}

/// Opens one session; called on a blocking thread.
pub type Connector = Arc<dyn Fn() -> Result<Box<dyn OracleSession>> + Send + Sync>;

/// An error with ORA number `code` and its portable kind.
pub fn ora_error(code: u32, message: impl Into<String>) -> Error {
    let message = message.into();
    let (kind, retryable) = platform_core::sql::oracle_kind(code).unwrap_or((ErrorKind::Internal, false));
    Error::new(kind, format!("ORA-{code:05}: {message}")).with_backend(BACKEND).with_retryable(retryable)
}

fn bad(key: &str, why: &str) -> Error {
    platform_core::config::url_error("database", key, why)
}

/// What an `oracle://` URL says: user, password, `host:port/service`, call timeout.
#[derive(Clone)]
pub(crate) struct Endpoint {
    user: String,
    password: String,
    connect_string: String,
    call_timeout: Option<Duration>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("user", &self.user)
            .field("connect_string", &self.connect_string)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

/// Checks an `oracle://` URL; errors name the part.
pub(crate) fn config(raw: &str) -> Result<Endpoint> {
    let masked = platform_core::mask_url(raw);
    let url = url::Url::parse(raw).map_err(|e| bad("url", &format!("{masked:?} is not a URL: {e}")))?;
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("host", "is missing"))?;
    let service = url.path().trim_start_matches('/');
    if service.is_empty() {
        return Err(bad("service", "is missing (oracle://user:pass@host:1521/SERVICE_NAME)"));
    }
    let user = platform_core::config::url_decode(url.username());
    if user.is_empty() {
        return Err(bad("user", "is missing"));
    }
    let mut call_timeout = None;
    for (key, value) in url.query_pairs() {
        match &*key {
            "call_timeout" => {
                call_timeout = Some(
                    platform_core::config::parse_duration(&value).map_err(|why| bad("call_timeout", why.message()))?,
                );
            }
            other => return Err(bad(other, "is not an Oracle parameter")),
        }
    }
    Ok(Endpoint {
        user,
        password: platform_core::config::url_decode(url.password().unwrap_or_default()),
        connect_string: format!("{host}:{}/{}", url.port().unwrap_or(1521), platform_core::config::url_decode(service)),
        call_timeout,
    })
}

/// The thin driver's connection.
struct Thin(oracledb::Connection);

fn map_oracle(e: &oracledb::Error) -> Error {
    match e.kind() {
        oracledb::ErrorKind::DbError(db) => ora_error(u32::try_from(db.code()).unwrap_or(0), db.message()),
        oracledb::ErrorKind::DeadConnection | oracledb::ErrorKind::NotConnected => {
            Error::new(ErrorKind::Unavailable, e.to_string()).with_backend(BACKEND).with_retryable(true)
        }
        oracledb::ErrorKind::CallTimeoutExceeded => {
            Error::new(ErrorKind::Timeout, e.to_string()).with_backend(BACKEND).with_retryable(true)
        }
        _ => Error::new(ErrorKind::Internal, e.to_string()).with_backend(BACKEND),
    }
}

fn to_db_values(binds: &[Bind]) -> Vec<Box<dyn oracledb::ToDbValue>> {
    binds
        .iter()
        .map(|b| -> Box<dyn oracledb::ToDbValue> {
            match b {
                Bind::Null => Box::new(Option::<String>::None),
                Bind::Int(i) => Box::new(*i),
                Bind::Float(f) => Box::new(*f),
                Bind::Text(s) => Box::new(s.clone()),
                Bind::Bytes(b) => Box::new(b.clone()),
                Bind::Timestamp(t) => {
                    let t = t.to_offset(time::UtcOffset::UTC);
                    Box::new(oracledb::OracleTimestamp::new_utc_timestamp(
                        i16::try_from(t.year()).unwrap_or(i16::MAX),
                        t.month().into(),
                        t.day(),
                        t.hour(),
                        t.minute(),
                        t.second(),
                        t.nanosecond(),
                    ))
                }
            }
        })
        .collect()
}

fn number(text: String) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        Value::Int(i)
    } else if let Ok(f) = text.parse::<f64>() {
        Value::Float(f)
    } else {
        Value::Text(text)
    }
}

fn timestamp(t: &oracledb::OracleTimestamp) -> Result<Value> {
    let date = time::Date::from_calendar_date(
        t.year().into(),
        time::Month::try_from(t.month()).map_err(|e| Error::invalid_input(e.to_string()))?,
        t.day(),
    )
    .map_err(|e| Error::invalid_input(e.to_string()))?;
    let clock = time::Time::from_hms_nano(t.hour(), t.minute(), t.second(), t.nanoseconds())
        .map_err(|e| Error::invalid_input(e.to_string()))?;
    Ok(Value::Timestamp(time::PrimitiveDateTime::new(date, clock).assume_utc()))
}

fn decode(row: &oracledb::Row, i: usize, name: &str, ty: &str) -> Result<Value> {
    let e = |err: oracledb::Error| map_oracle(&err);
    Ok(match ty {
        "DB_TYPE_NUMBER" | "DB_TYPE_BINARY_INTEGER" => row.get::<Option<String>>(i).map_err(e)?.map(number),
        "DB_TYPE_BINARY_DOUBLE" | "DB_TYPE_BINARY_FLOAT" => row.get::<Option<f64>>(i).map_err(e)?.map(Value::Float),
        "DB_TYPE_VARCHAR" | "DB_TYPE_CHAR" | "DB_TYPE_NVARCHAR" | "DB_TYPE_NCHAR" | "DB_TYPE_CLOB"
        | "DB_TYPE_NCLOB" | "DB_TYPE_LONG" | "DB_TYPE_ROWID" => {
            row.get::<Option<String>>(i).map_err(e)?.map(Value::Text)
        }
        "DB_TYPE_RAW" | "DB_TYPE_BLOB" | "DB_TYPE_LONG_RAW" => {
            row.get::<Option<Vec<u8>>>(i).map_err(e)?.map(Value::Bytes)
        }
        "DB_TYPE_DATE" | "DB_TYPE_TIMESTAMP" | "DB_TYPE_TIMESTAMP_TZ" | "DB_TYPE_TIMESTAMP_LTZ" => {
            row.get::<Option<oracledb::OracleTimestamp>>(i).map_err(e)?.map(|t| timestamp(&t)).transpose()?
        }
        "DB_TYPE_BOOLEAN" => row.get::<Option<bool>>(i).map_err(e)?.map(Value::Bool),
        other => return Err(crate::driver::unsupported_type(BACKEND, name, other)),
    }
    .unwrap_or(Value::Null))
}

impl OracleSession for Thin {
    fn execute(&mut self, sql: &str, binds: &[Bind]) -> Result<u64> {
        let values = to_db_values(binds);
        let refs: Vec<&dyn oracledb::ToDbValue> = values.iter().map(|b| &**b).collect();
        self.0.execute(sql, &refs).map(|r| r.rows_affected()).map_err(|e| map_oracle(&e))
    }

    fn query(&mut self, sql: &str, binds: &[Bind]) -> Result<Rows> {
        let values = to_db_values(binds);
        let refs: Vec<&dyn oracledb::ToDbValue> = values.iter().map(|b| &**b).collect();
        let cursor = self.0.query(sql, &refs).map_err(|e| map_oracle(&e))?;
        let meta: Vec<(String, String)> =
            cursor.columns().iter().map(|m| (m.name().to_lowercase(), m.db_type().name().to_owned())).collect();
        let mut rows = Vec::new();
        for row in cursor {
            let row = row.map_err(|e| map_oracle(&e))?;
            let values =
                meta.iter().enumerate().map(|(i, (name, ty))| decode(&row, i, name, ty)).collect::<Result<Vec<_>>>()?;
            rows.push(values);
        }
        Ok(Rows { columns: meta.into_iter().map(|(n, _)| n).collect(), rows })
    }

    fn commit(&mut self) -> Result<()> {
        self.0.commit().map_err(|e| map_oracle(&e))
    }

    fn rollback(&mut self) -> Result<()> {
        self.0.rollback().map_err(|e| map_oracle(&e))
    }

    fn server_version(&mut self) -> Result<String> {
        let v = self.0.version().map_err(|e| map_oracle(&e))?;
        Ok(format!("Oracle Database {v}"))
    }
}

fn thin_connector(target: Endpoint) -> Connector {
    Arc::new(move || {
        let config = oracledb::Config::default()
            .set_credentials(&target.user, &target.password)
            .set_connect_string(&target.connect_string)
            .map_err(|e| map_oracle(&e))?;
        let conn = oracledb::connect(config).map_err(|e| map_oracle(&e))?;
        if let Some(t) = target.call_timeout {
            conn.set_call_timeout(Some(t)).map_err(|e| map_oracle(&e))?;
        }
        Ok(Box::new(Thin(conn)) as Box<dyn OracleSession>)
    })
}

/// A pooled session; `None` while a blocking call holds it or after one was lost.
type Slot = Option<Box<dyn OracleSession>>;

/// Opens and recycles sessions.
pub(crate) struct Manager {
    connector: Connector,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

impl managed::Manager for Manager {
    type Type = Slot;
    type Error = Error;

    async fn create(&self) -> Result<Slot> {
        let connector = Arc::clone(&self.connector);
        let session = tokio::task::spawn_blocking(move || connector())
            .await
            .map_err(|e| Error::internal(format!("connecting panicked: {e}")).with_backend(BACKEND))??;
        Ok(Some(session))
    }

    async fn recycle(&self, slot: &mut Slot, metrics: &Metrics) -> RecycleResult<Error> {
        if slot.is_none() {
            return Err(RecycleError::message("lost in a cancelled or failed call"));
        }
        recycle_by_age(metrics, self.idle_timeout, self.max_lifetime)
    }
}

/// The pool.
pub(crate) type OraclePool = Pooled<Manager>;

/// Runs `f` on the session in `slot` on a blocking thread. A session whose call
/// failed below SQL is dropped rather than reused.
async fn run<T: Send + 'static>(
    slot: &mut Slot,
    f: impl FnOnce(&mut dyn OracleSession) -> Result<T> + Send + 'static,
) -> Result<T> {
    let mut session = slot
        .take()
        .ok_or_else(|| Error::new(ErrorKind::Unavailable, "the connection was lost").with_backend(BACKEND))?;
    let (session, result) = tokio::task::spawn_blocking(move || {
        let result = f(&mut *session);
        (session, result)
    })
    .await
    .map_err(|e| Error::internal(format!("a blocking call panicked: {e}")).with_backend(BACKEND))?;
    if !matches!(&result, Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Internal)) {
        *slot = Some(session);
    }
    result
}

/// A transaction: a session held until commit or rollback (Oracle opens one itself).
pub(crate) type OracleTx = HeldTx<Manager>;

impl HeldTx<Manager> {
    fn slot(&mut self) -> Result<&mut Slot> {
        self.conn.as_deref_mut().ok_or_else(|| Error::internal("the transaction has ended").with_backend(BACKEND))
    }

    pub(crate) async fn commit(mut self) -> Result<()> {
        run(self.slot()?, |s| s.commit()).await?;
        self.open = false;
        Ok(())
    }

    pub(crate) async fn rollback(mut self) -> Result<()> {
        run(self.slot()?, |s| s.rollback()).await?;
        self.open = false;
        Ok(())
    }
}

/// Where a statement runs: a pooled session (committing), or a transaction's.
pub(crate) enum Target<'a> {
    Pool(&'a OraclePool),
    Tx(&'a mut OracleTx),
}

impl<'a> From<&'a OraclePool> for Target<'a> {
    fn from(p: &'a OraclePool) -> Self {
        Self::Pool(p)
    }
}

impl<'a> From<&'a mut OracleTx> for Target<'a> {
    fn from(t: &'a mut OracleTx) -> Self {
        Self::Tx(t)
    }
}

/// Runs `f` where `target` says: on the pool it commits after `f` succeeds.
async fn on<T: Send + 'static>(
    target: Target<'_>,
    f: impl FnOnce(&mut dyn OracleSession) -> Result<T> + Send + 'static,
) -> Result<T> {
    match target {
        Target::Pool(p) => {
            let mut conn = p.get().await?;
            run(&mut conn, move |s| {
                let out = f(s);
                match out {
                    Ok(v) => s.commit().map(|()| v),
                    Err(e) => {
                        let _ = s.rollback();
                        Err(e)
                    }
                }
            })
            .await
        }
        Target::Tx(t) => run(t.slot()?, f).await,
    }
}

fn binds(values: sea_query::Values) -> Result<Vec<Bind>> {
    use sea_query::Value as V;
    values
        .0
        .into_iter()
        .map(|v| {
            Ok(match v {
                V::Bool(v) => v.map_or(Bind::Null, |b| Bind::Int(i64::from(b))),
                V::TinyInt(v) => v.map_or(Bind::Null, |i| Bind::Int(i.into())),
                V::SmallInt(v) => v.map_or(Bind::Null, |i| Bind::Int(i.into())),
                V::Int(v) => v.map_or(Bind::Null, |i| Bind::Int(i.into())),
                V::BigInt(v) => v.map_or(Bind::Null, Bind::Int),
                V::TinyUnsigned(v) => v.map_or(Bind::Null, |i| Bind::Int(i.into())),
                V::SmallUnsigned(v) => v.map_or(Bind::Null, |i| Bind::Int(i.into())),
                V::Unsigned(v) => v.map_or(Bind::Null, |i| Bind::Int(i.into())),
                V::BigUnsigned(v) => match v {
                    Some(u) => Bind::Int(
                        i64::try_from(u)
                            .map_err(|_| Error::invalid_input(format!("{u} does not fit in NUMBER(19)")))?,
                    ),
                    None => Bind::Null,
                },
                V::Float(v) => v.map_or(Bind::Null, |f| Bind::Float(f.into())),
                V::Double(v) => v.map_or(Bind::Null, Bind::Float),
                V::String(v) => v.map_or(Bind::Null, Bind::Text),
                V::Char(v) => v.map_or(Bind::Null, |c| Bind::Text(c.into())),
                V::Bytes(v) => v.map_or(Bind::Null, Bind::Bytes),
                V::Json(v) => v.map_or(Bind::Null, |j| Bind::Text(j.to_string())),
                V::Uuid(v) => v.map_or(Bind::Null, |u| Bind::Bytes(u.as_bytes().to_vec())),
                V::TimeDateTimeWithTimeZone(v) => v.map_or(Bind::Null, Bind::Timestamp),
                V::TimeDateTime(v) => v.map_or(Bind::Null, |t| Bind::Timestamp(t.assume_utc())),
                other => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!("a {other:?} value has no Oracle bind here"),
                    )
                    .with_backend(BACKEND));
                }
            })
        })
        .collect()
}

fn into_rows(r: Rows) -> Vec<Row> {
    let columns: Arc<[String]> = r.columns.into();
    r.rows.into_iter().map(|values| Row::new(Arc::clone(&columns), values)).collect()
}

/// The block that takes the migration lock on its session, waiting `timeout`.
pub(crate) fn lock_statement(timeout: Duration) -> Sql {
    Sql::new(
        "DECLARE h VARCHAR2(128); r INTEGER; BEGIN \
         DBMS_LOCK.ALLOCATE_UNIQUE('platform_db_migrations', h); \
         r := DBMS_LOCK.REQUEST(h, DBMS_LOCK.X_MODE, ?, FALSE); \
         IF r NOT IN (0, 4) THEN RAISE_APPLICATION_ERROR(-20998, 'migration lock not granted: ' || r); END IF; END;",
    )
    .bind(i64::try_from(timeout.as_secs().max(1)).unwrap_or(i64::MAX))
}

/// The block that lets the migration lock go.
pub(crate) const UNLOCK: &str = "DECLARE h VARCHAR2(128); r INTEGER; BEGIN \
     DBMS_LOCK.ALLOCATE_UNIQUE('platform_db_migrations', h); r := DBMS_LOCK.RELEASE(h); END;";

/// The catalog queries of the drift check: columns, then index columns.
pub(crate) const COLUMNS_QUERY: &str = "SELECT LOWER(table_name) AS t, LOWER(column_name) AS c, \
     data_type || CASE WHEN data_type IN ('VARCHAR2', 'CHAR', 'NVARCHAR2', 'NCHAR', 'RAW') \
     THEN '(' || char_length || ')' WHEN data_type = 'NUMBER' AND data_precision IS NOT NULL \
     THEN '(' || data_precision || ',' || data_scale || ')' END AS ty, nullable AS n FROM user_tab_columns";
/// See [`COLUMNS_QUERY`].
pub(crate) const INDEXES_QUERY: &str = "SELECT LOWER(i.table_name) AS t, LOWER(i.index_name) AS i, \
     CASE WHEN i.uniqueness = 'UNIQUE' THEN 1 ELSE 0 END AS u, LOWER(c.column_name) AS c \
     FROM user_indexes i JOIN user_ind_columns c ON c.index_name = i.index_name \
     ORDER BY i.table_name, i.index_name, c.column_position";

/// Oracle behind the same calls `Db` and the migrator make on the other drivers.
#[derive(Debug)]
pub(crate) struct Oracle;

impl Oracle {
    pub(crate) async fn connect(o: &DbOptions) -> Result<OraclePool> {
        Self::connect_with(o, thin_connector(config(&o.driver_url)?)).await
    }

    async fn connect_with(o: &DbOptions, connector: Connector) -> Result<OraclePool> {
        let manager = Manager { connector, idle_timeout: o.idle_timeout, max_lifetime: o.max_lifetime };
        Pooled::open(manager, o, BACKEND, std::convert::identity).await
    }

    #[allow(clippy::unused_async, reason = "begins as the other drivers do")]
    pub(crate) async fn begin(pool: &OraclePool) -> Result<OracleTx> {
        Ok(HeldTx::new(pool.get().await?))
    }

    pub(crate) async fn server_version(pool: &OraclePool) -> Result<String> {
        let mut conn = pool.get().await?;
        run(&mut conn, |s| s.server_version()).await
    }

    pub(crate) async fn execute<'a>(
        target: impl Into<Target<'a>>,
        sql: String,
        values: sea_query::Values,
    ) -> Result<u64> {
        let binds = binds(values)?;
        on(target.into(), move |s| s.execute(&sql, &binds)).await
    }

    pub(crate) async fn fetch_all<'a>(
        target: impl Into<Target<'a>>,
        sql: String,
        values: sea_query::Values,
    ) -> Result<Vec<Row>> {
        let binds = binds(values)?;
        on(target.into(), move |s| s.query(&sql, &binds)).await.map(into_rows)
    }

    pub(crate) async fn execute_script<'a>(target: impl Into<Target<'a>>, sql: String) -> Result<()> {
        on(target.into(), move |s| {
            for statement in crate::oracle_sql::statements(&sql) {
                s.execute(&statement, &[])?;
            }
            Ok(())
        })
        .await
    }

    /// The lock is held by a session of its own across the migrations' commits; it is
    /// released, and the session returned, by [`unlock_after_migration`](Self::unlock_after_migration).
    pub(crate) async fn lock_for_migration(pool: &OraclePool, timeout: Duration) -> Result<(OracleTx, Guard)> {
        let mut holder = pool.get().await?;
        let (sql, values) = lock_statement(timeout).render(Dialect::Oracle);
        let binds = binds(values)?;
        match run(&mut holder, move |s| s.execute(&sql, &binds)).await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Timeout => return Err(lock_timeout_error(BACKEND, timeout)),
            Err(e) => return Err(e),
        }
        let tx = Self::begin(pool).await?;
        Ok((tx, Some(Box::new(holder))))
    }

    pub(crate) async fn unlock_after_migration(guard: Guard) -> Result<()> {
        let Some(mut holder) = guard.and_then(|g| g.downcast::<Object<Manager>>().ok()) else { return Ok(()) };
        run(&mut holder, |s| s.execute(UNLOCK, &[]).map(|_| ())).await
    }

    #[allow(clippy::unused_async, reason = "the migrator awaits it on every driver")]
    pub(crate) async fn check_can_migrate(_tx: &mut OracleTx) -> Result<()> {
        Ok(())
    }

    pub(crate) async fn table_exists(tx: &mut OracleTx, table: &str) -> Result<bool> {
        let (sql, values) = Sql::new("SELECT 1 AS one FROM user_tables WHERE table_name = UPPER(?)")
            .bind(table)
            .render(Dialect::Oracle);
        Ok(!Self::fetch_all(tx, sql, values).await?.is_empty())
    }

    pub(crate) async fn live_schema(tx: &mut OracleTx) -> Result<Schema> {
        let none = || sea_query::Values(Vec::new());
        let mut schema = Schema::default();
        for r in Self::fetch_all(&mut *tx, COLUMNS_QUERY.to_owned(), none()).await? {
            schema.column(&r.get::<String>("t")?, &r.get::<String>("c")?, r.get("ty")?, r.get::<String>("n")? == "Y");
        }
        schema.index_columns(&Self::fetch_all(&mut *tx, INDEXES_QUERY.to_owned(), none()).await?)?;
        Ok(schema)
    }
}

/// Opens a [`Db`] on Oracle whose sessions come from `connector` rather than the thin
/// driver: for tests, or to wrap sessions (tracing, statement logs). The URL's pool
/// parameters apply; its host and credentials are checked but not used.
pub async fn open_with(
    url: &str,
    connector: impl Fn() -> Result<Box<dyn OracleSession>> + Send + Sync + 'static,
) -> Result<Db> {
    let options = DbOptions::parse(url)?;
    if options.dialect != Dialect::Oracle {
        return Err(Error::invalid_input("open_with takes an oracle:// URL"));
    }
    let pool = Oracle::connect_with(&options, Arc::new(connector)).await.map_err(|e| e.with_op("open"))?;
    Ok(Db::from_pool(Pool::Oracle(pool), options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let t = config("oracle://app:p%40ss@db.internal:1522/FREEPDB1?call_timeout=30s").unwrap();
        assert_eq!((t.user.as_str(), t.password.as_str()), ("app", "p@ss"));
        assert_eq!(t.connect_string, "db.internal:1522/FREEPDB1");
        assert_eq!(t.call_timeout, Some(Duration::from_secs(30)));
        assert!(config("oracle://app:x@h").unwrap_err().to_string().contains("service"));
        assert!(config("oracle://h/FREEPDB1").unwrap_err().to_string().contains("user"));
        let err = config("oracle://app:hunter2@h/S?wallet=x").unwrap_err();
        assert!(err.to_string().contains("wallet") && !err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn values_bind_as_oracle_takes_them() {
        let id = uuid::Uuid::new_v4();
        let at = time::macros::datetime!(2026-12-07 10:11:12.5 +01:00);
        let b = binds(sea_query::Values(vec![
            true.into(),
            7_i32.into(),
            "é".into(),
            id.into(),
            at.into(),
            sea_query::Value::String(None),
        ]))
        .unwrap();
        assert_eq!(
            b,
            vec![
                Bind::Int(1),
                Bind::Int(7),
                Bind::Text("é".into()),
                Bind::Bytes(id.as_bytes().to_vec()),
                Bind::Timestamp(at),
                Bind::Null
            ]
        );
        assert!(binds(sea_query::Values(vec![u64::MAX.into()])).unwrap_err().is_invalid_input());
        assert_eq!(number("42".into()), Value::Int(42));
        assert_eq!(number("1.5".into()), Value::Float(1.5));
    }
}
