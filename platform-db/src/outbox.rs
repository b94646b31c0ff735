//! The transactional outbox table: the primitives an event relay is built on.
//!
//! # Contract
//! - [`enqueue`] writes a message row in the caller's transaction: it exists exactly when
//!   the state change it describes committed.
//! - [`claim`] takes up to `limit` unsent rows, oldest first, that no live claim holds,
//!   and leases them for `lease` under a fresh token (PostgreSQL and MySQL: `FOR UPDATE
//!   SKIP LOCKED`, so concurrent relays never claim the same row; SQLite: one writer at a
//!   time). A claim whose lease ran out may be taken again: delivery is at-least-once.
//! - [`mark_sent`] marks claimed rows sent, only while the claim still holds them;
//!   [`release`] gives them back for a retry at a set time; [`park`] sets poison rows
//!   aside for good ([`parked`] lists them); [`purge_sent`] deletes sent rows older than
//!   a cut-off; [`lag`] is the age of the oldest row still to send.
//!
//! The table comes from [`migration`], added to the application's migrations.

use std::collections::BTreeMap;
use std::time::Duration;

use platform_core::Result;
use platform_core::clock::now_ms;
use time::OffsetDateTime;

use crate::migrate::Migration;
use crate::{Db, Dialect, Sql, Tx};

/// The table.
pub const TABLE: &str = "platform_db_outbox";

/// The migration that creates the table, at the version the application chooses.
pub fn migration(version: i64) -> Migration {
    let sql = |id: &str, bytes: &str| {
        format!(
            "CREATE TABLE {TABLE} (id {id}, topic VARCHAR(255) NOT NULL, msg_key VARCHAR(255), \
             payload {bytes} NOT NULL, headers TEXT NOT NULL, created_at BIGINT NOT NULL, \
             claimed_until BIGINT NOT NULL, claim_token VARCHAR(36), attempts INTEGER NOT NULL, sent_at BIGINT);\n\
             CREATE INDEX platform_db_outbox_unsent ON {TABLE} (sent_at, id)"
        )
    };
    Migration::new(version, "platform-db outbox", sql("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"))
        .with_sql(Dialect::Postgres, sql("BIGSERIAL PRIMARY KEY", "BYTEA"))
        .with_sql(Dialect::Mysql, sql("BIGINT AUTO_INCREMENT PRIMARY KEY", "LONGBLOB"))
        .with_sql(
            Dialect::SqlServer,
            format!(
                "CREATE TABLE {TABLE} (id BIGINT IDENTITY(1,1) PRIMARY KEY, topic NVARCHAR(255) NOT NULL, \
                 msg_key NVARCHAR(255), payload VARBINARY(MAX) NOT NULL, headers NVARCHAR(MAX) NOT NULL, \
                 created_at BIGINT NOT NULL, claimed_until BIGINT NOT NULL, claim_token VARCHAR(36), \
                 attempts INTEGER NOT NULL, sent_at BIGINT);\n\
                 CREATE INDEX platform_db_outbox_unsent ON {TABLE} (sent_at, id)"
            ),
        )
}

/// `LIMIT ?` in the dialect (T-SQL pages with `OFFSET … FETCH`, after an `ORDER BY`).
fn limit(dialect: Dialect) -> &'static str {
    if dialect == Dialect::SqlServer { "OFFSET 0 ROWS FETCH NEXT ? ROWS ONLY" } else { "LIMIT ?" }
}

/// The query that picks rows to claim, locking them past other relays' locks.
pub(crate) fn claim_query(dialect: Dialect) -> String {
    let (hint, lock) = match dialect {
        Dialect::Sqlite => ("", ""),
        Dialect::SqlServer => (" WITH (UPDLOCK, READPAST, ROWLOCK)", ""),
        _ => ("", " FOR UPDATE SKIP LOCKED"),
    };
    format!(
        "SELECT id FROM {TABLE}{hint} WHERE sent_at IS NULL AND claimed_until < ? ORDER BY id {}{lock}",
        limit(dialect)
    )
}

/// A message to publish once the transaction commits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct OutboxMessage {
    /// Where it goes (topic, queue, stream).
    pub topic: String,
    /// Partition or ordering key.
    pub key: Option<String>,
    /// The body.
    pub payload: Vec<u8>,
    /// Headers (correlation id, `traceparent`, content type).
    pub headers: BTreeMap<String, String>,
}

impl OutboxMessage {
    /// A message for `topic`.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self { topic: topic.into(), payload: payload.into(), ..Self::default() }
    }

    /// Sets the key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// A claimed row.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutboxRecord {
    /// Row id, increasing in commit-ish order.
    pub id: i64,
    /// The message.
    pub message: OutboxMessage,
    /// When it was enqueued.
    pub created_at: OffsetDateTime,
    /// How many times it was claimed, this time included.
    pub attempts: u32,
}

/// Rows leased to one relay.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Claim {
    /// The lease's token.
    pub token: String,
    /// The rows, oldest first.
    pub records: Vec<OutboxRecord>,
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Writes `message` in the caller's transaction.
pub async fn enqueue(tx: &mut Tx, message: &OutboxMessage) -> Result<()> {
    let headers = serde_json::to_string(&message.headers)?;
    let insert = Sql::new(format!(
        "INSERT INTO {TABLE} (topic, msg_key, payload, headers, created_at, claimed_until, attempts) \
         VALUES (?, ?, ?, ?, ?, 0, 0)"
    ))
    .bind(message.topic.clone())
    .bind(message.key.clone())
    .bind(message.payload.clone())
    .bind(headers)
    .bind(now_ms());
    tx.execute(&insert).await.map(|_| ())
}

/// Claims up to `limit` unsent rows for `lease`.
pub async fn claim(db: &Db, limit: u32, lease: Duration) -> Result<Claim> {
    let token = uuid::Uuid::new_v4().to_string();
    let now = now_ms();
    let mut tx = db.begin().await?;
    let ids: Vec<i64> = tx
        .fetch_all(&Sql::new(claim_query(db.dialect())).bind(now).bind(i64::from(limit)))
        .await?
        .iter()
        .map(|r| r.get("id"))
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        tx.rollback().await?;
        return Ok(Claim { token, records: Vec::new() });
    }
    let until = now + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
    let mut update = Sql::new(format!(
        "UPDATE {TABLE} SET claimed_until = ?, claim_token = ?, attempts = attempts + 1 WHERE id IN ({})",
        placeholders(ids.len())
    ))
    .bind(until)
    .bind(token.clone());
    let mut select = Sql::new(format!(
        "SELECT id, topic, msg_key, payload, headers, created_at, attempts FROM {TABLE} WHERE id IN ({}) ORDER BY id",
        placeholders(ids.len())
    ));
    for id in &ids {
        update = update.bind(*id);
        select = select.bind(*id);
    }
    tx.execute(&update).await?;
    let rows = tx.fetch_all(&select).await?;
    tx.commit().await?;
    let records = rows.iter().map(record).collect::<Result<_>>()?;
    Ok(Claim { token, records })
}

fn record(r: &crate::Row) -> Result<OutboxRecord> {
    let created: i64 = r.get("created_at")?;
    Ok(OutboxRecord {
        id: r.get("id")?,
        message: OutboxMessage {
            topic: r.get("topic")?,
            key: r.get("msg_key")?,
            payload: r.get("payload")?,
            headers: serde_json::from_str(&r.get::<String>("headers")?)?,
        },
        created_at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(created) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        attempts: r.get("attempts")?,
    })
}

/// Marks these rows of `claim` sent; returns how many were still held by it.
pub async fn mark_sent(db: &Db, claim: &Claim, ids: &[i64]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut update = Sql::new(format!(
        "UPDATE {TABLE} SET sent_at = ? WHERE claim_token = ? AND sent_at IS NULL AND id IN ({})",
        placeholders(ids.len())
    ))
    .bind(now_ms())
    .bind(claim.token.clone());
    for id in ids {
        update = update.bind(*id);
    }
    db.execute(&update).await
}

/// Deletes rows sent before `older_than` ago; returns how many.
pub async fn purge_sent(db: &Db, older_than: Duration) -> Result<u64> {
    let cutoff = now_ms() - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX / 2);
    db.execute(&Sql::new(format!("DELETE FROM {TABLE} WHERE sent_at IS NOT NULL AND sent_at < ?")).bind(cutoff)).await
}

/// `claimed_until` of a parked row: never claimed again until an operator acts.
pub const PARKED: i64 = i64::MAX;

/// Gives these rows of `claim` back, claimable again from `retry_at` (a publish that
/// failed, retried after a backoff); returns how many were still held by it.
pub async fn release(db: &Db, claim: &Claim, ids: &[i64], retry_at: OffsetDateTime) -> Result<u64> {
    let at = i64::try_from(retry_at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    settle(db, claim, ids, at).await
}

/// Parks these rows of `claim` (poison: they failed too often or cannot be published):
/// never claimed again, listed by [`parked`], counted apart from the lag.
pub async fn park(db: &Db, claim: &Claim, ids: &[i64]) -> Result<u64> {
    settle(db, claim, ids, PARKED).await
}

async fn settle(db: &Db, claim: &Claim, ids: &[i64], claimed_until: i64) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut update = Sql::new(format!(
        "UPDATE {TABLE} SET claimed_until = ?, claim_token = NULL \
         WHERE claim_token = ? AND sent_at IS NULL AND id IN ({})",
        placeholders(ids.len())
    ))
    .bind(claimed_until)
    .bind(claim.token.clone());
    for id in ids {
        update = update.bind(*id);
    }
    db.execute(&update).await
}

/// Up to `limit` parked rows, oldest first.
pub async fn parked(db: &Db, limit: u32) -> Result<Vec<OutboxRecord>> {
    let select = Sql::new(format!(
        "SELECT id, topic, msg_key, payload, headers, created_at, attempts FROM {TABLE} \
         WHERE sent_at IS NULL AND claimed_until = ? ORDER BY id {}",
        self::limit(db.dialect())
    ))
    .bind(PARKED)
    .bind(i64::from(limit));
    db.fetch_all(&select).await?.iter().map(record).collect()
}

/// How long the oldest unsent row (parked ones aside) has waited; `None` when every
/// row was sent. What a relay's health check reports.
pub async fn lag(db: &Db) -> Result<Option<Duration>> {
    let select =
        Sql::new(format!("SELECT MIN(created_at) AS oldest FROM {TABLE} WHERE sent_at IS NULL AND claimed_until < ?"))
            .bind(PARKED);
    let rows = db.fetch_all(&select).await?;
    let oldest: Option<i64> = match rows.first() {
        Some(r) => r.get("oldest")?,
        None => None,
    };
    Ok(oldest.map(|t| Duration::from_millis(u64::try_from(now_ms() - t).unwrap_or(0))))
}
