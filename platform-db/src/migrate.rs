//! Embedded migrations: ordered, checksummed, applied under a lock, and a live-schema
//! drift check that refuses startup.
//!
//! # Contract
//! - Migrations have unique, increasing versions. Each has SQL text (the same for every
//!   database, or per [`Dialect`]) and a SHA-256 checksum of that text, recorded in
//!   `platform_db_migrations` when applied.
//! - [`Migrator::run`] takes a lock first (PostgreSQL `pg_advisory_xact_lock` with
//!   `lock_timeout`, MySQL `GET_LOCK` with a timeout, SQLite `BEGIN EXCLUSIVE` with the busy
//!   timeout), so two instances starting together never both migrate: one applies, the
//!   other waits and then finds nothing to do. Waiting longer than the URL's
//!   `lock_timeout` is a `Timeout` error.
//! - Startup errors (`Conflict`), all listed in one message: a migration whose text
//!   changed after it was applied, an applied version this build does not know, a version
//!   that was skipped while later ones were applied, and (MySQL) a migration that failed
//!   partway.
//! - **Drift**: the live schema (tables, columns, types, nullability, indexes) is
//!   compared with the schema the migrations left the last time they ran, which each
//!   run records in `platform_db_schema` (the tables the migrations created, as the
//!   catalog described them right after). A run compares before it applies anything, so
//!   a schema changed behind its back is refused before it is changed further; any
//!   difference is a `Conflict` error whose message is the diff, one line per
//!   difference. Tables the migrations did not create are ignored unless
//!   [`Migrator::strict`]. Nothing is created outside the application's own schema
//!   (PostgreSQL) or database (MySQL): the privileges a role needs are those its
//!   migrations need, and on PostgreSQL a role without `CREATE` on its schema is
//!   refused before anything is applied, with an error naming the grant.
//! - [`Migrator::check`] verifies without applying or locking: pending migrations are
//!   reported, not an error.
//! - On PostgreSQL, SQLite and SQL Server all pending migrations apply in one
//!   transaction. MySQL and Oracle commit DDL themselves: a migration that fails partway
//!   stays recorded as failed and refuses startup until repaired by hand.

use std::borrow::Cow;
use std::fmt::Write as _;

use platform_core::{Error, ErrorKind, Result};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::Instrument;

use crate::db::{TxConn, on_pool, on_tx};
pub use crate::schema::MigrationState;
use crate::schema::Schema;
use crate::{Db, Dialect, Sql, Statement, Tx};

/// The table that records applied migrations.
pub const TABLE: &str = "platform_db_migrations";

/// The table that keeps the schema the migrations left, for the drift check.
pub const SNAPSHOT_TABLE: &str = "platform_db_schema";

/// One migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    version: i64,
    name: Cow<'static, str>,
    sql: Cow<'static, str>,
    overrides: Vec<(Dialect, Cow<'static, str>)>,
}

impl Migration {
    /// A migration whose SQL (one or more statements) is the same on every database.
    pub fn new(version: i64, name: impl Into<Cow<'static, str>>, sql: impl Into<Cow<'static, str>>) -> Self {
        Self { version, name: name.into(), sql: sql.into(), overrides: Vec::new() }
    }

    /// A migration made of sea-query schema statements, rendered for each database.
    pub fn from_statements(version: i64, name: impl Into<Cow<'static, str>>, statements: &[&dyn Statement]) -> Self {
        let render = |d: Dialect| statements.iter().map(|s| s.render(d).0).collect::<Vec<_>>().join(";\n");
        Self::new(version, name, render(Dialect::Sqlite))
            .with_sql(Dialect::Postgres, render(Dialect::Postgres))
            .with_sql(Dialect::Mysql, render(Dialect::Mysql))
            .with_sql(Dialect::SqlServer, render(Dialect::SqlServer))
            .with_sql(Dialect::Oracle, render(Dialect::Oracle))
    }

    /// Different SQL for one database.
    #[must_use]
    pub fn with_sql(mut self, dialect: Dialect, sql: impl Into<Cow<'static, str>>) -> Self {
        self.overrides.retain(|(d, _)| *d != dialect);
        self.overrides.push((dialect, sql.into()));
        self
    }

    /// The version.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SQL for a dialect.
    pub fn sql(&self, dialect: Dialect) -> &str {
        self.overrides.iter().find(|(d, _)| *d == dialect).map_or(&*self.sql, |(_, s)| s)
    }

    /// The hex SHA-256 of the SQL for a dialect.
    pub fn checksum(&self, dialect: Dialect) -> String {
        let digest = Sha256::digest(self.sql(dialect).as_bytes());
        digest.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// What a run or check did and found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// Versions applied by this run, in order.
    pub applied: Vec<i64>,
    /// The state afterwards.
    pub state: MigrationState,
}

/// Applies and checks a list of migrations.
#[derive(Debug, Clone)]
pub struct Migrator {
    migrations: Vec<Migration>,
    strict: bool,
    ignore: Vec<String>,
}

struct Applied {
    version: i64,
    checksum: String,
    success: bool,
}

fn conflict(message: String) -> Error {
    Error::new(ErrorKind::Conflict, message).with_backend("db").with_op("migrate")
}

impl Migrator {
    /// A migrator for these migrations (in any order; sorted by version).
    pub fn new(mut migrations: Vec<Migration>) -> Self {
        migrations.sort_by_key(Migration::version);
        Self { migrations, strict: false, ignore: Vec::new() }
    }

    /// Counts tables the migrations don't create as drift too.
    #[must_use]
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Leaves a table out of the drift check (one another component owns).
    #[must_use]
    pub fn ignore_table(mut self, table: impl Into<String>) -> Self {
        self.ignore.push(table.into());
        self
    }

    /// The migrations, sorted.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    fn validate(&self) -> Result<()> {
        for pair in self.migrations.windows(2) {
            if pair[0].version == pair[1].version {
                return Err(Error::invalid_input(format!("migration version {} is used twice", pair[0].version))
                    .with_op("migrate"));
            }
        }
        if let Some(m) = self.migrations.iter().find(|m| m.version <= 0) {
            return Err(
                Error::invalid_input(format!("migration version {} must be positive", m.version)).with_op("migrate")
            );
        }
        Ok(())
    }

    /// Compares what is recorded with this build's migrations; returns the pending ones.
    fn verify(&self, dialect: Dialect, applied: &[Applied]) -> Result<Vec<&Migration>> {
        let mut problems = Vec::new();
        for a in applied {
            match self.migrations.iter().find(|m| m.version == a.version) {
                None => problems.push(format!("migration {} is applied but unknown to this build", a.version)),
                Some(m) if !a.success => problems.push(format!(
                    "migration {} ({}) failed partway; repair the schema by hand, then delete its row from {TABLE}",
                    m.version, m.name
                )),
                Some(m) if m.checksum(dialect) != a.checksum => problems.push(format!(
                    "migration {} ({}) changed after it was applied (checksum {} recorded, {} now)",
                    m.version,
                    m.name,
                    &a.checksum[..a.checksum.len().min(12)],
                    &m.checksum(dialect)[..12]
                )),
                Some(_) => {}
            }
        }
        let newest = applied.iter().map(|a| a.version).max().unwrap_or(0);
        let pending: Vec<&Migration> =
            self.migrations.iter().filter(|m| !applied.iter().any(|a| a.version == m.version)).collect();
        for m in &pending {
            if m.version < newest {
                problems
                    .push(format!("migration {} ({}) was never applied but the newer {newest} was", m.version, m.name));
            }
        }
        if problems.is_empty() { Ok(pending) } else { Err(conflict(problems.join("; "))) }
    }

    /// Takes the lock, verifies, applies what is pending, then checks for drift.
    pub async fn run(&self, db: &Db) -> Result<MigrationReport> {
        let span = tracing::info_span!("db.migrate", backend = db.dialect().name());
        self.run_inner(db).instrument(span).await
    }

    async fn run_inner(&self, db: &Db) -> Result<MigrationReport> {
        self.validate()?;
        let dialect = db.dialect();
        let timeout = db.options().lock_timeout;
        let (conn, guard) = on_pool!(db.pool(), p, m => {
            let (tx, guard) = m::lock_for_migration(p, timeout).await?;
            (TxConn::from(tx), guard)
        });
        let mut tx = Tx { conn, dialect, tenant: None };
        let result = self.apply_locked(&mut tx).await;
        let finished = match result {
            Ok(Locked::Applied(applied)) => tx.commit().await.map(|()| Ok(applied)),
            Ok(Locked::Drift(diff)) => tx.rollback().await.map(|()| Err(diff)),
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        };
        let unlocked = on_pool!(db.pool(), _p, m => m::unlock_after_migration(guard).await);
        let outcome = finished?;
        unlocked?;
        let applied = match outcome {
            Ok(applied) => applied,
            Err(diff) => {
                db.set_migration_state(MigrationState::Drift(diff.clone()));
                return Err(conflict(format!("the live schema drifted from the migrations:\n{diff}")));
            }
        };
        if !applied.is_empty() {
            tracing::info!(backend = dialect.name(), ?applied, "migrations applied");
        }
        let state = MigrationState::UpToDate(self.migrations.last().map_or(0, Migration::version));
        db.set_migration_state(state.clone());
        Ok(MigrationReport { applied, state })
    }

    /// Under the lock: verifies, compares the live schema with the recorded one, applies
    /// what is pending and records the schema the migrations left.
    async fn apply_locked(&self, tx: &mut Tx) -> Result<Locked> {
        let dialect = tx.dialect();
        on_tx!(&mut tx.conn, c, m => m::check_can_migrate(c).await)?;
        let applied = read_applied(tx, true).await?;
        let pending = self.verify(dialect, &applied)?;
        let recorded = read_snapshot(tx).await?;
        let before = live_schema(tx).await?;
        if let Some(recorded) = &recorded {
            let diff = self.diff(&before, recorded);
            if !diff.is_empty() {
                return Ok(Locked::Drift(diff));
            }
        }
        let mut done = Vec::new();
        for m in pending {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            let record = Sql::new(format!(
                "INSERT INTO {TABLE} (version, name, checksum, applied_at, success) VALUES (?, ?, ?, ?, ?)"
            ))
            .bind(m.version)
            .bind(m.name.to_string())
            .bind(m.checksum(dialect))
            .bind(now)
            .bind(!dialect.ddl_commits());
            tx.execute(&record).await?;
            let sql = m.sql(dialect).to_owned();
            on_tx!(&mut tx.conn, c, b => b::execute_script(c, sql).await).map_err(|e| {
                let message = format!("migration {} ({}) failed: {}", m.version, m.name, e.message());
                Error::new(e.kind(), message).with_backend("db").with_op("migrate").with_source(e)
            })?;
            if dialect.ddl_commits() {
                tx.execute(
                    &Sql::new(format!("UPDATE {TABLE} SET success = ? WHERE version = ?")).bind(true).bind(m.version),
                )
                .await?;
            }
            done.push(m.version);
        }
        if !done.is_empty() || recorded.is_none() {
            let after = live_schema(tx).await?;
            // The tables the migrations created: those recorded before and those this run
            // added. A schema migrated before anything was recorded is taken whole.
            let theirs = |name: &str| match &recorded {
                Some(r) => r.tables.contains_key(name) || !before.tables.contains_key(name),
                None if applied.is_empty() => !before.tables.contains_key(name),
                None => true,
            };
            let tables = after.tables.into_iter().filter(|(name, _)| theirs(name)).collect();
            write_snapshot(tx, &Schema { tables }).await?;
        }
        Ok(Locked::Applied(done))
    }

    /// Verifies without applying: errors as [`run`](Self::run) does for changed, unknown,
    /// skipped or failed migrations and for drift; pending migrations are reported.
    pub async fn check(&self, db: &Db) -> Result<MigrationReport> {
        self.validate()?;
        let mut tx = db.begin().await?;
        let applied = read_applied(&mut tx, false).await?;
        tx.rollback().await?;
        let pending = self.verify(db.dialect(), &applied)?;
        let state =
            if pending.is_empty() { self.drift_state(db).await? } else { MigrationState::Pending(pending.len()) };
        db.set_migration_state(state.clone());
        if let MigrationState::Drift(diff) = &state {
            return Err(conflict(format!("the live schema drifted from the migrations:\n{diff}")));
        }
        Ok(MigrationReport { applied: Vec::new(), state })
    }

    async fn drift_state(&self, db: &Db) -> Result<MigrationState> {
        let mut tx = db.begin().await?;
        let recorded = read_snapshot(&mut tx).await?;
        let live = live_schema(&mut tx).await?;
        tx.rollback().await?;
        let diff = match &recorded {
            Some(recorded) => self.diff(&live, recorded),
            None => {
                tracing::warn!("no schema was recorded by a migration run yet: drift cannot be checked");
                String::new()
            }
        };
        Ok(if diff.is_empty() {
            MigrationState::UpToDate(self.migrations.last().map_or(0, Migration::version))
        } else {
            MigrationState::Drift(diff)
        })
    }

    /// What differs between the live schema and the recorded one, one line each.
    fn diff(&self, live: &Schema, recorded: &Schema) -> String {
        let mut ignore = self.ignore.clone();
        ignore.extend([TABLE.to_owned(), SNAPSHOT_TABLE.to_owned()]);
        live.diff(recorded, self.strict, &ignore).join("\n")
    }
}

/// How a run under the lock ended: what it applied, or the drift that stopped it.
enum Locked {
    Applied(Vec<i64>),
    Drift(String),
}

async fn live_schema(tx: &mut Tx) -> Result<Schema> {
    on_tx!(&mut tx.conn, c, m => m::live_schema(c).await)
}

async fn read_snapshot(tx: &mut Tx) -> Result<Option<Schema>> {
    let exists = on_tx!(&mut tx.conn, c, m => m::table_exists(c, SNAPSHOT_TABLE).await?);
    if !exists {
        return Ok(None);
    }
    let rows = tx.fetch_all(&Sql::new(format!("SELECT snapshot FROM {SNAPSHOT_TABLE} WHERE id = 1"))).await?;
    let Some(row) = rows.first() else { return Ok(None) };
    let text: String = row.get("snapshot")?;
    serde_json::from_str(&text).map(Some).map_err(|e| {
        Error::new(ErrorKind::Internal, format!("the schema recorded in {SNAPSHOT_TABLE} cannot be read: {e}"))
            .with_backend("db")
            .with_op("migrate")
    })
}

async fn write_snapshot(tx: &mut Tx, schema: &Schema) -> Result<()> {
    let text = serde_json::to_string(schema).map_err(|e| Error::internal(e.to_string()).with_op("migrate"))?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    tx.execute(&Sql::new(format!("DELETE FROM {SNAPSHOT_TABLE} WHERE id = 1"))).await?;
    tx.execute(
        &Sql::new(format!("INSERT INTO {SNAPSHOT_TABLE} (id, snapshot, recorded_at) VALUES (1, ?, ?)"))
            .bind(text)
            .bind(now),
    )
    .await?;
    Ok(())
}

/// The statements that create the migrations and snapshot tables when missing.
pub(crate) fn bookkeeping_tables(dialect: Dialect) -> [String; 2] {
    let (text, boolean, bigint, varchar) = match dialect {
        Dialect::Mysql => ("LONGTEXT", "BOOLEAN", "BIGINT", "VARCHAR"),
        Dialect::SqlServer => ("NVARCHAR(MAX)", "BIT", "BIGINT", "VARCHAR"),
        Dialect::Oracle => ("CLOB", "NUMBER(1)", "NUMBER(19)", "VARCHAR2"),
        _ => ("TEXT", "BOOLEAN", "BIGINT", "VARCHAR"),
    };
    let create = |table: &str, columns: String| match dialect {
        Dialect::SqlServer => format!("IF OBJECT_ID(N'{table}', N'U') IS NULL CREATE TABLE {table} ({columns})"),
        Dialect::Oracle => crate::oracle_sql::ignoring(&format!("CREATE TABLE {table} ({columns})"), &[-955]),
        _ => format!("CREATE TABLE IF NOT EXISTS {table} ({columns})"),
    };
    [
        create(
            TABLE,
            format!(
                "version {bigint} PRIMARY KEY, name {varchar}(255) NOT NULL, checksum {varchar}(64) NOT NULL, \
                 applied_at {bigint} NOT NULL, success {boolean} NOT NULL"
            ),
        ),
        create(
            SNAPSHOT_TABLE,
            format!("id INTEGER PRIMARY KEY, snapshot {text} NOT NULL, recorded_at {bigint} NOT NULL"),
        ),
    ]
}

async fn read_applied(tx: &mut Tx, create: bool) -> Result<Vec<Applied>> {
    if create {
        for ddl in bookkeeping_tables(tx.dialect()) {
            tx.execute(&Sql::new(ddl)).await?;
        }
    } else {
        let exists = on_tx!(&mut tx.conn, c, m => m::table_exists(c, TABLE).await?);
        if !exists {
            return Ok(Vec::new());
        }
    }
    let rows =
        tx.fetch_all(&Sql::new(format!("SELECT version, checksum, success FROM {TABLE} ORDER BY version"))).await?;
    rows.iter()
        .map(|r| Ok(Applied { version: r.get("version")?, checksum: r.get("checksum")?, success: r.get("success")? }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_overrides() {
        let m = Migration::new(1, "a", "CREATE TABLE a (x INT)")
            .with_sql(Dialect::Mysql, "CREATE TABLE a (x INT) ENGINE=InnoDB");
        assert_eq!(m.checksum(Dialect::Sqlite).len(), 64);
        assert_ne!(m.checksum(Dialect::Sqlite), m.checksum(Dialect::Mysql));
        assert_eq!(m.sql(Dialect::Postgres), "CREATE TABLE a (x INT)");
    }

    #[test]
    fn verify_names_every_problem() {
        let migrator = Migrator::new(vec![
            Migration::new(1, "one", "x"),
            Migration::new(2, "two", "y"),
            Migration::new(3, "three", "z"),
        ]);
        let applied = vec![
            Applied { version: 1, checksum: "0".repeat(64), success: true },
            Applied { version: 3, checksum: migrator.migrations[2].checksum(Dialect::Sqlite), success: true },
            Applied { version: 9, checksum: "1".repeat(64), success: true },
        ];
        let err = migrator.verify(Dialect::Sqlite, &applied).err().unwrap();
        let msg = err.to_string();
        assert!(err.is_conflict());
        assert!(msg.contains("migration 1 (one) changed"), "{msg}");
        assert!(msg.contains("migration 9 is applied but unknown"), "{msg}");
        assert!(msg.contains("migration 2 (two) was never applied"), "{msg}");
    }
}
