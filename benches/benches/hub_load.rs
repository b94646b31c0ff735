//! The WebSocket hub under load, beside the floor hub of the `hub` bench where the
//! figure has one (axum and `tokio::sync::broadcast`: no auth, history or bounds).
//!
//! - `stalled N MESSAGES RATE BYTES`: N clients on one channel, MESSAGES payloads of
//!   BYTES at RATE per second; the same with 1 % of the clients never reading. The fast
//!   clients' publish-to-receive p50/p99/max, and whether each got everything.
//! - `idle HUB N`: RSS of the serving process per idle subscribed connection (HUB is
//!   `platform` or `floor`); the clients run in a child process from 127.0.0.1-4, so
//!   only the server's memory is counted.
//! - `jitter N MESSAGES RATE EVERY DOWN`: N clients, MESSAGES at RATE per second; each
//!   client drops its socket about every EVERY seconds for about DOWN seconds and
//!   resumes with `since`. Delivery: the share of (client, message) pairs that arrived.
//!
//! `cargo bench -p platform-benches --bench hub_load -- stalled 1000 200 20 65536`

mod floor_hub;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use platform_events::hub::{Hub, HubConfig};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "bench-key-of-16-chars";

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn platform_hub(config: HubConfig) -> (Arc<Hub>, String) {
    let name = format!("memory://bench-load-{}?buffer=65536", std::process::id());
    let broadcast = platform_events::open_broadcast(&name).await.expect("broadcast");
    let hub = Hub::start(broadcast, config).await.expect("hub");
    let url = floor_hub::serve(hub.routes()).await;
    (hub, url)
}

/// A client from source address 127.0.0.`1 + i % 4`, subscribed to `bench` when
/// `subscribe` (with `since` when given).
async fn client(url: &str, i: usize, subscribe: bool, since: Option<&Value>) -> Ws {
    client_answered(url, i, subscribe, since).await.0
}

/// As [`client`], with the `subscribed` answer.
async fn client_answered(url: &str, i: usize, subscribe: bool, since: Option<&Value>) -> (Ws, Value) {
    let addr: std::net::SocketAddr = url.trim_start_matches("ws://").trim_end_matches("/ws").parse().expect("addr");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1 + (i % 4) as u8], 0))).expect("bind");
    let stream = socket.connect(addr).await.expect("connect");
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("{url}?key={KEY}"), tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .expect("handshake");
    if subscribe {
        let mut frame = json!({"op": "subscribe", "channel": "bench"});
        if let Some(since) = since {
            frame["since"] = since.clone();
        }
        ws.send(Message::Text(frame.to_string().into())).await.expect("send");
        loop {
            if let Some(Ok(Message::Text(t))) = ws.next().await {
                let answer: Value = serde_json::from_str(&t).expect("json");
                if answer["type"] == "subscribed" {
                    return (ws, answer);
                }
            } else {
                panic!("no subscribed answer");
            }
        }
    }
    (ws, Value::Null)
}

fn percentiles(mut all: Vec<f64>) -> (f64, f64, f64) {
    all.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
    };
    (pick(0.5), pick(0.99), all.last().copied().unwrap_or(f64::NAN))
}

/// Fast clients collecting latencies of `messages` payloads; stalled ones hold their
/// socket and read nothing.
async fn stalled_run(
    name: &str,
    url: &str,
    platform: bool,
    n: usize,
    stalled: usize,
    messages: usize,
    publish: impl AsyncFn(f64),
) {
    let started = Instant::now();
    let mut fast = Vec::new();
    let mut idle = Vec::new();
    for i in 0..n {
        let mut ws = client(url, i, platform, None).await;
        if i < stalled {
            idle.push(ws);
            continue;
        }
        fast.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(messages);
            while lat.len() < messages {
                let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await
                else {
                    break;
                };
                let v: Value = serde_json::from_str(&t).expect("json");
                let Some(sent) = v["data"]["t"].as_f64().or_else(|| v["t"].as_f64()) else { continue };
                lat.push(started.elapsed().as_secs_f64() * 1000.0 - sent);
            }
            lat
        }));
    }
    for _ in 0..messages {
        publish(started.elapsed().as_secs_f64() * 1000.0).await;
    }
    let lats: Vec<Vec<f64>> = futures::future::join_all(fast).await.into_iter().map(|r| r.expect("client")).collect();
    let complete = lats.iter().filter(|l| l.len() == messages).count();
    let (p50, p99, max) = percentiles(lats.into_iter().flatten().collect());
    println!(
        "{name:<24} {n:>6} {stalled:>7} {:>9.1} % {p50:>9.2} {p99:>9.2} {max:>9.2}",
        complete as f64 * 100.0 / (n - stalled) as f64
    );
    drop(idle);
}

async fn stalled(n: usize, messages: usize, rate: usize, bytes: usize) {
    println!(
        "{:<24} {:>6} {:>7} {:>11} {:>9} {:>9} {:>9}",
        "run", "subs", "stalled", "fast whole", "p50 ms", "p99 ms", "max ms"
    );
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let filler = "x".repeat(bytes);
    for stalled in [0, n / 100] {
        let (tx, _) = tokio::sync::broadcast::channel::<String>(4096);
        let url = floor_hub::floor(&tx).await;
        let publish = async |t: f64| {
            let _ = tx.send(json!({"t": t, "pad": filler}).to_string());
            tokio::time::sleep(interval).await;
        };
        stalled_run("floor", &url, false, n, stalled, messages, publish).await;
        let (hub, url) = platform_hub(HubConfig::new(KEY).expect("config").with_byte_bounds(4 << 20, 1 << 30)).await;
        let publish = async |t: f64| {
            hub.publish("bench", json!({"t": t, "pad": filler})).await.expect("publish");
            tokio::time::sleep(interval).await;
        };
        stalled_run("platform", &url, true, n, stalled, messages, publish).await;
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn idle(which: &str, n: usize) {
    let (url, hub) = if which == "floor" {
        let (tx, _) = tokio::sync::broadcast::channel::<String>(16);
        let url = floor_hub::floor(&tx).await;
        std::mem::forget(tx);
        (url, None)
    } else {
        let (hub, url) = platform_hub(HubConfig::new(KEY).expect("config")).await;
        (url, Some(hub))
    };
    // Warm: one client through and gone.
    drop(client(&url, 0, hub.is_some(), None).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib();
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .env("HUB_LOAD_CLIENTS", format!("{url} {n} {}", hub.is_some()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("client process");
    let mut out = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line).await.expect("ready line");
    assert_eq!(line.trim(), "connected", "the client process said {line:?}");
    if let Some(hub) = &hub {
        assert_eq!(hub.connections(), n, "every client is registered");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib();
    println!(
        "{which:<10} {n:>7} connections: RSS {before} KiB -> {after} KiB, {:.1} KiB per idle connection",
        (after.saturating_sub(before)) as f64 / n as f64
    );
    child.kill().await.ok();
}

/// The child of `idle`: connects, says so, then holds the sockets until killed.
async fn hold_clients(spec: &str) {
    let mut parts = spec.split(' ');
    let url = parts.next().expect("url").to_owned();
    let n: usize = parts.next().expect("n").parse().expect("n");
    let subscribe = parts.next() == Some("true");
    let held = futures::stream::iter(0..n)
        .map(|i| {
            let url = url.clone();
            async move { client(&url, i, subscribe, None).await }
        })
        .buffer_unordered(200)
        .collect::<Vec<_>>()
        .await;
    println!("connected");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    drop(held);
}

async fn jitter(n: usize, messages: usize, rate: usize, every: f64, down: f64) {
    let (hub, url) = platform_hub(HubConfig::new(KEY).expect("config")).await;
    let got = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let unrecovered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (url, got, reconnects, unrecovered) =
            (url.clone(), Arc::clone(&got), Arc::clone(&reconnects), Arc::clone(&unrecovered));
        let (mut ws, answer) = client_answered(&url, i, true, None).await;
        tasks.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            let mut since = json!({"epoch": answer["epoch"], "offset": answer["offset"]});
            // Spread the drops: each client has its own phase.
            let mut drop_at = Instant::now() + Duration::from_secs_f64(every * (0.5 + (i % 100) as f64 / 100.0));
            loop {
                let wait = drop_at.saturating_duration_since(Instant::now());
                match tokio::time::timeout(wait.min(Duration::from_secs(10)), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let v: Value = serde_json::from_str(&t).expect("json");
                        if v["type"] == "event" {
                            since = json!({"epoch": v["epoch"], "offset": v["offset"]});
                            let k = v["data"]["k"].as_u64().expect("k");
                            if seen.insert(k) {
                                got.fetch_add(1, Ordering::Relaxed);
                            }
                            if k + 1 == messages as u64 {
                                return;
                            }
                        }
                    }
                    Ok(_) => return,
                    Err(_) if Instant::now() >= drop_at => {
                        drop(ws);
                        tokio::time::sleep(Duration::from_secs_f64(down * (0.8 + (i % 5) as f64 / 10.0))).await;
                        let (again, answer) = client_answered(&url, i, true, Some(&since)).await;
                        ws = again;
                        if answer["recovered"] != true {
                            unrecovered.fetch_add(1, Ordering::Relaxed);
                        }
                        reconnects.fetch_add(1, Ordering::Relaxed);
                        drop_at = Instant::now() + Duration::from_secs_f64(every * (0.85 + (i % 30) as f64 / 100.0));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    for k in 0..messages {
        hub.publish("bench", json!({"k": k})).await.expect("publish");
        tokio::time::sleep(interval).await;
    }
    let finish = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks)).await;
    let got = got.load(Ordering::Relaxed);
    println!(
        "jitter: {n} clients, {messages} messages at {rate}/s, drops every ~{every}s for ~{down}s: {} reconnects ({} not recovered), delivered {got} of {} ({:.2} %){}",
        reconnects.load(Ordering::Relaxed),
        unrecovered.load(Ordering::Relaxed),
        n * messages,
        got as f64 * 100.0 / (n * messages) as f64,
        if finish.is_err() { ", some clients still waiting" } else { "" }
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if let Ok(spec) = std::env::var("HUB_LOAD_CLIENTS") {
        rt.block_on(hold_clients(&spec));
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let num = |i: usize, default: f64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    rt.block_on(async {
        match args.first().map(String::as_str).unwrap_or("stalled") {
            "stalled" => {
                stalled(
                    num(1, 1000.0) as usize,
                    num(2, 200.0) as usize,
                    num(3, 20.0) as usize,
                    num(4, 65536.0) as usize,
                )
                .await
            }
            "idle" => idle(args.get(1).map_or("platform", String::as_str), num(2, 10_000.0) as usize).await,
            "jitter" => {
                jitter(num(1, 1000.0) as usize, num(2, 120.0) as usize, num(3, 1.0) as usize, num(4, 15.0), num(5, 2.0))
                    .await
            }
            other => panic!("unknown run {other:?}: stalled, idle or jitter"),
        }
    });
}
