//! What the SQL backends share: the row layout, header encoding.
//!
//! Every SQL backend keeps messages in one table, `platform_queue_messages`
//! (`seq` id, `queue`, `body`, `headers` as JSON text, `visible_at` and
//! `first_failure` in ms since the epoch, `token`, `attempts`), and dedup keys in
//! `platform_queue_dedup` (`queue`, `dedup_key`, `expires_at`). Dead-letter queues are
//! queues in the same table.

use bytes::Bytes;

use crate::lease::StoredMessage;
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
