//! Documents and vectors, in one run.
//!
//! - `docstore`: puts then gets of N documents (about 200 bytes each, 8 in flight) on
//!   every platform-docstore backend whose server is up, beside the raw client doing
//!   the same one-document upsert and read on the same server (sqlx, the MongoDB driver,
//!   aws-sdk-dynamodb). A platform put reads the revision first and writes on it (two
//!   round trips where the raw upsert has one): the ratio prices that.
//! - `vectors`: 10,000 vectors of 384 dimensions upserted in batches of 500, then 200
//!   k-nearest queries (k = 10, one at a time) on memory, pgvector and Chroma, with
//!   recall@10 against exact search.
//!
//! `source scripts/services.env && cargo bench -p platform-benches --bench docs -- [docstore|vectors]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use platform_docstore::{Collection, CollectionExt as _, Document};
use platform_search::{Metric, Record, VectorIndex, VectorQuery};
use serde_json::json;

const IN_FLIGHT: usize = 8;

fn env(name: &str) -> Option<String> {
    std::env::var(format!("PLATFORM_TEST_{name}_URL")).ok().filter(|v| !v.is_empty())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), Instant::now().elapsed().as_nanos() % 1_000_000)
}

fn body(i: usize) -> Document {
    json!({"id": format!("doc-{i}"), "name": format!("name {i}"), "n": i, "score": i as f64 / 3.0,
        "tags": ["a", "b", "c"], "address": {"city": "London", "zip": format!("N{}", i % 100)}, "active": i.is_multiple_of(2)})
    .as_object()
    .cloned()
    .unwrap_or_default()
}

/// Runs `op(i)` for i in 0..n with `IN_FLIGHT` at a time; operations per second.
async fn rate<F, Fut>(n: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    futures::stream::iter(0..n).map(&op).buffer_unordered(IN_FLIGHT).collect::<Vec<()>>().await;
    n as f64 / started.elapsed().as_secs_f64()
}

/// The raw client of a backend: one upsert and one read of a document by key.
enum Raw {
    Sqlite(sqlx::SqlitePool, String),
    Postgres(sqlx::PgPool, String),
    Mongo(mongodb::Collection<mongodb::bson::Document>),
    Dynamo(aws_sdk_dynamodb::Client, String),
}

impl Raw {
    async fn put(&self, i: usize) {
        let doc = serde_json::Value::Object(body(i)).to_string();
        let (pk, rev) = (format!("s:doc-{i}"), format!("{i:032x}"));
        match self {
            Self::Sqlite(pool, t) => {
                let q = format!(
                    "INSERT INTO {t} (pk, sk, doc, rev) VALUES (?, '', ?, ?) ON CONFLICT (pk, sk) DO UPDATE SET doc = excluded.doc, rev = excluded.rev"
                );
                sqlx::query(sqlx::AssertSqlSafe(q)).bind(pk).bind(doc).bind(rev).execute(pool).await.expect("raw put");
            }
            Self::Postgres(pool, t) => {
                let q = format!(
                    "INSERT INTO {t} (pk, sk, doc, rev) VALUES ($1, '', CAST($2 AS JSONB), $3) ON CONFLICT (pk, sk) DO UPDATE SET doc = EXCLUDED.doc, rev = EXCLUDED.rev"
                );
                sqlx::query(sqlx::AssertSqlSafe(q)).bind(pk).bind(doc).bind(rev).execute(pool).await.expect("raw put");
            }
            Self::Mongo(c) => {
                let d = mongodb::bson::to_document(&json!({"_id": pk, "doc": body(i), "rev": rev})).expect("bson");
                c.replace_one(mongodb::bson::doc! {"_id": &pk}, d).upsert(true).await.expect("raw put");
            }
            Self::Dynamo(client, t) => {
                use aws_sdk_dynamodb::types::AttributeValue as A;
                let mut item = std::collections::HashMap::new();
                item.insert("_pk".to_owned(), A::S(pk));
                item.insert("_sk".to_owned(), A::S("-".to_owned()));
                item.insert("doc".to_owned(), attr(&serde_json::Value::Object(body(i))));
                let _ = doc;
                item.insert("rev".to_owned(), A::S(rev));
                client.put_item().table_name(t).set_item(Some(item)).send().await.expect("raw put");
            }
        }
    }

    async fn get(&self, i: usize) {
        let pk = format!("s:doc-{i}");
        match self {
            Self::Sqlite(pool, t) => {
                let q = format!("SELECT doc, rev FROM {t} WHERE pk = ? AND sk = ''");
                let row: (String, String) =
                    sqlx::query_as(sqlx::AssertSqlSafe(q)).bind(pk).fetch_one(pool).await.expect("raw get");
                let _: serde_json::Value = serde_json::from_str(&row.0).expect("json");
            }
            Self::Postgres(pool, t) => {
                let q = format!("SELECT doc, rev FROM {t} WHERE pk = $1 AND sk = ''");
                let _: (serde_json::Value, String) =
                    sqlx::query_as(sqlx::AssertSqlSafe(q)).bind(pk).fetch_one(pool).await.expect("raw get");
            }
            Self::Mongo(c) => {
                c.find_one(mongodb::bson::doc! {"_id": pk}).await.expect("raw get").expect("found");
            }
            Self::Dynamo(client, t) => {
                use aws_sdk_dynamodb::types::AttributeValue as A;
                let key = std::collections::HashMap::from([
                    ("_pk".to_owned(), A::S(pk)),
                    ("_sk".to_owned(), A::S("-".to_owned())),
                ]);
                client.get_item().table_name(t).set_key(Some(key)).consistent_read(true).send().await.expect("raw get");
            }
        }
    }
}

/// A JSON value as a DynamoDB attribute, as the backend stores documents.
fn attr(v: &serde_json::Value) -> aws_sdk_dynamodb::types::AttributeValue {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    match v {
        serde_json::Value::Null => A::Null(true),
        serde_json::Value::Bool(b) => A::Bool(*b),
        serde_json::Value::Number(n) => A::N(n.to_string()),
        serde_json::Value::String(s) => A::S(s.clone()),
        serde_json::Value::Array(a) => A::L(a.iter().map(attr).collect()),
        serde_json::Value::Object(m) => A::M(m.iter().map(|(k, v)| (k.clone(), attr(v))).collect()),
    }
}

fn dynamo_client(url: &str) -> aws_sdk_dynamodb::Client {
    let endpoint = url.split("endpoint=").nth(1).and_then(|r| r.split('&').next()).unwrap_or("http://127.0.0.1:5005");
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "bench"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// Ours and the raw client on one backend, each on a table of its own.
async fn pair(backend: &str) -> Option<(Arc<dyn Collection>, Raw, usize)> {
    let name = unique("bench");
    Some(match backend {
        "sqlite" => {
            let path = std::env::temp_dir().join(format!("{name}.db"));
            let ours = platform_docstore::open(&format!("sqlite://{}?collection={name}", path.display())).await.ok()?;
            let pool = sqlite_pool(&path).await;
            let raw_table = format!("docstore_{name}_raw");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE {raw_table} (pk VARCHAR(600) NOT NULL, sk VARCHAR(600) NOT NULL, doc TEXT NOT NULL, rev VARCHAR(64) NOT NULL, PRIMARY KEY (pk, sk))"
            )))
            .execute(&pool)
            .await
            .ok()?;
            (ours, Raw::Sqlite(pool, raw_table), 5_000)
        }
        "postgres" => {
            let url = env("POSTGRES")?;
            let ours = platform_docstore::open(&format!("{url}?collection={name}")).await.ok()?;
            let pool = sqlx::PgPool::connect(&url).await.ok()?;
            let raw_table = format!("docstore_{name}_raw");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE {raw_table} (pk VARCHAR(600) NOT NULL, sk VARCHAR(600) NOT NULL, doc JSONB NOT NULL, rev VARCHAR(64) NOT NULL, PRIMARY KEY (pk, sk))"
            )))
            .execute(&pool)
            .await
            .ok()?;
            (ours, Raw::Postgres(pool, raw_table), 5_000)
        }
        "mongodb" => {
            let url = env("MONGODB")?;
            let ours = platform_docstore::open(&format!("{url}&collection={name}")).await.ok()?;
            let client = mongodb::Client::with_uri_str(&url).await.ok()?;
            let raw = client.default_database()?.collection(&format!("{name}_raw"));
            (ours, Raw::Mongo(raw), 2_000)
        }
        "dynamodb" => {
            let url = env("DYNAMODB")?;
            let query = url.split_once('?').map_or("", |(_, q)| q);
            let ours = platform_docstore::open(&format!("dynamodb://{name}?{query}&create_table=true")).await.ok()?;
            // The raw table: made by a second handle, then used through the SDK alone.
            let raw_name = format!("{name}_raw");
            platform_docstore::open(&format!("dynamodb://{raw_name}?{query}&create_table=true")).await.ok()?;
            (ours, Raw::Dynamo(dynamo_client(&url), raw_name), 500)
        }
        _ => return None,
    })
}

async fn sqlite_pool(path: &std::path::Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    sqlx::SqlitePool::connect_with(options).await.expect("sqlite pool")
}

async fn docstore() {
    println!("| backend | documents | platform puts/s | raw puts/s | ratio | platform gets/s | raw gets/s | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    // memory has no raw client: its own figures only.
    let memory = platform_docstore::open(&format!("memory://{}", unique("bench"))).await.expect("memory");
    let n = 20_000;
    let puts = rate(n, |i| {
        let c = Arc::clone(&memory);
        async move {
            c.put(body(i)).await.expect("put");
        }
    })
    .await;
    let gets = rate(n, |i| {
        let c = Arc::clone(&memory);
        async move {
            c.get(json!({"id": format!("doc-{i}")}).as_object().cloned().unwrap_or_default()).await.expect("get");
        }
    })
    .await;
    println!("| memory | {n} | {puts:.0} | - | - | {gets:.0} | - | - |");
    for backend in ["sqlite", "postgres", "mongodb", "dynamodb"] {
        let Some((ours, raw, n)) = pair(backend).await else {
            println!("| {backend} | (server unset or down: skipped) |||||||");
            continue;
        };
        let raw = Arc::new(raw);
        let raw_puts = rate(n, |i| {
            let raw = Arc::clone(&raw);
            async move { raw.put(i).await }
        })
        .await;
        let our_puts = rate(n, |i| {
            let c = Arc::clone(&ours);
            async move {
                c.put(body(i)).await.expect("put");
            }
        })
        .await;
        let raw_gets = rate(n, |i| {
            let raw = Arc::clone(&raw);
            async move { raw.get(i).await }
        })
        .await;
        let our_gets = rate(n, |i| {
            let c = Arc::clone(&ours);
            async move {
                c.get(json!({"id": format!("doc-{i}")}).as_object().cloned().unwrap_or_default()).await.expect("get");
            }
        })
        .await;
        println!(
            "| {backend} | {n} | {our_puts:.0} | {raw_puts:.0} | {:.2} | {our_gets:.0} | {raw_gets:.0} | {:.2} |",
            our_puts / raw_puts,
            our_gets / raw_gets
        );
    }
}

/// The bench's vectors: `uniform` (every component uniform in [-1, 1): no neighbourhood
/// structure, the worst case for a graph index) or `clustered` (around 100 centres,
/// as embeddings of real text sit).
fn vector_set(kind: &str, n: usize, queries: usize, d: usize) -> (Vec<Record>, Vec<Vec<f32>>) {
    let mut rng = platform_search::testkit::Rng(0x0bad_cafe_1234_5678);
    let centres: Vec<Vec<f32>> = (0..100).map(|_| rng.vector(d)).collect();
    let mut one = |i: usize| -> Vec<f32> {
        let noise = rng.vector(d);
        match kind {
            "clustered" => centres[i % centres.len()].iter().zip(noise).map(|(c, e)| c + 0.35 * e).collect(),
            _ => noise,
        }
    };
    let records = (0..n).map(|i| Record::new(format!("v{i}"), one(i)).with("tenant", ["a", "b"][i % 2])).collect();
    let queries = (0..queries).map(|i| one(i * 7)).collect();
    (records, queries)
}

async fn vectors() {
    const N: usize = 10_000;
    const D: usize = 384;
    const QUERIES: usize = 200;
    println!("| vectors | backend | upserts/s | queries/s (k = 10) | p50 ms | p99 ms | recall@10 |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for kind in ["clustered", "uniform"] {
        let (records, queries) = vector_set(kind, N, QUERIES, D);
        let truth: Vec<Vec<String>> = queries
            .iter()
            .map(|q| {
                let mut d: Vec<(f32, &str)> =
                    records.iter().map(|r| (Metric::Cosine.distance(q, &r.vector), r.id.as_str())).collect();
                d.sort_by(|a, b| a.0.total_cmp(&b.0));
                d[..10].iter().map(|(_, id)| (*id).to_owned()).collect()
            })
            .collect();
        let name = unique(&format!("bench_{kind}"));
        let mut urls = vec![("memory", Some(format!("memory://{name}?dimensions={D}")))];
        urls.push(("pgvector", env("PGVECTOR").map(|u| format!("{u}?index={name}&dimensions={D}"))));
        urls.push((
            "chroma",
            env("CHROMA").map(|u| format!("{}/{}?dimensions={D}", u.trim_end_matches('/'), name.replace('_', "-"))),
        ));
        for (backend, url) in urls {
            let Some(url) = url else {
                println!("| {kind} | {backend} | (server unset: skipped) |||||");
                continue;
            };
            let index: Arc<dyn VectorIndex> = platform_search::open_vector(&url).await.expect("open");
            let started = Instant::now();
            for chunk in records.chunks(500) {
                index.upsert(chunk.to_vec()).await.expect("upsert");
            }
            let upserts = N as f64 / started.elapsed().as_secs_f64();
            let mut latencies = Vec::with_capacity(QUERIES);
            let mut found = 0;
            let started = Instant::now();
            for (q, want) in queries.iter().zip(&truth) {
                let t = Instant::now();
                let hits = index.query(&VectorQuery::new(q.clone(), 10)).await.expect("query");
                latencies.push(t.elapsed());
                found += hits.iter().filter(|h| want.contains(&h.id)).count();
            }
            let qps = QUERIES as f64 / started.elapsed().as_secs_f64();
            latencies.sort_unstable();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "| {kind} | {backend} | {upserts:.0} | {qps:.0} | {:.2} | {:.2} | {:.3} |",
                ms(latencies[QUERIES / 2]),
                ms(latencies[QUERIES * 99 / 100]),
                found as f64 / (QUERIES * 10) as f64
            );
        }
    }
}

fn main() {
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let all = which.is_empty();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if all || which.iter().any(|w| w == "docstore") {
        rt.block_on(docstore());
        println!();
    }
    if all || which.iter().any(|w| w == "vectors") {
        rt.block_on(vectors());
    }
}
