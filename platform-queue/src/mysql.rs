//! MySQL and MariaDB queues: `mysql://user@host/db?queue=jobs`.
//!
//! - [x] leases (`FOR UPDATE SKIP LOCKED`: MySQL 8, MariaDB 10.6+), attempts, nack
//!   with delay, extend, release
//! - [x] dead letters and redrive, delay, dedup, atomic batches, durable
//! - [x] order per key (`Message::order_key`: a row waits while an earlier row of its key is queued)
//! - [ ] ~~wake-up notifications~~: waiting receivers poll (at most every 500 ms)
//!
//! URL: any sqlx MySQL URL (`mysql://`, `mariadb://` is accepted too), plus the
//! common parameters and `max_connections` (default 8). Driver parameters passed
//! through: `ssl-mode`, `ssl-ca`, `charset`, `collation`, `statement-cache-capacity`,
//! `socket`, `timezone`. Tables are created on open.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use platform_core::{Error, Result};
use sqlx::Executor;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{MySql, QueryBuilder};
use tokio::sync::Notify;

use crate::QueueHandle;
use crate::lease::{Claimed, Lease, LeaseStore, LeasedQueue, NewMessage, Release, StoredMessage};
use crate::options::QueueUrl;
use crate::sql::{LeasePool, LeaseSql, Row, decode_row, encode_headers, parse_seq};
use crate::{Capabilities, Headers};

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["mysql", "mariadb"];

/// A queue in a MySQL or MariaDB database.
pub type MysqlQueue = LeasedQueue<MysqlStore>;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS platform_queue_messages (
        seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        queue VARCHAR(200) NOT NULL,
        body LONGBLOB NOT NULL,
        headers MEDIUMTEXT NOT NULL,
        visible_at BIGINT NOT NULL,
        token VARCHAR(64) NULL,
        attempts INT NOT NULL DEFAULT 0,
        first_failure BIGINT NULL,
        created_at BIGINT NOT NULL,
        order_key VARCHAR(128) NULL,
        INDEX platform_queue_ready (queue, visible_at, seq),
        INDEX platform_queue_order (queue, order_key, seq)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS platform_queue_dedup (
        queue VARCHAR(200) NOT NULL,
        dedup_key VARCHAR(128) NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (queue, dedup_key)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
];

const DRIVER_PARAMS: &[&str] =
    &["ssl-mode", "ssl-ca", "charset", "collation", "statement-cache-capacity", "socket", "timezone"];

/// Maps a sqlx error from MySQL or MariaDB onto the portable kinds, by error number.
pub(crate) fn map_err(e: sqlx::Error) -> Error {
    platform_core::sql::map_sqlx("mysql", e, |db| {
        platform_core::sql::mysql_kind(db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()?.number())
    })
}

/// The lease statements (see [`LeaseSql`] for their arguments). MySQL assigns left to
/// right and later assignments see earlier ones: none here reads a column set before it.
const LEASE_SQL: LeaseSql = LeaseSql {
    ack: "DELETE FROM platform_queue_messages WHERE seq = ? AND queue = ? AND token = ? AND visible_at > ?",
    release: "UPDATE platform_queue_messages SET visible_at = ?, token = NULL,
                first_failure = IF(? AND first_failure IS NULL, ?, first_failure),
                attempts = GREATEST(attempts - ?, 0)
              WHERE seq = ? AND queue = ? AND token = ? AND visible_at > ?",
    extend: "UPDATE platform_queue_messages SET visible_at = ?
             WHERE seq = ? AND queue = ? AND token = ? AND visible_at > ?",
    move_to: "UPDATE platform_queue_messages
              SET queue = ?, headers = ?, visible_at = ?, token = NULL, attempts = 0, first_failure = NULL,
                order_key = NULL
              WHERE seq = ? AND queue = ? AND token = ? AND visible_at > ?",
    peek: "SELECT seq, body, headers, attempts, first_failure FROM platform_queue_messages
           WHERE queue = ? ORDER BY seq LIMIT ?",
};

/// The store behind [`MysqlQueue`].
#[derive(Debug)]
pub struct MysqlStore {
    pool: MySqlPool,
    location: String,
    notify: Notify,
    /// Whether the server takes `DELETE … RETURNING` (MariaDB 10.5+; MySQL does not).
    returning: bool,
}

impl MysqlQueue {
    /// Opens a queue from `mysql://…`, creating the tables as needed.
    pub async fn from_url(url: &str) -> Result<QueueHandle<Self>> {
        let mut u = QueueUrl::parse(url)?;
        let max = u.take_parsed::<u32>("max_connections")?.unwrap_or(8);
        let driver = u.take_driver_params(DRIVER_PARAMS);
        platform_core::sql::refuse_tls("platform-queue", &driver)?;
        u.finish("mysql")?;
        let raw = u.driver_url(&driver);
        let raw = raw.strip_prefix("mariadb").map(|rest| format!("mysql{rest}")).unwrap_or(raw);
        let opts = MySqlConnectOptions::from_str(&raw).map_err(map_err)?;
        let location = format!("{}:{}", opts.get_host(), opts.get_port());
        let pool = MySqlPoolOptions::new()
            .max_connections(max.max(2))
            .acquire_timeout(Duration::from_secs(10))
            // Claims lock rows, not gaps: fewer deadlocks between claim and ack.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(map_err)?;
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&pool).await.map_err(map_err)?;
        }
        let (version,): (String,) = sqlx::query_as("SELECT VERSION()").fetch_one(&pool).await.map_err(map_err)?;
        let returning = takes_returning(&version);
        Self::new(MysqlStore { pool, location, notify: Notify::new(), returning }, u.options).map(QueueHandle::new)
    }
}

/// Whether a server of `version` (as `SELECT VERSION()` gives it) takes
/// `DELETE … RETURNING`: MariaDB from 10.5 on.
fn takes_returning(version: &str) -> bool {
    if !version.to_ascii_lowercase().contains("mariadb") {
        return false;
    }
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (10, 5)
}

fn in_list(b: &mut QueryBuilder<MySql>, seqs: &[i64]) {
    b.push(" seq IN (");
    let mut list = b.separated(", ");
    for s in seqs {
        list.push_bind(*s);
    }
    list.push_unseparated(")");
}

/// ` AND (seq, token) IN ((?, ?), …)`: the rows whose leases the pairs hold.
fn push_pairs(b: &mut QueryBuilder<MySql>, pairs: &[(i64, String)]) {
    b.push(" AND (seq, token) IN (");
    let mut list = b.separated(", ");
    for (seq, token) in pairs {
        list.push("(").push_bind_unseparated(*seq).push_unseparated(", ").push_bind_unseparated(token.clone());
        list.push_unseparated(")");
    }
    list.push_unseparated(")");
}

/// Runs `op` again when InnoDB picked it as a deadlock victim (it was rolled back).
async fn again<T, F, Fut>(mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut tries = 0;
    loop {
        match op().await {
            Err(e) if e.is_retryable() && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(5 * tries)).await;
            }
            other => return other,
        }
    }
}

impl MysqlStore {
    /// Locks the rows whose leases the items hold, deletes them, and says which.
    async fn try_ack_many(
        &self,
        queue: &str,
        items: &[(&str, &str)],
        now_ms: i64,
    ) -> Result<std::collections::HashSet<i64>> {
        let pairs: Vec<(i64, String)> =
            items.iter().filter_map(|(id, t)| Some((parse_seq(id)?, t.to_string()))).collect();
        if pairs.is_empty() {
            return Ok(std::collections::HashSet::new());
        }
        if self.returning {
            // One statement, by primary key (`seq IN`), that says what it deleted.
            let seqs: Vec<i64> = pairs.iter().map(|(s, _)| *s).collect();
            let mut b: QueryBuilder<MySql> = QueryBuilder::new("DELETE FROM platform_queue_messages WHERE");
            in_list(&mut b, &seqs);
            b.push(" AND queue = ").push_bind(queue.to_owned()).push(" AND visible_at > ").push_bind(now_ms);
            push_pairs(&mut b, &pairs);
            b.push(" RETURNING seq");
            let gone: Vec<(i64,)> = b.build_query_as().fetch_all(&self.pool).await.map_err(map_err)?;
            return Ok(gone.into_iter().map(|(s,)| s).collect());
        }
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // By primary key: on the ready index the optimizer would read and lock every
        // lease of the queue (`queue = ? AND visible_at > ?`), and wait on the ones
        // other receivers hold.
        let mut b: QueryBuilder<MySql> =
            QueryBuilder::new("SELECT seq FROM platform_queue_messages FORCE INDEX (PRIMARY) WHERE queue = ");
        b.push_bind(queue.to_owned()).push(" AND visible_at > ").push_bind(now_ms);
        push_pairs(&mut b, &pairs);
        b.push(" FOR UPDATE");
        let held: Vec<(i64,)> = b.build_query_as().fetch_all(&mut *tx).await.map_err(map_err)?;
        let held: Vec<i64> = held.into_iter().map(|(s,)| s).collect();
        if !held.is_empty() {
            let mut b: QueryBuilder<MySql> = QueryBuilder::new("DELETE FROM platform_queue_messages WHERE");
            in_list(&mut b, &held);
            b.build().execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(held.into_iter().collect())
    }

    async fn try_insert(&self, queue: &str, messages: &[NewMessage], now_ms: i64, dedup_until_ms: i64) -> Result<()> {
        if messages.iter().all(|m| m.dedup_key.is_none()) {
            // One multi-row statement is atomic on its own: no transaction round trips.
            let rows: Vec<&NewMessage> = messages.iter().collect();
            return insert_rows(&self.pool, queue, &rows, now_ms).await;
        }
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let mut rows = Vec::with_capacity(messages.len());
        for m in messages {
            if let Some(key) = &m.dedup_key {
                // An expired key goes; then the insert is ignored (0 rows) only for a live duplicate.
                sqlx::query("DELETE FROM platform_queue_dedup WHERE queue = ? AND dedup_key = ? AND expires_at <= ?")
                    .bind(queue)
                    .bind(key)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let fresh = sqlx::query(
                    "INSERT IGNORE INTO platform_queue_dedup (queue, dedup_key, expires_at) VALUES (?, ?, ?)",
                )
                .bind(queue)
                .bind(key)
                .bind(dedup_until_ms)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?
                .rows_affected();
                if fresh == 0 {
                    continue;
                }
            }
            rows.push(m);
        }
        if !rows.is_empty() {
            insert_rows(&mut *tx, queue, &rows, now_ms).await?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn try_claim(
        &self,
        queue: &str,
        max: usize,
        now_ms: i64,
        lease_until_ms: i64,
        token: &str,
    ) -> Result<Vec<StoredMessage>> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // The locked rows as they are before the update below, which changes nothing
        // of them but the lease, the attempt and the first failure: those are counted
        // here the same way, so the claim reads its rows once.
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT seq, body, headers, attempts, first_failure FROM platform_queue_messages
             WHERE queue = ? AND visible_at <= ? AND (order_key IS NULL OR NOT EXISTS (
               SELECT 1 FROM platform_queue_messages o
               WHERE o.queue = platform_queue_messages.queue AND o.order_key = platform_queue_messages.order_key
                 AND o.seq < platform_queue_messages.seq))
             ORDER BY visible_at, seq LIMIT ? FOR UPDATE SKIP LOCKED",
        )
        .bind(queue)
        .bind(now_ms)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        if rows.is_empty() {
            tx.commit().await.map_err(map_err)?;
            return Ok(Vec::new());
        }
        let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let mut b: QueryBuilder<MySql> = QueryBuilder::new(
            "UPDATE platform_queue_messages SET first_failure = IF(attempts > 0 AND first_failure IS NULL, ",
        );
        b.push_bind(now_ms)
            .push(", first_failure), attempts = attempts + 1, token = ")
            .push_bind(token)
            .push(", visible_at = ")
            .push_bind(lease_until_ms)
            .push(" WHERE");
        in_list(&mut b, &seqs);
        b.build().execute(&mut *tx).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        let claimed = |(seq, body, headers, attempts, first_failure): Row| -> Row {
            let first_failure = first_failure.or((attempts > 0).then_some(now_ms));
            (seq, body, headers, attempts + 1, first_failure)
        };
        Ok(rows.into_iter().map(|r| decode_row(claimed(r))).collect())
    }
}

/// Inserts `rows` in one multi-row statement.
async fn insert_rows<'e, E: Executor<'e, Database = MySql>>(
    exec: E,
    queue: &str,
    rows: &[&NewMessage],
    now_ms: i64,
) -> Result<()> {
    let mut b: QueryBuilder<MySql> = QueryBuilder::new(
        "INSERT INTO platform_queue_messages (queue, body, headers, visible_at, created_at, order_key) ",
    );
    b.push_values(rows, |mut r, m| {
        r.push_bind(queue)
            .push_bind(m.body.as_ref())
            .push_bind(encode_headers(&m.headers))
            .push_bind(m.visible_at_ms)
            .push_bind(now_ms)
            .push_bind(m.order_key.as_deref());
    });
    b.build().execute(exec).await.map_err(map_err)?;
    Ok(())
}

#[async_trait]
impl LeaseStore for MysqlStore {
    fn backend(&self) -> &'static str {
        "mysql"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { ordered_per_key: true, ..Capabilities::default() }
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn insert(&self, queue: &str, messages: Vec<NewMessage>, now_ms: i64, dedup_until_ms: i64) -> Result<()> {
        again(|| self.try_insert(queue, &messages, now_ms, dedup_until_ms)).await?;
        self.notify.notify_waiters();
        Ok(())
    }

    async fn claim(&self, queue: &str, max: usize, now_ms: i64, lease_until_ms: i64, token: &str) -> Result<Claimed> {
        // Receives poll here: nothing would wake one that waited for more.
        Ok(Claimed::new(again(|| self.try_claim(queue, max, now_ms, lease_until_ms, token)).await?, true))
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
             SET queue = ?, visible_at = ?, token = NULL, attempts = 0, first_failure = NULL
             WHERE queue = ? ORDER BY seq LIMIT ?",
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
        let (v,): (String,) = sqlx::query_as("SELECT VERSION()").fetch_one(&self.pool).await.map_err(map_err)?;
        let name = if v.to_ascii_lowercase().contains("mariadb") { "MariaDB" } else { "MySQL" };
        Ok(Some(format!("{name} {v}")))
    }

    async fn wait_for_work(&self, _queue: &str, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
    }

    async fn ack(&self, lease: Lease<'_>) -> Result<bool> {
        again(|| async { self.pool.ack_row(&LEASE_SQL, lease).await.map_err(map_err) }).await
    }

    async fn ack_many(&self, queue: &str, items: &[(&str, &str)], now_ms: i64) -> Result<Option<Vec<bool>>> {
        let gone = again(|| self.try_ack_many(queue, items, now_ms)).await?;
        Ok(Some(items.iter().map(|(id, _)| parse_seq(id).is_some_and(|s| gone.contains(&s))).collect()))
    }

    fn max_poll_interval(&self) -> Duration {
        Duration::from_millis(500)
    }

    async fn close(&self) -> Result<()> {
        self.pool.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returning_is_taken_by_mariadb_from_10_5() {
        assert!(takes_returning("10.11.19-MariaDB-0+deb12u1"));
        assert!(takes_returning("10.5.0-MariaDB"));
        assert!(takes_returning("11.4.2-MariaDB-ubu2404"));
        assert!(!takes_returning("10.4.34-MariaDB"));
        assert!(!takes_returning("8.0.36"));
        assert!(!takes_returning("8.4.0-commercial"));
    }

    /// A grouped ack deletes the rows whose leases its items hold and says which, in one
    /// `DELETE … RETURNING` and in the locked select MySQL takes instead: of four items,
    /// a held lease is acked, a lapsed one, another receive's and an unknown id are not.
    #[tokio::test]
    async fn a_grouped_ack_judges_each_item_both_ways() {
        let Some(url) = platform_core::testkit::server_url("MYSQL") else { return };
        let db = platform_core::testkit::unique_ident("ack_many");
        let admin = MySqlPool::connect(&url).await.expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&admin).await.expect("database");
        let mut opts = MySqlConnectOptions::from_str(&url).expect("url");
        opts = opts.database(&db);
        let pool = MySqlPoolOptions::new().max_connections(2).connect_with(opts).await.expect("connect");
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&pool).await.expect("table");
        }
        for returning in [true, false] {
            let store = MysqlStore { pool: pool.clone(), location: String::new(), notify: Notify::new(), returning };
            let queue = format!("q{returning}");
            let rows = (0..3)
                .map(|_| NewMessage {
                    body: "x".into(),
                    headers: Headers::new(),
                    visible_at_ms: 0,
                    dedup_key: None,
                    order_key: None,
                })
                .collect();
            store.insert(&queue, rows, 0, 0).await.expect("insert");
            // Two leased until 1,000 by "a", one until 50 by "b"; the ack runs at 100.
            let a = store.try_claim(&queue, 2, 10, 1_000, "a").await.expect("claim");
            let b = store.try_claim(&queue, 1, 10, 50, "b").await.expect("claim");
            assert_eq!((a.len(), b.len()), (2, 1));
            assert!(a.iter().chain(&b).all(|m| m.attempts == 1 && m.first_failure_ms.is_none()));
            let items = [(a[0].id.as_str(), "a"), (a[1].id.as_str(), "b"), (b[0].id.as_str(), "b"), ("999999999", "a")];
            let acked = store.ack_many(&queue, &items, 100).await.expect("ack").expect("grouped");
            assert_eq!(acked, [true, false, false, false], "returning: {returning}");
            let left: Vec<String> = store.peek(&queue, 10).await.expect("peek").into_iter().map(|m| m.id).collect();
            assert_eq!(left, [a[1].id.clone(), b[0].id.clone()], "returning: {returning}");
            // The lapsed one comes back on its second attempt, its first failure set.
            let again = store.try_claim(&queue, 5, 100, 2_000, "c").await.expect("claim");
            assert_eq!(again.iter().map(|m| (m.id.as_str(), m.attempts)).collect::<Vec<_>>(), [(b[0].id.as_str(), 2)]);
            assert_eq!(again[0].first_failure_ms, Some(100));
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {db}"))).execute(&admin).await.expect("drop");
    }
}
