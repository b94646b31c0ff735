//! platform-events' broadcast beside the raw client on each backend, same run: one
//! publisher sends N 256-byte payloads one at a time on one channel; one subscriber
//! (a `>` pattern on another connection) receives them; timed until the last arrived.
//!
//! `source scripts/services.env && cargo bench -p platform-benches --bench broadcast -- [ROUNDS]`
//! prints the median of ROUNDS (default 3) per row, in messages per second.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use platform_core::testkit::unique_ident;
use platform_events::Received;

const N: usize = 20_000;
const BODY: [u8; 256] = [b'x'; 256];

/// Publishes N through platform-events at `base` and waits for them on a subscription.
async fn ours(base: &str) -> Duration {
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}buffer=65536");
    let (publisher, subscriber) = (
        platform_events::open_broadcast(&url).await.expect("open"),
        platform_events::open_broadcast(&url).await.expect("open"),
    );
    let prefix = unique_ident("bench");
    let mut sub = subscriber.subscribe(&format!("{prefix}.>")).await.expect("subscribe");
    let channel = format!("{prefix}.events");
    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            match sub.recv().await {
                Some(Received::Message(_)) => n += 1,
                other => panic!("after {n}: {other:?}"),
            }
        }
    });
    for _ in 0..N {
        publisher.publish(&channel, Bytes::from_static(&BODY)).await.expect("publish");
    }
    receiver.await.expect("receiver");
    started.elapsed()
}

/// The same through a `tokio::sync::broadcast` channel.
async fn raw_memory() -> Duration {
    let (tx, mut rx) = tokio::sync::broadcast::channel::<(std::sync::Arc<str>, Bytes)>(65_536);
    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        for _ in 0..N {
            rx.recv().await.expect("recv");
        }
    });
    let channel: std::sync::Arc<str> = "bench.events".into();
    for _ in 0..N {
        tx.send((std::sync::Arc::clone(&channel), Bytes::from_static(&BODY))).expect("send");
    }
    receiver.await.expect("receiver");
    started.elapsed()
}

/// The same with the redis client: PUBLISH awaited one by one, PSUBSCRIBE.
async fn raw_redis(base: &str) -> Duration {
    let client = redis::Client::open(base).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("conn");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    let prefix = unique_ident("bench");
    pubsub.psubscribe(format!("{prefix}.*")).await.expect("psubscribe");
    let channel = format!("{prefix}.events");
    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        for _ in 0..N {
            messages.next().await.expect("message");
        }
    });
    for _ in 0..N {
        let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(&BODY[..]).query_async(&mut conn).await.expect("publish");
    }
    receiver.await.expect("receiver");
    started.elapsed()
}

/// The same with async-nats: publish and flush one by one, a `>` subscription.
async fn raw_nats(base: &str) -> Duration {
    let (publisher, subscriber) =
        (async_nats::connect(base).await.expect("nats"), async_nats::connect(base).await.expect("nats"));
    let prefix = unique_ident("bench");
    let mut sub = subscriber.subscribe(format!("{prefix}.>")).await.expect("subscribe");
    subscriber.flush().await.expect("flush");
    let channel = format!("{prefix}.events");
    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        for _ in 0..N {
            sub.next().await.expect("message");
        }
    });
    for _ in 0..N {
        publisher.publish(channel.clone(), Bytes::from_static(&BODY)).await.expect("publish");
        publisher.flush().await.expect("flush");
    }
    receiver.await.expect("receiver");
    started.elapsed()
}

/// The same with sqlx: `pg_notify` one by one (the payload base64 in the
/// notification), `LISTEN` on another connection.
async fn raw_postgres(base: &str) -> Duration {
    use base64::Engine as _;
    let pool = sqlx::PgPool::connect(base).await.expect("pool");
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await.expect("listener");
    let namespace = unique_ident("bench");
    listener.listen(&namespace).await.expect("listen");
    let notice = format!("ibench.events:{}", base64::engine::general_purpose::STANDARD.encode(BODY));
    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        for _ in 0..N {
            listener.recv().await.expect("notification");
        }
    });
    for _ in 0..N {
        sqlx::query("SELECT pg_notify($1, $2)").bind(&namespace).bind(&notice).execute(&pool).await.expect("notify");
    }
    receiver.await.expect("receiver");
    started.elapsed()
}

/// `PLATFORM_TEST_<NAME>_URL`, when set.
fn url(name: &str) -> Option<String> {
    std::env::var(format!("PLATFORM_TEST_{name}_URL")).ok().filter(|u| !u.is_empty())
}

fn row(rounds: usize, label: &str, mut run: impl FnMut() -> Duration) {
    let mut rates: Vec<f64> = (0..rounds).map(|_| N as f64 / run().as_secs_f64()).collect();
    rates.sort_by(f64::total_cmp);
    let all: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    println!("{label:<34} {:>10.0} msgs/s  ({})", rates[rates.len() / 2], all.join(", "));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let rounds = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    row(rounds, "memory", || rt.block_on(ours("memory://bench")));
    row(rounds, "memory raw (tokio broadcast)", || rt.block_on(raw_memory()));
    if let Some(u) = url("REDIS") {
        row(rounds, "redis", || rt.block_on(ours(&u)));
        row(rounds, "redis raw (redis-rs pub/sub)", || rt.block_on(raw_redis(&u)));
    }
    if let Some(u) = url("NATS") {
        row(rounds, "nats", || rt.block_on(ours(&u)));
        row(rounds, "nats raw (async-nats core)", || rt.block_on(raw_nats(&u)));
    }
    if let Some(u) = url("POSTGRES") {
        let ns = format!("namespace={}", unique_ident("bench"));
        let sep = if u.contains('?') { '&' } else { '?' };
        row(rounds, "postgres", || rt.block_on(ours(&format!("{u}{sep}{ns}"))));
        row(rounds, "postgres raw (sqlx NOTIFY/LISTEN)", || rt.block_on(raw_postgres(&u)));
    }
}
