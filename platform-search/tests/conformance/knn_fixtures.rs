//! Elasticsearch's `dense_vector` k-NN and OpenSearch's k-NN plugin, against fixtures.
//!
//! Neither has a server here (no Elasticsearch installs; the OpenSearch-API server that
//! does, osmem, has no k-NN), so `tests/fixtures/knn/*.json` hold each exchange as the
//! vendor documents it: the request the backend must send (method, path, JSON or
//! NDJSON body) and the answer the engine gives. An HTTP endpoint in the test process
//! checks every request against the next fixture, exactly, and answers with its
//! response. The fixtures are written from the documentation, not recorded: the README
//! matrix marks these backends so.

use std::sync::{Arc, Mutex};

use platform_core::HealthCheck as _;
use platform_search::{Filter, Record, VectorQuery};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

struct Fixtures {
    url: String,
    exchanges: Vec<Value>,
}

fn load(name: &str) -> Fixtures {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/knn").join(name);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    Fixtures { url: doc["url"].as_str().unwrap().to_owned(), exchanges: doc["exchanges"].as_array().unwrap().clone() }
}

/// Serves the exchanges in order; records every mismatch.
async fn serve(exchanges: Vec<Value>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let problems = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(Mutex::new(0_usize));
    let exchanges = Arc::new(exchanges);
    let p2 = Arc::clone(&problems);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (exchanges, next, problems) = (Arc::clone(&exchanges), Arc::clone(&next), Arc::clone(&p2));
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) =
                        (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or_default().to_owned());
                    let mut length = 0;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).await.unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).await.unwrap();
                    let i = {
                        let mut n = next.lock().unwrap();
                        *n += 1;
                        *n - 1
                    };
                    let Some(exchange) = exchanges.get(i) else {
                        problems.lock().unwrap().push(format!("unexpected request #{i}: {method} {path}"));
                        return;
                    };
                    let want = &exchange["request"];
                    let text = String::from_utf8(body).unwrap();
                    let got_body = if want.get("ndjson").is_some() {
                        Value::Array(text.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
                    } else if text.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_str(&text).unwrap()
                    };
                    let want_body = want.get("ndjson").or_else(|| want.get("body")).cloned().unwrap_or(Value::Null);
                    if method != want["method"] || path != want["path"] || got_body != want_body {
                        problems.lock().unwrap().push(format!(
                            "request #{i}: got {method} {path} {got_body}\n  want {} {} {want_body}",
                            want["method"], want["path"]
                        ));
                    }
                    let response = &exchange["response"];
                    let out = response["body"].to_string();
                    let head = format!(
                        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        response["status"],
                        out.len()
                    );
                    write.write_all(head.as_bytes()).await.unwrap();
                    write.write_all(out.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (addr, problems)
}

async fn run(name: &str, backend: &str, version: &str, second_distance: f32) {
    let fixtures = load(name);
    let (addr, problems) = serve(fixtures.exchanges).await;
    let index = platform_search::open_vector(&fixtures.url.replace("{addr}", &addr)).await.expect("open");
    let record = |id: &str, v: [f32; 2], tenant: &str, document: Option<&str>| {
        let mut r = Record::new(id, v.to_vec());
        r.metadata.insert("tenant".into(), json!(tenant));
        r.document = document.map(str::to_owned);
        r
    };
    index
        .upsert(vec![
            record("a", [0.6, 0.8], "acme", Some("first")),
            record("b", [1.0, 0.0], "acme", None),
            record("c", [0.0, 1.0], "other", Some("third")),
        ])
        .await
        .expect("upsert");
    let hits = index
        .query(&VectorQuery::new(vec![1.0, 0.0], 2).filter(Filter::Eq("tenant".into(), json!("acme"))))
        .await
        .expect("query");
    let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["b", "a"]);
    assert!(hits[0].distance.abs() < 1e-6, "{hits:?}");
    assert!((hits[1].distance - second_distance).abs() < 1e-5, "{hits:?}");
    assert_eq!(hits[1].document.as_deref(), Some("first"));
    assert_eq!(hits[1].metadata["tenant"], "acme");
    let got = index.get(&["a".to_owned(), "zz".to_owned()]).await.expect("get");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].vector, vec![0.6, 0.8]);
    index.delete(&["a".to_owned(), "zz".to_owned()]).await.expect("delete, a missing id included");
    let outcome = index.check().await.expect("ping");
    assert_eq!(outcome.version.as_deref(), Some(version));
    let problems = problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{backend}: {}", problems.join("\n"));
}

#[tokio::test]
async fn elasticsearch_dense_vector_knn_speaks_as_documented() {
    // cosine: a is at cos 0.6 from the query, score 0.8, distance 1 - 0.6.
    run("elasticsearch.json", "elasticsearch", "Elasticsearch 9.1.0", 0.4).await;
}

#[tokio::test]
async fn opensearch_knn_plugin_speaks_as_documented() {
    // squared L2: a is 0.8 away, score 1 / 1.8.
    run("opensearch.json", "opensearch", "OpenSearch 3.8.0", 0.8).await;
}

/// An index that exists already is opened; a bulk item the mapping refuses fails the
/// write as `InvalidInput`; a missing index is `NotFound`.
#[tokio::test]
async fn elasticsearch_errors_map_onto_kinds() {
    let fixtures = load("elasticsearch-errors.json");
    let (addr, problems) = serve(fixtures.exchanges).await;
    let index =
        platform_search::open_vector(&fixtures.url.replace("{addr}", &addr)).await.expect("an existing index opens");
    let err = index.upsert(vec![Record::new("a", vec![0.6, 0.8])]).await.expect_err("refused item");
    assert_eq!(err.kind(), platform_search::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("document_parsing_exception"), "{err}");
    let err = index.query(&VectorQuery::new(vec![1.0, 0.0], 5)).await.expect_err("no index");
    assert_eq!(err.kind(), platform_search::ErrorKind::NotFound, "{err}");
    let problems = problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
