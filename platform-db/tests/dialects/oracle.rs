//! Oracle's adapter against scripted sessions.
//!
//! No Oracle Database installs here and its protocol (TTC) is stateful, so, as the
//! design notes say, these tests put a scripted [`OracleSession`] under the adapter:
//! `Db`, `Tx`, the pool and the migrator run unchanged and the tests check what they
//! ask of a connection (golden conversations in `tests/golden/oracle-*.txt`) and what
//! they make of Oracle's answers and ORA numbers. The thin driver's own session is
//! compiled, never run here; the README's matrix says so.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform_db::migrate::{Migration, Migrator};
use platform_db::oracle::{Bind, OracleSession, Rows, ora_error};
use platform_db::{ErrorKind, Result, Sql, Value};

type Script = Arc<dyn Fn(&str, &[Bind]) -> Result<Rows> + Send + Sync>;

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A session answering by `script`; every call is logged with its session number.
struct Scripted {
    id: usize,
    script: Script,
    log: Log,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.log.push(format!("#{} closed", self.id));
    }
}

fn show(binds: &[Bind]) -> String {
    binds
        .iter()
        .map(|b| match b {
            Bind::Null => "NULL".to_owned(),
            // Clock readings (seconds or milliseconds since 1970) differ run to run.
            Bind::Int(i) if *i > 1_000_000_000 => "int <clock>".to_owned(),
            Bind::Int(i) => format!("int {i}"),
            Bind::Text(s) if uuid::Uuid::parse_str(s).is_ok() => "<uuid>".to_owned(),
            Bind::Float(f) => format!("float {f}"),
            Bind::Text(s) if s.len() > 40 => "text …".to_owned(),
            Bind::Text(s) => format!("{s:?}"),
            Bind::Bytes(b) => format!("{} bytes", b.len()),
            Bind::Timestamp(_) => "timestamp".to_owned(),
            _ => "?".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl OracleSession for Scripted {
    fn execute(&mut self, sql: &str, binds: &[Bind]) -> Result<u64> {
        self.log.push(format!("#{} execute: {sql} [{}]", self.id, show(binds)));
        (self.script)(sql, binds).map(|r| r.rows.len() as u64)
    }

    fn query(&mut self, sql: &str, binds: &[Bind]) -> Result<Rows> {
        self.log.push(format!("#{} query: {sql} [{}]", self.id, show(binds)));
        (self.script)(sql, binds)
    }

    fn commit(&mut self) -> Result<()> {
        self.log.push(format!("#{} commit", self.id));
        Ok(())
    }

    fn rollback(&mut self) -> Result<()> {
        self.log.push(format!("#{} rollback", self.id));
        Ok(())
    }

    fn server_version(&mut self) -> Result<String> {
        Ok("Oracle Database 23.4.0.24.5".to_owned())
    }
}

const URL: &str = "oracle://app:secret@db.invalid:1521/FREEPDB1?max_connections=3";

async fn open(url: &str, script: Script) -> (platform_db::Db, Log) {
    let log = Log::default();
    let (log2, next) = (log.clone(), Arc::new(Mutex::new(0)));
    let db = platform_db::oracle::open_with(url, move || {
        let mut n = next.lock().unwrap();
        *n += 1;
        Ok(Box::new(Scripted { id: *n, script: Arc::clone(&script), log: log2.clone() }) as Box<dyn OracleSession>)
    })
    .await
    .expect("open");
    (db, log)
}

/// One affected row (execute) or none.
fn affected(n: usize) -> Result<Rows> {
    Ok(Rows::new(Vec::new(), vec![Vec::new(); n]))
}

/// A fresh schema as Oracle answers the migrator: nothing applied, then the notes table.
fn fresh_schema(grant_lock: bool) -> Script {
    let created = Arc::new(Mutex::new(false));
    Arc::new(move |sql: &str, _binds: &[Bind]| {
        if sql.contains("DBMS_LOCK.REQUEST") && !grant_lock {
            return Err(ora_error(20_998, "migration lock not granted: 1"));
        }
        if sql.starts_with("CREATE TABLE notes") {
            *created.lock().unwrap() = true;
        }
        if sql.contains("FROM user_tab_columns") && *created.lock().unwrap() {
            let row = |c: &str, ty: &str| {
                vec![
                    Value::Text("notes".into()),
                    Value::Text(c.into()),
                    Value::Text(ty.into()),
                    Value::Text("N".into()),
                ]
            };
            return Ok(Rows::new(
                ["t", "c", "ty", "n"].map(String::from).to_vec(),
                vec![row("id", "NUMBER(19,0)"), row("body", "CLOB")],
            ));
        }
        if sql.starts_with("INSERT") || sql.starts_with("UPDATE") || sql.starts_with("DELETE") {
            return affected(1);
        }
        affected(0)
    })
}

fn notes() -> Vec<Migration> {
    vec![Migration::new(
        1,
        "notes",
        "CREATE TABLE notes (id NUMBER(19) PRIMARY KEY, body CLOB NOT NULL);\nCREATE INDEX notes_body ON notes (id, body);",
    )]
}

#[tokio::test]
async fn a_migration_is_recorded_run_and_marked_under_dbms_lock() {
    let (db, log) = open(URL, fresh_schema(true)).await;
    let report = Migrator::new(notes()).run(&db).await.expect("migrate");
    assert_eq!(report.applied, vec![1]);
    let lines = log.lines();
    assert!(lines.iter().any(|l| l.contains("DBMS_LOCK.REQUEST")), "{lines:#?}");
    assert!(lines.last().unwrap().contains("commit") || lines.iter().any(|l| l.contains("DBMS_LOCK.RELEASE")));
    super::golden("oracle-migration.txt", &lines);
}

#[tokio::test]
async fn a_lock_not_granted_is_a_timeout() {
    let (db, log) = open(&format!("{URL}&lock_timeout=1s"), fresh_schema(false)).await;
    let err = Migrator::new(notes()).run(&db).await.expect_err("lock held");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(!log.lines().iter().any(|l| l.contains("CREATE TABLE")), "nothing ran: {:#?}", log.lines());
}

#[tokio::test]
async fn ora_numbers_map_onto_kinds() {
    let script: Script = Arc::new(|sql: &str, _: &[Bind]| {
        let code: u32 = sql.trim_start_matches("-- ORA-").split_whitespace().next().unwrap().parse().unwrap();
        Err(ora_error(code, "scripted"))
    });
    let (db, _log) = open(URL, script).await;
    for (code, kind, retryable) in [
        (1, ErrorKind::AlreadyExists, false),
        (2291, ErrorKind::Conflict, false),
        (1400, ErrorKind::Conflict, false),
        (60, ErrorKind::Conflict, true),
        (8177, ErrorKind::Conflict, true),
        (54, ErrorKind::Timeout, true),
        (1017, ErrorKind::Unauthenticated, false),
        (1031, ErrorKind::PermissionDenied, false),
        (942, ErrorKind::NotFound, false),
        (933, ErrorKind::InvalidInput, false),
        (12_899, ErrorKind::InvalidInput, false),
        (20_999, ErrorKind::Unsupported, false),
        (3113, ErrorKind::Unavailable, true),
    ] {
        let err = db.execute(&Sql::new(format!("-- ORA-{code}\nUPDATE t SET n = ?")).bind(1)).await.unwrap_err();
        assert_eq!((err.kind(), err.is_retryable()), (kind, retryable), "ORA-{code}: {err}");
        assert!(err.to_string().contains(&format!("ORA-{code:05}")), "{err}");
    }
}

#[tokio::test]
async fn statements_commit_transactions_end_as_asked() {
    let script: Script = Arc::new(|sql: &str, binds: &[Bind]| {
        if sql.starts_with("SELECT") {
            return Ok(Rows::new(
                vec!["id".into(), "owner".into(), "done".into(), "body".into(), "at".into()],
                vec![vec![
                    Value::Int(7),
                    match &binds[0] {
                        Bind::Bytes(b) => Value::Bytes(b.clone()),
                        other => panic!("{other:?}"),
                    },
                    Value::Int(1),
                    Value::Null,
                    Value::Timestamp(time::macros::datetime!(2026-12-07 09:00 UTC)),
                ]],
            ));
        }
        affected(1)
    });
    let (db, log) = open(URL, script).await;
    let owner = uuid::Uuid::new_v4();
    let n = db.execute(&Sql::new("UPDATE notes SET done = ? WHERE owner = ?").bind(true).bind(owner)).await.unwrap();
    assert_eq!(n, 1);
    let row = db
        .fetch_one(&Sql::new("SELECT id, owner, done, body, at FROM notes WHERE owner = ?").bind(owner))
        .await
        .unwrap();
    assert_eq!(row.get::<i64>("id").unwrap(), 7);
    assert_eq!(row.get::<uuid::Uuid>("owner").unwrap(), owner);
    assert!(row.get::<bool>("done").unwrap());
    assert_eq!(row.get::<Option<String>>("body").unwrap(), None);
    db.tx(|tx| Box::pin(async move { tx.execute(&Sql::new("DELETE FROM notes WHERE id = ?").bind(7)).await }))
        .await
        .unwrap();
    let failed: Result<()> = db
        .tx(|tx| {
            Box::pin(async move {
                tx.execute(&Sql::new("DELETE FROM notes WHERE id = ?").bind(8)).await?;
                Err(platform_db::Error::conflict("changed my mind"))
            })
        })
        .await;
    assert!(failed.is_err());
    let tx = db.begin().await.unwrap();
    drop(tx);
    platform_core::testkit::eventually(Duration::from_secs(5), || async {
        log.lines().iter().any(|l| l.ends_with("closed")).then_some(())
    })
    .await
    .expect("a dropped transaction's session is closed");
    let version = platform_core::HealthCheck::check(&db).await.unwrap().version.unwrap();
    assert_eq!(version, "Oracle Database 23.4.0.24.5");
    let lines: Vec<String> = log.lines().iter().map(|l| l.split_once(' ').unwrap().1.to_owned()).collect();
    assert_eq!(
        lines[..8],
        [
            "execute: UPDATE notes SET done = :1 WHERE owner = :2 [int 1, 16 bytes]",
            "commit",
            "query: SELECT id, owner, done, body, at FROM notes WHERE owner = :1 [16 bytes]",
            "commit",
            "execute: DELETE FROM notes WHERE id = :1 [int 7]",
            "commit",
            "execute: DELETE FROM notes WHERE id = :1 [int 8]",
            "rollback",
        ]
    );
}

/// The outbox claims with `FOR UPDATE SKIP LOCKED` over a `ROWNUM`-limited candidate
/// list; the inbox MERGEs, and reads a racing MERGE's ORA-00001 as "handled already".
#[tokio::test]
async fn outbox_and_inbox_speak_oracle() {
    let merges = Arc::new(Mutex::new(0));
    let script: Script = Arc::new(move |sql: &str, _: &[Bind]| {
        if sql.starts_with("SELECT id FROM platform_db_outbox") {
            return Ok(Rows::new(vec!["id".into()], vec![vec![Value::Int(7)]]));
        }
        if sql.starts_with("SELECT id, topic") {
            return Ok(Rows::new(
                ["id", "topic", "msg_key", "payload", "headers", "created_at", "attempts"].map(String::from).to_vec(),
                vec![vec![
                    Value::Int(7),
                    Value::Text("orders".into()),
                    Value::Null,
                    Value::Bytes(b"{}".to_vec()),
                    Value::Text("{}".into()),
                    Value::Int(1_700_000_000_000),
                    Value::Int(1),
                ]],
            ));
        }
        if sql.starts_with("MERGE") {
            let mut n = merges.lock().unwrap();
            *n += 1;
            return if *n == 1 { affected(1) } else { Err(ora_error(1, "unique constraint violated")) };
        }
        affected(1)
    });
    let (db, log) = open(URL, script).await;
    let mut tx = db.begin().await.unwrap();
    platform_db::outbox::enqueue(&mut tx, &platform_db::outbox::OutboxMessage::new("orders", b"{}".to_vec()))
        .await
        .unwrap();
    assert!(platform_db::inbox::record(&mut tx, "billing", "evt-1").await.unwrap());
    assert!(!platform_db::inbox::record(&mut tx, "billing", "evt-1").await.unwrap(), "a racing MERGE");
    tx.commit().await.unwrap();
    let claim = platform_db::outbox::claim(&db, 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(claim.records.len(), 1);
    super::golden("oracle-outbox.txt", &log.lines());
}
