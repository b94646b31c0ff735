//! The Cassandra backend over the real CQL native protocol (v4), against a scripted
//! server.
//!
//! No Cassandra installs here, and the in-process CQL server the reference names
//! (kassandra 0.14) parses no `IF` clause, so it cannot serve the lightweight
//! transactions every write of this backend is. So the scylla driver, the backend and
//! the collection handle run unchanged against a CQL endpoint in the test process that
//! answers with frames written to the protocol's specification: OPTIONS, STARTUP,
//! REGISTER, the driver's `system.local`/`system.peers` reads, `USE`, PREPARE, EXECUTE,
//! BATCH, paged rows, `[applied]` results and ERROR frames with Cassandra's codes. Its
//! answers are scripted, not a database: the tests check what the backend sends
//! (`tests/golden/cassandra-*.txt`) and what it makes of the answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use platform_docstore::{Action, CollectionExt, Document, ErrorKind, Op, Query};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the backend asked: a statement (`BATCH` for a batch; the log has the values).
#[derive(Debug, Clone)]
struct Request {
    cql: String,
    /// The paging state a follow-up page asks from.
    paging: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
enum Cell {
    Text(Option<String>),
    Bool(bool),
}

#[derive(Debug, Clone)]
enum Reply {
    Void,
    /// Column names (text, or `[applied]` boolean) and rows; `more` pages follow when set.
    Rows(Vec<&'static str>, Vec<Vec<Cell>>, Option<Vec<u8>>),
    /// An ERROR frame: code, message, the code's extra body.
    Error(i32, String, Vec<u8>),
}

type Script = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

struct Server {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend(u16::try_from(s.len()).unwrap().to_be_bytes());
    out.extend(s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.extend(i32::try_from(b.len()).unwrap().to_be_bytes());
            out.extend(b);
        }
        None => out.extend((-1_i32).to_be_bytes()),
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn long_string(&mut self) -> String {
        let n = usize::try_from(self.i32()).unwrap();
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn short_bytes(&mut self) -> Vec<u8> {
        let n = usize::from(self.u16());
        self.take(n).to_vec()
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.i32();
        (n >= 0).then(|| self.take(usize::try_from(n).unwrap()).to_vec())
    }
    fn values(&mut self) -> Vec<Option<String>> {
        let n = self.u16();
        (0..n).map(|_| self.bytes().map(|b| String::from_utf8(b).unwrap())).collect()
    }
    /// `<query_parameters>`: the values and the paging state; the rest skipped.
    fn parameters(&mut self) -> (Vec<Option<String>>, Option<Vec<u8>>) {
        let _consistency = self.u16();
        let flags = self.u8();
        let values = if flags & 0x01 != 0 { self.values() } else { Vec::new() };
        if flags & 0x04 != 0 {
            let _page_size = self.i32();
        }
        let paging = if flags & 0x08 != 0 { self.bytes() } else { None };
        (values, paging)
    }
}

/// A `[option]` type id: varchar, boolean, uuid, inet, set.
const VARCHAR: u16 = 0x000D;
const BOOLEAN: u16 = 0x0004;
const UUID: u16 = 0x000C;
const INET: u16 = 0x0010;
const SET: u16 = 0x0022;

fn rows_body(columns: &[(&str, Vec<u16>)], rows: &[Vec<Option<Vec<u8>>>], paging: Option<&[u8]>) -> Vec<u8> {
    let mut out = 2_i32.to_be_bytes().to_vec();
    let flags = 0x0001 | if paging.is_some() { 0x0002 } else { 0 };
    out.extend(i32::to_be_bytes(flags));
    out.extend(i32::try_from(columns.len()).unwrap().to_be_bytes());
    if let Some(p) = paging {
        put_bytes(&mut out, Some(p));
    }
    put_string(&mut out, "ks");
    put_string(&mut out, "t");
    for (name, ty) in columns {
        put_string(&mut out, name);
        for id in ty {
            out.extend(id.to_be_bytes());
        }
    }
    out.extend(i32::try_from(rows.len()).unwrap().to_be_bytes());
    for row in rows {
        for cell in row {
            put_bytes(&mut out, cell.as_deref());
        }
    }
    out
}

fn reply_body(reply: &Reply) -> (u8, Vec<u8>) {
    match reply {
        Reply::Void => (0x08, 1_i32.to_be_bytes().to_vec()),
        Reply::Rows(names, rows, paging) => {
            let columns: Vec<(&str, Vec<u16>)> =
                names.iter().map(|n| (*n, vec![if *n == "[applied]" { BOOLEAN } else { VARCHAR }])).collect();
            let rows: Vec<Vec<Option<Vec<u8>>>> = rows
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|c| match c {
                            Cell::Text(t) => t.as_ref().map(|t| t.as_bytes().to_vec()),
                            Cell::Bool(b) => Some(vec![u8::from(*b)]),
                        })
                        .collect()
                })
                .collect();
            (0x08, rows_body(&columns, &rows, paging.as_deref()))
        }
        Reply::Error(code, message, extra) => {
            let mut out = code.to_be_bytes().to_vec();
            put_string(&mut out, message);
            out.extend(extra);
            (0x00, out)
        }
    }
}

/// The rows the driver reads about the one node.
fn system_rows(query: &str, port: u16) -> Option<(u8, Vec<u8>)> {
    let _ = port;
    let local = query.contains("FROM system.local");
    if !local && !query.contains("FROM system.peers") {
        return None;
    }
    if query.starts_with("SELECT release_version") {
        return Some((0x08, rows_body(&[("release_version", vec![VARCHAR])], &[vec![Some(b"4.1.9".to_vec())]], None)));
    }
    if query.starts_with("SELECT schema_version") {
        let id = uuid::Uuid::from_u128(7);
        let rows = if local { vec![vec![Some(id.as_bytes().to_vec())]] } else { Vec::new() };
        return Some((0x08, rows_body(&[("schema_version", vec![UUID])], &rows, None)));
    }
    let mut columns = vec![
        ("host_id", vec![UUID]),
        ("rpc_address", vec![INET]),
        ("data_center", vec![VARCHAR]),
        ("rack", vec![VARCHAR]),
        ("tokens", vec![SET, VARCHAR]),
    ];
    if local {
        columns.push(("cluster_name", vec![VARCHAR]));
    }
    let mut tokens = 1_i32.to_be_bytes().to_vec();
    put_bytes(&mut tokens, Some(b"0"));
    let mut row = vec![
        Some(uuid::Uuid::from_u128(1).as_bytes().to_vec()),
        Some(vec![127, 0, 0, 1]),
        Some(b"dc1".to_vec()),
        Some(b"rack1".to_vec()),
        Some(tokens),
    ];
    if local {
        row.push(Some(b"scripted".to_vec()));
    }
    let rows = if local { vec![row] } else { Vec::new() };
    Some((0x08, rows_body(&columns, &rows, None)))
}

fn prepared_body(id: u128, cql: &str) -> Vec<u8> {
    let binds = cql.matches('?').count();
    let mut out = 4_i32.to_be_bytes().to_vec();
    out.extend(16_u16.to_be_bytes());
    out.extend(id.to_be_bytes());
    // Bind metadata: global table spec, no partition key indexes, every bind text.
    out.extend(1_i32.to_be_bytes());
    out.extend(i32::try_from(binds).unwrap().to_be_bytes());
    out.extend(0_i32.to_be_bytes());
    put_string(&mut out, "ks");
    put_string(&mut out, "t");
    for i in 0..binds {
        put_string(&mut out, &format!("v{i}"));
        out.extend(VARCHAR.to_be_bytes());
    }
    // Result metadata: none; each RESULT carries its own.
    out.extend(4_i32.to_be_bytes());
    out.extend(0_i32.to_be_bytes());
    out
}

fn show(values: &[Option<String>]) -> String {
    values
        .iter()
        .map(|v| match v {
            None => "null".to_owned(),
            // Revisions and documents holding them change run to run.
            Some(s) if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) => "<rev>".to_owned(),
            Some(s) => s.clone(),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Prepared statements, server-wide as Cassandra keeps them: the driver prepares on
/// one connection and executes on any.
type Prepared = Arc<Mutex<HashMap<u128, String>>>;

async fn serve(
    mut stream: TcpStream,
    script: Script,
    log: Arc<Mutex<Vec<String>>>,
    prepared: Prepared,
    port: u16,
) -> std::io::Result<()> {
    loop {
        let mut header = [0_u8; 9];
        stream.read_exact(&mut header).await?;
        let stream_id = [header[2], header[3]];
        let opcode = header[4];
        let len = usize::try_from(i32::from_be_bytes(header[5..9].try_into().unwrap())).unwrap();
        let mut body = vec![0_u8; len];
        stream.read_exact(&mut body).await?;
        let mut r = Reader(&body);
        let (response_op, response) = match opcode {
            0x05 => {
                let mut out = 2_u16.to_be_bytes().to_vec();
                put_string(&mut out, "CQL_VERSION");
                out.extend(1_u16.to_be_bytes());
                put_string(&mut out, "3.4.7");
                put_string(&mut out, "COMPRESSION");
                out.extend(0_u16.to_be_bytes());
                (0x06, out)
            }
            0x01 | 0x0B => (0x02, Vec::new()),
            0x07 => {
                let cql = r.long_string();
                let (values, paging) = r.parameters();
                if let Some(ks) = cql.strip_prefix("USE ") {
                    let mut out = 3_i32.to_be_bytes().to_vec();
                    put_string(&mut out, ks.trim_matches('"'));
                    (0x08, out)
                } else if let Some(rows) = system_rows(&cql, port) {
                    rows
                } else {
                    log.lock().unwrap().push(format!("query: {cql} [{}]", show(&values)));
                    reply_body(&script(&Request { cql, paging }))
                }
            }
            0x09 => {
                let cql = r.long_string();
                let id = {
                    let mut p = prepared.lock().unwrap();
                    let id = u128::try_from(p.len()).unwrap() + 1;
                    p.insert(id, cql.clone());
                    id
                };
                if system_rows(&cql, port).is_none() {
                    log.lock().unwrap().push(format!("prepare: {cql}"));
                }
                (0x08, prepared_body(id, &cql))
            }
            0x0A => {
                let id = u128::from_be_bytes(r.short_bytes().try_into().unwrap());
                let cql = prepared.lock().unwrap()[&id].clone();
                let (values, paging) = r.parameters();
                if let Some(rows) = system_rows(&cql, port) {
                    rows
                } else {
                    let page =
                        paging.as_ref().map(|p| format!(" page {}", String::from_utf8_lossy(p))).unwrap_or_default();
                    log.lock().unwrap().push(format!("execute: {cql} [{}]{page}", show(&values)));
                    reply_body(&script(&Request { cql, paging }))
                }
            }
            0x0D => {
                let kind = r.u8();
                let n = r.u16();
                let mut batch = Vec::new();
                for _ in 0..n {
                    assert_eq!(r.u8(), 1, "batches of prepared statements");
                    let id = u128::from_be_bytes(r.short_bytes().try_into().unwrap());
                    batch.push((prepared.lock().unwrap()[&id].clone(), r.values()));
                }
                let lines: Vec<String> = batch.iter().map(|(c, v)| format!("  {c} [{}]", show(v))).collect();
                log.lock().unwrap().push(format!("batch (type {kind}):\n{}", lines.join("\n")));
                reply_body(&script(&Request { cql: "BATCH".to_owned(), paging: None }))
            }
            other => panic!("unexpected opcode {other:#x}"),
        };
        let mut frame = vec![0x84, 0, stream_id[0], stream_id[1], response_op];
        frame.extend(i32::try_from(response.len()).unwrap().to_be_bytes());
        frame.extend(response);
        stream.write_all(&frame).await?;
    }
}

impl Server {
    async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        let prepared: Prepared = Arc::default();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (script, log, prepared) = (Arc::clone(&script), Arc::clone(&log2), Arc::clone(&prepared));
                tokio::spawn(async move {
                    let _ = serve(stream, script, log, prepared, port).await;
                });
            }
        });
        Self { port, log }
    }

    fn url(&self, extra: &str) -> String {
        format!("cassandra://127.0.0.1:{}/ks?collection=people&key=id&timeout=5s{extra}", self.port)
    }

    /// What the backend ran, without the prepares (their order varies).
    fn conversation(&self) -> Vec<String> {
        self.log.lock().unwrap().iter().filter(|l| !l.starts_with("prepare: ")).cloned().collect()
    }

    fn prepared(&self) -> Vec<String> {
        let mut p: Vec<String> =
            self.log.lock().unwrap().iter().filter(|l| l.starts_with("prepare: ")).cloned().collect();
        p.sort();
        p
    }
}

fn golden(name: &str, lines: &[String]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    // Documents carry fresh revisions: masked as <rev> by `show`, and inside JSON here.
    platform_core::testkit::assert_golden(&path, &mask_revisions(&text));
}

fn mask_revisions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        out.push_str(if run.len() == 32 { "<rev>" } else { &run });
        run.clear();
        out.push(c);
    }
    out.push_str(if run.len() == 32 { "<rev>" } else { &run });
    out
}

fn applied(yes: bool) -> Reply {
    Reply::Rows(vec!["[applied]"], vec![vec![Cell::Bool(yes)]], None)
}

fn stored(doc: &serde_json::Value, rev: &str) -> Reply {
    Reply::Rows(
        vec!["doc", "rev"],
        vec![vec![Cell::Text(Some(doc.to_string())), Cell::Text(Some(rev.to_owned()))]],
        None,
    )
}

fn nothing() -> Reply {
    Reply::Rows(vec!["doc", "rev"], Vec::new(), None)
}

fn doc(v: serde_json::Value) -> Document {
    v.as_object().unwrap().clone()
}

/// Create, a second create, a put over a stale revision and a delete: each a
/// lightweight transaction on the revision read, and what `[applied]` says of it.
#[tokio::test]
async fn writes_are_lightweight_transactions_on_the_revision() {
    let state = Arc::new(Mutex::new(0));
    let script: Script = Arc::new(move |req: &Request| {
        let mut step = state.lock().unwrap();
        let cql = req.cql.as_str();
        let reply = match (*step, cql.split_whitespace().next().unwrap_or_default()) {
            // create: nothing there, then applied
            (0, "SELECT") => nothing(),
            (1, "INSERT") => applied(true),
            // the second create: the read finds it; nothing is sent
            (2, "SELECT") => stored(&json!({"id": 1, "name": "ada"}), "r1"),
            // put with revision r1, which someone else just replaced
            (3, "SELECT") => stored(&json!({"id": 1, "name": "ada"}), "r1"),
            (4, "UPDATE") => Reply::Rows(
                vec!["[applied]", "rev"],
                vec![vec![Cell::Bool(false), Cell::Text(Some("r2".into()))]],
                None,
            ),
            // delete at r2
            (5, "SELECT") => stored(&json!({"id": 1, "name": "grace"}), "r2"),
            (6, "DELETE") => applied(true),
            (n, other) => panic!("step {n}: unexpected {other}: {cql}"),
        };
        *step += 1;
        reply
    });
    let server = Server::start(script).await;
    let people = platform_docstore::open(&server.url("")).await.expect("open");
    people.create(doc(json!({"id": 1, "name": "ada"}))).await.expect("created");
    let err = people.create(doc(json!({"id": 1, "name": "ada"}))).await.expect_err("exists");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let err = people.put(doc(json!({"id": 1, "name": "ada", "_rev": "r1"}))).await.expect_err("lost the race");
    assert_eq!((err.kind(), err.is_retryable()), (ErrorKind::Conflict, true), "{err}");
    people.delete(doc(json!({"id": 1, "_rev": "r2"}))).await.expect("deleted");
    let prepared = server.prepared();
    assert!(prepared.iter().any(|p| p.ends_with("IF NOT EXISTS")), "{prepared:#?}");
    golden("cassandra-writes.txt", &[prepared, server.conversation()].concat());
}

/// Atomic lists: one conditional BATCH within a partition; `Unsupported` across
/// partitions before anything is sent; a batch not applied changes nothing.
#[tokio::test]
async fn atomic_lists_are_one_partition_batches() {
    let batches = Arc::new(Mutex::new(0));
    let script: Script = Arc::new(move |req: &Request| {
        if req.cql == "BATCH" {
            let mut n = batches.lock().unwrap();
            *n += 1;
            return applied(*n == 1);
        }
        nothing()
    });
    let server = Server::start(script).await;
    let url = server.url("&sort_key=line");
    let orders = platform_docstore::open(&url).await.expect("open");
    let list = |a: i64, b: i64| {
        vec![
            Action::Create(doc(json!({"id": "o1", "line": a, "sku": "x"}))),
            Action::Create(doc(json!({"id": "o1", "line": b, "sku": "y"}))),
        ]
    };
    orders.run_atomic(list(1, 2)).await.expect("one partition");
    let err = orders.run_atomic(list(3, 4)).await.expect_err("not applied");
    assert_eq!((err.kind(), err.is_retryable()), (ErrorKind::Conflict, true), "{err}");
    let before = server.conversation().len();
    let err = orders
        .run_atomic(vec![
            Action::Create(doc(json!({"id": "o1", "line": 5}))),
            Action::Create(doc(json!({"id": "o2", "line": 1}))),
        ])
        .await
        .expect_err("two partitions");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert_eq!(server.conversation().len(), before, "nothing was sent");
    golden("cassandra-batch.txt", &server.conversation());
}

/// A query on the partition key reads that partition, page by page; any other is
/// `Unsupported` unless scans are allowed.
#[tokio::test]
async fn queries_read_one_partition_page_by_page() {
    let script: Script = Arc::new(|req: &Request| {
        if req.cql.starts_with("CREATE TABLE") {
            return Reply::Void;
        }
        if req.cql.starts_with("SELECT doc, rev FROM people WHERE pk = ?") {
            let row = |n: i64| {
                vec![
                    Cell::Text(Some(json!({"id": "o1", "line": n, "qty": n * 10}).to_string())),
                    Cell::Text(Some(format!("r{n}"))),
                ]
            };
            // Two pages: the driver follows the paging state.
            return match &req.paging {
                None => Reply::Rows(vec!["doc", "rev"], vec![row(1), row(2)], Some(b"p2".to_vec())),
                Some(p) if p == b"p2" => Reply::Rows(vec!["doc", "rev"], vec![row(3)], None),
                Some(other) => panic!("unknown paging state {other:?}"),
            };
        }
        nothing()
    });
    let server = Server::start(script).await;
    let orders = platform_docstore::open(&server.url("&sort_key=line&create_table=true")).await.expect("open");
    assert!(
        server.conversation()[0].starts_with("query: CREATE TABLE IF NOT EXISTS people"),
        "{:#?}",
        server.conversation()
    );
    let q = Query::new().filter("id", Op::Eq, "o1").unwrap().filter("qty", Op::Ge, 20).unwrap();
    let found = orders.query(&q).await.expect("a partition");
    let lines: Vec<i64> = found.iter().map(|d| d["line"].as_i64().unwrap()).collect();
    assert_eq!(lines, [2, 3]);
    let scan = Query::new().filter("qty", Op::Ge, 20).unwrap();
    let err = orders.query(&scan).await.expect_err("a scan");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let conversation = server.conversation();
    assert!(conversation.iter().any(|l| l.ends_with("page p2")), "{conversation:#?}");
    assert!(conversation.iter().all(|l| !l.contains("FROM people [")), "no full read was sent");
}

/// Cassandra's error codes, as ERROR frames carry them, become the portable kinds.
#[tokio::test]
async fn error_codes_map_onto_kinds() {
    let code = Arc::new(Mutex::new((0_i32, Vec::new())));
    let code2 = Arc::clone(&code);
    let script: Script = Arc::new(move |_req: &Request| {
        let (c, extra) = code2.lock().unwrap().clone();
        Reply::Error(c, format!("scripted {c:#x}"), extra)
    });
    let server = Server::start(script).await;
    let people = platform_docstore::open(&server.url("")).await.expect("open");
    let write_timeout = {
        let mut e = 0x0006_u16.to_be_bytes().to_vec();
        e.extend(0_i32.to_be_bytes());
        e.extend(1_i32.to_be_bytes());
        put_string(&mut e, "CAS");
        e
    };
    let unavailable = {
        let mut e = 0x0006_u16.to_be_bytes().to_vec();
        e.extend(2_i32.to_be_bytes());
        e.extend(1_i32.to_be_bytes());
        e
    };
    for (c, extra, kind, retryable) in [
        (0x1000, unavailable, ErrorKind::Unavailable, true),
        (0x1001, Vec::new(), ErrorKind::Unavailable, true),
        (0x1100, write_timeout, ErrorKind::Timeout, true),
        (0x2000, Vec::new(), ErrorKind::InvalidInput, false),
        (0x2100, Vec::new(), ErrorKind::PermissionDenied, false),
        (0x2200, Vec::new(), ErrorKind::InvalidInput, false),
    ] {
        *code.lock().unwrap() = (c, extra);
        let err = people.get(doc(json!({"id": 1}))).await.expect_err("scripted error");
        assert_eq!((err.kind(), err.is_retryable()), (kind, retryable), "{c:#x}: {err}");
    }
}
