//! The todo service's flow as a load test (`examples/src/todo`): todos created per
//! second over HTTP and their latency, with the outbox and the hub on, beside the same
//! routes with them off (`TODO_EVENTS=false`: the same transaction, idempotency record
//! included, without the event), on SQLite and on PostgreSQL (a plain role, row-level
//! security in force). With events on, LISTENERS WebSocket clients of the workspace's
//! channel count what reaches them: events delivered per second, and the lag from a
//! todo's creation to its event's arrival (outbox, relay, bus, consumer group, hub).
//!
//! The service, the load generator (reqwest, CONCURRENCY requests in flight) and the
//! listeners share one process and the machine's cores.
//!
//! `source scripts/services.env && cargo bench -p platform-benches --bench todo_load -- [SECONDS] [CONCURRENCY] [LISTENERS]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt as _, StreamExt as _};
use platform_db::testkit::Harness as _;
use platform_examples::todo::{Settings, build, channel_of, migrations};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

struct Row {
    db: &'static str,
    events: bool,
    created: usize,
    failed: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
    listeners: usize,
    delivered: u64,
    delivery_secs: f64,
    lag: Vec<u64>,
}

fn percentile<T: Copy + Ord>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The database URL for `db` with the schema in place, and whether the service may
/// migrate it itself.
async fn database(db: &str, dir: &std::path::Path) -> Option<(String, bool)> {
    match db {
        "sqlite" => Some((format!("sqlite://{}", dir.join("todo.db").display()), true)),
        _ => {
            let pg = std::env::var("PLATFORM_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty())?;
            let harness = platform_db::testkit::UrlHarness::new(pg);
            let admin_url = harness.fresh_url().await.expect("a fresh database");
            let admin = platform_db::open(&admin_url).await.expect("open");
            platform_db::migrate::Migrator::new(migrations()).run(&admin).await.expect("migrations");
            let app = harness.restricted_url(&admin_url).await.expect("a plain role").expect("a plain role");
            Some((app, false))
        }
    }
}

async fn run(db: &'static str, events: bool, secs: u64, concurrency: usize, listeners: usize) -> Option<Row> {
    let name = format!("todo-load-{}-{db}-{events}", std::process::id());
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).expect("dir");
    let (database_url, migrate) = database(db, &dir).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let settings = Settings {
        database_url,
        events_url: format!("memory://{name}"),
        broadcast_url: format!("memory://{name}"),
        shared_ws_key: platform_core::Secret::new("a-shared-key-for-the-bench".to_owned()),
        addr: "127.0.0.1:0".into(),
        queue_url: format!("sqlite://{}?queue=exports", dir.join("jobs.db").display()),
        store_url: format!("file://{}/", dir.join("files").display()),
        notify_urls: vec![],
        public_url: base.clone(),
        jwt_signing_key: None,
        migrate_on_start: migrate,
        login_limit: 1_000_000,
        request_limit: 1_000_000,
        events,
    };
    let stop = CancellationToken::new();
    let service = build(&settings, stop.clone()).await.expect("the service");
    tokio::spawn(async move { axum::serve(listener, service.router).await });

    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("client");
    let creds = json!({"email": "load@example.com", "password": "correct horse battery"});
    let r = http.post(format!("{base}/v1/auth/register")).json(&creds).send().await.expect("register");
    assert_eq!(r.status(), 201);
    let token: Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&creds)
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("token");
    let token = token["access_token"].as_str().expect("a token").to_owned();
    let ws: Value = http
        .post(format!("{base}/v1/workspaces"))
        .bearer_auth(&token)
        .header("idempotency-key", "ws")
        .json(&json!({"name": "load"}))
        .send()
        .await
        .expect("workspace")
        .json()
        .await
        .expect("workspace");
    let ws = ws["id"].as_str().expect("id").to_owned();

    // The listeners, each subscribed before the load starts.
    let received = Arc::new(AtomicU64::new(0));
    let first_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let last_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let listening = CancellationToken::new();
    let mut listener_tasks = Vec::new();
    let n_listeners = if events { listeners } else { 0 };
    for _ in 0..n_listeners {
        let url = format!("{}/ws?access_token={token}", base.replacen("http", "ws", 1));
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
        let frame = json!({"op": "subscribe", "channel": channel_of(&ws)});
        socket.send(Message::Text(frame.to_string().into())).await.expect("subscribe");
        loop {
            let Some(Ok(Message::Text(t))) = socket.next().await else { panic!("no answer to subscribe") };
            if serde_json::from_str::<Value>(&t).expect("json")["type"] == "subscribed" {
                break;
            }
        }
        let (received, first_at, last_at, done) =
            (Arc::clone(&received), Arc::clone(&first_at), Arc::clone(&last_at), listening.clone());
        listener_tasks.push(tokio::spawn(async move {
            let mut lag = Vec::new();
            loop {
                let msg = tokio::select! {
                    () = done.cancelled() => break,
                    m = socket.next() => m,
                };
                let Some(Ok(Message::Text(t))) = msg else { break };
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["type"] != "event" {
                    continue;
                }
                let now = Instant::now();
                first_at.lock().expect("lock").get_or_insert(now);
                *last_at.lock().expect("lock") = Some(now);
                received.fetch_add(1, Ordering::Relaxed);
                if let Some(created) = v["data"]["data"]["todo"]["created_at"].as_u64() {
                    lag.push(now_ms().saturating_sub(created));
                }
            }
            lag
        }));
    }

    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let url = format!("{base}/v1/workspaces/{ws}/todos");
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        workers.push(tokio::spawn(async move {
            let (mut latencies, mut failed, mut n) = (Vec::new(), 0usize, 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("idempotency-key", format!("{w}-{n}"))
                    .json(&json!({"title": format!("load {w}-{n}")}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => latencies.push(t.elapsed()),
                    _ => failed += 1,
                }
                n += 1;
            }
            (latencies, failed)
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for w in workers {
        let (l, f) = w.await.expect("worker");
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let created = latencies.len();

    // Every event to every listener, or 60 s.
    let expected = (created * n_listeners) as u64;
    let wait = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    listening.cancel();
    let mut lag = Vec::new();
    for t in listener_tasks {
        lag.extend(t.await.expect("listener"));
    }
    lag.sort_unstable();
    let delivery_secs = match (*first_at.lock().expect("lock"), *last_at.lock().expect("lock")) {
        (Some(a), Some(b)) => (b - a).as_secs_f64().max(0.001),
        _ => 0.0,
    };
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    Some(Row {
        db,
        events,
        created,
        failed,
        secs: elapsed,
        p50: percentile(&latencies, 0.50).unwrap_or_default(),
        p99: percentile(&latencies, 0.99).unwrap_or_default(),
        listeners: n_listeners,
        delivered: received.load(Ordering::Relaxed),
        delivery_secs,
        lag,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let secs: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10);
    let concurrency: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(16);
    let listeners: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!("todo creates for {secs} s, {concurrency} in flight; {listeners} WebSocket listeners with events on");
    println!();
    println!(
        "| database | outbox + hub | creates/s | p50 ms | p99 ms | failed | listeners | events delivered | delivered/s | lag p50 ms | lag p99 ms |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut by_db: Vec<(&str, f64, f64)> = Vec::new();
    for db in ["sqlite", "postgres"] {
        let mut rates = [0.0f64; 2];
        for events in [false, true] {
            let Some(row) = rt.block_on(run(db, events, secs, concurrency, listeners)) else {
                println!("| {db} | (PLATFORM_TEST_POSTGRES_URL unset: skipped) |||||||||");
                break;
            };
            let rate = row.created as f64 / row.secs;
            rates[usize::from(events)] = rate;
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let (delivered, per_sec, lag50, lag99) = if row.events {
                let expected = (row.created * row.listeners) as u64;
                (
                    format!(
                        "{} of {} ({:.1} %)",
                        row.delivered,
                        expected,
                        100.0 * row.delivered as f64 / expected.max(1) as f64
                    ),
                    format!("{:.0}", row.delivered as f64 / row.delivery_secs.max(0.001)),
                    percentile(&row.lag, 0.50).map_or("-".into(), |v| v.to_string()),
                    percentile(&row.lag, 0.99).map_or("-".into(), |v| v.to_string()),
                )
            } else {
                ("-".into(), "-".into(), "-".into(), "-".into())
            };
            println!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |",
                row.db,
                if row.events { "on" } else { "off" },
                rate,
                ms(row.p50),
                ms(row.p99),
                row.failed,
                row.listeners,
                delivered,
                per_sec,
                lag50,
                lag99
            );
        }
        if rates[0] > 0.0 && rates[1] > 0.0 {
            by_db.push((db, rates[1], rates[0]));
        }
    }
    println!();
    for (db, on, off) in by_db {
        println!("{db}: creates with outbox + hub / without = {:.2}", on / off);
    }
}
