//! Broadcast over PostgreSQL `LISTEN`/`NOTIFY`: `postgres://user@host/db`.
//!
//! A `NOTIFY` payload is capped at 8,000 bytes, so a small payload travels in the
//! notification itself and a larger one is written to `platform_broadcast` and the
//! notification carries its id; listeners read the row. Rows are deleted once they
//! are a minute old. A handle listens on one connection (`LISTEN platform_broadcast`,
//! started by its first subscription) and hands each notification to its
//! subscriptions, which keep what their pattern matches. At-most-once: a listener that
//! is not connected misses what is published; order per channel and publisher is the
//! commit order.
//!
//! Every handle hears every channel of its namespace: `namespace` (the `NOTIFY`
//! channel, default `platform_broadcast`; lowercase letters, digits and `_`) keeps
//! apart the traffic of services that share a database.
//!
//! Parameters: `namespace`, `buffer` (messages the handle holds for a slow
//! subscription before it lags, default 1024; counted over every channel of the
//! namespace), `max_connections`
//! (default 4), and the driver's `application_name`, `options`, `sslmode` (TLS is
//! not compiled in: `require` and stricter are refused). Payloads up to 8 MiB.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use platform_core::{CheckOutcome, Error, HealthCheck, Result};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::{Mutex, broadcast};

use crate::broadcast::{Broadcast, BroadcastCapabilities, BroadcastHandle, Feed, Published, Subscription};
use crate::driver::BroadcastUrl;

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["postgres", "postgresql"];

/// The `NOTIFY` channel handles listen on unless `namespace` says.
const DEFAULT_NAMESPACE: &str = "platform_broadcast";
/// The largest payload.
const MAX_PAYLOAD: usize = 8 << 20;
/// The most a notification carries inline (PostgreSQL's cap is 8,000 bytes).
const INLINE: usize = 7_900;
/// Every this many publishes of a handle, rows older than a minute are deleted.
const SWEEP_EVERY: u64 = 256;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS platform_broadcast (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel TEXT NOT NULL,
    payload BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now())";

const DRIVER_PARAMS: &[&str] = &["sslmode", "application_name", "options"];

fn map_err(e: sqlx::Error) -> Error {
    platform_core::sql::map_sqlx("postgres", e, |db| platform_core::sql::postgres_kind(&db.code()?))
}

/// What a notification says: the message itself (`i` + channel + `:` + base64), or
/// the id of the row that holds it (`r` + id).
fn inline_notice(channel: &str, payload: &[u8]) -> Option<String> {
    let encoded_len = payload.len().div_ceil(3) * 4;
    (channel.len() + encoded_len + 2 <= INLINE)
        .then(|| format!("i{channel}:{}", base64::engine::general_purpose::STANDARD.encode(payload)))
}

/// Broadcast over PostgreSQL notifications.
pub struct PostgresBroadcast {
    pool: PgPool,
    location: String,
    namespace: String,
    buffer: usize,
    /// The handle's listener feeds this; subscriptions are receivers of it.
    hub: Mutex<Option<(broadcast::Sender<Feed>, tokio::task::JoinHandle<()>)>>,
    published: AtomicU64,
}

impl PostgresBroadcast {
    /// Opens `postgres://…`, creating `platform_broadcast` as needed.
    pub async fn from_url(url: &str) -> Result<BroadcastHandle<Self>> {
        let BroadcastUrl { url: parsed, mut params, buffer, .. } = BroadcastUrl::parse(url)?;
        let max = params.take_number::<u32>("max_connections")?.unwrap_or(4);
        let namespace = params.take("namespace").unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        if namespace.is_empty() || namespace.len() > 63 || !namespace.chars().all(ok) {
            return Err(params.error("namespace", "must be 1 to 63 of a-z 0-9 _"));
        }
        let (pool, location) = connect(parsed, &mut params, max).await?;
        let mut tx = pool.begin().await.map_err(map_err)?;
        // Parallel opens must not race on CREATE TABLE.
        sqlx::query("SELECT pg_advisory_xact_lock(7243000118)").execute(&mut *tx).await.map_err(map_err)?;
        sqlx::query(SCHEMA).execute(&mut *tx).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        let hub = Mutex::new(None);
        Ok(BroadcastHandle::new(Self { pool, location, namespace, buffer, hub, published: AtomicU64::new(0) }))
    }

    /// The handle's listener, started once: `LISTEN` is in place when this returns.
    async fn hub(&self) -> Result<broadcast::Receiver<Feed>> {
        let mut hub = self.hub.lock().await;
        if let Some((tx, task)) = hub.as_ref()
            && !task.is_finished()
        {
            return Ok(tx.subscribe());
        }
        let mut listener = listen(&self.pool, &self.namespace).await?;
        let (tx, rx) = broadcast::channel(self.buffer);
        let (sender, pool, namespace) = (tx.clone(), self.pool.clone(), self.namespace.clone());
        let task = tokio::spawn(async move {
            // `try_recv` says `None` when the connection was lost: listen again on a
            // new one, then tell the subscriptions that what was published meanwhile
            // was missed.
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        let Some(published) = read(&pool, n.payload()).await else { continue };
                        let _ = sender.send(Feed::Published(published));
                    }
                    Ok(None) => {
                        let mut pause = Duration::from_millis(50);
                        listener = loop {
                            match listen(&pool, &namespace).await {
                                Ok(l) => break l,
                                Err(e) => {
                                    tracing::debug!(error = %e, "postgres listener lost; listening again");
                                    tokio::time::sleep(pause).await;
                                    pause = (pause * 2).min(Duration::from_secs(2));
                                }
                            }
                        };
                        let _ = sender.send(Feed::Reconnected);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "postgres listener lost; listening again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        *hub = Some((tx, task));
        Ok(rx)
    }
}

/// A pool of up to `max` connections (at least 2) for `parsed`, whose backend
/// parameters were taken: the driver's are taken here and the rest refused.
async fn connect(
    mut parsed: url::Url,
    params: &mut platform_core::config::UrlParams,
    max: u32,
) -> Result<(PgPool, String)> {
    let driver = params.take_all(DRIVER_PARAMS);
    platform_core::sql::refuse_tls("platform-events", &driver)?;
    params.finish("postgres")?;
    parsed.query_pairs_mut().extend_pairs(&driver);
    let opts = PgConnectOptions::from_str(parsed.as_str()).map_err(map_err)?;
    let location = format!("{}:{}", opts.get_host(), opts.get_port());
    let pool = PgPoolOptions::new()
        .max_connections(max.max(2))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(map_err)?;
    Ok((pool, location))
}

/// A connection of its own listening on `namespace`.
async fn listen(pool: &PgPool, namespace: &str) -> Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.map_err(map_err)?;
    listener.listen(namespace).await.map_err(map_err)?;
    Ok(listener)
}

/// The message a notification names, read from its row when it did not fit.
async fn read(pool: &PgPool, notice: &str) -> Option<Published> {
    if let Some(inline) = notice.strip_prefix('i') {
        let (channel, encoded) = inline.split_once(':')?;
        let payload = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
        return Some(Published { channel: channel.into(), payload: Bytes::from(payload) });
    }
    let id: i64 = notice.strip_prefix('r')?.parse().ok()?;
    let row: Option<(String, Vec<u8>)> =
        sqlx::query_as("SELECT channel, payload FROM platform_broadcast WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .ok()?;
    row.map(|(channel, payload)| Published { channel: channel.into(), payload: Bytes::from(payload) })
}

impl Drop for PostgresBroadcast {
    fn drop(&mut self) {
        if let Some((_, task)) = self.hub.get_mut().as_ref() {
            task.abort();
        }
    }
}

impl fmt::Debug for PostgresBroadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBroadcast").field("location", &self.location).finish_non_exhaustive()
    }
}

impl fmt::Display for PostgresBroadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres({})", self.location)
    }
}

#[async_trait]
impl HealthCheck for PostgresBroadcast {
    fn name(&self) -> String {
        "broadcast:postgres".into()
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        let (v,): (String,) = sqlx::query_as("SHOW server_version").fetch_one(&self.pool).await.map_err(map_err)?;
        Ok(CheckOutcome::new(started.elapsed()).with_version(format!("PostgreSQL {v}")))
    }
}

#[async_trait]
impl Broadcast for PostgresBroadcast {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn capabilities(&self) -> BroadcastCapabilities {
        BroadcastCapabilities::new(MAX_PAYLOAD, self.buffer)
    }

    async fn publish(&self, channel: &str, payload: Bytes) -> Result<()> {
        if let Some(notice) = inline_notice(channel, &payload) {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.namespace)
                .bind(notice)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
        } else {
            sqlx::query(
                "WITH m AS (INSERT INTO platform_broadcast (channel, payload) VALUES ($2, $3) RETURNING id)
                 SELECT pg_notify($1, 'r' || m.id) FROM m",
            )
            .bind(&self.namespace)
            .bind(channel)
            .bind(payload.as_ref())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        }
        if self.published.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            sqlx::query("DELETE FROM platform_broadcast WHERE created_at < now() - interval '1 minute'")
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
        }
        Ok(())
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription> {
        let rx = self.hub().await?;
        crate::driver::subscription(pattern, rx, None)
    }

    async fn close(&self) -> Result<()> {
        if let Some((_, task)) = self.hub.lock().await.take() {
            task.abort();
        }
        self.pool.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_payloads_travel_inline() {
        let notice = inline_notice("jobs.1.events", b"done").expect("inline");
        assert_eq!(notice, "ijobs.1.events:ZG9uZQ==");
        assert!(inline_notice("c", &vec![0u8; 6_000]).is_none(), "base64 of 6,000 bytes is over the cap");
        assert!(inline_notice("c", &vec![0u8; 5_800]).is_some());
    }
}

const GROUP_SQL: crate::sql::GroupSql = crate::sql::GroupSql {
    schema: "CREATE TABLE IF NOT EXISTS platform_event_groups (
        namespace TEXT NOT NULL, name TEXT NOT NULL, pattern TEXT NOT NULL, created_ms BIGINT NOT NULL,
        PRIMARY KEY (namespace, name))",
    register: "INSERT INTO platform_event_groups (namespace, name, pattern, created_ms) VALUES ($1, $2, $3, $4)
               ON CONFLICT (namespace, name) DO NOTHING",
    pattern: "SELECT pattern FROM platform_event_groups WHERE namespace = $1 AND name = $2",
    list: "SELECT name, pattern FROM platform_event_groups WHERE namespace = $1",
};

crate::sql::sql_groups!(
    PostgresGroups,
    PostgresBus,
    platform_queue::postgres::PostgresQueue,
    "postgres",
    GROUP_SQL,
    group_error
);

fn group_error(db: &dyn sqlx::error::DatabaseError) -> Option<platform_core::sql::Mapped> {
    platform_core::sql::postgres_kind(&db.code()?)
}

/// The hub log's tables: a head per namespace (epoch and last offset) and the events.
#[cfg(feature = "hub")]
const LOG_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS platform_hub_heads (
        namespace TEXT PRIMARY KEY,
        epoch TEXT NOT NULL,
        head BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS platform_hub_log (
        namespace TEXT NOT NULL,
        seq BIGINT NOT NULL,
        channel TEXT NOT NULL,
        payload BYTEA NOT NULL,
        PRIMARY KEY (namespace, seq))",
];

/// Appends one event: the head's row lock orders appends, so commits (and with them
/// the notifications) come in offset order.
#[cfg(feature = "hub")]
const LOG_APPEND: &str = "WITH h AS (
       UPDATE platform_hub_heads SET head = head + 1 WHERE namespace = $1 RETURNING epoch, head),
     added AS (
       INSERT INTO platform_hub_log (namespace, seq, channel, payload) SELECT $1, head, $2, $3 FROM h RETURNING seq)
     SELECT h.epoch, h.head, pg_notify($4, h.head::text) IS NOT NULL FROM h JOIN added ON added.seq = h.head";

/// The hub's shared history on PostgreSQL (feature `hub`):
/// `postgres://…?namespace=app&history=10000`.
///
/// Events are rows of `platform_hub_log` numbered by a head row per namespace
/// (`platform_hub_heads`, which holds the epoch); an append is one statement whose row
/// lock on the head orders commits, and a `NOTIFY` on `platform_hub_{namespace}`
/// carrying the offset wakes every node's feed, which reads the rows. Rows beyond
/// `history` are deleted as the log grows. A head that is gone (a restored or reset
/// database) starts a new epoch, and a resume from an offset ahead of the head is
/// never claimed recovered.
#[cfg(feature = "hub")]
pub struct PostgresHubLog {
    pool: PgPool,
    location: String,
    namespace: String,
    channel: String,
    history: usize,
}

#[cfg(feature = "hub")]
impl PostgresHubLog {
    /// Opens the log, creating its tables and head as needed.
    pub async fn from_url(url: &str) -> Result<Self> {
        let BroadcastUrl { url: parsed, mut params, .. } = BroadcastUrl::parse(url)?;
        let (namespace, history) = crate::hub::log_params(&mut params)?;
        let (pool, location) = connect(parsed, &mut params, 4).await?;
        let mut tx = pool.begin().await.map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock(7243000119)").execute(&mut *tx).await.map_err(map_err)?;
        for stmt in LOG_SCHEMA {
            sqlx::query(*stmt).execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        let channel = format!("platform_hub_{}", namespace.to_ascii_lowercase().replace('-', "_"));
        let log = Self { pool, location, namespace, channel, history };
        log.ensure_head().await?;
        Ok(log)
    }

    /// Makes the head with a fresh epoch when there is none, dropping rows left from
    /// before (their offsets would be reused).
    async fn ensure_head(&self) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock(7243000119)").execute(&mut *tx).await.map_err(map_err)?;
        let made = sqlx::query(
            "INSERT INTO platform_hub_heads (namespace, epoch, head) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
        )
        .bind(&self.namespace)
        .bind(uuid::Uuid::new_v4().simple().to_string()[..12].to_owned())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        if made > 0 {
            sqlx::query("DELETE FROM platform_hub_log WHERE namespace = $1")
                .bind(&self.namespace)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }
}

#[cfg(feature = "hub")]
impl fmt::Debug for PostgresHubLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresHubLog").field("location", &self.location).field("namespace", &self.namespace).finish()
    }
}

#[cfg(feature = "hub")]
impl fmt::Display for PostgresHubLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres({}/{})", self.location, self.namespace)
    }
}

/// Reads the log of `namespace` after `after`: epoch, head, first offset kept, entries.
#[cfg(feature = "hub")]
async fn read_log(pool: &PgPool, namespace: &str, after: u64, limit: usize) -> Result<crate::hub::LogRead> {
    let mut tx = pool.begin().await.map_err(map_err)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
    let head: Option<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT epoch, head, (SELECT min(seq) FROM platform_hub_log WHERE namespace = $1)
         FROM platform_hub_heads WHERE namespace = $1",
    )
    .bind(namespace)
    .fetch_optional(&mut *tx)
    .await
    .map_err(map_err)?;
    let Some((epoch, head, first)) = head else {
        return Ok(crate::hub::LogRead::new(None, 0, 1, Vec::new()));
    };
    let rows: Vec<(i64, String, Vec<u8>)> = if limit == 0 {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT seq, channel, payload FROM platform_hub_log WHERE namespace = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(namespace)
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?
    };
    tx.commit().await.map_err(map_err)?;
    let head = u64::try_from(head).unwrap_or(0);
    let first = first.and_then(|f| u64::try_from(f).ok()).unwrap_or(head + 1);
    let entries = rows
        .into_iter()
        .map(|(seq, channel, payload)| {
            crate::hub::LogEntry::new(u64::try_from(seq).unwrap_or(0), &channel, Bytes::from(payload))
        })
        .collect();
    Ok(crate::hub::LogRead::new(Some(epoch), head, first, entries))
}

#[cfg(feature = "hub")]
#[async_trait]
impl crate::hub::HubLog for PostgresHubLog {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn append(&self, channel: &str, payload: Bytes) -> Result<(String, u64)> {
        for _ in 0..2 {
            let row: Option<(String, i64, bool)> = sqlx::query_as(LOG_APPEND)
                .bind(&self.namespace)
                .bind(channel)
                .bind(payload.as_ref())
                .bind(&self.channel)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
            let Some((epoch, head, _)) = row else {
                // The head is gone (a reset or restored database): a new epoch.
                self.ensure_head().await?;
                continue;
            };
            let head = u64::try_from(head).unwrap_or(0);
            let history = u64::try_from(self.history).unwrap_or(u64::MAX);
            if head % 64 == 0 && head > history {
                sqlx::query("DELETE FROM platform_hub_log WHERE namespace = $1 AND seq <= $2")
                    .bind(&self.namespace)
                    .bind(i64::try_from(head - history).unwrap_or(0))
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
            }
            return Ok((epoch, head));
        }
        Err(Error::unavailable("the hub log's head could not be made"))
    }

    async fn read(&self, after: u64, limit: usize) -> Result<crate::hub::LogRead> {
        read_log(&self.pool, &self.namespace, after, limit).await
    }

    async fn feed(&self) -> Result<tokio::sync::mpsc::Receiver<crate::hub::LogFeed>> {
        use crate::hub::LogFeed;
        let mut listener = listen(&self.pool, &self.channel).await?;
        // What this feed handed on last, and in which epoch.
        let at = read_log(&self.pool, &self.namespace, u64::MAX - 1, 0).await?;
        let (mut epoch, mut last) = (at.epoch.unwrap_or_default(), at.head);
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let (pool, namespace, channel) = (self.pool.clone(), self.namespace.clone(), self.channel.clone());
        tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(_)) => loop {
                        let Ok(read) = read_log(&pool, &namespace, last, 1000).await else { break };
                        let Some(now) = read.epoch else { break };
                        if now != epoch {
                            (epoch, last) = (now, 0);
                            continue;
                        }
                        let Some(end) = read.entries.last().map(|e| e.offset) else { break };
                        let shared: std::sync::Arc<str> = epoch.as_str().into();
                        for e in read.entries {
                            if tx.send(LogFeed::Entry(std::sync::Arc::clone(&shared), e)).await.is_err() {
                                return;
                            }
                        }
                        last = end;
                    },
                    Ok(None) => {
                        let mut pause = Duration::from_millis(50);
                        listener = loop {
                            if tx.is_closed() {
                                return;
                            }
                            match listen(&pool, &channel).await {
                                Ok(l) => break l,
                                Err(e) => {
                                    tracing::debug!(error = %e, "hub log listener lost; listening again");
                                    tokio::time::sleep(pause).await;
                                    pause = (pause * 2).min(Duration::from_secs(2));
                                }
                            }
                        };
                        if tx.send(LogFeed::Resync).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "hub log listener lost; listening again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(rx)
    }
}
