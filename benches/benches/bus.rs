//! The event bus beside platform-queue doing the same fan-out by hand, same run: three
//! groups follow one topic; a publisher sends N events (one per publish, or 100 per
//! publish) while three consumers, one per group, receive 100 at a time and ack them
//! in batches; timed from the first publish until every group acked all N. The queue
//! side does by hand what the bus promises: encodes each envelope, sends it to three
//! queues with its id as dedup key, decodes it on receipt. So the ratio is what the bus
//! layer itself costs (the group registry read per publish, the headers, the fan-out);
//! `benches/queue.rs` puts each queue beside its raw client.
//!
//! `source scripts/services.env && cargo bench -p platform-benches --bench bus -- [ROUNDS] [BACKEND]`
//! prints the median of ROUNDS (default 3) per row, in events delivered per second
//! (N × 3 groups over the time). Then the outbox relay: 20,000 staged rows relayed
//! from SQLite and PostgreSQL to each bus, rows per second (`BACKEND` = `relay` for
//! those rows alone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use platform_core::Envelope;
use platform_core::testkit::unique_ident;
use platform_events::{EventBus, Group};
use platform_queue::{Delivery, Message, Queue, ReceiveOptions};

const GROUPS: usize = 3;

fn event(i: usize) -> Envelope {
    Envelope::raw("bench.happened", "1", serde_json::json!({ "n": i, "note": "x".repeat(64) }))
}

async fn drain_group(group: Group, n: usize) {
    let mut done = 0;
    while done < n {
        let got = group.receive(100, Duration::from_millis(200)).await.expect("receive");
        done += got.len();
        let deliveries: Vec<Delivery> = got.into_iter().map(|d| d.into_parts().1).collect();
        Delivery::ack_all(&deliveries).await.expect("ack");
    }
}

/// N events through the bus at `url`, `batch` per publish.
async fn ours(url: &str, n: usize, batch: usize) -> Duration {
    let bus: Arc<dyn EventBus> = platform_events::open_bus(url).await.expect("open");
    let mut consumers = Vec::new();
    let mut groups = Vec::new();
    for g in 0..GROUPS {
        groups.push(bus.subscribe("bench.>", &format!("g{g}")).await.expect("subscribe"));
    }
    let events: Vec<Envelope> = (0..n).map(event).collect();
    let started = Instant::now();
    for group in groups {
        consumers.push(tokio::spawn(drain_group(group, n)));
    }
    for chunk in events.chunks(batch) {
        bus.publish("bench.topic", chunk.to_vec()).await.expect("publish");
    }
    for c in consumers {
        c.await.expect("consumer");
    }
    let took = started.elapsed();
    bus.close().await.expect("close");
    took
}

async fn drain_queue(queue: Arc<dyn Queue>, n: usize) {
    let mut done = 0;
    while done < n {
        let got = queue.receive(ReceiveOptions::new(100, Duration::from_millis(200))).await.expect("receive");
        for d in &got {
            Envelope::from_json(d.body()).expect("an envelope");
        }
        done += got.len();
        Delivery::ack_all(&got).await.expect("ack");
    }
}

/// The same fan-out with platform-queue alone: three queues, each event encoded, sent to
/// each with its id as the dedup key where the queue has dedup (as the bus does, so a
/// retried publish adds no copies), and decoded on receipt.
async fn queue_by_hand(base: &str, n: usize, batch: usize) -> Duration {
    let sep = if base.contains('?') { '&' } else { '?' };
    let prefix = unique_ident("bq");
    let mut queues = Vec::new();
    for g in 0..GROUPS {
        let url = format!("{base}{sep}queue={prefix}.g{g}");
        queues.push(platform_queue::open(&url).await.expect("open"));
    }
    // Where the queue has dedup (the bus uses it where it is).
    let dedup = queues[0].capabilities().dedup;
    let events: Vec<Envelope> = (0..n).map(event).collect();
    let started = Instant::now();
    let consumers: Vec<_> = queues.iter().map(|q| tokio::spawn(drain_queue(Arc::clone(q), n))).collect();
    for chunk in events.chunks(batch) {
        let messages: Vec<Message> = chunk
            .iter()
            .map(|e| {
                let m = Message::new(e.to_json().expect("json"));
                if dedup { m.with_dedup_key(e.event_id.to_string()) } else { m }
            })
            .collect();
        let sends = queues.iter().map(|q| q.send_batch(messages.clone()));
        futures::future::try_join_all(sends).await.expect("send");
    }
    for c in consumers {
        c.await.expect("consumer");
    }
    let took = started.elapsed();
    for q in queues {
        q.close().await.expect("close");
    }
    took
}

/// The outbox relay: `n` rows staged in the database at `db` (transactions of 1,000),
/// then relayed to the bus at `bus_url` (one group following the topic) in claims of
/// 500; timed from the first claim until every row is marked sent.
async fn relay(db_url: &str, bus_url: &str, n: usize) -> Duration {
    use platform_db::testkit::Harness as _;
    let url = platform_db::testkit::UrlHarness::new(db_url).fresh_url().await.expect("database");
    let db = platform_db::open(&url).await.expect("open");
    platform_db::migrate::Migrator::new(vec![platform_db::outbox::migration(1)]).run(&db).await.expect("migrate");
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut tx = db.begin().await.expect("begin");
        for i in chunk {
            platform_events::relay::stage(&mut tx, "bench.topic", &event(*i)).await.expect("stage");
        }
        tx.commit().await.expect("commit");
    }
    let bus = platform_events::open_bus(bus_url).await.expect("bus");
    bus.subscribe("bench.>", "sink").await.expect("subscribe");
    let config = platform_events::relay::RelayConfig::default().with_batch(500);
    let relay = platform_events::relay::Relay::new(db.clone(), Arc::clone(&bus), config);
    let started = Instant::now();
    let mut sent = 0;
    while sent < n as u64 {
        sent += relay.run_once().await.expect("relay").published;
    }
    let took = started.elapsed();
    bus.close().await.expect("close");
    db.close().await;
    took
}

fn rate(n: usize, took: Duration) -> f64 {
    (n * GROUPS) as f64 / took.as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let rounds: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(3);
    let only: Option<&String> = args.iter().find(|a| a.parse::<usize>().is_err());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let sqlite = std::env::temp_dir().join(format!("platform-bench-bus-{}.db", std::process::id()));
    let mut backends: Vec<(&str, String, usize)> = vec![
        ("memory", "memory://bench".to_owned(), 100_000),
        ("sqlite", format!("sqlite://{}", sqlite.display()), 5_000),
    ];
    for (name, var, n) in [
        ("postgres", "PLATFORM_TEST_POSTGRES_URL", 5_000),
        ("redis", "PLATFORM_TEST_REDIS_URL", 5_000),
        ("nats", "PLATFORM_TEST_NATS_URL", 5_000),
        ("rabbitmq", "PLATFORM_TEST_RABBITMQ_URL", 5_000),
        ("kafka", "PLATFORM_TEST_KAFKA_URL", 5_000),
    ] {
        match std::env::var(var) {
            Ok(url) => backends.push((name, url, n)),
            Err(_) => eprintln!("{var} unset: {name} left out (source scripts/services.env)"),
        }
    }
    println!("{:<10} {:>6} {:>14} {:>14} {:>7}", "backend", "batch", "bus ev/s", "queue ev/s", "ratio");
    for (name, base, n) in &backends {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        for batch in [1, 100] {
            // Batch 1 sends one event per round trip: fewer events keep the run short.
            let n = if batch == 1 { (*n / 5).max(1000) } else { *n };
            let (mut bus, mut queue) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}namespace={}", unique_ident("bench"));
                bus.push(rate(n, rt.block_on(ours(&url, n, batch))));
                queue.push(rate(n, rt.block_on(queue_by_hand(base, n, batch))));
            }
            bus.sort_by(f64::total_cmp);
            queue.sort_by(f64::total_cmp);
            let (b, q) = (bus[rounds / 2], queue[rounds / 2]);
            println!("{name:<10} {batch:>6} {b:>14.0} {q:>14.0} {:>7.2}", b / q);
        }
    }
    if only.is_none_or(|o| o == "relay") {
        relays(&rt, rounds, &sqlite);
    }
    let _ = std::fs::remove_file(&sqlite);
}

/// The relay rows: from PostgreSQL (and SQLite) to each bus this run can reach.
fn relays(rt: &tokio::runtime::Runtime, rounds: usize, sqlite: &std::path::Path) {
    const N: usize = 20_000;
    let dir = sqlite.parent().expect("temp dir").display().to_string();
    let mut dbs = vec![("sqlite", format!("sqlite://{dir}"))];
    dbs.extend(std::env::var("PLATFORM_TEST_POSTGRES_URL").ok().map(|u| ("postgres", u)));
    let mut buses = vec![("memory", "memory://relay".to_owned()), ("sqlite", format!("sqlite://{}", sqlite.display()))];
    for (name, var) in [
        ("postgres", "PLATFORM_TEST_POSTGRES_URL"),
        ("redis", "PLATFORM_TEST_REDIS_URL"),
        ("nats", "PLATFORM_TEST_NATS_URL"),
        ("rabbitmq", "PLATFORM_TEST_RABBITMQ_URL"),
        ("kafka", "PLATFORM_TEST_KAFKA_URL"),
    ] {
        buses.extend(std::env::var(var).ok().map(|u| (name, u)));
    }
    println!("\n{:<10} {:<10} {:>14}", "outbox in", "bus", "relayed ev/s");
    for (db_name, db_url) in &dbs {
        for (bus_name, bus_url) in &buses {
            let mut rates: Vec<f64> = (0..rounds)
                .map(|_| {
                    let sep = if bus_url.contains('?') { '&' } else { '?' };
                    let url = format!("{bus_url}{sep}namespace={}", unique_ident("relay"));
                    N as f64 / rt.block_on(relay(db_url, &url, N)).as_secs_f64()
                })
                .collect();
            rates.sort_by(f64::total_cmp);
            println!("{db_name:<10} {bus_name:<10} {:>14.0}", rates[rounds / 2]);
        }
    }
}
