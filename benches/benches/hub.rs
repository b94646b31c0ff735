//! The WebSocket hub beside the floor: a minimal hub written here with axum and
//! `tokio::sync::broadcast` (no auth, no history, no resume, no bounds), same run, same
//! clients (tokio-tungstenite, in this process).
//!
//! Fan-out of one channel to SUBSCRIBERS clients: MESSAGES messages published at RATE per
//! second, each stamped with its send time; publish-to-receive latency over every
//! delivery, p50, p99 and max, and whether every client got every message.
//!
//! `cargo bench -p platform-benches --bench hub -- [SUBSCRIBERS] [MESSAGES] [RATE]`
//! (defaults 1000, 100, 10).

mod floor_hub;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use platform_events::hub::{Hub, HubConfig};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "bench-key-of-16-chars";

/// Connects `n` clients (subscribing when `subscribe`), then returns their receive
/// tasks: each collects the latency of `messages` deliveries.
async fn clients(
    url: &str,
    n: usize,
    messages: usize,
    subscribe: bool,
    started: Arc<Instant>,
) -> Vec<tokio::task::JoinHandle<Vec<f64>>> {
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?key={KEY}")).await.expect("connect");
        if subscribe {
            ws.send(Message::Text(json!({"op": "subscribe", "channel": "bench"}).to_string().into()))
                .await
                .expect("send");
            let _subscribed = ws.next().await;
        }
        let started = Arc::clone(&started);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(messages);
            while lat.len() < messages {
                let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await
                else {
                    break;
                };
                let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                let sent = v["data"]["t"].as_f64().or_else(|| v["t"].as_f64()).expect("t");
                lat.push(started.elapsed().as_secs_f64() * 1000.0 - sent);
            }
            lat
        }));
    }
    tasks
}

/// CPU seconds this process has used (clients and server: they share it), from
/// `/proc/self/stat` in clock ticks of 10 ms.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

fn report(name: &str, n: usize, messages: usize, lats: Vec<Vec<f64>>, cpu: f64) {
    let delivered: usize = lats.iter().map(Vec::len).sum();
    let mut all: Vec<f64> = lats.into_iter().flatten().collect();
    all.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
    };
    println!(
        "{name:<8} {n:>6} {:>9.1} % {:>9.3} {:>9.3} {:>9.3} {cpu:>9.2}",
        delivered as f64 * 100.0 / (n * messages) as f64,
        pick(0.5),
        pick(0.99),
        all.last().copied().unwrap_or(f64::NAN)
    );
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (n, messages, rate) = (
        args.first().copied().unwrap_or(1000),
        args.get(1).copied().unwrap_or(100),
        args.get(2).copied().unwrap_or(10),
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!(
        "{:<8} {:>6} {:>11} {:>9} {:>9} {:>9} {:>9}",
        "hub", "subs", "delivered", "p50 ms", "p99 ms", "max ms", "cpu s"
    );
    rt.block_on(async {
        let started = Arc::new(Instant::now());
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        // The floor.
        let (tx, _) = tokio::sync::broadcast::channel::<String>(4096);
        let url = floor_hub::floor(&tx).await;
        let tasks = clients(&url, n, messages, false, Arc::clone(&started)).await;
        let cpu = cpu_secs();
        for _ in 0..messages {
            let _ = tx.send(json!({"t": started.elapsed().as_secs_f64() * 1000.0}).to_string());
            tokio::time::sleep(interval).await;
        }
        let lats = futures::future::join_all(tasks).await.into_iter().map(|r| r.expect("client")).collect();
        report("floor", n, messages, lats, cpu_secs() - cpu);
        // The floor's connections end, so their sockets are not held through the next run.
        let _ = tx.send(floor_hub::BYE.to_owned());
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Ours, over the memory broadcast.
        let broadcast = platform_events::open_broadcast("memory://bench-hub?buffer=4096").await.expect("broadcast");
        let hub = Hub::start(broadcast, HubConfig::new(KEY).expect("config")).await.expect("hub");
        let url = floor_hub::serve(hub.routes()).await;
        let tasks = clients(&url, n, messages, true, Arc::clone(&started)).await;
        let cpu = cpu_secs();
        for _ in 0..messages {
            hub.publish("bench", json!({"t": started.elapsed().as_secs_f64() * 1000.0})).await.expect("publish");
            tokio::time::sleep(interval).await;
        }
        let lats = futures::future::join_all(tasks).await.into_iter().map(|r| r.expect("client")).collect();
        report("platform", n, messages, lats, cpu_secs() - cpu);
    });
}
