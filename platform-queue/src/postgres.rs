//! PostgreSQL queues: `postgres://user@host/db?queue=jobs`.
//!
//! - [x] leases (`FOR UPDATE SKIP LOCKED`), attempts, nack with delay, extend, release
//! - [x] dead letters and redrive, delay, dedup, atomic batches, durable
//! - [x] order per key (`Message::order_key`: a row waits while an earlier row of its key is queued)
//! - [x] waiting receivers wake on `LISTEN/NOTIFY` (channel `platform_queue`), with
//!   polling as the fallback
//!
//! URL: any sqlx Postgres URL (`postgres://` or `postgresql://`), plus the common
//! parameters and `max_connections` (default 8). Driver parameters passed through:
//! `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `application_name`, `options`,
//! `statement_cache_capacity`. Tables are created on open, under an advisory lock.
//!
//! Every claim and ack leaves a dead row version behind, which autovacuum reclaims;
//! the queue warns at open when the server runs without it, since claims then slow
//! down as the dead rows pile up (run `VACUUM platform_queue_messages` regularly).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use platform_core::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::Notify;

use crate::QueueHandle;
use crate::lease::{Claimed, Lease, LeaseStore, LeasedQueue, NewMessage, Release, StoredMessage};
use crate::options::QueueUrl;
use crate::sql::{LeasePool, LeaseSql, decode_row, encode_headers, parse_seq};
use crate::{Capabilities, Headers};

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["postgres", "postgresql"];

/// A queue in a PostgreSQL database.
pub type PostgresQueue = LeasedQueue<PostgresStore>;

const CHANNEL: &str = "platform_queue";

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS platform_queue_messages (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        queue TEXT NOT NULL,
        body BYTEA NOT NULL,
        headers TEXT NOT NULL,
        visible_at BIGINT NOT NULL,
        token TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        first_failure BIGINT,
        created_at BIGINT NOT NULL,
        order_key TEXT)",
    "CREATE INDEX IF NOT EXISTS platform_queue_ready ON platform_queue_messages (queue, visible_at, seq)",
    "CREATE INDEX IF NOT EXISTS platform_queue_order ON platform_queue_messages (queue, order_key, seq)
        WHERE order_key IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS platform_queue_dedup (
        queue TEXT NOT NULL,
        dedup_key TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (queue, dedup_key))",
];

/// Leases the next `$5` visible messages of queue `$4` at time `$3` to token `$1` until
/// `$2`. Each row also says whether the queue holds more visible messages than the
/// claim took, so a full claim wakes another receive only when there is more to take.
///
/// The locking select runs once, as an init plan, whatever the planner thinks of the
/// table. Joined as a subquery, it ran again for every row of the table under the
/// nested loop that a table whose statistics say empty gets (a drained queue that
/// autovacuum visited, planned once and cached by the prepared statement): each claim
/// then cost the whole table and leased every row it met, not `$5`.
///
/// The probe for more runs only for a full claim, and sees the table as it was before
/// the claim, so the claimed rows are the first `$5` it skips (rows that others hold
/// count as more: a wasted wake-up, never a missed one). A row whose order key has an
/// earlier row still in the queue waits for it; the probe counts it (a wasted wake-up).
const CLAIM: &str = "WITH c AS (
       UPDATE platform_queue_messages m SET token = $1, visible_at = $2, attempts = m.attempts + 1,
         first_failure = CASE WHEN m.attempts > 0 AND m.first_failure IS NULL THEN $3 ELSE m.first_failure END
       WHERE m.seq = ANY(ARRAY(SELECT seq FROM platform_queue_messages r
             WHERE queue = $4 AND visible_at <= $3 AND (order_key IS NULL OR NOT EXISTS (
               SELECT 1 FROM platform_queue_messages o
               WHERE o.queue = r.queue AND o.order_key = r.order_key AND o.seq < r.seq))
             ORDER BY visible_at, seq LIMIT $5
             FOR UPDATE SKIP LOCKED))
       RETURNING m.seq, m.body, m.headers, m.attempts, m.first_failure)
     SELECT seq, body, headers, attempts, first_failure,
       (SELECT count(*) FROM c) = $5 AND EXISTS (SELECT 1 FROM platform_queue_messages
         WHERE queue = $4 AND visible_at <= $3 ORDER BY visible_at, seq OFFSET $5 LIMIT 1)
     FROM c";

/// Inserts a batch with dedup keys into queue `$1`: bodies `$2`, headers `$3`, visible
/// times `$4`, keys `$5` (null for none); a fresh key is remembered until `$6`, a key
/// is fresh when unseen or expired at `$7`. Wakes receivers on channel `$8`; order keys
/// `$9`. Of several messages with one dedup key, the first is the one kept.
const INSERT_DEDUP: &str = "WITH input AS (
       SELECT * FROM UNNEST($2::bytea[], $3::text[], $4::bigint[], $5::text[], $9::text[])
         WITH ORDINALITY AS t(b, h, v, k, o, n)),
     firsts AS (
       SELECT DISTINCT ON (k) k, n FROM input WHERE k IS NOT NULL ORDER BY k, n),
     fresh AS (
       INSERT INTO platform_queue_dedup (queue, dedup_key, expires_at)
       SELECT $1, k, $6 FROM firsts ORDER BY k
       ON CONFLICT (queue, dedup_key) DO UPDATE SET expires_at = EXCLUDED.expires_at
       WHERE platform_queue_dedup.expires_at <= $7
       RETURNING dedup_key),
     added AS (
       INSERT INTO platform_queue_messages (queue, body, headers, visible_at, created_at, order_key)
       SELECT $1, b, h, v, $7, o FROM input
       WHERE k IS NULL OR n IN (SELECT firsts.n FROM firsts JOIN fresh ON fresh.dedup_key = firsts.k)
       ORDER BY n
       RETURNING 1)
     SELECT pg_notify($8, $1) WHERE EXISTS (SELECT 1 FROM added)";

const DRIVER_PARAMS: &[&str] =
    &["sslmode", "sslrootcert", "sslcert", "sslkey", "application_name", "options", "statement_cache_capacity"];

/// Maps a sqlx error from PostgreSQL onto the portable kinds, by SQLSTATE.
pub(crate) fn map_err(e: sqlx::Error) -> Error {
    platform_core::sql::map_sqlx("postgres", e, |db| platform_core::sql::postgres_kind(&db.code()?))
}

/// The lease statements (see [`LeaseSql`] for their arguments).
const LEASE_SQL: LeaseSql = LeaseSql {
    ack: "DELETE FROM platform_queue_messages WHERE seq = $1 AND queue = $2 AND token = $3 AND visible_at > $4",
    release: "UPDATE platform_queue_messages SET visible_at = $1, token = NULL,
                first_failure = CASE WHEN $2 AND first_failure IS NULL THEN $3 ELSE first_failure END,
                attempts = GREATEST(attempts - $4, 0)
              WHERE seq = $5 AND queue = $6 AND token = $7 AND visible_at > $8",
    extend: "UPDATE platform_queue_messages SET visible_at = $1
             WHERE seq = $2 AND queue = $3 AND token = $4 AND visible_at > $5",
    move_to: "UPDATE platform_queue_messages
              SET queue = $1, headers = $2, visible_at = $3, token = NULL, attempts = 0, first_failure = NULL,
                order_key = NULL
              WHERE seq = $4 AND queue = $5 AND token = $6 AND visible_at > $7",
    peek: "SELECT seq, body, headers, attempts, first_failure FROM platform_queue_messages
           WHERE queue = $1 ORDER BY seq LIMIT $2",
};

/// The store behind [`PostgresQueue`].
#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    location: String,
    wakers: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    listener: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
    /// The listener is listening: a send made now wakes a waiting receive.
    listening: Arc<std::sync::atomic::AtomicBool>,
}

impl PostgresQueue {
    /// Opens a queue from `postgres://…`, creating the tables as needed.
    pub async fn from_url(url: &str) -> Result<QueueHandle<Self>> {
        let mut u = QueueUrl::parse(url)?;
        let max = u.take_parsed::<u32>("max_connections")?.unwrap_or(8);
        let driver = u.take_driver_params(DRIVER_PARAMS);
        platform_core::sql::refuse_tls("platform-queue", &driver)?;
        u.finish("postgres")?;
        let opts = PgConnectOptions::from_str(&u.driver_url(&driver)).map_err(map_err)?;
        let location = format!("{}:{}", opts.get_host(), opts.get_port());
        let pool = PgPoolOptions::new()
            .max_connections(max.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(map_err)?;
        let mut tx = pool.begin().await.map_err(map_err)?;
        // Parallel opens must not race on CREATE TABLE.
        sqlx::query("SELECT pg_advisory_xact_lock(7243000117)").execute(&mut *tx).await.map_err(map_err)?;
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        let autovacuum: std::result::Result<(String,), _> = sqlx::query_as("SHOW autovacuum").fetch_one(&pool).await;
        if let Ok((v,)) = autovacuum
            && v != "on"
        {
            tracing::warn!(
                autovacuum = %v,
                "postgres autovacuum is off: the queue's dead rows are never reclaimed and claims slow down; \
                 turn it on or VACUUM platform_queue_messages regularly"
            );
        }
        let store = PostgresStore {
            pool,
            location,
            wakers: Arc::default(),
            listener: std::sync::OnceLock::new(),
            listening: Arc::default(),
        };
        Self::new(store, u.options).map(QueueHandle::new)
    }
}

impl PostgresStore {
    fn waker(&self, queue: &str) -> Arc<Notify> {
        let mut w = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(w.entry(queue.to_owned()).or_default())
    }

    /// Starts the LISTEN task once; it wakes local receivers of the queue a
    /// notification names, and everyone after a reconnect.
    fn ensure_listener(&self) {
        if self.listener.get().is_some() {
            return;
        }
        let pool = self.pool.clone();
        let wakers = Arc::clone(&self.wakers);
        let listening = Arc::clone(&self.listening);
        self.listener.get_or_init(|| {
            tokio::spawn(async move {
                loop {
                    let mut listener = match PgListener::connect_with(&pool).await {
                        Ok(l) => l,
                        Err(_) if pool.is_closed() => return,
                        Err(e) => {
                            tracing::debug!(error = %e, "postgres listener connect failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    if listener.listen(CHANNEL).await.is_err() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    // A lost connection is listened on again by the next `try_recv`.
                    listening.store(true, std::sync::atomic::Ordering::Relaxed);
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(n)) => {
                                let w = wakers.lock().unwrap_or_else(|e| e.into_inner()).get(n.payload()).cloned();
                                if let Some(w) = w {
                                    // One receive: the one waiting longest or, as a stored
                                    // permit, the next to wait (a receive whose claim found
                                    // nothing just before this message arrived would miss
                                    // it otherwise). A claim that fills its batch passes
                                    // the wake-up on (see `claim`): waking every waiting
                                    // receive made all but one claim nothing.
                                    w.notify_one();
                                }
                            }
                            // Connection lost: notifications may have been missed.
                            Ok(None) => {
                                let all: Vec<_> =
                                    wakers.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
                                all.iter().for_each(|w| w.notify_waiters());
                            }
                            Err(_) => break,
                        }
                    }
                    listening.store(false, std::sync::atomic::Ordering::Relaxed);
                    if pool.is_closed() {
                        return;
                    }
                }
            })
        });
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get() {
            task.abort();
        }
    }
}

impl PostgresStore {
    /// The connection pool, for tables of its own beside the queue's (an event bus
    /// keeps its groups there).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl LeaseStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { ordered_per_key: true, ..Capabilities::default() }
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn insert(&self, queue: &str, messages: Vec<NewMessage>, now_ms: i64, dedup_until_ms: i64) -> Result<()> {
        if messages.iter().all(|m| m.dedup_key.is_none()) {
            // One statement, so one round trip: the rows and the wake-up commit together.
            let bodies: Vec<&[u8]> = messages.iter().map(|m| m.body.as_ref()).collect();
            let headers: Vec<String> = messages.iter().map(|m| encode_headers(&m.headers)).collect();
            let visible: Vec<i64> = messages.iter().map(|m| m.visible_at_ms).collect();
            let order_keys: Vec<Option<&str>> = messages.iter().map(|m| m.order_key.as_deref()).collect();
            sqlx::query(
                "WITH added AS (
                   INSERT INTO platform_queue_messages (queue, body, headers, visible_at, created_at, order_key)
                   SELECT $1, b, h, v, $5, o FROM UNNEST($2::bytea[], $3::text[], $4::bigint[], $7::text[])
                     AS t(b, h, v, o)
                   RETURNING 1)
                 SELECT pg_notify($6, $1) WHERE EXISTS (SELECT 1 FROM added)",
            )
            .bind(queue)
            .bind(&bodies)
            .bind(&headers)
            .bind(&visible)
            .bind(now_ms)
            .bind(CHANNEL)
            .bind(&order_keys)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
            return Ok(());
        }
        // Dedup keys too in one statement: the first message of each key in the batch
        // whose key is fresh (never seen, or expired) is inserted, in batch order.
        let bodies: Vec<&[u8]> = messages.iter().map(|m| m.body.as_ref()).collect();
        let headers: Vec<String> = messages.iter().map(|m| encode_headers(&m.headers)).collect();
        let visible: Vec<i64> = messages.iter().map(|m| m.visible_at_ms).collect();
        let keys: Vec<Option<&str>> = messages.iter().map(|m| m.dedup_key.as_deref()).collect();
        let order_keys: Vec<Option<&str>> = messages.iter().map(|m| m.order_key.as_deref()).collect();
        sqlx::query(INSERT_DEDUP)
            .bind(queue)
            .bind(&bodies)
            .bind(&headers)
            .bind(&visible)
            .bind(&keys)
            .bind(dedup_until_ms)
            .bind(now_ms)
            .bind(CHANNEL)
            .bind(&order_keys)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn claim(&self, queue: &str, max: usize, now_ms: i64, lease_until_ms: i64, token: &str) -> Result<Claimed> {
        let rows: Vec<(i64, Vec<u8>, String, i32, Option<i64>, bool)> = sqlx::query_as(CLAIM)
            .bind(token)
            .bind(lease_until_ms)
            .bind(now_ms)
            .bind(queue)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        // Whether more was ready past a full batch (the probe runs only then).
        let left = rows.first().is_some_and(|r| r.5);
        if left {
            // The next waiting receive takes it.
            self.waker(queue).notify_one();
        }
        // Without a live LISTEN no send would wake a receive that waits, so a claim
        // that emptied the queue tells nothing the next receive could wait on.
        let more = left || !self.listening.load(std::sync::atomic::Ordering::Relaxed);
        let messages = rows
            .into_iter()
            .map(|(seq, body, headers, attempts, ff, _)| decode_row((seq, body, headers, attempts, ff)))
            .collect();
        Ok(Claimed::new(messages, more))
    }

    async fn ack(&self, lease: Lease<'_>) -> Result<bool> {
        self.pool.ack_row(&LEASE_SQL, lease).await.map_err(map_err)
    }

    async fn ack_many(&self, queue: &str, items: &[(&str, &str)], now_ms: i64) -> Result<Option<Vec<bool>>> {
        let (seqs, tokens): (Vec<i64>, Vec<String>) =
            items.iter().filter_map(|(id, t)| Some((parse_seq(id)?, t.to_string()))).unzip();
        // `|| ''` and `+ 0` keep the lease check off the ready index: the messages are
        // found by primary key, not by walking the queue's leases (and the dead index
        // entries of every lease acked in the last visibility timeout).
        let gone: Vec<(i64,)> = sqlx::query_as(
            "DELETE FROM platform_queue_messages m USING UNNEST($2::bigint[], $3::text[]) AS a(seq, token)
             WHERE m.seq = a.seq AND m.token = a.token AND m.queue || '' = $1 AND m.visible_at + 0 > $4
             RETURNING m.seq",
        )
        .bind(queue)
        .bind(&seqs)
        .bind(&tokens)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let gone: std::collections::HashSet<i64> = gone.into_iter().map(|(s,)| s).collect();
        Ok(Some(items.iter().map(|(id, _)| parse_seq(id).is_some_and(|s| gone.contains(&s))).collect()))
    }

    async fn release(&self, lease: Lease<'_>, visible_at_ms: i64, how: Release) -> Result<bool> {
        let held = self.pool.release_row(&LEASE_SQL, lease, visible_at_ms, how).await;
        held.map_err(map_err)
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let n = sqlx::query(
            "UPDATE platform_queue_messages
             SET queue = $1, visible_at = $2, token = NULL, attempts = 0, first_failure = NULL
             WHERE seq = ANY(ARRAY(SELECT seq FROM platform_queue_messages WHERE queue = $3 ORDER BY seq LIMIT $4
                                   FOR UPDATE SKIP LOCKED))",
        )
        .bind(to)
        .bind(now_ms)
        .bind(from)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(to).execute(&mut *tx).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn ping(&self) -> Result<Option<String>> {
        let (v,): (String,) = sqlx::query_as("SHOW server_version").fetch_one(&self.pool).await.map_err(map_err)?;
        Ok(Some(format!("PostgreSQL {v}")))
    }

    async fn wait_for_work(&self, queue: &str, timeout: Duration) {
        self.ensure_listener();
        let waker = self.waker(queue);
        let _ = tokio::time::timeout(timeout, waker.notified()).await;
    }

    fn max_poll_interval(&self) -> Duration {
        Duration::from_millis(500)
    }

    async fn close(&self) -> Result<()> {
        if let Some(task) = self.listener.get() {
            task.abort();
        }
        self.pool.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim planned while its table was known to be empty, and run from the plan cache
    /// once the table is full (as sqlx's prepared statements are), leases the
    /// batch it asks for: a plan that ran the locking select once per row of the table
    /// leased every row it met instead. A full claim wakes another receive only when
    /// it left messages behind, and says whether it did.
    #[tokio::test]
    async fn a_claim_planned_on_an_empty_table_leases_its_batch() {
        let Some(url) = platform_core::testkit::server_url("POSTGRES") else { return };
        let schema = format!("claim_plan_{}", uuid::Uuid::new_v4().simple());
        let opts = PgConnectOptions::from_str(&url).expect("url");
        let admin = PgPoolOptions::new().max_connections(1).connect_with(opts.clone()).await.expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await.expect("schema");
        // One connection, so one plan cache; its generic plan is made on the first claim.
        let opts = opts.options([("search_path", schema.as_str()), ("plan_cache_mode", "force_generic_plan")]);
        let pool = PgPoolOptions::new().max_connections(1).connect_with(opts).await.expect("connect");
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&pool).await.expect("table");
        }
        let store = PostgresStore {
            pool,
            location: String::new(),
            wakers: Arc::default(),
            listener: std::sync::OnceLock::new(),
            // As if LISTEN were live, so that claims tell what their probe found.
            listening: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        // What autovacuum leaves of a queue it finds drained: statistics that say empty.
        sqlx::query("VACUUM ANALYZE platform_queue_messages").execute(&store.pool).await.expect("vacuum");
        assert!(store.claim("q", 10, 1, 2, "first").await.expect("claim").messages.is_empty());
        let rows = (0..300)
            .map(|_| NewMessage {
                body: "x".into(),
                headers: Headers::new(),
                visible_at_ms: 0,
                dedup_key: None,
                order_key: None,
            })
            .collect();
        store.insert("q", rows, 0, 0).await.expect("insert");
        // A full claim that leaves more behind wakes the next receive (a stored permit
        // here, since none waits); one that takes the last message does not.
        let woken = || async { tokio::time::timeout(Duration::ZERO, store.waker("q").notified()).await.is_ok() };
        let Claimed { messages: first, more: _ } = store.claim("q", 10, 1, 2, "second").await.expect("claim");
        let first_wakes = woken().await;
        let Claimed { messages: next, more: _ } = store.claim("q", 10, 1, 2, "third").await.expect("claim");
        let next_wakes = woken().await;
        let Claimed { messages: rest, more: rest_more } = store.claim("q", 280, 1, 2, "fourth").await.expect("claim");
        let rest_wakes = woken().await;
        let Claimed { messages: none, more: none_more } = store.claim("q", 10, 1, 2, "fifth").await.expect("claim");
        store.pool.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&admin).await.expect("drop");
        assert_eq!((first.len(), next.len(), rest.len()), (10, 10, 280), "each claim leases the batch it asks for");
        let seqs = |b: &[StoredMessage]| b.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        assert!(seqs(&first).iter().all(|id| !seqs(&next).contains(id)), "the second claim leases other messages");
        assert_eq!((first_wakes, next_wakes, rest_wakes), (true, true, false), "wake-ups after each claim");
        assert_eq!((rest_more, none.len(), none_more), (false, 0, false), "a claim that empties the queue says so");
    }
}
