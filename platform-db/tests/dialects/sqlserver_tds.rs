//! SQL Server's migrations, transactions and error numbers over the real TDS protocol,
//! against a scripted server.
//!
//! No SQL Server runs here, and the TDS server that does (pySQLbridge, `sqlserver.rs`)
//! refuses DDL and has no `sp_getapplock`. So this file runs the driver (tiberius,
//! the pool, `Db`, `Tx` and the migrator, unchanged) against a TDS endpoint in the test
//! process that answers each request with token streams written to the MS-TDS
//! specification: PRELOGIN, LOGIN7 and LOGINACK, SQL batches, `sp_executesql` RPCs,
//! result sets, row counts and ERROR tokens with SQL Server's own error numbers. Its
//! answers are scripted, not a database: the tests check what the driver sends (a
//! golden conversation, `tests/golden/sqlserver-migration.txt`) and what it makes of
//! what SQL Server answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform_db::migrate::{Migration, Migrator};
use platform_db::{ErrorKind, Sql};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a scripted server answers a request with.
#[derive(Debug, Clone)]
enum Reply {
    /// A row count (`DONE_COUNT`), or none.
    Done(Option<u64>),
    /// A result set of text and integer columns.
    Rows(Vec<&'static str>, Vec<Vec<Cell>>),
    /// An ERROR token: number, class, message.
    Error(u32, u8, String),
}

#[derive(Debug, Clone)]
enum Cell {
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

type Script = Arc<dyn Fn(&str, &mut State) -> Reply + Send + Sync>;

/// What a scripted server remembers across requests.
#[derive(Debug, Default)]
struct State {
    tables: Vec<String>,
}

/// A TDS endpoint on a loopback port, answering by `script`, logging each request.
struct Server {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(Mutex::new(State::default()));
        let (log2, state2) = (Arc::clone(&log), Arc::clone(&state));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (script, log, state) = (Arc::clone(&script), Arc::clone(&log2), Arc::clone(&state2));
                tokio::spawn(async move {
                    let _ = serve(stream, script, log, state).await;
                });
            }
        });
        Self { port, log }
    }

    fn url(&self) -> String {
        format!("sqlserver://sa:secret@127.0.0.1:{}/app?encrypt=not_supported&max_connections=2", self.port)
    }

    /// The requests so far, one line each, without the connection setup.
    fn conversation(&self) -> Vec<String> {
        self.log.lock().unwrap().iter().filter(|l| !l.starts_with("batch: SET XACT_ABORT")).cloned().collect()
    }
}

async fn read_message(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut body = Vec::new();
    loop {
        let mut header = [0_u8; 8];
        stream.read_exact(&mut header).await?;
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let mut part = vec![0_u8; len - 8];
        stream.read_exact(&mut part).await?;
        body.extend_from_slice(&part);
        if header[1] & 0x01 != 0 {
            return Ok((header[0], body));
        }
    }
}

async fn write_message(stream: &mut TcpStream, kind: u8, body: &[u8]) -> std::io::Result<()> {
    let chunks: Vec<&[u8]> = if body.is_empty() { vec![&[]] } else { body.chunks(4088).collect() };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut packet = vec![kind, u8::from(i == last), 0, 0, 0, 0, u8::try_from((i + 1) % 256).unwrap(), 0];
        let len = u16::try_from(chunk.len() + 8).unwrap();
        packet[2..4].copy_from_slice(&len.to_be_bytes());
        packet.extend_from_slice(chunk);
        stream.write_all(&packet).await?;
    }
    stream.flush().await
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn from_utf16(b: &[u8]) -> String {
    String::from_utf16_lossy(&b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>())
}

fn b_varchar(s: &str) -> Vec<u8> {
    let mut out = vec![u8::try_from(s.encode_utf16().count()).unwrap()];
    out.extend(utf16(s));
    out
}

fn us_varchar(s: &str) -> Vec<u8> {
    let mut out = u16::try_from(s.encode_utf16().count()).unwrap().to_le_bytes().to_vec();
    out.extend(utf16(s));
    out
}

/// DONE (0xFD), DONEINPROC (0xFF) or DONEPROC (0xFE).
fn done(token: u8, status: u16, count: u64) -> Vec<u8> {
    let mut out = vec![token];
    out.extend(status.to_le_bytes());
    out.extend(0xC1_u16.to_le_bytes());
    out.extend(count.to_le_bytes());
    out
}

const DONE_MORE: u16 = 0x01;
const DONE_ERROR: u16 = 0x02;
const DONE_COUNT: u16 = 0x10;

/// A collation: LCID 1033, case-insensitive, sort id 52.
const COLLATION: [u8; 5] = [0x09, 0x04, 0xD0, 0x00, 0x34];

fn result_set(columns: &[&str], rows: &[Vec<Cell>]) -> Vec<u8> {
    let kinds: Vec<&Cell> = (0..columns.len()).map(|i| rows.first().map_or(&Cell::Int(0), |r| &r[i])).collect();
    let mut out = vec![0x81];
    out.extend(u16::try_from(columns.len()).unwrap().to_le_bytes());
    for (name, kind) in columns.iter().zip(&kinds) {
        out.extend(0_u32.to_le_bytes());
        out.extend(0x0001_u16.to_le_bytes());
        match kind {
            Cell::Int(_) => out.extend([0x26, 8]),
            Cell::Text(_) => {
                out.push(0xE7);
                out.extend(8000_u16.to_le_bytes());
                out.extend(COLLATION);
            }
            Cell::Bytes(_) => {
                out.push(0xA5);
                out.extend(8000_u16.to_le_bytes());
            }
        }
        out.extend(b_varchar(name));
    }
    for row in rows {
        out.push(0xD1);
        for cell in row {
            match cell {
                Cell::Int(i) => {
                    out.push(8);
                    out.extend(i.to_le_bytes());
                }
                Cell::Text(s) => {
                    let bytes = utf16(s);
                    out.extend(u16::try_from(bytes.len()).unwrap().to_le_bytes());
                    out.extend(bytes);
                }
                Cell::Bytes(b) => {
                    out.extend(u16::try_from(b.len()).unwrap().to_le_bytes());
                    out.extend(b);
                }
            }
        }
    }
    out
}

fn error_token(number: u32, class: u8, message: &str) -> Vec<u8> {
    let mut body = number.to_le_bytes().to_vec();
    body.push(1);
    body.push(class);
    body.extend(us_varchar(message));
    body.extend(b_varchar("scripted"));
    body.extend(b_varchar(""));
    body.extend(1_i32.to_le_bytes());
    let mut out = vec![0xAA];
    out.extend(u16::try_from(body.len()).unwrap().to_le_bytes());
    out.extend(body);
    out
}

/// The token stream for a reply: a batch ends in DONE; an RPC in DONEINPROC,
/// RETURNSTATUS and DONEPROC, as SQL Server answers `sp_executesql`.
fn tokens(reply: &Reply, rpc: bool) -> Vec<u8> {
    let (mut out, status, count) = match reply {
        Reply::Done(None) => (Vec::new(), 0, 0),
        Reply::Done(Some(n)) => (Vec::new(), DONE_COUNT, *n),
        Reply::Rows(columns, rows) => (result_set(columns, rows), DONE_COUNT, rows.len() as u64),
        Reply::Error(number, class, message) => (error_token(*number, *class, message), DONE_ERROR, 0),
    };
    if rpc {
        out.extend(done(0xFF, status | DONE_MORE, count));
        out.push(0x79);
        out.extend(0_i32.to_le_bytes());
        out.extend(done(0xFE, status & DONE_ERROR, 0));
    } else {
        out.extend(done(0xFD, status, count));
    }
    out
}

/// The SQL text of a batch, or of an `sp_executesql` call with its parameter list.
fn request_text(kind: u8, body: &[u8]) -> String {
    let headers = u32::from_le_bytes(body[0..4].try_into().unwrap()) as usize;
    let rest = &body[headers..];
    if kind == 0x01 {
        return format!("batch: {}", from_utf16(rest));
    }
    // ProcIDSwitch 0xFFFF and the procedure id, then the option flags.
    let proc_id = u16::from_le_bytes([rest[2], rest[3]]);
    let mut at = 6;
    let mut strings = Vec::new();
    while at < rest.len() && strings.len() < 2 {
        let name_len = usize::from(rest[at]);
        at += 1 + name_len * 2 + 1;
        let ty = rest[at];
        at += 1;
        assert_eq!(ty, 0xE7, "sp_executesql's first parameters are nvarchar");
        let max = u16::from_le_bytes([rest[at], rest[at + 1]]);
        at += 2 + 5;
        let value = if max == 0xFFFF {
            at += 8;
            let mut v = Vec::new();
            loop {
                let n = u32::from_le_bytes(rest[at..at + 4].try_into().unwrap()) as usize;
                at += 4;
                if n == 0 {
                    break;
                }
                v.extend_from_slice(&rest[at..at + n]);
                at += n;
            }
            v
        } else {
            let n = usize::from(u16::from_le_bytes([rest[at], rest[at + 1]]));
            at += 2;
            let v = rest[at..at + n].to_vec();
            at += n;
            v
        };
        strings.push(from_utf16(&value));
    }
    assert_eq!(proc_id, 10, "sp_executesql");
    format!("rpc: {} -- params: {}", strings[0], strings.get(1).cloned().unwrap_or_default())
}

async fn serve(
    mut stream: TcpStream,
    script: Script,
    log: Arc<Mutex<Vec<String>>>,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    // PRELOGIN: version 16.0, no encryption, as asked.
    let (kind, _) = read_message(&mut stream).await?;
    assert_eq!(kind, 0x12, "prelogin first");
    let data = [
        16_u8, 0, 0x10, 0x00, 0, 0, /* encryption */ 2, /* instopt */ 0, /* threadid */ 0, 0, 0, 0,
        /* mars */ 0,
    ];
    let options = [(0_u8, 0_u16, 6_u16), (1, 6, 1), (2, 7, 1), (3, 8, 4), (4, 12, 1)];
    let table_len = options.len() * 5 + 1;
    let mut body = Vec::new();
    for (token, offset, len) in options {
        body.push(token);
        body.extend((offset + u16::try_from(table_len).unwrap()).to_be_bytes());
        body.extend(len.to_be_bytes());
    }
    body.push(0xFF);
    body.extend(data);
    write_message(&mut stream, 0x04, &body).await?;
    // LOGIN7: LOGINACK (TDS 7.4) and DONE.
    let (kind, _) = read_message(&mut stream).await?;
    assert_eq!(kind, 0x10, "login7 second");
    let mut ack = vec![1_u8];
    ack.extend(0x7400_0004_u32.to_be_bytes());
    ack.extend(b_varchar("Microsoft SQL Server"));
    ack.extend([16, 0, 0x10, 0]);
    let mut body = vec![0xAD];
    body.extend(u16::try_from(ack.len()).unwrap().to_le_bytes());
    body.extend(ack);
    body.extend(done(0xFD, 0, 0));
    write_message(&mut stream, 0x04, &body).await?;
    loop {
        let (kind, body) = read_message(&mut stream).await?;
        if kind == 0x0E {
            // A transaction manager request: none is expected.
            panic!("unexpected transaction manager request");
        }
        let text = request_text(kind, &body);
        log.lock().unwrap().push(text.clone());
        let sql = text.split_once(": ").map_or("", |(_, s)| s);
        let reply = script(sql, &mut state.lock().unwrap());
        write_message(&mut stream, 0x04, &tokens(&reply, kind == 0x03)).await?;
    }
}

fn text(s: &str) -> Cell {
    Cell::Text(s.to_owned())
}

/// A fresh database as SQL Server answers the migrator, with `got` from `sp_getapplock`.
fn fresh_database(got: i64) -> Script {
    Arc::new(move |sql: &str, state: &mut State| {
        if sql.contains("sp_getapplock") {
            return Reply::Rows(vec!["got"], vec![vec![Cell::Int(got)]]);
        }
        if sql.starts_with("IF OBJECT_ID") || sql.starts_with("CREATE TABLE") {
            for word in sql.split_whitespace().skip_while(|w| *w != "TABLE").skip(1).take(1) {
                state.tables.push(word.to_owned());
            }
            return Reply::Done(None);
        }
        if sql.contains("FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = SCHEMA_NAME() AND TABLE_NAME") {
            let asked = sql.contains("platform_db_schema") || state.tables.iter().any(|t| t == "platform_db_schema");
            return Reply::Rows(vec!["one"], if asked { vec![vec![Cell::Int(1)]] } else { Vec::new() });
        }
        if sql.contains("FROM INFORMATION_SCHEMA.COLUMNS") {
            let rows = if state.tables.iter().any(|t| t == "notes") {
                vec![
                    vec![text("notes"), text("id"), text("bigint"), text("NO")],
                    vec![text("notes"), text("body"), text("nvarchar(max)"), text("NO")],
                ]
            } else {
                Vec::new()
            };
            return Reply::Rows(vec!["t", "c", "ty", "n"], rows);
        }
        if sql.contains("FROM sys.indexes") || sql.starts_with("SELECT") {
            return Reply::Done(None);
        }
        if sql.starts_with("INSERT") || sql.starts_with("DELETE") || sql.starts_with("UPDATE") {
            return Reply::Done(Some(1));
        }
        Reply::Done(None)
    })
}

fn notes() -> Vec<Migration> {
    vec![Migration::new(1, "notes", "CREATE TABLE notes (id BIGINT NOT NULL PRIMARY KEY, body NVARCHAR(MAX) NOT NULL)")]
}

#[tokio::test]
async fn a_migration_run_is_one_transaction_under_an_applock() {
    let server = Server::start(fresh_database(0)).await;
    let db = platform_db::open(&server.url()).await.expect("open");
    let report = Migrator::new(notes()).run(&db).await.expect("migrate");
    assert_eq!(report.applied, vec![1]);
    let conversation = server.conversation();
    assert_eq!(conversation.first().map(String::as_str), Some("batch: BEGIN TRANSACTION"));
    assert_eq!(conversation.last().map(String::as_str), Some("batch: COMMIT TRANSACTION"));
    assert!(conversation[1].contains("sp_getapplock") && conversation[1].contains("@P1 bigint"), "{conversation:#?}");
    super::golden("sqlserver-migration.txt", &conversation);
}

#[tokio::test]
async fn a_held_applock_is_a_timeout_and_rolls_back() {
    let server = Server::start(fresh_database(-1)).await;
    let db = platform_db::open(&format!("{}&lock_timeout=250ms", server.url())).await.expect("open");
    let err = Migrator::new(notes()).run(&db).await.expect_err("lock held");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let conversation = server.conversation();
    assert!(conversation[1].contains("sp_getapplock"), "{conversation:#?}");
    assert!(conversation[1].contains("@P1 bigint"), "{conversation:#?}");
    assert_eq!(conversation.last().map(String::as_str), Some("batch: IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION"));
    assert_eq!(conversation.len(), 3, "nothing else ran: {conversation:#?}");
}

/// SQL Server's error numbers, as its ERROR tokens carry them, become the portable kinds.
#[tokio::test]
async fn error_numbers_map_onto_kinds() {
    let script: Script = Arc::new(|sql: &str, _: &mut State| {
        let Some(rest) = sql.strip_prefix("-- error ") else { return Reply::Done(None) };
        let number: u32 = rest.split_whitespace().next().unwrap().parse().unwrap();
        Reply::Error(number, 16, format!("scripted error {number}"))
    });
    let server = Server::start(script).await;
    let db = platform_db::open(&server.url()).await.expect("open");
    for (number, kind, retryable) in [
        (2627, ErrorKind::AlreadyExists, false),
        (2601, ErrorKind::AlreadyExists, false),
        (547, ErrorKind::Conflict, false),
        (515, ErrorKind::Conflict, false),
        (1205, ErrorKind::Conflict, true),
        (1222, ErrorKind::Timeout, true),
        (229, ErrorKind::PermissionDenied, false),
        (208, ErrorKind::NotFound, false),
        (8152, ErrorKind::InvalidInput, false),
        (40_613, ErrorKind::Unavailable, true),
        (59_999, ErrorKind::Unsupported, false),
    ] {
        for err in [
            db.execute(&Sql::new(format!("-- error {number}\nUPDATE t SET n = ?")).bind(1)).await.unwrap_err(),
            db.fetch_all(&Sql::new(format!("-- error {number}\nSELECT 1"))).await.unwrap_err(),
        ] {
            assert_eq!((err.kind(), err.is_retryable()), (kind, retryable), "{number}: {err}");
            assert!(err.to_string().contains(&format!("error {number}")), "{err}");
        }
    }
    // The connection is still in step after every error.
    assert_eq!(db.pool_status().size, 1, "{:?}", db.pool_status());
}

/// `Db::tx` commits on `Ok`, rolls back on `Err`; a dropped `Tx` closes its connection.
#[tokio::test]
async fn transactions_end_as_asked() {
    let server = Server::start(fresh_database(0)).await;
    let db = platform_db::open(&server.url()).await.expect("open");
    db.tx(|tx| Box::pin(async move { tx.execute(&Sql::new("UPDATE t SET n = ?").bind(1)).await }))
        .await
        .expect("commit");
    let failed: platform_db::Result<()> = db
        .tx(|tx| {
            Box::pin(async move {
                tx.execute(&Sql::new("DELETE FROM t WHERE n = ?").bind(1)).await?;
                Err(platform_db::Error::conflict("changed my mind"))
            })
        })
        .await;
    assert_eq!(failed.unwrap_err().kind(), ErrorKind::Conflict);
    let tx = db.begin().await.unwrap();
    drop(tx);
    platform_core::testkit::eventually(Duration::from_secs(5), || async { (db.pool_status().size == 0).then_some(()) })
        .await
        .expect("the dropped transaction's connection is closed, not pooled");
    let conversation = server.conversation();
    assert_eq!(
        conversation,
        [
            "batch: BEGIN TRANSACTION",
            "rpc: UPDATE t SET n = @P1 -- params: @P1 bigint",
            "batch: COMMIT TRANSACTION",
            "batch: BEGIN TRANSACTION",
            "rpc: DELETE FROM t WHERE n = @P1 -- params: @P1 bigint",
            "batch: IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION",
            "batch: BEGIN TRANSACTION",
        ]
    );
}

/// The outbox claims past other relays' locks (`UPDLOCK, READPAST`) and pages with
/// `OFFSET … FETCH`; the inbox inserts only what is not there, under `HOLDLOCK`.
#[tokio::test]
async fn outbox_and_inbox_speak_tsql() {
    let script: Script = Arc::new(|sql: &str, _: &mut State| {
        if sql.starts_with("SELECT id FROM platform_db_outbox") {
            return Reply::Rows(vec!["id"], vec![vec![Cell::Int(7)]]);
        }
        if sql.starts_with("SELECT id, topic") {
            let row = vec![
                Cell::Int(7),
                text("orders"),
                text("k1"),
                Cell::Bytes(b"{\"n\":1}".to_vec()),
                text("{\"traceparent\":\"00-abc-def-01\"}"),
                Cell::Int(1_700_000_000_000),
                Cell::Int(1),
            ];
            return Reply::Rows(
                vec!["id", "topic", "msg_key", "payload", "headers", "created_at", "attempts"],
                vec![row],
            );
        }
        if sql.starts_with("INSERT INTO platform_db_inbox") {
            return Reply::Done(Some(1));
        }
        if sql.starts_with("INSERT") || sql.starts_with("UPDATE") {
            return Reply::Done(Some(1));
        }
        Reply::Done(None)
    });
    let server = Server::start(script).await;
    let db = platform_db::open(&server.url()).await.expect("open");
    let mut tx = db.begin().await.unwrap();
    let message = platform_db::outbox::OutboxMessage::new("orders", b"{\"n\":1}".to_vec()).with_key("k1");
    platform_db::outbox::enqueue(&mut tx, &message).await.unwrap();
    assert!(platform_db::inbox::record(&mut tx, "billing", "evt-1").await.unwrap());
    tx.commit().await.unwrap();
    let claim = platform_db::outbox::claim(&db, 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(claim.records.len(), 1);
    assert_eq!(claim.records[0].message.payload, b"{\"n\":1}");
    assert_eq!(claim.records[0].message.headers["traceparent"], "00-abc-def-01");
    platform_db::outbox::parked(&db, 5).await.unwrap();
    super::golden("sqlserver-outbox.txt", &server.conversation());
}
