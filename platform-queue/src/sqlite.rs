//! SQLite queues: `sqlite://jobs.db?queue=jobs` or `sqlite::memory:`.
//!
//! - [x] leases, attempts, nack with delay, extend, release
//! - [x] dead letters and redrive, delay, dedup, atomic batches
//! - [x] order per key (`Message::order_key`: a row waits while an earlier row of its key is queued)
//! - [x] durable (a file database survives restarts; `sqlite::memory:` does not)
//!
//! URL: `sqlite://PATH` (relative) or `sqlite:///ABSOLUTE/PATH`, created when missing;
//! `sqlite::memory:` for a private in-memory database. Parameters: the common ones
//! (`queue`, `visibility_timeout`, `max_attempts`, `dead_letter`, `dedup_window`) and
//! `busy_timeout` (default 5s). WAL journal mode is turned on for files.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use platform_core::{Error, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::Notify;

use crate::QueueHandle;
use crate::lease::{Claimed, Lease, LeaseStore, LeasedQueue, NewMessage, Release, StoredMessage};
use crate::options::QueueUrl;
use crate::sql::{LeasePool, LeaseSql, Row, decode_row, encode_headers, parse_seq};
use crate::{Capabilities, Headers};

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["sqlite"];

/// A queue in a SQLite database.
pub type SqliteQueue = LeasedQueue<SqliteStore>;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS platform_queue_messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        body BLOB NOT NULL,
        headers TEXT NOT NULL,
        visible_at INTEGER NOT NULL,
        token TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        first_failure INTEGER,
        created_at INTEGER NOT NULL,
        order_key TEXT)",
    "CREATE INDEX IF NOT EXISTS platform_queue_ready ON platform_queue_messages (queue, visible_at, seq)",
    "CREATE INDEX IF NOT EXISTS platform_queue_order ON platform_queue_messages (queue, order_key, seq)
        WHERE order_key IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS platform_queue_dedup (
        queue TEXT NOT NULL,
        dedup_key TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (queue, dedup_key))",
];

/// Maps a sqlx error from SQLite onto the portable kinds, by extended result code.
pub(crate) fn map_err(e: sqlx::Error) -> Error {
    platform_core::sql::map_sqlx("sqlite", e, |db| {
        platform_core::sql::sqlite_kind(db.code()?.parse().ok()?, db.message())
    })
}

/// The lease statements (see [`LeaseSql`] for their arguments).
const LEASE_SQL: LeaseSql = LeaseSql {
    ack: "DELETE FROM platform_queue_messages WHERE seq = ?1 AND queue = ?2 AND token = ?3 AND visible_at > ?4",
    release: "UPDATE platform_queue_messages SET visible_at = ?1, token = NULL,
                first_failure = CASE WHEN ?2 AND first_failure IS NULL THEN ?3 ELSE first_failure END,
                attempts = MAX(attempts - ?4, 0)
              WHERE seq = ?5 AND queue = ?6 AND token = ?7 AND visible_at > ?8",
    extend: "UPDATE platform_queue_messages SET visible_at = ?1
             WHERE seq = ?2 AND queue = ?3 AND token = ?4 AND visible_at > ?5",
    move_to: "UPDATE platform_queue_messages
              SET queue = ?1, headers = ?2, visible_at = ?3, token = NULL, attempts = 0, first_failure = NULL,
                order_key = NULL
              WHERE seq = ?4 AND queue = ?5 AND token = ?6 AND visible_at > ?7",
    peek: "SELECT seq, body, headers, attempts, first_failure FROM platform_queue_messages
           WHERE queue = ?1 ORDER BY seq LIMIT ?2",
};

/// The store behind [`SqliteQueue`].
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    location: String,
    notify: Notify,
}

impl SqliteQueue {
    /// Opens a queue from `sqlite://…`, creating the database and tables as needed.
    pub async fn from_url(url: &str) -> Result<QueueHandle<Self>> {
        let mut u = QueueUrl::parse(url)?;
        let busy = u.take_duration("busy_timeout")?.unwrap_or(Duration::from_secs(5));
        u.finish("sqlite")?;
        let raw = u.driver_url(&[]);
        let memory = raw.contains(":memory:") || raw.contains("mode=memory");
        let opts = SqliteConnectOptions::from_str(&raw)
            .map_err(map_err)?
            .create_if_missing(true)
            .busy_timeout(busy)
            .foreign_keys(false);
        let opts = if memory {
            opts
        } else {
            opts.journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Normal)
        };
        let location = opts.get_filename().display().to_string();
        // An in-memory database exists per connection: keep exactly one.
        let max = if memory { 1 } else { 4 };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .min_connections(if memory { 1 } else { 0 })
            .idle_timeout(if memory { None } else { Some(Duration::from_secs(600)) })
            .max_lifetime(if memory { None } else { Some(Duration::from_secs(1800)) })
            .connect_with(opts)
            .await
            .map_err(map_err)?;
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&pool).await.map_err(map_err)?;
        }
        Self::new(SqliteStore { pool, location, notify: Notify::new() }, u.options).map(QueueHandle::new)
    }
}

impl SqliteStore {
    /// The connection pool, for tables of its own beside the queue's (an event bus
    /// keeps its groups there).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { ordered_per_key: true, ..Capabilities::default() }
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn insert(&self, queue: &str, messages: Vec<NewMessage>, now_ms: i64, dedup_until_ms: i64) -> Result<()> {
        if messages.iter().all(|m| m.dedup_key.is_none()) {
            // One multi-row statement is atomic on its own: one call into the driver's
            // thread instead of one per message and two for the transaction.
            let mut b: sqlx::QueryBuilder<sqlx::Sqlite> = sqlx::QueryBuilder::new(
                "INSERT INTO platform_queue_messages (queue, body, headers, visible_at, created_at, order_key) ",
            );
            b.push_values(&messages, |mut r, m| {
                r.push_bind(queue)
                    .push_bind(m.body.as_ref())
                    .push_bind(encode_headers(&m.headers))
                    .push_bind(m.visible_at_ms)
                    .push_bind(now_ms)
                    .push_bind(m.order_key.as_deref());
            });
            b.build().execute(&self.pool).await.map_err(map_err)?;
            self.notify.notify_waiters();
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for m in messages {
            if let Some(key) = &m.dedup_key {
                let fresh = sqlx::query(
                    "INSERT INTO platform_queue_dedup (queue, dedup_key, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (queue, dedup_key) DO UPDATE SET expires_at = excluded.expires_at
                     WHERE platform_queue_dedup.expires_at <= ?4",
                )
                .bind(queue)
                .bind(key)
                .bind(dedup_until_ms)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?
                .rows_affected();
                if fresh == 0 {
                    continue;
                }
            }
            sqlx::query(
                "INSERT INTO platform_queue_messages (queue, body, headers, visible_at, created_at, order_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(queue)
            .bind(m.body.as_ref())
            .bind(encode_headers(&m.headers))
            .bind(m.visible_at_ms)
            .bind(now_ms)
            .bind(m.order_key.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        self.notify.notify_waiters();
        Ok(())
    }

    async fn claim(&self, queue: &str, max: usize, now_ms: i64, lease_until_ms: i64, token: &str) -> Result<Claimed> {
        let rows: Vec<Row> = sqlx::query_as(
            "UPDATE platform_queue_messages SET token = ?1, visible_at = ?2, attempts = attempts + 1,
               first_failure = CASE WHEN attempts > 0 AND first_failure IS NULL THEN ?3 ELSE first_failure END
             WHERE seq IN (SELECT seq FROM platform_queue_messages m
                           WHERE queue = ?4 AND visible_at <= ?3 AND (order_key IS NULL OR NOT EXISTS (
                             SELECT 1 FROM platform_queue_messages o
                             WHERE o.queue = m.queue AND o.order_key = m.order_key AND o.seq < m.seq))
                           ORDER BY visible_at, seq LIMIT ?5)
             RETURNING seq, body, headers, attempts, first_failure",
        )
        .bind(token)
        .bind(lease_until_ms)
        .bind(now_ms)
        .bind(queue)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        // Receives poll here: nothing would wake one that waited for more.
        Ok(Claimed::new(rows.into_iter().map(decode_row).collect(), true))
    }

    async fn release(&self, lease: Lease<'_>, visible_at_ms: i64, how: Release) -> Result<bool> {
        let held = self.pool.release_row(&LEASE_SQL, lease, visible_at_ms, how).await;
        let held = held.map_err(map_err)?;
        if held {
            self.notify.notify_waiters();
        }
        Ok(held)
    }

    async fn extend(&self, lease: Lease<'_>, until_ms: i64) -> Result<bool> {
        self.pool.extend_row(&LEASE_SQL, lease, until_ms).await.map_err(map_err)
    }

    async fn move_to(&self, lease: Lease<'_>, target: &str, headers: &Headers) -> Result<bool> {
        self.pool.move_row(&LEASE_SQL, lease, target, headers).await.map_err(map_err)
    }

    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<StoredMessage>> {
        self.pool.peek_rows(&LEASE_SQL, queue, limit).await.map_err(map_err)
    }

    async fn redrive(&self, from: &str, to: &str, limit: usize, now_ms: i64) -> Result<usize> {
        let n = sqlx::query(
            "UPDATE platform_queue_messages
             SET queue = ?1, visible_at = ?2, token = NULL, attempts = 0, first_failure = NULL
             WHERE seq IN (SELECT seq FROM platform_queue_messages WHERE queue = ?3 ORDER BY seq LIMIT ?4)",
        )
        .bind(to)
        .bind(now_ms)
        .bind(from)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(map_err)?
        .rows_affected();
        self.notify.notify_waiters();
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn ping(&self) -> Result<Option<String>> {
        let (v,): (String,) = sqlx::query_as("SELECT sqlite_version()").fetch_one(&self.pool).await.map_err(map_err)?;
        Ok(Some(format!("SQLite {v}")))
    }

    async fn wait_for_work(&self, _queue: &str, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
    }

    async fn ack(&self, lease: Lease<'_>) -> Result<bool> {
        self.pool.ack_row(&LEASE_SQL, lease).await.map_err(map_err)
    }

    async fn ack_many(&self, queue: &str, items: &[(&str, &str)], now_ms: i64) -> Result<Option<Vec<bool>>> {
        let pairs: Vec<(i64, &str)> = items.iter().filter_map(|(id, t)| Some((parse_seq(id)?, *t))).collect();
        if pairs.is_empty() {
            return Ok(Some(vec![false; items.len()]));
        }
        // By primary key (`seq IN`), with `+` keeping the lease check off the ready
        // index, which would otherwise walk every lease of the queue.
        let mut b: sqlx::QueryBuilder<sqlx::Sqlite> =
            sqlx::QueryBuilder::new("DELETE FROM platform_queue_messages WHERE seq IN (");
        let mut seqs = b.separated(", ");
        for (seq, _) in &pairs {
            seqs.push_bind(*seq);
        }
        b.push(") AND +queue = ")
            .push_bind(queue.to_owned())
            .push(" AND +visible_at > ")
            .push_bind(now_ms)
            .push(" AND (seq, token) IN (VALUES ");
        let mut list = b.separated(", ");
        for (seq, token) in &pairs {
            list.push("(")
                .push_bind_unseparated(*seq)
                .push_unseparated(", ")
                .push_bind_unseparated((*token).to_owned());
            list.push_unseparated(")");
        }
        b.push(") RETURNING seq");
        let gone: Vec<(i64,)> = b.build_query_as().fetch_all(&self.pool).await.map_err(map_err)?;
        let gone: std::collections::HashSet<i64> = gone.into_iter().map(|(s,)| s).collect();
        Ok(Some(items.iter().map(|(id, _)| parse_seq(id).is_some_and(|s| gone.contains(&s))).collect()))
    }

    fn max_poll_interval(&self) -> Duration {
        Duration::from_millis(250)
    }

    async fn close(&self) -> Result<()> {
        self.pool.close().await;
        Ok(())
    }
}
