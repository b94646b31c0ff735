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
use platform_core::{Error, ErrorKind, Result};

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
        .with_sql(
            Dialect::SqlServer,
            format!(
                "CREATE TABLE {TABLE} (consumer NVARCHAR(191) NOT NULL, event_id NVARCHAR(191) NOT NULL, \
             handled_at BIGINT NOT NULL, PRIMARY KEY (consumer, event_id));\n\
             CREATE INDEX platform_db_inbox_handled ON {TABLE} (handled_at)"
            ),
        )
        .with_sql(
            Dialect::Oracle,
            format!(
                "CREATE TABLE {TABLE} (consumer VARCHAR2(191 CHAR) NOT NULL, event_id VARCHAR2(191 CHAR) NOT NULL, \
             handled_at NUMBER(19) NOT NULL, PRIMARY KEY (consumer, event_id));\n\
             CREATE INDEX platform_db_inbox_handled ON {TABLE} (handled_at)"
            ),
        )
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
    match tx.execute(&record_statement(tx.dialect(), consumer, event_id, now_ms())).await {
        Ok(n) => Ok(n == 1),
        // Oracle: a MERGE racing another on the same key.
        Err(e) if tx.dialect() == Dialect::Oracle && e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// The insert that records a handled event unless it is there already.
pub(crate) fn record_statement(dialect: Dialect, consumer: &str, event_id: &str, now: i64) -> Sql {
    let (consumer, event_id) = (consumer.to_owned(), event_id.to_owned());
    match dialect {
        Dialect::Mysql => {
            Sql::new(format!("INSERT IGNORE INTO {TABLE} (consumer, event_id, handled_at) VALUES (?, ?, ?)"))
                .bind(consumer)
                .bind(event_id)
                .bind(now)
        }
        // HOLDLOCK keeps the key range locked from the check to the insert.
        Dialect::SqlServer => Sql::new(format!(
            "INSERT INTO {TABLE} (consumer, event_id, handled_at) SELECT ?, ?, ? WHERE NOT EXISTS \
             (SELECT 1 FROM {TABLE} WITH (UPDLOCK, HOLDLOCK) WHERE consumer = ? AND event_id = ?)"
        ))
        .bind(consumer.clone())
        .bind(event_id.clone())
        .bind(now)
        .bind(consumer)
        .bind(event_id),
        // A concurrent MERGE of the same key fails with ORA-00001, which `record` reads
        // as "handled already".
        Dialect::Oracle => Sql::new(format!(
            "MERGE INTO {TABLE} t USING (SELECT ? AS consumer, ? AS event_id FROM dual) s \
             ON (t.consumer = s.consumer AND t.event_id = s.event_id) \
             WHEN NOT MATCHED THEN INSERT (consumer, event_id, handled_at) VALUES (s.consumer, s.event_id, ?)"
        ))
        .bind(consumer)
        .bind(event_id)
        .bind(now),
        _ => Sql::new(format!(
            "INSERT INTO {TABLE} (consumer, event_id, handled_at) VALUES (?, ?, ?) \
             ON CONFLICT (consumer, event_id) DO NOTHING"
        ))
        .bind(consumer)
        .bind(event_id)
        .bind(now),
    }
}

/// Deletes records older than `older_than`; returns how many.
pub async fn purge(db: &Db, older_than: Duration) -> Result<u64> {
    let cut = now_ms() - duration_ms(older_than);
    db.execute(&Sql::new(format!("DELETE FROM {TABLE} WHERE handled_at <= ?")).bind(cut)).await
}
