//! What the SQL backends share: the row layout, header encoding and error mapping.
//!
//! Every SQL backend keeps messages in one table, `platform_queue_messages`
//! (`seq` id, `queue`, `body`, `headers` as JSON text, `visible_at` and
//! `first_failure` in ms since the epoch, `token`, `attempts`), and dedup keys in
//! `platform_queue_dedup` (`queue`, `dedup_key`, `expires_at`). Dead-letter queues are
//! queues in the same table.

use bytes::Bytes;
use platform_core::{Error, ErrorKind};

use crate::leased::StoredMessage;
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

/// Maps a sqlx error; `db_kind` decides from the database's own error.
pub(crate) fn map_sqlx(
    backend: &'static str,
    e: sqlx::Error,
    db_kind: impl FnOnce(&dyn sqlx::error::DatabaseError) -> Option<ErrorKind>,
) -> Error {
    let kind = match &e {
        sqlx::Error::Configuration(_) => ErrorKind::InvalidInput,
        sqlx::Error::Database(db) => db_kind(db.as_ref()).unwrap_or(ErrorKind::Internal),
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
        sqlx::Error::PoolTimedOut => ErrorKind::Timeout,
        sqlx::Error::PoolClosed => ErrorKind::Cancelled,
        sqlx::Error::RowNotFound => ErrorKind::NotFound,
        _ => ErrorKind::Internal,
    };
    Error::new(kind, e.to_string()).with_backend(backend).with_source(e)
}
