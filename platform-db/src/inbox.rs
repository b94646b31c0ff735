//! The inbox: a consumer's record of the events it handled, written in the same
//! transaction as its own changes, so that it handles each event once although
//! delivery is at-least-once.
//!
//! # Contract
//! - [`record`] notes that `consumer` handled `event_id` in the caller's transaction
//!   and says whether this is the first time: `true` means go on and make the changes
//!   in the same transaction; `false` means the event was handled already (commit or
//!   roll back, and ack it).
//! - A transaction that rolls back leaves no record: the event is new again.
//! - Concurrent transactions recording the same event for the same consumer: exactly
//!   one gets `true` (the others wait for it on PostgreSQL and MySQL, and get `true`
//!   only if it rolled back; SQLite takes one writer at a time).
//! - Consumers are independent: each has its own record of an event.
//! - [`purge`] deletes records older than a cut-off, once redelivery of so old an
//!   event is no longer possible.
//!
//! The table comes from [`migration`], added to the application's migrations.

use std::time::Duration;

use platform_core::clock::{duration_ms, now_ms};
use platform_core::{Error, Result};

use crate::migrate::Migration;
use crate::{Db, Dialect, Sql, Tx};

/// The table.
pub const TABLE: &str = "platform_db_inbox";

/// The longest consumer name and event id.
pub const MAX_LEN: usize = 191;

/// The migration that creates the table, at the version the application chooses.
pub fn migration(version: i64) -> Migration {
    let sql = format!(
        "CREATE TABLE {TABLE} (consumer VARCHAR(191) NOT NULL, event_id VARCHAR(191) NOT NULL, \
         handled_at BIGINT NOT NULL, PRIMARY KEY (consumer, event_id));\n\
         CREATE INDEX platform_db_inbox_handled ON {TABLE} (handled_at)"
    );
    Migration::new(version, "platform-db inbox", sql)
}

/// Records, in the caller's transaction, that `consumer` handled `event_id`: `true`
/// the first time, `false` when it was handled already.
pub async fn record(tx: &mut Tx, consumer: &str, event_id: &str) -> Result<bool> {
    for (field, value) in [("consumer", consumer), ("event_id", event_id)] {
        if value.is_empty() || value.chars().count() > MAX_LEN {
            let why = format!("must be 1 to {MAX_LEN} characters");
            return Err(Error::invalid_input(format!("inbox: {field} {why}")).with_detail(field, why));
        }
    }
    let insert = match tx.dialect() {
        Dialect::Mysql => "INSERT IGNORE INTO",
        _ => "INSERT INTO",
    };
    let conflict = match tx.dialect() {
        Dialect::Mysql => "",
        _ => " ON CONFLICT (consumer, event_id) DO NOTHING",
    };
    let stmt = Sql::new(format!("{insert} {TABLE} (consumer, event_id, handled_at) VALUES (?, ?, ?){conflict}"))
        .bind(consumer.to_owned())
        .bind(event_id.to_owned())
        .bind(now_ms());
    Ok(tx.execute(&stmt).await? == 1)
}

/// Deletes records older than `older_than`; returns how many.
pub async fn purge(db: &Db, older_than: Duration) -> Result<u64> {
    let cut = now_ms() - duration_ms(older_than);
    db.execute(&Sql::new(format!("DELETE FROM {TABLE} WHERE handled_at <= ?")).bind(cut)).await
}
