//! The event bus on SQLite (`sqlite://`): each group a queue of platform-queue's SQLite
//! backend in the same database file, the groups in `platform_event_groups`.
//!
//! `sqlite:///var/lib/app/events.db?namespace=app&visibility_timeout=30s&max_attempts=5`:
//! `namespace` (default `events`) scopes the groups; the other parameters are the
//! queue's and apply to every group's queue.

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["sqlite"];

const SQL: crate::sql::GroupSql = crate::sql::GroupSql {
    schema: "CREATE TABLE IF NOT EXISTS platform_event_groups (
        namespace TEXT NOT NULL, name TEXT NOT NULL, pattern TEXT NOT NULL, created_ms INTEGER NOT NULL,
        PRIMARY KEY (namespace, name))",
    register: "INSERT INTO platform_event_groups (namespace, name, pattern, created_ms) VALUES (?1, ?2, ?3, ?4)
               ON CONFLICT (namespace, name) DO NOTHING",
    pattern: "SELECT pattern FROM platform_event_groups WHERE namespace = ?1 AND name = ?2",
    list: "SELECT name, pattern FROM platform_event_groups WHERE namespace = ?1",
};

crate::sql::sql_groups!(SqliteGroups, SqliteBus, platform_queue::sqlite::SqliteQueue, "sqlite", SQL, group_error);

fn group_error(db: &dyn sqlx::error::DatabaseError) -> Option<platform_core::sql::Mapped> {
    platform_core::sql::sqlite_kind(db.code()?.parse().ok()?, db.message())
}
