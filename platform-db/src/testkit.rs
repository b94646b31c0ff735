//! The conformance suite: one `pub async fn` per behaviour, run against a real database
//! through a [`Harness`] that makes fresh, uniquely named targets (a PostgreSQL schema, a
//! MySQL database, a SQLite file). [`conformance_tests!`](crate::conformance_tests)
//! writes one test per behaviour for a backend.
//!
//! Behaviours assert error kinds, not messages (except where the message is the
//! product, as in the drift diff).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use platform_core::testkit::server_url;
use platform_core::{ErrorKind, HealthCheck, Result};
use sea_query::{ColumnDef, Query, Table};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::idempotency::IdempotencyKey;
use crate::migrate::{Migration, MigrationState, Migrator};
use crate::{Db, Dialect, Sql, Statement, inbox, outbox, tenant};

#[doc(hidden)]
pub use platform_core::behaviour_tests;

/// Makes fresh databases for the suite.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The URL of a new, empty, uniquely named target.
    async fn fresh_url(&self) -> Result<String>;

    /// A URL for the same target as an unprivileged application role, where the
    /// database has roles (PostgreSQL); `None` elsewhere.
    async fn restricted_url(&self, url: &str) -> Result<Option<String>>;

    /// A new target owned by a least-privilege role, as a deployment would run it:
    /// PostgreSQL, a `NOSUPERUSER NOBYPASSRLS` role that owns its schema and has no
    /// `CREATE` on the database; MySQL, a user with privileges on its own database only.
    /// The role's URL and an administrator's URL for the same target; `None` where the
    /// database has no roles (SQLite).
    async fn owner_url(&self) -> Result<Option<(String, String)>> {
        Ok(None)
    }
}

/// A harness over a server URL (`postgres://…/test`, `mysql://…/test`) or, for SQLite,
/// a directory for database files.
#[derive(Debug, Clone)]
pub struct UrlHarness {
    base: String,
}

impl UrlHarness {
    /// A harness for this server URL (SQLite: `sqlite://<directory>`).
    pub fn new(base: impl Into<String>) -> Self {
        Self { base: base.into() }
    }

    /// From `PLATFORM_TEST_<NAME>_URL`; `None` (and a note) when unset.
    pub fn from_env(name: &str) -> Option<Self> {
        server_url(name).map(Self::new)
    }

    /// SQLite files in a temporary directory.
    pub fn sqlite_temp() -> Self {
        let dir = std::env::temp_dir().join("platform-db-conformance");
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self::new(format!("sqlite://{}", dir.display()))
    }
}

/// Test targets are named `pt<unix seconds>_<random>` (roles `pa…`); ones older than an
/// hour are leftovers of earlier runs and are dropped, once per process, before the
/// first new one is made.
const STALE_AFTER: i64 = 3600;

fn stamped(prefix: &str) -> String {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    format!("{prefix}{now}_{}", &Uuid::new_v4().simple().to_string()[..8])
}

fn is_stale(name: &str, prefix: &str) -> bool {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    name.strip_prefix(prefix)
        .and_then(|rest| rest.split(['_', '.']).next())
        .and_then(|t| t.parse::<i64>().ok())
        .is_some_and(|t| now - t > STALE_AFTER)
}

static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Drops stale test targets; best effort, errors only logged.
async fn sweep(base: &str) {
    if let Some(dir) = base.strip_prefix("sqlite://") {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_stale(&name, "pt") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        return;
    }
    let Ok(admin) = crate::open(base).await else { return };
    let (list, drop): (&str, fn(&str) -> Vec<String>) = match admin.dialect() {
        Dialect::Postgres => ("SELECT nspname::text AS n FROM pg_namespace WHERE nspname LIKE 'pt%'", |n| {
            vec![format!("DROP SCHEMA {n} CASCADE")]
        }),
        _ => ("SELECT schema_name AS n FROM information_schema.schemata WHERE schema_name LIKE 'pt%'", |n| {
            vec![format!("DROP DATABASE {n}")]
        }),
    };
    let mut statements = Vec::new();
    for row in admin.fetch_all(&Sql::new(list)).await.unwrap_or_default() {
        if let Ok(name) = row.get::<String>("n")
            && is_stale(&name, "pt")
        {
            statements.extend(drop(&name));
        }
    }
    if admin.dialect() == Dialect::Mysql {
        let users = Sql::new("SELECT User AS n, Host AS h FROM mysql.user WHERE User LIKE 'pa%'");
        for row in admin.fetch_all(&users).await.unwrap_or_default() {
            if let (Ok(name), Ok(host)) = (row.get::<String>("n"), row.get::<String>("h"))
                && is_stale(&name, "pa")
            {
                statements.push(format!("DROP USER '{name}'@'{host}'"));
            }
        }
    }
    if admin.dialect() == Dialect::Postgres {
        let roles = Sql::new("SELECT rolname::text AS n FROM pg_roles WHERE rolname LIKE 'pa%'");
        for row in admin.fetch_all(&roles).await.unwrap_or_default() {
            if let Ok(name) = row.get::<String>("n")
                && is_stale(&name, "pa")
            {
                statements.push(format!("DROP OWNED BY {name}"));
                statements.push(format!("DROP ROLE {name}"));
            }
        }
    }
    for sql in statements {
        if let Err(e) = admin.execute(&Sql::new(sql.clone())).await {
            tracing::debug!(%sql, error = %e, "could not drop a stale test target");
        }
    }
    admin.close().await;
}

fn with_param(url: &str, param: &str) -> String {
    if url.contains('?') { format!("{url}&{param}") } else { format!("{url}?{param}") }
}

#[async_trait]
impl Harness for UrlHarness {
    async fn fresh_url(&self) -> Result<String> {
        SWEPT.get_or_init(|| sweep(&self.base)).await;
        let name = stamped("pt");
        if let Some(dir) = self.base.strip_prefix("sqlite://") {
            return Ok(format!("sqlite://{dir}/{name}.db"));
        }
        let admin = crate::open(&self.base).await?;
        let url = match admin.dialect() {
            Dialect::Postgres => {
                admin.execute(&Sql::new(format!("CREATE SCHEMA {name}"))).await?;
                with_param(&self.base, &format!("schema={name}"))
            }
            _ => {
                admin.execute(&Sql::new(format!("CREATE DATABASE {name}"))).await?;
                let mut url = url::Url::parse(&self.base).expect("server url");
                url.set_path(&name);
                url.to_string()
            }
        };
        admin.close().await;
        Ok(url)
    }

    async fn owner_url(&self) -> Result<Option<(String, String)>> {
        if self.base.starts_with("sqlite:") {
            return Ok(None);
        }
        SWEPT.get_or_init(|| sweep(&self.base)).await;
        let (name, role) = (stamped("pt"), stamped("pa"));
        let admin = crate::open(&self.base).await?;
        let mut url = url::Url::parse(&self.base).expect("server url");
        let admin_url = match admin.dialect() {
            Dialect::Postgres => {
                for sql in [
                    format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"),
                    format!("CREATE SCHEMA {name} AUTHORIZATION {role}"),
                ] {
                    admin.execute(&Sql::new(sql)).await?;
                }
                url.query_pairs_mut().append_pair("schema", &name);
                with_param(&self.base, &format!("schema={name}"))
            }
            _ => {
                admin.execute(&Sql::new(format!("CREATE DATABASE {name}"))).await?;
                for host in ["%", "localhost"] {
                    for sql in [
                        format!("CREATE USER '{role}'@'{host}'"),
                        format!("GRANT ALL PRIVILEGES ON {name}.* TO '{role}'@'{host}'"),
                    ] {
                        admin.execute(&Sql::new(sql)).await?;
                    }
                }
                url.set_path(&name);
                url.to_string()
            }
        };
        admin.close().await;
        url.set_username(&role).expect("username");
        url.set_password(None).expect("password");
        Ok(Some((url.to_string(), admin_url)))
    }

    async fn restricted_url(&self, url: &str) -> Result<Option<String>> {
        let options = crate::DbOptions::parse(url)?;
        let (Dialect::Postgres, Some(schema)) = (options.dialect, options.schema.clone()) else { return Ok(None) };
        let role = stamped("pa");
        let admin = crate::open(url).await?;
        for sql in [
            format!("CREATE ROLE {role} LOGIN"),
            format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"),
            format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"),
        ] {
            admin.execute(&Sql::new(sql)).await?;
        }
        admin.close().await;
        let mut restricted = url::Url::parse(url).expect("url");
        restricted.set_username(&role).expect("username");
        restricted.set_password(None).expect("password");
        Ok(Some(restricted.to_string()))
    }
}

/// Runs every behaviour in turn (the macro runs them as separate tests instead).
pub async fn run_all(h: &dyn Harness) {
    use platform_core::run_behaviours;
    crate::db_behaviours!(run_behaviours!(h));
}

/// Writes one `#[tokio::test]` per behaviour for a backend:
/// `conformance_tests!(postgres, UrlHarness::from_env("POSTGRES"));`
#[macro_export]
macro_rules! conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::db_behaviours!($crate::testkit::behaviour_tests!($backend, $crate::testkit, $harness));
    };
}

/// Every behaviour of the suite, listed once: [`conformance_tests!`](crate::conformance_tests)
/// writes one test per behaviour from it and [`run_all`] runs them in turn, so a
/// behaviour cannot be written and never run. Calls `$then!(…, behaviour, …)`.
#[doc(hidden)]
#[macro_export]
macro_rules! db_behaviours {
    ($($then:ident)::+ ! ($($args:tt)*)) => {
        $($then)::+! {
            $($args)*,
            values_round_trip,
            errors_map_to_portable_kinds,
            concurrent_migrators_migrate_once,
            migration_lock_times_out,
            changed_unknown_and_skipped_migrations_refuse,
            drift_refuses_startup_with_a_diff,
            check_mode_verifies_without_applying,
            tenants_are_isolated,
            idempotent_retries_run_once,
            outbox_claims_never_overlap,
            inbox_records_each_event_once,
            health_reports_slow_database_down,
            least_privilege_owner_migrates_and_refuses_drift,
            url_parameters_are_checked
        }
    };
}

async fn fresh(h: &dyn Harness, params: &str) -> (String, Db) {
    let url = h.fresh_url().await.expect("fresh target");
    let url = if params.is_empty() { url } else { with_param(&url, params) };
    let db = crate::open(&url).await.expect("open");
    (url, db)
}

fn values_table() -> Migration {
    Migration::from_statements(
        1,
        "values",
        &[&Table::create()
            .table("vals")
            .col(ColumnDef::new("id").big_integer().not_null().primary_key())
            .col(ColumnDef::new("u").uuid())
            .col(ColumnDef::new("t").timestamp_with_time_zone())
            .col(ColumnDef::new("j").json_binary())
            .col(ColumnDef::new("b").blob())
            .col(ColumnDef::new("flag").boolean())
            .col(ColumnDef::new("n").big_integer())
            .col(ColumnDef::new("f").double())
            .col(ColumnDef::new("s").text())
            .col(ColumnDef::new("cents").big_integer())
            .col(ColumnDef::new("price").string_len(40))
            .to_owned()],
    )
}

/// uuid, timestamp with time zone, JSON, non-UTF-8 bytes, booleans, extreme integers,
/// floats, unicode text and decimals (as minor units and as text) come back equal, and
/// so do `NULL`s.
pub async fn values_round_trip(h: &dyn Harness) {
    let (_, db) = fresh(h, "").await;
    Migrator::new(vec![values_table()]).run(&db).await.expect("migrate");
    let id = Uuid::now_v7();
    let at = OffsetDateTime::from_unix_timestamp(1_795_413_600).unwrap();
    let json = serde_json::json!({"a": [1, 2.5, "x"], "b": null, "c": {"d": true}});
    let bytes = vec![0_u8, 159, 146, 150, 255];
    let insert = Query::insert()
        .into_table("vals")
        .columns(["id", "u", "t", "j", "b", "flag", "n", "f", "s", "cents", "price"])
        .values_panic([
            1_i64.into(),
            id.into(),
            at.into(),
            json.clone().into(),
            bytes.clone().into(),
            true.into(),
            i64::MIN.into(),
            0.1_f64.into(),
            "héllo, 世界 🎉".into(),
            1234_i64.into(),
            "12345678901234567890.12".into(),
        ])
        // NULLs are typed: PostgreSQL checks a parameter's type even when it is NULL.
        .values_panic([
            2_i64.into(),
            Option::<Uuid>::None.into(),
            Option::<OffsetDateTime>::None.into(),
            Option::<serde_json::Value>::None.into(),
            Option::<Vec<u8>>::None.into(),
            Option::<bool>::None.into(),
            i64::MAX.into(),
            Option::<f64>::None.into(),
            Option::<String>::None.into(),
            Option::<i64>::None.into(),
            Option::<String>::None.into(),
        ])
        .to_owned();
    assert_eq!(db.execute(&insert).await.expect("insert"), 2);
    let select = Query::select()
        .columns(["id", "u", "t", "j", "b", "flag", "n", "f", "s", "cents", "price"])
        .from("vals")
        .order_by("id", sea_query::Order::Asc)
        .to_owned();
    let rows = db.fetch_all(&select).await.expect("select");
    let r = &rows[0];
    assert_eq!(r.get::<Uuid>("u").unwrap(), id);
    assert_eq!(r.get::<OffsetDateTime>("t").unwrap(), at);
    assert_eq!(r.get::<serde_json::Value>("j").unwrap(), json);
    assert_eq!(r.get::<Vec<u8>>("b").unwrap(), bytes);
    assert!(r.get::<bool>("flag").unwrap());
    assert_eq!(r.get::<i64>("n").unwrap(), i64::MIN);
    assert!((r.get::<f64>("f").unwrap() - 0.1).abs() < f64::EPSILON);
    assert_eq!(r.get::<String>("s").unwrap(), "héllo, 世界 🎉");
    assert_eq!(r.get::<i64>("cents").unwrap(), 1234);
    assert_eq!(r.get::<String>("price").unwrap(), "12345678901234567890.12");
    let r = &rows[1];
    assert_eq!(r.get::<i64>("n").unwrap(), i64::MAX);
    for col in ["u", "t", "j", "b", "flag", "f", "s", "cents", "price"] {
        assert_eq!(r.value(col), Some(&crate::Value::Null), "{col}");
    }
    assert_eq!(r.get::<Option<Uuid>>("u").unwrap(), None);
    assert!(r.get::<Uuid>("u").unwrap_err().is_invalid_input());
}

async fn expect_kind(db: &Db, stmt: &dyn Statement, kind: ErrorKind, what: &str) {
    let err = db.execute(&stmt).await.expect_err(what);
    assert_eq!(err.kind(), kind, "{what}: {err}");
}

/// Unique violations are `AlreadyExists`; foreign key, check and not-null violations
/// `Conflict`; a missing table `NotFound`; bad SQL `InvalidInput`; a deadlock a retryable
/// `Conflict`; an unreachable server `Unavailable`.
pub async fn errors_map_to_portable_kinds(h: &dyn Harness) {
    let (_, db) = fresh(h, "").await;
    Migrator::new(vec![Migration::new(
        1,
        "constraints",
        "CREATE TABLE parent (id BIGINT PRIMARY KEY, n INTEGER NOT NULL CHECK (n > 0));\n\
         CREATE TABLE child (id BIGINT PRIMARY KEY, parent_id BIGINT NOT NULL REFERENCES parent (id))",
    )])
    .run(&db)
    .await
    .expect("migrate");
    db.execute(&Sql::new("INSERT INTO parent (id, n) VALUES (1, 1), (2, 2)")).await.unwrap();
    let dup = Sql::new("INSERT INTO parent (id, n) VALUES (1, 5)");
    expect_kind(&db, &dup, ErrorKind::AlreadyExists, "duplicate key").await;
    let orphan = Sql::new("INSERT INTO child (id, parent_id) VALUES (1, 99)");
    expect_kind(&db, &orphan, ErrorKind::Conflict, "foreign key").await;
    let check = Sql::new("INSERT INTO parent (id, n) VALUES (3, 0)");
    expect_kind(&db, &check, ErrorKind::Conflict, "check constraint").await;
    let null = Sql::new("INSERT INTO parent (id, n) VALUES (4, NULL)");
    expect_kind(&db, &null, ErrorKind::Conflict, "not null").await;
    let missing = Sql::new("SELECT * FROM no_such_table");
    expect_kind(&db, &missing, ErrorKind::NotFound, "missing table").await;
    let bad = Sql::new("SELEKT 1");
    expect_kind(&db, &bad, ErrorKind::InvalidInput, "syntax").await;

    if db.dialect() != Dialect::Sqlite {
        // Two transactions lock the two rows in opposite orders: one is chosen as the victim.
        let mut t1 = db.begin().await.unwrap();
        let mut t2 = db.begin().await.unwrap();
        let upd = |id: i64| Sql::new("UPDATE parent SET n = n + 1 WHERE id = ?").bind(id);
        t1.execute(&upd(1)).await.unwrap();
        t2.execute(&upd(2)).await.unwrap();
        let (two, one) = (upd(2), upd(1));
        let (a, b) = tokio::join!(t1.execute(&two), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            t2.execute(&one).await
        });
        let err = a.err().or(b.err()).expect("one side of the deadlock fails");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
        assert!(err.is_retryable(), "{err}");
    }

    let unreachable = match db.dialect() {
        Dialect::Postgres => "postgres://postgres@127.0.0.1:1/x?acquire_timeout=3s".to_owned(),
        Dialect::Mysql => "mysql://root@127.0.0.1:1/x?acquire_timeout=3s".to_owned(),
        Dialect::Sqlite => "sqlite:///nonexistent-dir/x/y.db?acquire_timeout=3s".to_owned(),
        Dialect::SqlServer => "sqlserver://sa:x@127.0.0.1:1/x?acquire_timeout=3s".to_owned(),
        Dialect::Oracle => "oracle://app:x@127.0.0.1:1/FREEPDB1?acquire_timeout=3s".to_owned(),
    };
    let err = crate::open(&unreachable).await.expect_err("unreachable");
    assert!(matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout), "{err}");
}

fn counted_migrations() -> Vec<Migration> {
    vec![
        Migration::new(1, "counter", "CREATE TABLE runs (id INTEGER NOT NULL)"),
        Migration::new(2, "count a run", "INSERT INTO runs (id) VALUES (1)"),
        Migration::new(
            3,
            "more",
            "CREATE TABLE more_things (id INTEGER NOT NULL); CREATE INDEX more_things_id ON more_things (id)",
        ),
    ]
}

/// Two instances migrating at once: both succeed, the migrations apply exactly once.
pub async fn concurrent_migrators_migrate_once(h: &dyn Harness) {
    let (url, db1) = fresh(h, "").await;
    let db2 = crate::open(&url).await.unwrap();
    let m1 = Migrator::new(counted_migrations());
    let m2 = m1.clone();
    let (a, b) = tokio::join!(m1.run(&db1), m2.run(&db2));
    let (a, b) = (a.expect("first instance"), b.expect("second instance"));
    let mut applied = [a.applied.clone(), b.applied.clone()];
    applied.sort();
    assert_eq!(applied, [vec![], vec![1, 2, 3]]);
    assert_eq!(a.state, MigrationState::UpToDate(3));
    assert_eq!(b.state, MigrationState::UpToDate(3));
    let n: i64 = db1.fetch_one(&Sql::new("SELECT COUNT(*) AS n FROM runs")).await.unwrap().get("n").unwrap();
    assert_eq!(n, 1, "a migration ran twice");
}

/// While one instance holds the migration lock, another gives up after `lock_timeout`
/// with `Timeout`, then succeeds once the lock is free.
pub async fn migration_lock_times_out(h: &dyn Harness) {
    let (url, db) = fresh(h, "").await;
    let waiter = crate::open(&with_param(&url, "lock_timeout=300ms")).await.unwrap();
    // Create the record table first so the holder's lock is the only thing in the way.
    Migrator::new(Vec::new()).run(&db).await.unwrap();
    let (holder, guard) = crate::db::on_pool!(db.pool(), p, m => {
        let (tx, guard) = m::lock_for_migration(p, Duration::from_secs(5)).await.unwrap();
        (crate::db::TxConn::from(tx), guard)
    });
    let started = std::time::Instant::now();
    let err = Migrator::new(counted_migrations()).run(&waiter).await.expect_err("lock is held");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
    // Dropping the holder ends its transaction and, on MySQL, closes the lock's session.
    drop(crate::Tx { conn: holder, dialect: db.dialect(), tenant: None });
    drop(guard);
    platform_core::testkit::eventually(Duration::from_secs(10), || async {
        Migrator::new(counted_migrations()).run(&waiter).await.ok()
    })
    .await
    .expect("runs once the lock is free");
}

/// A changed migration, an applied one this build doesn't know, and one skipped while
/// newer ones were applied all refuse, each named in the error.
pub async fn changed_unknown_and_skipped_migrations_refuse(h: &dyn Harness) {
    let (_, db) = fresh(h, "").await;
    let one = Migration::new(1, "one", "CREATE TABLE one_t (id INTEGER)");
    let three = Migration::new(3, "three", "CREATE TABLE three_t (id INTEGER)");
    Migrator::new(vec![one.clone(), three.clone()]).run(&db).await.unwrap();

    let changed = Migration::new(1, "one", "CREATE TABLE one_t (id INTEGER, x INTEGER)");
    let err = Migrator::new(vec![changed, three.clone()]).run(&db).await.expect_err("changed");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.message().contains("migration 1 (one) changed"), "{err}");

    let err = Migrator::new(vec![one.clone()]).run(&db).await.expect_err("unknown");
    assert!(err.message().contains("migration 3 is applied but unknown"), "{err}");

    let two = Migration::new(2, "two", "CREATE TABLE two_t (id INTEGER)");
    let err = Migrator::new(vec![one.clone(), two, three.clone()]).check(&db).await.expect_err("skipped");
    assert!(err.message().contains("migration 2 (two) was never applied"), "{err}");

    let report = Migrator::new(vec![one, three]).run(&db).await.unwrap();
    assert!(report.applied.is_empty());
}

fn notes_migrations() -> Vec<Migration> {
    vec![Migration::new(
        1,
        "notes",
        "CREATE TABLE notes (id BIGINT NOT NULL PRIMARY KEY, title VARCHAR(200) NOT NULL, body TEXT);\n\
         CREATE INDEX notes_title ON notes (title)",
    )]
}

/// A column altered by hand after migrating refuses startup (`run` and `check`), with
/// a diff naming the table and column, and health reports down.
pub async fn drift_refuses_startup_with_a_diff(h: &dyn Harness) {
    let (_, db) = fresh(h, "").await;
    let migrator = Migrator::new(notes_migrations());
    migrator.run(&db).await.unwrap();
    db.check().await.expect("healthy after migrating");
    let alter = match db.dialect() {
        Dialect::Postgres => "ALTER TABLE notes ALTER COLUMN title TYPE VARCHAR(20)",
        Dialect::Mysql => "ALTER TABLE notes MODIFY title VARCHAR(20) NOT NULL",
        Dialect::Sqlite => "ALTER TABLE notes ADD COLUMN title2 TEXT",
        Dialect::SqlServer => "ALTER TABLE notes ALTER COLUMN title NVARCHAR(20) NOT NULL",
        Dialect::Oracle => "ALTER TABLE notes MODIFY title VARCHAR2(20)",
    };
    db.execute(&Sql::new(alter)).await.unwrap();
    db.execute(&Sql::new(
        "DROP INDEX notes_title".to_owned()
            + if matches!(db.dialect(), Dialect::Mysql | Dialect::SqlServer) { " ON notes" } else { "" },
    ))
    .await
    .unwrap();
    for result in [migrator.run(&db).await, migrator.check(&db).await] {
        let err = result.expect_err("drift refuses");
        assert_eq!(err.kind(), ErrorKind::Conflict);
        let msg = err.message();
        assert!(msg.contains("table notes: column title"), "{msg}");
        assert!(msg.contains("index notes_title missing"), "{msg}");
    }
    assert!(matches!(db.migration_state(), Some(MigrationState::Drift(_))));
    assert!(db.check().await.is_err(), "health is down on drift");
}

/// A least-privilege owner (no `CREATE` on the database, no superuser) runs the
/// migrations, passes the row-level security check (PostgreSQL), keeps tenants apart,
/// and a schema changed behind its back is refused at its next start, before anything
/// is applied.
pub async fn least_privilege_owner_migrates_and_refuses_drift(h: &dyn Harness) {
    let Some((owner_url, admin_url)) = h.owner_url().await.expect("owner") else { return };
    let db = crate::open(&owner_url).await.expect("open as the owner");
    let dialect = db.dialect();
    let mut migrations = tenant_migrations(dialect);
    migrations.extend(
        notes_migrations()
            .into_iter()
            .map(|m| Migration::new(m.version() + 1, m.name().to_owned(), m.sql(dialect).to_owned())),
    );
    let migrator = Migrator::new(migrations.clone());
    let report = migrator.run(&db).await.expect("the owner migrates");
    assert_eq!(report.applied, [1, 2]);
    migrator.run(&db).await.expect("and starts again");
    if dialect == Dialect::Postgres {
        tenant::check_row_level_security(&db, &["tnotes"]).await.expect("the owner is subject to RLS");
    }
    for (i, tenant) in ["tenant-a", "tenant-b"].into_iter().enumerate() {
        let id = i64::try_from(i).expect("id");
        db.with_tenant(tenant, move |tx| {
            Box::pin(async move {
                let me = tx.tenant().expect("tenant").to_owned();
                let insert = Sql::new("INSERT INTO tnotes (id, tenant_id, body) VALUES (?, ?, ?)").bind(id).bind(me);
                tx.execute(&insert.bind("x")).await?;
                let mine = tenant::filter(tx, "tenant_id")?;
                let seen = tx
                    .fetch_all(&Query::select().column("tenant_id").from("tnotes").and_where(mine).to_owned())
                    .await?;
                assert_eq!(seen.len(), 1, "each tenant sees its own row");
                Ok(())
            })
        })
        .await
        .expect("tenant scope");
    }
    // A role that may use the schema but not create in it is refused before anything
    // is applied, with the grant named.
    if let Some(user_url) = h.restricted_url(&admin_url).await.expect("restricted role") {
        let user = crate::open(&user_url).await.expect("open as a plain user");
        let mut all = migrations.clone();
        all.push(Migration::new(3, "more", "CREATE TABLE more_notes (id BIGINT PRIMARY KEY)"));
        let more = Migrator::new(all);
        let err = more.run(&user).await.expect_err("no CREATE on the schema");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(err.message().contains("CREATE on schema"), "{err}");
        let err = user.execute(&Sql::new("SELECT 1 FROM more_notes")).await.expect_err("nothing applied");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        user.close().await;
    }
    let admin = crate::open(&admin_url).await.expect("admin");
    let alter = match dialect {
        Dialect::Postgres => "ALTER TABLE notes ALTER COLUMN title TYPE VARCHAR(20)",
        _ => "ALTER TABLE notes MODIFY title VARCHAR(20) NOT NULL",
    };
    admin.execute(&Sql::new(alter)).await.expect("change the schema behind its back");
    admin.close().await;
    let err = migrator.run(&db).await.expect_err("drift refuses the next start");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.message().contains("table notes: column title"), "{err}");
}

/// `check` reports pending migrations without applying them; health is down until they
/// are applied, then up with the server version.
pub async fn check_mode_verifies_without_applying(h: &dyn Harness) {
    let (_, db) = fresh(h, "").await;
    let migrator = Migrator::new(notes_migrations());
    let report = migrator.check(&db).await.unwrap();
    assert_eq!(report.state, MigrationState::Pending(1));
    let err = db.execute(&Sql::new("SELECT * FROM notes")).await.expect_err("not applied");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(db.check().await.is_err(), "pending migrations: not ready");
    migrator.run(&db).await.unwrap();
    let report = migrator.check(&db).await.unwrap();
    assert_eq!(report.state, MigrationState::UpToDate(1));
    let outcome = db.check().await.expect("up");
    let version = outcome.version.expect("version");
    assert!(
        ["PostgreSQL ", "MariaDB ", "MySQL ", "SQLite ", "Microsoft SQL Server", "Oracle "]
            .iter()
            .any(|p| version.starts_with(p)),
        "{version}"
    );
}

fn tenant_migrations(dialect: Dialect) -> Vec<Migration> {
    let mut sql =
        "CREATE TABLE tnotes (id BIGINT NOT NULL PRIMARY KEY, tenant_id VARCHAR(64) NOT NULL, body TEXT NOT NULL)"
            .to_owned();
    if dialect == Dialect::Postgres {
        sql.push_str(
            ";\nALTER TABLE tnotes ENABLE ROW LEVEL SECURITY;\n\
             ALTER TABLE tnotes FORCE ROW LEVEL SECURITY;\n\
             CREATE POLICY tnotes_tenant ON tnotes \
             USING (tenant_id = current_setting('app.tenant_id', true)) \
             WITH CHECK (tenant_id = current_setting('app.tenant_id', true))",
        );
    }
    vec![Migration::new(1, "tenant notes", sql)]
}

/// Two tenants alternate on a pool of one connection: neither ever sees the other's
/// rows; on PostgreSQL a query outside `with_tenant` sees nothing and the RLS startup
/// check passes for the app role and refuses a superuser.
pub async fn tenants_are_isolated(h: &dyn Harness) {
    let (url, owner) = fresh(h, "").await;
    let dialect = owner.dialect();
    Migrator::new(tenant_migrations(dialect)).run(&owner).await.unwrap();
    let app_url = h.restricted_url(&url).await.unwrap().unwrap_or(url);
    let app = crate::open(&with_param(&app_url, "max_connections=1")).await.unwrap();
    if dialect == Dialect::Postgres {
        tenant::check_row_level_security(&app, &["tnotes"]).await.expect("app role is subject to RLS");
        let err = tenant::check_row_level_security(&owner, &["tnotes"]).await.expect_err("superuser bypasses RLS");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    } else {
        let err = tenant::check_row_level_security(&app, &["tnotes"]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }
    for i in 0..20_i64 {
        let tenant = if i % 2 == 0 { "tenant-a" } else { "tenant-b" };
        app.with_tenant(tenant, move |tx| {
            Box::pin(async move {
                let me = tx.tenant().unwrap().to_owned();
                tx.execute(
                    &Sql::new("INSERT INTO tnotes (id, tenant_id, body) VALUES (?, ?, ?)").bind(i).bind(me).bind("x"),
                )
                .await?;
                let mine = tenant::filter(tx, "tenant_id")?;
                let q = Query::select().column("tenant_id").from("tnotes").and_where(mine).to_owned();
                let seen = tx.fetch_all(&q).await?;
                assert!(!seen.is_empty());
                for r in &seen {
                    assert_eq!(r.get::<String>("tenant_id")?, tx.tenant().unwrap());
                }
                if tx.dialect() == Dialect::Postgres {
                    // RLS scopes even a query that forgot the filter.
                    for r in tx.fetch_all(&Sql::new("SELECT tenant_id FROM tnotes")).await? {
                        assert_eq!(r.get::<String>("tenant_id")?, tx.tenant().unwrap());
                    }
                }
                Ok(())
            })
        })
        .await
        .unwrap();
    }
    let tx = app.begin().await.unwrap();
    assert!(tenant::filter(&tx, "tenant_id").unwrap_err().is_invalid_input(), "no tenant, no filter");
    drop(tx);
    if dialect == Dialect::Postgres {
        let outside = app.fetch_all(&Sql::new("SELECT tenant_id FROM tnotes")).await.unwrap();
        assert!(outside.is_empty(), "outside with_tenant nothing is visible, saw {}", outside.len());
        let err = app
            .with_tenant("tenant-a", |tx| {
                Box::pin(async move {
                    tx.execute(&Sql::new("INSERT INTO tnotes (id, tenant_id, body) VALUES (100, 'tenant-b', 'x')"))
                        .await
                })
            })
            .await
            .expect_err("writing another tenant's row");
        assert!(
            matches!(err.kind(), ErrorKind::PermissionDenied | ErrorKind::Conflict | ErrorKind::InvalidInput),
            "{err}"
        );
    }
    assert!(app.with_tenant("", |_| Box::pin(async { Ok(()) })).await.unwrap_err().is_invalid_input());
}

/// Eight concurrent requests with one key run the work once and all get its response; the
/// same key with another request is `Conflict`; failed work releases the key.
pub async fn idempotent_retries_run_once(h: &dyn Harness) {
    let (_, db) = fresh(h, "").await;
    Migrator::new(vec![
        crate::idempotency::migration(1),
        Migration::new(2, "effects", "CREATE TABLE effects (id BIGINT NOT NULL PRIMARY KEY, note TEXT)"),
    ])
    .run(&db)
    .await
    .unwrap();
    let key = IdempotencyKey::new("order-42", b"POST /orders {\"sku\":1}").unwrap().with_wait(Duration::from_secs(30));
    let mut tasks = Vec::new();
    for i in 0..8_i64 {
        let (db, key) = (db.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            db.idempotent(&key, move |tx| {
                Box::pin(async move {
                    tx.execute(&Sql::new("INSERT INTO effects (id, note) VALUES (?, 'ran')").bind(i)).await?;
                    // Keep the first run in flight while the others arrive.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok(i)
                })
            })
            .await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().expect("every retry gets the response"));
    }
    let fresh_runs = outcomes.iter().filter(|o| !o.replayed).count();
    assert_eq!(fresh_runs, 1, "the work ran once");
    assert!(outcomes.iter().all(|o| o.value == outcomes[0].value));
    let n: i64 = db.fetch_one(&Sql::new("SELECT COUNT(*) AS n FROM effects")).await.unwrap().get("n").unwrap();
    assert_eq!(n, 1);

    let other = IdempotencyKey::new("order-42", b"POST /orders {\"sku\":2}").unwrap();
    let err = db.idempotent(&other, |_| Box::pin(async { Ok(0_i64) })).await.expect_err("different request");
    assert_eq!(err.kind(), ErrorKind::Conflict);

    let flaky = IdempotencyKey::new("order-43", b"POST /orders {\"sku\":3}").unwrap();
    let err = db
        .idempotent::<i64, _>(&flaky, |tx| {
            Box::pin(async move {
                tx.execute(&Sql::new("INSERT INTO effects (id, note) VALUES (100, 'rolled back')")).await?;
                Err(platform_core::Error::unavailable("downstream failed"))
            })
        })
        .await
        .expect_err("work fails");
    assert!(err.is_unavailable());
    let again = db.idempotent(&flaky, |_| Box::pin(async { Ok(7_i64) })).await.unwrap();
    assert_eq!((again.value, again.replayed), (7, false));
    let n: i64 = db.fetch_one(&Sql::new("SELECT COUNT(*) AS n FROM effects")).await.unwrap().get("n").unwrap();
    assert_eq!(n, 1, "the failed run left nothing");

    let expiring = IdempotencyKey::new("order-44", b"x").unwrap().with_ttl(Duration::from_millis(1));
    db.idempotent(&expiring, |_| Box::pin(async { Ok(1_i64) })).await.unwrap();
    let later = platform_core::testkit::eventually(Duration::from_secs(5), || async {
        db.idempotent(&expiring, |_| Box::pin(async { Ok(2_i64) })).await.ok().filter(|o| !o.replayed)
    })
    .await
    .expect("an expired key is new again");
    assert_eq!(later.value, 2);
    crate::idempotency::purge_expired(&db).await.unwrap();
}

/// Messages enqueued in committed transactions are claimed by four concurrent relays,
/// each exactly once; rolled-back ones never appear; sent rows are not claimed again.
pub async fn outbox_claims_never_overlap(h: &dyn Harness) {
    let (_, db) = fresh(h, "").await;
    Migrator::new(vec![outbox::migration(1)]).run(&db).await.unwrap();
    let mut committed = 0;
    for i in 0..120_u32 {
        let mut tx = db.begin().await.unwrap();
        let msg = outbox::OutboxMessage::new("orders", format!("payload {i}"))
            .with_key("k")
            .with_header("traceparent", "00-x");
        outbox::enqueue(&mut tx, &msg).await.unwrap();
        if i % 6 == 5 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
            committed += 1;
        }
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut relays = Vec::new();
    for _ in 0..4 {
        let (db, seen) = (db.clone(), Arc::clone(&seen));
        relays.push(tokio::spawn(async move {
            loop {
                let claim = outbox::claim(&db, 7, Duration::from_secs(60)).await.unwrap();
                if claim.records.is_empty() {
                    return;
                }
                let ids: Vec<i64> = claim.records.iter().map(|r| r.id).collect();
                for r in &claim.records {
                    assert!(!r.message.payload.is_empty());
                    assert_eq!(r.message.headers.get("traceparent").map(String::as_str), Some("00-x"));
                    assert_eq!(r.attempts, 1);
                }
                assert_eq!(outbox::mark_sent(&db, &claim, &ids).await.unwrap(), ids.len() as u64);
                seen.lock().unwrap().extend(ids);
            }
        }));
    }
    for r in relays {
        r.await.unwrap();
    }
    let mut seen = seen.lock().unwrap().clone();
    let total = seen.len();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), total, "a row was claimed twice");
    assert_eq!(total, committed);
    assert!(outbox::claim(&db, 10, Duration::from_secs(1)).await.unwrap().records.is_empty());
    assert_eq!(outbox::purge_sent(&db, Duration::ZERO).await.unwrap(), committed as u64);
}

/// A consumer records an event once: a second record of it is `false`, a rolled-back
/// record leaves it new, other consumers are independent, and of concurrent
/// transactions recording one event exactly one gets `true`.
pub async fn inbox_records_each_event_once(h: &dyn Harness) {
    let (_, db) = fresh(h, "").await;
    Migrator::new(vec![inbox::migration(1)]).run(&db).await.unwrap();
    let record = |consumer: &'static str, event: &'static str, commit: bool| {
        let db = db.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            let first = inbox::record(&mut tx, consumer, event).await.unwrap();
            if commit {
                tx.commit().await.unwrap()
            } else {
                tx.rollback().await.unwrap()
            }
            first
        }
    };
    assert!(record("billing", "e1", true).await, "the first record");
    assert!(!record("billing", "e1", true).await, "a second record of one event");
    assert!(record("mailer", "e1", true).await, "another consumer has its own record");
    assert!(record("billing", "e2", false).await);
    assert!(record("billing", "e2", true).await, "a rolled-back record leaves the event new");
    let racers: Vec<_> = (0..6).map(|_| tokio::spawn(record("billing", "e3", true))).collect();
    let mut firsts = 0;
    for r in racers {
        firsts += usize::from(r.await.unwrap());
    }
    assert_eq!(firsts, 1, "concurrent records of one event: exactly one first");
    let mut tx = db.begin().await.unwrap();
    let err = inbox::record(&mut tx, "billing", &"x".repeat(inbox::MAX_LEN + 1)).await.unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    tx.rollback().await.unwrap();
    assert_eq!(inbox::purge(&db, Duration::ZERO).await.unwrap(), 4);
}

/// With the only connection busy, the health check is `down` within the probe timeout;
/// when the connection is back it is `up` with the server version.
pub async fn health_reports_slow_database_down(h: &dyn Harness) {
    let (_, db) = fresh(h, "max_connections=1&acquire_timeout=30s").await;
    let held = db.begin().await.unwrap();
    let checks: Vec<Arc<dyn HealthCheck>> = vec![Arc::new(db.clone())];
    let started = std::time::Instant::now();
    let report = platform_core::probe_all(&checks, Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(report.status, platform_core::Status::Down);
    drop(held);
    let report = platform_core::probe_all(&checks, Duration::from_secs(5)).await;
    assert_eq!(report.status, platform_core::Status::Up, "{report:?}");
    assert!(report.checks[0].version.is_some());
    assert_eq!(db.pool_status().max_size, 1);
}

/// Unknown parameters and bad values are `InvalidInput` naming the parameter; pool
/// parameters reach the pool.
pub async fn url_parameters_are_checked(h: &dyn Harness) {
    let url = h.fresh_url().await.unwrap();
    for (param, name) in
        [("bogus=1", "bogus"), ("max_connections=lots", "max_connections"), ("idle_timeout=x", "idle_timeout")]
    {
        let err = crate::open(&with_param(&url, param)).await.expect_err(param);
        assert!(err.is_invalid_input(), "{err}");
        assert!(err.to_string().contains(name), "{err}");
    }
    let db = crate::open(&with_param(&url, "max_connections=3&min_connections=1")).await.unwrap();
    assert_eq!(db.pool_status().max_size, 3);
    assert!(db.to_string().starts_with("Db("));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_targets_are_stale() {
        let fresh = stamped("pt");
        assert!(!is_stale(&fresh, "pt"), "{fresh}");
        let old = format!("pt{}_abcdef12", OffsetDateTime::now_utc().unix_timestamp() - 2 * STALE_AFTER);
        assert!(is_stale(&old, "pt"));
        assert!(is_stale(&format!("{old}.db-wal"), "pt"));
        assert!(!is_stale("platform_db_outbox", "pt"));
        assert!(!is_stale("pt_not_a_time", "pt"));
    }
}
