//! platform-queue beside the peers a user would pick instead, and the raw clients, on
//! the same workloads in one run: omniqueue (Redis, RabbitMQ), apalis-postgres, lapin.
//!
//! `cargo bench --manifest-path benches/peers/Cargo.toml -- [ROUNDS] [ONLY]`
//! with the servers of `scripts/services.env`. Prints one line per workload and
//! contender, the median of ROUNDS (default 3) in messages per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use platform_core::testkit::unique_name;
use platform_queue::{Message, Queue, QueueExt as _, ReceiveOptions, WorkerConfig};
use tokio_util::sync::CancellationToken;

/// 256-byte bodies, as in every queue bench of the project.
const BODY: [u8; 256] = [b'x'; 256];

fn url(name: &str) -> String {
    std::env::var(format!("PLATFORM_TEST_{name}_URL"))
        .unwrap_or_else(|_| panic!("PLATFORM_TEST_{name}_URL is unset: source scripts/services.env"))
}

async fn ours(base: &str, extra: &str) -> Arc<dyn Queue> {
    let sep = if base.contains('?') { '&' } else { '?' };
    platform_queue::open(&format!("{base}{sep}queue={}{extra}", unique_name("peer"))).await.expect("open")
}

/// Runs `f` `rounds` times and prints the median rate of `n` messages.
async fn row<F, Fut>(workload: &str, who: &str, rounds: usize, n: usize, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Duration>,
{
    let mut rates = Vec::new();
    for _ in 0..rounds {
        let took = f().await;
        rates.push(n as f64 / took.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let all: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    println!("{workload:<44} {who:<34} {:>9.0} msgs/s  ({})", rates[rates.len() / 2], all.join(", "));
}

/// omniqueue: receives `n` in batches of `batch`, acking each; timed.
async fn omni_drain(c: &mut impl omniqueue::QueueConsumer, batch: usize, n: usize) -> Duration {
    let t = Instant::now();
    let mut done = 0;
    while done < n {
        for d in c.receive_all(batch, Duration::from_secs(1)).await.expect("receive") {
            d.ack().await.map_err(|(e, _)| e).expect("ack");
            done += 1;
        }
    }
    t.elapsed()
}

// ---------------------------------------------------------------- Redis

/// `XGROUP CREATE key bench 0 MKSTREAM` over RESP: omniqueue consumes a stream with a
/// group it expects to exist.
async fn create_group(base: &str, key: &str) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let host = base.trim_start_matches("redis://").trim_end_matches('/');
    let mut conn = tokio::net::TcpStream::connect(host).await.expect("redis");
    let args = ["XGROUP", "CREATE", key, "bench", "0", "MKSTREAM"];
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    conn.write_all(cmd.as_bytes()).await.expect("write");
    let mut reply = [0u8; 64];
    let n = conn.read(&mut reply).await.expect("read");
    assert!(reply[..n].starts_with(b"+OK"), "{}", String::from_utf8_lossy(&reply[..n]));
}

async fn redis(rounds: usize) {
    const N: usize = 5_000;
    let base = url("REDIS");
    let omni = |queue: String| {
        let cfg = omniqueue::backends::RedisConfig {
            dsn: base.clone(),
            max_connections: 8,
            reinsert_on_nack: false,
            queue_key: queue.clone(),
            delayed_queue_key: format!("{queue}-delayed"),
            delayed_lock_key: format!("{queue}-lock"),
            consumer_group: "bench".into(),
            consumer_name: "bench".into(),
            payload_key: "payload".into(),
            ack_deadline_ms: 30_000,
            dlq_config: None,
            sentinel_config: None,
        };
        let base = base.clone();
        async move {
            create_group(&base, &queue).await;
            omniqueue::backends::RedisBackend::builder(cfg).build_pair().await.expect("omniqueue redis")
        }
    };
    row("redis: send one at a time", "platform-queue", rounds, N, || async {
        let q = ours(&base, "").await;
        let t = Instant::now();
        for _ in 0..N {
            q.send(Message::new(BODY.to_vec())).await.expect("send");
        }
        t.elapsed()
    })
    .await;
    row("redis: send one at a time", "omniqueue", rounds, N, || async {
        let (p, _c) = omni(unique_name("omni")).await;
        let t = Instant::now();
        for _ in 0..N {
            p.send_raw(&BODY).await.expect("send");
        }
        t.elapsed()
    })
    .await;
    for batch in [1, 100] {
        let workload = format!("redis: receive {batch} + ack each");
        row(&workload, "platform-queue", rounds, N, || async {
            let q = ours(&base, "").await;
            for _ in 0..N / 100 {
                q.send_batch((0..100).map(|_| Message::new(BODY.to_vec())).collect()).await.expect("send");
            }
            let t = Instant::now();
            let mut done = 0;
            while done < N {
                for d in q.receive(ReceiveOptions::new(batch, Duration::from_secs(1))).await.expect("receive") {
                    d.ack().await.expect("ack");
                    done += 1;
                }
            }
            t.elapsed()
        })
        .await;
        row(&workload, "omniqueue", rounds, N, || async {
            let (p, mut c) = omni(unique_name("omni")).await;
            for _ in 0..N {
                p.send_raw(&BODY).await.expect("send");
            }
            omni_drain(&mut c, batch, N).await
        })
        .await;
    }
}

// ---------------------------------------------------------------- RabbitMQ

/// Declares a durable queue of `kind` (quorum or classic) on a fresh channel.
async fn declare(conn: &lapin::Connection, queue: &str, kind: &str) -> lapin::Channel {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable};
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    let opts = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(queue.into(), opts, args).await.expect("declare");
    ch
}

/// Raw lapin: publishes `n` persistent messages in batches of `batch`, confirms
/// awaited at the end of each batch.
async fn lapin_publish(ch: &lapin::Channel, queue: &str, n: usize, batch: usize) {
    use lapin::options::BasicPublishOptions;
    for _ in 0..n / batch {
        let mut confirms = Vec::with_capacity(batch);
        for _ in 0..batch {
            let props = lapin::BasicProperties::default().with_delivery_mode(2);
            let c = ch
                .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &BODY, props)
                .await
                .expect("publish");
            confirms.push(c);
        }
        for c in confirms {
            c.await.expect("confirm");
        }
    }
}

async fn rabbitmq(rounds: usize) {
    const N: usize = 2_000;
    let base = url("RABBITMQ");
    let conn = lapin::Connection::connect(&base, lapin::ConnectionProperties::default()).await.expect("lapin");
    let conn = &conn;
    let omni = |queue: String| {
        let cfg = omniqueue::backends::RabbitMqConfig {
            uri: base.clone(),
            connection_properties: Default::default(),
            publish_exchange: String::new(),
            publish_routing_key: queue.clone(),
            publish_options: Default::default(),
            publish_properties: Default::default(),
            consume_queue: queue,
            consumer_tag: "bench".into(),
            consume_options: Default::default(),
            consume_arguments: Default::default(),
            consume_prefetch_count: Some(100),
            requeue_on_nack: false,
        };
        async move { omniqueue::backends::RabbitMqBackend::builder(cfg).build_pair().await.expect("omniqueue rabbitmq") }
    };
    for (kind, extra) in [("quorum", ""), ("classic", "&queue_type=classic")] {
        row(&format!("rabbitmq: send one at a time ({kind})"), "platform-queue", rounds, N, || async {
            let q = ours(&base, extra).await;
            let t = Instant::now();
            for _ in 0..N {
                q.send(Message::new(BODY.to_vec())).await.expect("send");
            }
            t.elapsed()
        })
        .await;
        row(&format!("rabbitmq: send one at a time, 16 senders ({kind})"), "platform-queue", rounds, N, || async {
            let q = ours(&base, extra).await;
            let t = Instant::now();
            let senders = (0..16).map(|_| {
                let q = Arc::clone(&q);
                tokio::spawn(async move {
                    for _ in 0..N / 16 {
                        q.send(Message::new(BODY.to_vec())).await.expect("send");
                    }
                })
            });
            for s in senders.collect::<Vec<_>>() {
                s.await.expect("sender");
            }
            t.elapsed()
        })
        .await;
        row(&format!("rabbitmq: send_batch of 100 ({kind})"), "platform-queue", rounds, N, || async {
            let q = ours(&base, extra).await;
            let t = Instant::now();
            for _ in 0..N / 100 {
                q.send_batch((0..100).map(|_| Message::new(BODY.to_vec())).collect()).await.expect("send");
            }
            t.elapsed()
        })
        .await;
        row(&format!("rabbitmq: send_batch of 100 ({kind})"), "lapin, confirms at batch end", rounds, N, || async {
            let queue = unique_name("raw");
            let ch = declare(conn, &queue, kind).await;
            ch.confirm_select(Default::default()).await.expect("confirms");
            let t = Instant::now();
            lapin_publish(&ch, &queue, N, 100).await;
            t.elapsed()
        })
        .await;
        for batch in [1, 100] {
            let workload = format!("rabbitmq: receive {batch} + ack ({kind})");
            row(&workload, "platform-queue (prefetch 32)", rounds, N, || async {
                let q = ours(&base, extra).await;
                for _ in 0..N / 100 {
                    q.send_batch((0..100).map(|_| Message::new(BODY.to_vec())).collect()).await.expect("send");
                }
                let t = Instant::now();
                let mut done = 0;
                while done < N {
                    let got = q.receive(ReceiveOptions::new(batch, Duration::from_secs(1))).await.expect("receive");
                    done += got.len();
                    q.ack_all(&got).await.expect("ack");
                }
                t.elapsed()
            })
            .await;
            row(&workload, "lapin push, prefetch 32, manual acks", rounds, N, || async {
                use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
                let queue = unique_name("raw");
                let ch = declare(conn, &queue, kind).await;
                ch.confirm_select(Default::default()).await.expect("confirms");
                lapin_publish(&ch, &queue, N, 100).await;
                let t = Instant::now();
                let rx = conn.create_channel().await.expect("channel");
                rx.basic_qos(32, BasicQosOptions::default()).await.expect("qos");
                let mut consumer = rx
                    .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), Default::default())
                    .await
                    .expect("consume");
                for _ in 0..N {
                    let d = consumer.next().await.expect("open").expect("delivery");
                    d.acker.ack(BasicAckOptions::default()).await.expect("ack");
                }
                t.elapsed()
            })
            .await;
            if kind == "classic" {
                row(&workload, "omniqueue (no confirms, prefetch 100)", rounds, N, || async {
                    let queue = unique_name("omni");
                    let _ch = declare(conn, &queue, "classic").await;
                    let (p, mut c) = omni(queue).await;
                    for _ in 0..N {
                        p.send_raw(&BODY).await.expect("send");
                    }
                    omni_drain(&mut c, batch, N).await
                })
                .await;
            }
        }
    }
    row("rabbitmq: send one at a time (classic)", "omniqueue (no confirms)", rounds, N, || async {
        let queue = unique_name("omni");
        let _ch = declare(conn, &queue, "classic").await;
        let (p, _c) = omni(queue).await;
        let t = Instant::now();
        for _ in 0..N {
            p.send_raw(&BODY).await.expect("send");
        }
        t.elapsed()
    })
    .await;
}

// ---------------------------------------------------------------- PostgreSQL

static HANDLED: AtomicUsize = AtomicUsize::new(0);

async fn apalis_job(_body: String) -> Result<(), apalis::prelude::BoxDynError> {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Waits until `HANDLED` reaches `n`.
async fn handled(n: usize) {
    while HANDLED.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn postgres(rounds: usize) {
    use apalis::prelude::*;
    use apalis_postgres::{Config, PostgresStorage};
    const SEND: usize = 20_000;
    const WORK: usize = 10_000;
    let base = url("POSTGRES");
    let pool = sqlx::PgPool::connect(&base).await.expect("pool");
    PostgresStorage::setup(&pool).await.expect("apalis tables");
    let body = String::from_utf8(BODY.to_vec()).expect("ascii");
    row("postgres: send 20,000 in batches of 1,000", "platform-queue", rounds, SEND, || async {
        let q = ours(&base, "").await;
        let t = Instant::now();
        for _ in 0..SEND / 1000 {
            q.send_batch((0..1000).map(|_| Message::new(BODY.to_vec())).collect()).await.expect("send");
        }
        t.elapsed()
    })
    .await;
    row("postgres: send 20,000 in batches of 1,000", "apalis-postgres push_all", rounds, SEND, || async {
        let mut storage: PostgresStorage<String> =
            PostgresStorage::new(&pool).with_config(Config::default().queue(unique_name("apalis")));
        let t = Instant::now();
        for _ in 0..SEND / 1000 {
            let mut tasks = futures::stream::iter((0..1000).map(|_| Task::new(body.clone())));
            storage.push_all(&mut tasks).await.expect("push_all");
        }
        t.elapsed()
    })
    .await;
    let configs = [
        ("platform-queue Worker, defaults", WorkerConfig::default()),
        ("platform-queue Worker, concurrency 100", WorkerConfig::default().with_concurrency(100)),
        ("platform-queue Worker, 4 and prefetch 4 (earlier defaults)", WorkerConfig::default().with_prefetch(4)),
    ];
    row(
        "postgres: Worker, no-op handler, 10,000",
        "platform-queue, receive 100 + ack_all loop",
        rounds,
        WORK,
        || async {
            let q = ours(&base, "").await;
            for _ in 0..WORK / 1000 {
                q.send_batch((0..1000).map(|_| Message::new(BODY.to_vec())).collect()).await.expect("send");
            }
            let t = Instant::now();
            let mut done = 0;
            while done < WORK {
                let got = q.receive(ReceiveOptions::new(100, Duration::from_secs(1))).await.expect("receive");
                done += got.len();
                q.ack_all(&got).await.expect("ack");
            }
            t.elapsed()
        },
    )
    .await;
    for (who, config) in configs {
        row("postgres: Worker, no-op handler, 10,000", who, rounds, WORK, || async {
            let q = ours(&base, "").await;
            for _ in 0..WORK / 1000 {
                q.send_batch((0..1000).map(|_| Message::new(BODY.to_vec())).collect()).await.expect("send");
            }
            let done = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&done);
            let handler = move |_d: Arc<platform_queue::Delivery>| {
                let counter = Arc::clone(&counter);
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            };
            let stop = CancellationToken::new();
            let t = Instant::now();
            let worker = tokio::spawn(
                platform_queue::Worker::new(Arc::clone(&q), handler).with_config(config.clone()).run(stop.clone()),
            );
            while done.load(Ordering::Relaxed) < WORK {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let took = t.elapsed();
            stop.cancel();
            worker.await.expect("join").expect("worker");
            took
        })
        .await;
    }
    row("postgres: Worker, no-op handler, 10,000", "apalis-postgres, batch 100, parallel", rounds, WORK, || async {
        let config = Config::default().queue(unique_name("apalis")).batch_size(100);
        let mut storage: PostgresStorage<String> = PostgresStorage::new(&pool).with_config(config);
        for _ in 0..WORK / 1000 {
            let mut tasks = futures::stream::iter((0..1000).map(|_| Task::new(body.clone())));
            storage.push_all(&mut tasks).await.expect("push_all");
        }
        HANDLED.store(0, Ordering::Relaxed);
        let t = Instant::now();
        let worker = WorkerBuilder::new(unique_name("w")).backend(storage).parallelize(tokio::spawn).build(apalis_job);
        let run = tokio::spawn(worker.run_until(async {
            handled(WORK).await;
            Ok::<(), std::io::Error>(())
        }));
        handled(WORK).await;
        let took = t.elapsed();
        let _ = run.await;
        took
    })
    .await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let rounds = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let only = args.get(1).cloned().unwrap_or_default();
    if "redis".contains(&only) {
        redis(rounds).await;
    }
    if "rabbitmq".contains(&only) {
        rabbitmq(rounds).await;
    }
    if "postgres".contains(&only) {
        postgres(rounds).await;
    }
}
