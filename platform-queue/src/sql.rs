//! What the SQL backends share: the row layout, header encoding.
//!
//! Every SQL backend keeps messages in one table, `platform_queue_messages`
//! (`seq` id, `queue`, `body`, `headers` as JSON text, `visible_at` and
//! `first_failure` in ms since the epoch, `token`, `attempts`), and dedup keys in
//! `platform_queue_dedup` (`queue`, `dedup_key`, `expires_at`). Dead-letter queues are
//! queues in the same table.

use bytes::Bytes;

use crate::Headers;
use crate::lease::{Lease, Release, StoredMessage};
pub(crate) use crate::message::{decode_headers, encode_headers};

/// One row as the SQL backends select it: seq, body, headers, attempts, first failure.
pub(crate) type Row = (i64, Vec<u8>, String, i32, Option<i64>);

pub(crate) fn decode_row((seq, body, headers, attempts, first_failure): Row) -> StoredMessage {
    let headers = decode_headers(&headers);
    StoredMessage::new(seq.to_string(), Bytes::from(body), headers, u32::try_from(attempts).unwrap_or(0), first_failure)
}

pub(crate) fn parse_seq(id: &str) -> Option<i64> {
    id.parse().ok()
}

/// The lease statements that every SQL dialect runs with the same arguments in the same
/// order: only their text differs (placeholders, `GREATEST` or `MAX`, `CASE` or `IF`).
/// A dialect writes its five texts; [`LeasePool`] runs them.
pub(crate) struct LeaseSql {
    /// Deletes a held message: seq, queue, token, now.
    pub(crate) ack: &'static str,
    /// Gives a lease back: visible_at, failed, now, refund, seq, queue, token, now.
    pub(crate) release: &'static str,
    /// Moves a lease on: until, seq, queue, token, now.
    pub(crate) extend: &'static str,
    /// Moves a held message to another queue, visible now, attempts 0, no first failure:
    /// target, headers, now, seq, queue, token, now.
    pub(crate) move_to: &'static str,
    /// Messages of a queue, oldest first: queue, limit.
    pub(crate) peek: &'static str,
}

/// Runs a dialect's [`LeaseSql`] on its pool. Each returns whether the one row the
/// statement names was changed (its lease was held); an id that is no sequence number
/// names no row.
pub(crate) trait LeasePool {
    async fn ack_row(&self, sql: &LeaseSql, lease: Lease<'_>) -> sqlx::Result<bool>;
    async fn release_row(
        &self,
        sql: &LeaseSql,
        lease: Lease<'_>,
        visible_at_ms: i64,
        how: Release,
    ) -> sqlx::Result<bool>;
    async fn extend_row(&self, sql: &LeaseSql, lease: Lease<'_>, until_ms: i64) -> sqlx::Result<bool>;
    async fn move_row(&self, sql: &LeaseSql, lease: Lease<'_>, target: &str, headers: &Headers) -> sqlx::Result<bool>;
    async fn peek_rows(&self, sql: &LeaseSql, queue: &str, limit: usize) -> sqlx::Result<Vec<StoredMessage>>;
}

/// One [`LeasePool`] for each driver's pool: the same code, typed by driver.
macro_rules! lease_pool {
    ($db:ty) => {
        impl LeasePool for sqlx::Pool<$db> {
            async fn ack_row(&self, sql: &LeaseSql, l: Lease<'_>) -> sqlx::Result<bool> {
                let Some(seq) = parse_seq(l.id) else { return Ok(false) };
                let q = sqlx::query(sql.ack).bind(seq).bind(l.queue).bind(l.token).bind(l.now_ms);
                Ok(q.execute(self).await?.rows_affected() == 1)
            }

            async fn release_row(
                &self,
                sql: &LeaseSql,
                l: Lease<'_>,
                visible_at_ms: i64,
                how: Release,
            ) -> sqlx::Result<bool> {
                let Some(seq) = parse_seq(l.id) else { return Ok(false) };
                let q = sqlx::query(sql.release)
                    .bind(visible_at_ms)
                    .bind(how.records_failure())
                    .bind(l.now_ms)
                    .bind(how.refund())
                    .bind(seq)
                    .bind(l.queue)
                    .bind(l.token)
                    .bind(l.now_ms);
                Ok(q.execute(self).await?.rows_affected() == 1)
            }

            async fn extend_row(&self, sql: &LeaseSql, l: Lease<'_>, until_ms: i64) -> sqlx::Result<bool> {
                let Some(seq) = parse_seq(l.id) else { return Ok(false) };
                let q = sqlx::query(sql.extend).bind(until_ms).bind(seq).bind(l.queue).bind(l.token).bind(l.now_ms);
                Ok(q.execute(self).await?.rows_affected() == 1)
            }

            async fn move_row(
                &self,
                sql: &LeaseSql,
                l: Lease<'_>,
                target: &str,
                headers: &Headers,
            ) -> sqlx::Result<bool> {
                let Some(seq) = parse_seq(l.id) else { return Ok(false) };
                let q = sqlx::query(sql.move_to)
                    .bind(target)
                    .bind(encode_headers(headers))
                    .bind(l.now_ms)
                    .bind(seq)
                    .bind(l.queue)
                    .bind(l.token)
                    .bind(l.now_ms);
                Ok(q.execute(self).await?.rows_affected() == 1)
            }

            async fn peek_rows(&self, sql: &LeaseSql, queue: &str, limit: usize) -> sqlx::Result<Vec<StoredMessage>> {
                let q = sqlx::query_as::<_, Row>(sql.peek).bind(queue).bind(i64::try_from(limit).unwrap_or(i64::MAX));
                Ok(q.fetch_all(self).await?.into_iter().map(decode_row).collect())
            }
        }
    };
}

#[cfg(feature = "sqlite")]
lease_pool!(sqlx::Sqlite);
#[cfg(feature = "postgres")]
lease_pool!(sqlx::Postgres);
#[cfg(feature = "mysql")]
lease_pool!(sqlx::MySql);
