//! The same workload on every queue backend and on the raw clients, in one run:
//! a producer sends N 256-byte messages in batches of B (1 or 100) while 4 consumers
//! receive up to B at a time and ack each message; one iteration ends when all N
//! were acked. Throughput is messages consumed per second.
//!
//! Server URLs come from `PLATFORM_TEST_<NAME>_URL` (`source scripts/services.env`);
//! a backend whose URL is unset is left out.
//!
//! `cargo bench -p platform-benches --bench queue`

#![allow(missing_docs)]

mod common;
mod cpu;
mod raw_sql;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Done, runtime, timed, url};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use platform_core::testkit::unique_name;
use platform_queue::{Message, Queue, QueueExt, ReceiveOptions};

const N: usize = 2000;
const CONSUMERS: usize = 4;
const BODY: [u8; 256] = [b'x'; 256];

/// One iteration of the workload through the `Queue` trait. With `prefill`, the
/// messages are sent first and only their consumption is timed.
async fn through_queue(queue: Arc<dyn Queue>, batch: usize, prefill: bool) -> Duration {
    if prefill {
        for _ in 0..N / 100 {
            queue.send_batch((0..100).map(|_| Message::new(&BODY[..])).collect()).await.expect("prefill");
        }
    }
    let started = Instant::now();
    let done = Done::new(N);
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (queue, done) = (Arc::clone(&queue), Arc::clone(&done));
            tokio::spawn(async move {
                while done.more() {
                    let options = ReceiveOptions::new(batch, Duration::from_millis(20));
                    let Some(got) = done.or_done(queue.receive(options)).await else { break };
                    let got = got.expect("receive");
                    queue.ack_all(&got).await.expect("ack");
                    done.add(got.len());
                }
            })
        })
        .collect();
    for _ in 0..if prefill { 0 } else { N / batch } {
        let messages = (0..batch).map(|_| Message::new(&BODY[..])).collect();
        queue.send_batch(messages).await.expect("send");
    }
    for c in consumers {
        c.await.expect("consumer");
    }
    started.elapsed()
}

/// The raw Redis client: LPUSH, then LMOVE to a processing list and LREM to ack
/// (the usual reliable-list pattern, with no lease, attempts or dead letters).
async fn raw_redis(conn: redis::aio::MultiplexedConnection, batch: usize) -> Duration {
    let key = unique_name("raw");
    let processing = format!("{key}:processing");
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (mut conn, done, key, processing) = (conn.clone(), Arc::clone(&done), key.clone(), processing.clone());
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < N {
                    let mut pipe = redis::pipe();
                    for _ in 0..batch {
                        pipe.cmd("LMOVE").arg(&key).arg(&processing).arg("RIGHT").arg("LEFT");
                    }
                    let got: Vec<Option<Vec<u8>>> = pipe.query_async(&mut conn).await.expect("lmove");
                    let got: Vec<Vec<u8>> = got.into_iter().flatten().collect();
                    if got.is_empty() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let mut acks = redis::pipe();
                    for body in &got {
                        acks.cmd("LREM").arg(&processing).arg(1).arg(body.as_slice()).ignore();
                    }
                    let () = acks.query_async(&mut conn).await.expect("lrem");
                    done.fetch_add(got.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut conn = conn;
    push_raw_list(&mut conn, &key, batch).await;
    for c in consumers {
        c.await.expect("consumer");
    }
    started.elapsed()
}

/// The producer of both raw list loops: N messages in batches of `batch`, one `LPUSH` each.
async fn push_raw_list(conn: &mut redis::aio::MultiplexedConnection, key: &str, batch: usize) {
    for _ in 0..N / batch {
        let mut cmd = redis::cmd("LPUSH");
        cmd.arg(key);
        for _ in 0..batch {
            cmd.arg(&BODY[..]);
        }
        let _: i64 = cmd.query_async(conn).await.expect("lpush");
    }
}

/// The raw Redis client with the guarantees of a work queue: a stream and one
/// consumer group (`XADD`; `XREADGROUP` leaves each message in the group's pending
/// list, with its delivery count, until `XACK`; then `XDEL`), the usual at-least-once
/// pattern on Redis. No delay, dead letters or fencing token.
async fn raw_redis_streams(conn: redis::aio::MultiplexedConnection, batch: usize) -> Duration {
    let key = unique_name("raw-stream");
    let mut setup = conn.clone();
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("workers")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut setup)
        .await
        .expect("xgroup");
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|i| {
            let (mut conn, done, key) = (conn.clone(), Arc::clone(&done), key.clone());
            tokio::spawn(async move {
                let me = format!("c{i}");
                while done.load(Ordering::Relaxed) < N {
                    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg("workers")
                        .arg(&me)
                        .arg("COUNT")
                        .arg(batch)
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(">")
                        .query_async(&mut conn)
                        .await
                        .expect("xreadgroup");
                    let ids: Vec<String> = reply.keys.into_iter().flat_map(|k| k.ids).map(|m| m.id).collect();
                    if ids.is_empty() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let mut acks = redis::pipe();
                    acks.cmd("XACK").arg(&key).arg("workers").arg(&ids).ignore();
                    acks.cmd("XDEL").arg(&key).arg(&ids).ignore();
                    let () = acks.query_async(&mut conn).await.expect("xack");
                    done.fetch_add(ids.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut conn = conn;
    for _ in 0..N / batch {
        let mut pipe = redis::pipe();
        for _ in 0..batch {
            pipe.cmd("XADD").arg(&key).arg("*").arg("b").arg(&BODY[..]).ignore();
        }
        let () = pipe.query_async(&mut conn).await.expect("xadd");
    }
    for c in consumers {
        c.await.expect("consumer");
    }
    let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.expect("del");
    started.elapsed()
}

/// The raw Redis client with a lease per receive, on lists: `LPUSH` to a ready list; a
/// receive moves up to B messages to a processing list of its own and adds its lease
/// (token, end) to a sorted set, in one `MULTI`/`EXEC` of plain commands; an ack of the
/// whole receive is one script that checks the lease still holds and deletes the list
/// and the lease. The Redis backend keeps this layout (with attempts, delays, single
/// acks and the moving back of lapsed receives). Not complete: nothing here moves an expired receive's list
/// back (a script run when the sorted set has a lease due would), and there are no
/// attempts, delay or dead letters.
async fn raw_redis_leased_lists(conn: redis::aio::MultiplexedConnection, batch: usize) -> Duration {
    static ACK: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(
            "if (tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1])) or 0) <= tonumber(ARGV[2]) then return 0 end
             redis.call('DEL', KEYS[1]) redis.call('ZREM', KEYS[2], ARGV[1]) return 1",
        )
    });
    let key = unique_name("raw-leased-lists");
    let leases = format!("{key}:leases");
    let next = Arc::new(AtomicUsize::new(0));
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (mut conn, done, key, leases, next) =
                (conn.clone(), Arc::clone(&done), key.clone(), leases.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < N {
                    let token = next.fetch_add(1, Ordering::Relaxed).to_string();
                    let held = format!("{key}:held:{token}");
                    let mut pipe = redis::pipe();
                    pipe.atomic();
                    for _ in 0..batch {
                        pipe.cmd("LMOVE").arg(&key).arg(&held).arg("RIGHT").arg("LEFT");
                    }
                    pipe.cmd("ZADD").arg(&leases).arg(now() + 30_000).arg(&token).ignore();
                    let got: Vec<Option<Vec<u8>>> = pipe.query_async(&mut conn).await.expect("claim");
                    let n = got.iter().flatten().count();
                    if n == 0 {
                        let _: i64 =
                            redis::cmd("ZREM").arg(&leases).arg(&token).query_async(&mut conn).await.expect("zrem");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let acked: i64 =
                        ACK.key(&held).key(&leases).arg(&token).arg(now()).invoke_async(&mut conn).await.expect("ack");
                    assert_eq!(acked, 1, "the lease held");
                    done.fetch_add(n, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut conn = conn;
    push_raw_list(&mut conn, &key, batch).await;
    for c in consumers {
        c.await.expect("consumer");
    }
    let _: i64 = redis::cmd("DEL").arg(&key).arg(&leases).query_async(&mut conn).await.expect("del");
    started.elapsed()
}

/// The raw sqlx client on Postgres: INSERT (UNNEST for batches), then
/// `DELETE … FOR UPDATE SKIP LOCKED RETURNING` to take messages (no lease: a crash
/// mid-job loses the message).
async fn raw_postgres(pool: sqlx::PgPool, batch: usize) -> Duration {
    let queue = unique_name("raw");
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (pool, done, queue) = (pool.clone(), Arc::clone(&done), queue.clone());
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < N {
                    let got: Vec<(Vec<u8>,)> = sqlx::query_as(
                        "DELETE FROM bench_raw_queue WHERE id = ANY(ARRAY(SELECT id FROM bench_raw_queue WHERE queue = $1
                         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)) RETURNING body",
                    )
                    .bind(&queue)
                    .bind(batch as i64)
                    .fetch_all(&pool)
                    .await
                    .expect("take");
                    if got.is_empty() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    done.fetch_add(got.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    let sql = "INSERT INTO bench_raw_queue (queue, body) SELECT $1, b FROM UNNEST($2::bytea[]) AS t(b)";
    send_raw_postgres(&pool, sql, &queue, batch, None).await;
    for c in consumers {
        c.await.expect("consumer");
    }
    started.elapsed()
}

/// The producer of both raw Postgres loops: N messages in batches of `batch`, one
/// `INSERT … UNNEST` each; `visible_at` is bound as `$3` when given.
async fn send_raw_postgres(pool: &sqlx::PgPool, sql: &'static str, queue: &str, batch: usize, visible_at: Option<i64>) {
    for _ in 0..N / batch {
        let bodies: Vec<Vec<u8>> = (0..batch).map(|_| BODY.to_vec()).collect();
        let mut insert = sqlx::query(sql).bind(queue).bind(&bodies);
        if let Some(at) = visible_at {
            insert = insert.bind(at);
        }
        insert.execute(pool).await.expect("insert");
    }
}

/// The raw sqlx client on Postgres with a lease, the usual reliable SQL queue: a claim
/// is `UPDATE … SET visible_at = lease end, attempts = attempts + 1 … FOR UPDATE SKIP
/// LOCKED RETURNING` (a crashed consumer's messages come back when the lease ends), an
/// ack `DELETE … WHERE id = ANY(…)`. No fencing token, delay or dead letters.
async fn raw_postgres_leased(pool: sqlx::PgPool, batch: usize) -> Duration {
    let queue = unique_name("raw");
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (pool, done, queue) = (pool.clone(), Arc::clone(&done), queue.clone());
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < N {
                    let t = now();
                    let got: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                        "UPDATE bench_raw_leased m SET visible_at = $3, attempts = m.attempts + 1
                         WHERE m.id = ANY(ARRAY(SELECT id FROM bench_raw_leased WHERE queue = $1 AND visible_at <= $4
                               ORDER BY visible_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)) RETURNING m.id, m.body",
                    )
                    .bind(&queue)
                    .bind(batch as i64)
                    .bind(t + 30_000)
                    .bind(t)
                    .fetch_all(&pool)
                    .await
                    .expect("claim");
                    if got.is_empty() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let ids: Vec<i64> = got.iter().map(|(id, _)| *id).collect();
                    sqlx::query("DELETE FROM bench_raw_leased WHERE id = ANY($1)")
                        .bind(&ids)
                        .execute(&pool)
                        .await
                        .expect("ack");
                    done.fetch_add(got.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    let sql =
        "INSERT INTO bench_raw_leased (queue, body, visible_at) SELECT $1, b, $3 FROM UNNEST($2::bytea[]) AS t(b)";
    send_raw_postgres(&pool, sql, &queue, batch, Some(now())).await;
    for c in consumers {
        c.await.expect("consumer");
    }
    started.elapsed()
}

/// The raw async-nats client: JetStream publish (awaiting each ack), pull fetch, ack
/// each message; a fresh work-queue stream per iteration.
async fn raw_nats(client: async_nats::Client, batch: usize) -> Duration {
    use async_nats::jetstream::{self, consumer::pull, stream};
    use futures::StreamExt;
    let js = jetstream::new(client);
    let name = unique_name("RAW").replace('-', "_");
    let subject = format!("raw.{name}");
    let s = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer: jetstream::consumer::PullConsumer = s
        .create_consumer(pull::Config { durable_name: Some("w".into()), max_ack_pending: -1, ..Default::default() })
        .await
        .expect("consumer");
    let started = Instant::now();
    let done = Done::new(N);
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (consumer, done) = (consumer.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                while done.more() {
                    // `expires`: a no-wait pull that finds only unacked messages may get no answer.
                    let mut got = consumer
                        .fetch()
                        .max_messages(batch)
                        .expires(Duration::from_millis(200))
                        .messages()
                        .await
                        .expect("fetch");
                    let mut n = 0;
                    while let Some(Some(m)) = done.or_done(got.next()).await {
                        m.expect("message").double_ack().await.expect("ack");
                        n += 1;
                    }
                    done.add(n);
                }
            })
        })
        .collect();
    for _ in 0..N / batch {
        let mut acks = Vec::with_capacity(batch);
        for _ in 0..batch {
            acks.push(js.publish(subject.clone(), BODY.to_vec().into()).await.expect("publish"));
        }
        for a in acks {
            a.await.expect("puback");
        }
    }
    for c in consumers {
        c.await.expect("consumer");
    }
    let elapsed = started.elapsed();
    let _ = js.delete_stream(&name).await;
    elapsed
}

/// The raw lapin client: publish with confirms to a durable quorum queue (the queue type
/// the backend declares), confirms awaited per batch; consume with a push consumer per
/// consumer task (prefetch 32, the backend's default) and `basic.ack` each message.
async fn raw_rabbitmq(conn: Arc<lapin::Connection>, batch: usize) -> Duration {
    use futures::StreamExt as _;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    let queue = unique_name("raw");
    let publisher = conn.create_channel().await.expect("channel");
    publisher.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let opts = QueueDeclareOptions { durable: true, ..Default::default() };
    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("quorum".into()));
    publisher.queue_declare(queue.as_str().into(), opts, quorum).await.expect("declare");
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (conn, done, queue) = (Arc::clone(&conn), Arc::clone(&done), queue.clone());
            tokio::spawn(async move {
                let ch = conn.create_channel().await.expect("channel");
                ch.basic_qos(32, BasicQosOptions::default()).await.expect("qos");
                let mut deliveries = ch
                    .basic_consume(
                        queue.as_str().into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .expect("consume");
                while done.load(Ordering::Relaxed) < N {
                    let next = tokio::time::timeout(Duration::from_millis(20), deliveries.next()).await;
                    let Ok(Some(Ok(d))) = next else { continue };
                    d.acker.ack(BasicAckOptions::default()).await.expect("ack");
                    done.fetch_add(1, Ordering::Relaxed);
                }
                let _ = ch.close(200, "".into()).await;
            })
        })
        .collect();
    for _ in 0..N / batch {
        let mut confirms = Vec::with_capacity(batch);
        for _ in 0..batch {
            let props = lapin::BasicProperties::default().with_delivery_mode(2);
            let c = publisher
                .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &BODY, props)
                .await
                .expect("publish");
            confirms.push(c);
        }
        for c in confirms {
            c.await.expect("confirm");
        }
    }
    for c in consumers {
        c.await.expect("consumer");
    }
    started.elapsed()
}

/// The raw SQS client: `SendMessageBatch` of 10, `ReceiveMessage` of up to 10 and
/// `DeleteMessage` for each message.
async fn raw_sqs(client: aws_sdk_sqs::Client) -> Duration {
    use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
    let url = client
        .create_queue()
        .queue_name(unique_name("raw"))
        .send()
        .await
        .expect("create queue")
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (client, done, url) = (client.clone(), Arc::clone(&done), url.clone());
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < N {
                    let got = client
                        .receive_message()
                        .queue_url(&url)
                        .max_number_of_messages(10)
                        .send()
                        .await
                        .expect("receive")
                        .messages
                        .unwrap_or_default();
                    for m in &got {
                        client
                            .delete_message()
                            .queue_url(&url)
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .send()
                            .await
                            .expect("delete");
                    }
                    done.fetch_add(got.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    let body = String::from_utf8(BODY.to_vec()).expect("text");
    for chunk in 0..N / 10 {
        let entries = (0..10)
            .map(|i| {
                SendMessageBatchRequestEntry::builder()
                    .id(format!("{chunk}-{i}"))
                    .message_body(body.clone())
                    .build()
                    .expect("entry")
            })
            .collect();
        client.send_message_batch().queue_url(&url).set_entries(Some(entries)).send().await.expect("send");
    }
    for c in consumers {
        c.await.expect("consumer");
    }
    started.elapsed()
}

/// A raw STOMP loop on the same frame codec, over plain sockets: persistent `SEND`s
/// with receipts (B in flight), 4 subscribers with `client-individual` acks and a
/// prefetch of 32; each consumer's final receipt proves its acks were processed.
async fn raw_stomp(address: String, login: Option<(String, String)>, batch: usize) -> Duration {
    use bytes::BytesMut;
    use platform_queue::stomp::frame::{Decoded, Frame, decode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn connect(address: &str, login: &Option<(String, String)>) -> (tokio::net::TcpStream, BytesMut) {
        let mut s = tokio::net::TcpStream::connect(address).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let mut f = Frame::new("CONNECT").header("accept-version", "1.2").header("host", "/");
        if let Some((l, p)) = login {
            f = f.header("login", l.clone()).header("passcode", p.clone());
        }
        let mut out = BytesMut::new();
        f.encode(&mut out);
        s.write_all(&out).await.expect("write");
        let mut inbox = BytesMut::new();
        next_frame(&mut s, &mut inbox).await;
        (s, inbox)
    }
    async fn next_frame(s: &mut tokio::net::TcpStream, inbox: &mut BytesMut) -> Frame {
        loop {
            match decode(inbox).expect("frame") {
                Some(Decoded::Frame(f)) => return f,
                Some(Decoded::HeartBeat) => continue,
                None => assert!(s.read_buf(inbox).await.expect("read") > 0, "closed"),
            }
        }
    }

    let destination = format!("/queue/{}", unique_name("raw"));
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (address, login, destination, done) =
                (address.clone(), login.clone(), destination.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let (mut s, mut inbox) = connect(&address, &login).await;
                let mut out = BytesMut::new();
                Frame::new("SUBSCRIBE")
                    .header("id", "1")
                    .header("destination", destination)
                    .header("ack", "client-individual")
                    .header("activemq.prefetchSize", "32")
                    .header("prefetch-count", "32")
                    .encode(&mut out);
                s.write_all(&out).await.expect("subscribe");
                while done.load(Ordering::Relaxed) < N {
                    let Ok(f) = tokio::time::timeout(Duration::from_millis(20), next_frame(&mut s, &mut inbox)).await
                    else {
                        continue;
                    };
                    let mut out = BytesMut::new();
                    Frame::new("ACK").header("id", f.get("ack").unwrap_or_default()).encode(&mut out);
                    s.write_all(&out).await.expect("ack");
                    done.fetch_add(1, Ordering::Relaxed);
                }
                let mut out = BytesMut::new();
                Frame::new("DISCONNECT").header("receipt", "bye").encode(&mut out);
                s.write_all(&out).await.expect("disconnect");
                while next_frame(&mut s, &mut inbox).await.command != "RECEIPT" {}
            })
        })
        .collect();
    let (mut producer, mut inbox) = connect(&address, &login).await;
    for _ in 0..N / batch {
        let mut out = BytesMut::new();
        for i in 0..batch {
            Frame::new("SEND")
                .header("destination", destination.clone())
                .header("persistent", "true")
                .header("receipt", i.to_string())
                .body(bytes::Bytes::from_static(&BODY))
                .encode(&mut out);
        }
        producer.write_all(&out).await.expect("send");
        let mut receipts = 0;
        while receipts < batch {
            if next_frame(&mut producer, &mut inbox).await.command == "RECEIPT" {
                receipts += 1;
            }
        }
    }
    for c in consumers {
        c.await.expect("consumer");
    }
    started.elapsed()
}

/// The raw rumqttc loop: a producer with B QoS 1 publishes in flight (waiting for
/// their `PUBACK`s), 4 members of a shared subscription with manual acks and a receive
/// maximum of 32; no lease, attempts or dead letters.
async fn raw_mqtt(host: String, port: u16, batch: usize) -> Duration {
    use rumqttc::Outgoing;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let options = |id: String| {
        let mut o = MqttOptions::new(id, host.clone(), port);
        o.set_receive_maximum(Some(32)).set_manual_acks(true).set_keep_alive(Duration::from_secs(10));
        o
    };
    let topic = format!("raw/{}", unique_name("raw"));
    let done = Arc::new(AtomicUsize::new(0));
    let mut consumers = Vec::new();
    // Members subscribe first: a shared subscription without members drops messages.
    for _ in 0..CONSUMERS {
        let (client, mut events) = AsyncClient::new(options(unique_name("rawc")), 256);
        client.subscribe(format!("$share/raw/{topic}"), QoS::AtLeastOnce).await.expect("subscribe");
        while !matches!(events.poll().await.expect("poll"), Event::Incoming(Packet::SubAck(_))) {}
        let done = Arc::clone(&done);
        consumers.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < N {
                match tokio::time::timeout(Duration::from_millis(20), events.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        client.ack(&p).await.expect("ack");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => panic!("consumer: {e}"),
                    _ => {}
                }
            }
            // The acks are out once the DISCONNECT behind them is.
            client.disconnect().await.expect("disconnect");
            while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_secs(1), events.poll()).await {
                if e == Event::Outgoing(Outgoing::Disconnect) {
                    break;
                }
            }
        }));
    }
    let started = Instant::now();
    let (producer, mut events) = AsyncClient::new(options(unique_name("rawp")), 256);
    let (acked, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Ok(e) = events.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = e
                && acked.send(()).is_err()
            {
                break;
            }
        }
    });
    for _ in 0..N / batch {
        for _ in 0..batch {
            producer.publish(topic.clone(), QoS::AtLeastOnce, false, &BODY[..]).await.expect("publish");
        }
        for _ in 0..batch {
            acks.recv().await.expect("puback");
        }
    }
    for c in consumers {
        c.await.expect("consumer");
    }
    let elapsed = started.elapsed();
    drop(acks);
    driver.abort();
    elapsed
}

/// The raw rdkafka loop: a `FutureProducer` with B sends in flight (acks=all), one
/// group member (`StreamConsumer`, auto-commit) reading until all N arrived; no lease,
/// attempts, per-message acks or dead letters. One topic and member for the whole run,
/// so the group join (seconds) is outside the timing, as it is for the backend.
async fn raw_kafka(
    producer: &rdkafka::producer::FutureProducer,
    consumer: &rdkafka::consumer::StreamConsumer,
    topic: &str,
    batch: usize,
) -> Duration {
    use rdkafka::producer::FutureRecord;
    let started = Instant::now();
    let consume = async {
        for _ in 0..N {
            consumer.recv().await.expect("recv");
        }
    };
    let produce = async {
        for _ in 0..N / batch {
            let sends = (0..batch).map(|_| {
                producer.send(FutureRecord::<(), [u8]>::to(topic).payload(&BODY[..]), Duration::from_secs(30))
            });
            for r in futures::future::join_all(sends).await {
                r.expect("produce");
            }
        }
    };
    futures::future::join(consume, produce).await;
    started.elapsed()
}

fn raw_kafka_setup(
    rt: &tokio::runtime::Runtime,
    brokers: &str,
) -> (rdkafka::producer::FutureProducer, rdkafka::consumer::StreamConsumer, String) {
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::Consumer;
    let topic = unique_name("raw");
    rt.block_on(async {
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin");
        admin
            .create_topics(&[NewTopic::new(&topic, 8, TopicReplication::Fixed(-1))], &AdminOptions::new())
            .await
            .expect("create topic");
        let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("linger.ms", "1")
            .create()
            .expect("producer");
        let consumer: rdkafka::consumer::StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("{topic}-group"))
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "50")
            .create()
            .expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        // Join the group before anything is timed.
        producer
            .send(rdkafka::producer::FutureRecord::<(), [u8]>::to(&topic).payload(&BODY[..]), Duration::from_secs(30))
            .await
            .expect("warm-up");
        consumer.recv().await.expect("warm-up recv");
        (producer, consumer, topic)
    })
}

/// Vacuums the queue tables of both sides before their rows, untimed, as autovacuum
/// would on a server that runs it (the test servers here run without): otherwise the
/// dead rows of every earlier run slow whichever side comes later.
fn vacuum_postgres(rt: &tokio::runtime::Runtime, url: &str) {
    rt.block_on(async {
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(url).await.expect("pool");
        for vacuum in ["VACUUM platform_queue_messages", "VACUUM bench_raw_queue", "VACUUM bench_raw_leased"] {
            // A table not made yet has nothing to vacuum.
            let _ = sqlx::query(vacuum).execute(&pool).await;
        }
        pool.close().await;
    });
}

/// A pool for the raw Postgres loops, with their tables made.
fn raw_postgres_pool(rt: &tokio::runtime::Runtime, url: &str) -> sqlx::PgPool {
    rt.block_on(async {
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(url).await.expect("pool");
        for ddl in [
            "CREATE TABLE IF NOT EXISTS bench_raw_queue (id BIGSERIAL PRIMARY KEY, queue TEXT NOT NULL, body BYTEA NOT NULL)",
            "CREATE TABLE IF NOT EXISTS bench_raw_leased (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             queue TEXT NOT NULL, body BYTEA NOT NULL, visible_at BIGINT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0)",
            "CREATE INDEX IF NOT EXISTS bench_raw_leased_ready ON bench_raw_leased (queue, visible_at, id)",
        ] {
            sqlx::query(ddl).execute(&pool).await.expect("raw tables");
        }
        pool
    })
}

/// How the server read the queue tables, from `pg_stat_user_tables`: printed after
/// each loop of the `--cpu` mode as what changed since the last print, so a slow round
/// shows whether it scanned whole tables or walked dead rows.
struct PgScans(Vec<(String, [i64; 5])>);

impl PgScans {
    fn read(rt: &tokio::runtime::Runtime, pool: &sqlx::PgPool) -> Self {
        let rows: Vec<(String, i64, i64, i64, i64, i64)> = rt
            .block_on(
                sqlx::query_as(
                    "SELECT relname::text, seq_scan, seq_tup_read, COALESCE(idx_scan, 0), COALESCE(idx_tup_fetch, 0),
                            n_dead_tup
                     FROM pg_stat_user_tables
                     WHERE relname IN ('platform_queue_messages', 'bench_raw_queue', 'bench_raw_leased')
                       AND schemaname = current_schema()
                     ORDER BY relname",
                )
                .fetch_all(pool),
            )
            .unwrap_or_default();
        Self(rows.into_iter().map(|(t, a, b, c, d, e)| (t, [a, b, c, d, e])).collect())
    }

    /// Prints the change since the last reading (statistics reach the view within a
    /// second or so of each transaction) and keeps the new one.
    fn since(&mut self, rt: &tokio::runtime::Runtime, pool: &sqlx::PgPool) {
        rt.block_on(async {
            let _ = sqlx::query("SELECT pg_stat_force_next_flush()").execute(pool).await;
        });
        let now = Self::read(rt, pool);
        for (table, n) in &now.0 {
            let before = self.0.iter().find(|(t, _)| t == table).map_or([0; 5], |(_, b)| *b);
            let d: Vec<i64> = n.iter().zip(before).map(|(a, b)| a - b).collect();
            if d.iter().take(4).any(|&x| x != 0) {
                println!(
                    "    {table:<24} seq scans {:>6} rows read {:>9}  index scans {:>7} rows fetched {:>8}  dead rows {:>7}",
                    d[0], d[1], d[2], d[3], n[4]
                );
            }
        }
        *self = now;
    }
}

/// The commands the Redis server ran, from `INFO commandstats` (commands inside scripts
/// and transactions included): printed after each loop of the `--cpu` mode as calls
/// per message since the last print, so a round shows how many claims found nothing and
/// what a message cost in commands.
struct RedisCalls(Vec<(String, u64)>);

impl RedisCalls {
    fn read(rt: &tokio::runtime::Runtime, conn: &redis::aio::MultiplexedConnection) -> Self {
        let info: String =
            rt.block_on(redis::cmd("INFO").arg("commandstats").query_async(&mut conn.clone())).unwrap_or_default();
        // `cmdstat_evalsha:calls=814,usec=…`
        let calls = info.lines().filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let n = rest.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), n))
        });
        Self(calls.collect())
    }

    /// Prints the calls per message since the last reading and keeps the new one.
    fn since(&mut self, rt: &tokio::runtime::Runtime, conn: &redis::aio::MultiplexedConnection, messages: usize) {
        let now = Self::read(rt, conn);
        let mut per: Vec<(f64, &str)> = now
            .0
            .iter()
            .map(|(cmd, n)| {
                let before = self.0.iter().find(|(c, _)| c == cmd).map_or(0, |(_, b)| *b);
                ((n - before.min(*n)) as f64 / messages as f64, cmd.as_str())
            })
            .filter(|(x, cmd)| *x >= 0.005 && *cmd != "info")
            .collect();
        per.sort_by(|a, b| b.0.total_cmp(&a.0));
        let line: Vec<String> = per.iter().map(|(x, cmd)| format!("{cmd} {x:.2}")).collect();
        println!("    calls per message: {}", line.join(", "));
        *self = now;
    }
}

fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "bench"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("queue");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Elements(N as u64));

    let sqlite_file = std::env::temp_dir().join("platform-bench-queue.db");
    let mut backends: Vec<(&str, String)> =
        vec![("memory", "memory://bench".to_owned()), ("sqlite", format!("sqlite://{}", sqlite_file.display()))];
    for (name, var) in [
        ("postgres", "POSTGRES"),
        ("mysql", "MYSQL"),
        ("redis", "REDIS"),
        ("nats", "NATS"),
        ("rabbitmq", "RABBITMQ"),
        ("stomp-activemq", "ACTIVEMQ_STOMP"),
        ("stomp-rabbitmq", "RABBITMQ_STOMP"),
        ("mqtt", "MQTT"),
    ] {
        if let Some(u) = url(var) {
            backends.push((name, u));
        }
    }
    // SQS (an emulator here) goes only at batch 100: at batch 1 a run takes minutes.
    if let Some(u) = url("SQS") {
        backends.push(("sqs", u));
    }
    for batch in [1, 100] {
        for (name, base) in &backends {
            if *name == "sqs" && batch == 1 {
                continue;
            }
            let sep = if base.contains('?') { '&' } else { '?' };
            if *name == "postgres" {
                vacuum_postgres(&rt, base);
            }
            for (label, prefill) in [(format!("{name}-consume"), true), ((*name).to_owned(), false)] {
                group.bench_with_input(BenchmarkId::new(label, batch), &batch, |b, &batch| {
                    b.iter_custom(|iters| {
                        timed(&rt, iters, || async {
                            let q = platform_queue::open(&format!("{base}{sep}queue={}", unique_name("bench")))
                                .await
                                .expect("open");
                            through_queue(q, batch, prefill).await
                        })
                    });
                });
            }
            // As a service runs it, and as the raw loops keep their connections: one
            // handle, opened before anything is timed, for every iteration.
            if ["redis", "postgres", "mysql", "sqlite"].contains(name) {
                let q = rt.block_on(async {
                    platform_queue::open(&format!("{base}{sep}queue={}", unique_name("bench"))).await.expect("open")
                });
                group.bench_with_input(BenchmarkId::new(format!("{name}-one-handle"), batch), &batch, |b, &batch| {
                    b.iter_custom(|iters| timed(&rt, iters, || through_queue(Arc::clone(&q), batch, false)));
                });
            }
        }
        if let Some(u) = url("REDIS") {
            let conn = rt.block_on(async {
                redis::Client::open(u.as_str()).expect("client").get_multiplexed_async_connection().await.expect("conn")
            });
            group.bench_with_input(BenchmarkId::new("redis-raw", batch), &batch, |b, &batch| {
                b.iter_custom(|iters| timed(&rt, iters, || raw_redis(conn.clone(), batch)));
            });
            group.bench_with_input(BenchmarkId::new("redis-raw-streams", batch), &batch, |b, &batch| {
                b.iter_custom(|iters| timed(&rt, iters, || raw_redis_streams(conn.clone(), batch)));
            });
        }
        if let Some(u) = url("POSTGRES") {
            vacuum_postgres(&rt, &u);
            let pool = raw_postgres_pool(&rt, &u);
            group.bench_with_input(BenchmarkId::new("postgres-raw", batch), &batch, |b, &batch| {
                b.iter_custom(|iters| timed(&rt, iters, || raw_postgres(pool.clone(), batch)));
            });
            group.bench_with_input(BenchmarkId::new("postgres-raw-leased", batch), &batch, |b, &batch| {
                b.iter_custom(|iters| timed(&rt, iters, || raw_postgres_leased(pool.clone(), batch)));
            });
        }
        if let Some(u) = url("MYSQL") {
            let pool = rt.block_on(raw_sql::mysql_pool(&u));
            group.bench_with_input(BenchmarkId::new("mysql-raw", batch), &batch, |b, &batch| {
                b.iter_custom(|iters| timed(&rt, iters, || raw_sql::mysql(pool.clone(), batch)));
            });
            group.bench_with_input(BenchmarkId::new("mysql-raw-leased", batch), &batch, |b, &batch| {
                b.iter_custom(|iters| timed(&rt, iters, || raw_sql::mysql_leased(pool.clone(), batch)));
            });
        }
        let pool = rt.block_on(raw_sql::sqlite_pool(&sqlite_file));
        group.bench_with_input(BenchmarkId::new("sqlite-raw", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| timed(&rt, iters, || raw_sql::sqlite(pool.clone(), batch)));
        });
        group.bench_with_input(BenchmarkId::new("sqlite-raw-leased", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| timed(&rt, iters, || raw_sql::sqlite_leased(pool.clone(), batch)));
        });
        rt.block_on(pool.close());
        if let Some(u) = url("NATS") {
            let client = rt.block_on(async { async_nats::connect(u.as_str()).await.expect("nats") });
            group.bench_with_input(BenchmarkId::new("nats-raw", batch), &batch, |b, &batch| {
                b.iter_custom(|iters| timed(&rt, iters, || raw_nats(client.clone(), batch)));
            });
        }
        let sqs_endpoint = url("SQS")
            .and_then(|u| u.split(['?', '&']).find_map(|p| p.strip_prefix("endpoint=")).map(ToOwned::to_owned));
        if let Some(endpoint) = sqs_endpoint.filter(|_| batch == 100) {
            let client = sqs_client(&endpoint);
            group.bench_with_input(BenchmarkId::new("sqs-raw", batch), &batch, |b, _| {
                b.iter_custom(|iters| timed(&rt, iters, || raw_sqs(client.clone())));
            });
        }
        if let Some(u) = url("RABBITMQ") {
            let conn = rt.block_on(async {
                Arc::new(lapin::Connection::connect(&u, lapin::ConnectionProperties::default()).await.expect("amqp"))
            });
            group.bench_with_input(BenchmarkId::new("rabbitmq-raw", batch), &batch, |b, &batch| {
                b.iter_custom(|iters| timed(&rt, iters, || raw_rabbitmq(Arc::clone(&conn), batch)));
            });
        }
        if let Some(u) = url("KAFKA") {
            // One queue (and group member) for the whole run: a group join takes seconds.
            let brokers = u.trim_start_matches("kafka://").split(['?', '/']).next().unwrap_or_default().to_owned();
            let q = rt.block_on(async {
                let sep = if u.contains('?') { '&' } else { '?' };
                let q = platform_queue::open(&format!("{u}{sep}queue={}", unique_name("bench"))).await.expect("open");
                q.send(Message::new(&BODY[..])).await.expect("warm-up");
                q.ack_all(&q.receive(ReceiveOptions::new(1, Duration::from_secs(60))).await.expect("join"))
                    .await
                    .expect("ack");
                q
            });
            for (label, prefill) in [("kafka-consume", true), ("kafka", false)] {
                group.bench_with_input(BenchmarkId::new(label, batch), &batch, |b, &batch| {
                    b.iter_custom(|iters| timed(&rt, iters, || through_queue(Arc::clone(&q), batch, prefill)));
                });
            }
            let (producer, consumer, topic) = raw_kafka_setup(&rt, &brokers);
            group.bench_with_input(BenchmarkId::new("kafka-raw", batch), &batch, |b, &batch| {
                b.iter_custom(|iters| timed(&rt, iters, || raw_kafka(&producer, &consumer, &topic, batch)));
            });
        }
        if let Some(u) = url("MQTT") {
            let parsed = url::Url::parse(&u).expect("mqtt url");
            let (host, port) = (parsed.host_str().unwrap_or("127.0.0.1").to_owned(), parsed.port().unwrap_or(1883));
            group.bench_with_input(BenchmarkId::new("mqtt-raw", batch), &batch, |b, &batch| {
                b.iter_custom(|iters| timed(&rt, iters, || raw_mqtt(host.clone(), port, batch)));
            });
        }
        for (name, var) in [("stomp-activemq-raw", "ACTIVEMQ_STOMP"), ("stomp-rabbitmq-raw", "RABBITMQ_STOMP")] {
            let Some(u) = url(var) else { continue };
            let parsed = url::Url::parse(&u).expect("stomp url");
            let address = format!("{}:{}", parsed.host_str().unwrap_or("127.0.0.1"), parsed.port().unwrap_or(61613));
            let login = (!parsed.username().is_empty())
                .then(|| (parsed.username().to_owned(), parsed.password().unwrap_or_default().to_owned()));
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter_custom(|iters| timed(&rt, iters, || raw_stomp(address.clone(), login.clone(), batch)));
            });
        }
    }
    group.finish();
}

/// `--cpu BACKEND [BATCH] [ROUNDS] [ONLY]`: the CPU per message of each loop, client
/// and server (see `cpu/mod.rs`), for `memory`, `sqlite`, `redis`, `postgres`, `mysql` or `nats` through
/// one handle beside their raw loops; with `ONLY`, just the loops whose label holds it.
fn cpu_report(args: &[String]) {
    let backend = args.first().map_or("redis", String::as_str);
    let batch: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    const ITERS: usize = 10;
    let rt = runtime();
    let mut report = cpu::Report::only(args.get(3).cloned());
    let open = |base: &str| {
        let sep = if base.contains('?') { '&' } else { '?' };
        let base = format!("{base}{sep}queue={}", unique_name("cpu"));
        rt.block_on(async { platform_queue::open(&base).await.expect("open") })
    };
    match backend {
        "memory" => {
            let q = open("memory://cpu");
            for round in 1..=rounds {
                report.run("memory", round, || {
                    cpu::measure(&rt, &|| None, ITERS, N, || through_queue(Arc::clone(&q), batch, false))
                });
            }
        }
        "redis" => {
            let u = url("REDIS").expect("PLATFORM_TEST_REDIS_URL is unset");
            let q = open(&u);
            let conn = rt.block_on(async {
                redis::Client::open(u.as_str()).expect("client").get_multiplexed_async_connection().await.expect("conn")
            });
            let info: String =
                rt.block_on(redis::cmd("INFO").arg("server").query_async(&mut conn.clone())).expect("info");
            let pid = info.lines().find_map(|l| l.strip_prefix("process_id:")?.trim().parse::<u32>().ok());
            let server = move || pid.map(cpu::cpu_ns);
            let mut calls = RedisCalls::read(&rt, &conn);
            for round in 1..=rounds {
                report.run("redis-one-handle", round, || {
                    cpu::measure(&rt, &server, ITERS, N, || through_queue(Arc::clone(&q), batch, false))
                });
                calls.since(&rt, &conn, ITERS * N);
                report.run("redis-raw", round, || {
                    cpu::measure(&rt, &server, ITERS, N, || raw_redis(conn.clone(), batch))
                });
                calls.since(&rt, &conn, ITERS * N);
                report.run("redis-raw-streams", round, || {
                    cpu::measure(&rt, &server, ITERS, N, || raw_redis_streams(conn.clone(), batch))
                });
                calls.since(&rt, &conn, ITERS * N);
                report.run("redis-raw-leased-lists", round, || {
                    cpu::measure(&rt, &server, ITERS, N, || raw_redis_leased_lists(conn.clone(), batch))
                });
                calls.since(&rt, &conn, ITERS * N);
            }
        }
        "postgres" => {
            let base = url("POSTGRES").expect("PLATFORM_TEST_POSTGRES_URL is unset");
            // Every loop's tables in a schema of this run's own, so that rows and dead
            // rows earlier runs left on a shared server slow neither side.
            let schema = platform_core::testkit::unique_ident("bench");
            let admin = |sql: String| {
                rt.block_on(async {
                    let pool =
                        sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&base).await.expect("pool");
                    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.expect("schema");
                    pool.close().await;
                })
            };
            admin(format!("CREATE SCHEMA {schema}"));
            let sep = if base.contains('?') { '&' } else { '?' };
            let u = format!("{base}{sep}options=-c%20search_path%3D{schema}");
            let q = open(&u);
            let pool = raw_postgres_pool(&rt, &u);
            // The postmaster, from the data directory the server reports (readable when
            // the server runs on this machine and the user may read its directory).
            let dir: Option<(String,)> =
                rt.block_on(sqlx::query_as("SHOW data_directory").fetch_optional(&pool)).ok().flatten();
            let pid = dir.and_then(|(d,)| cpu::pid_in(&format!("{d}/postmaster.pid")));
            let server = move || pid.map(cpu::tree_cpu_ns);
            for round in 1..=rounds {
                vacuum_postgres(&rt, &u);
                let mut scans = PgScans::read(&rt, &pool);
                report.run("postgres-one-handle", round, || {
                    cpu::measure(&rt, &server, ITERS, N, || through_queue(Arc::clone(&q), batch, false))
                });
                scans.since(&rt, &pool);
                report.run("postgres-raw", round, || {
                    cpu::measure(&rt, &server, ITERS, N, || raw_postgres(pool.clone(), batch))
                });
                scans.since(&rt, &pool);
                report.run("postgres-raw-leased", round, || {
                    cpu::measure(&rt, &server, ITERS, N, || raw_postgres_leased(pool.clone(), batch))
                });
                scans.since(&rt, &pool);
            }
            rt.block_on(pool.close());
            rt.block_on(async { q.close().await.expect("close") });
            admin(format!("DROP SCHEMA {schema} CASCADE"));
        }
        "mysql" => {
            let base = url("MYSQL").expect("PLATFORM_TEST_MYSQL_URL is unset");
            // Every loop's tables in a database of this run's own, as for PostgreSQL.
            let db = platform_core::testkit::unique_ident("bench");
            let admin = |sql: String| {
                rt.block_on(async {
                    let pool =
                        sqlx::mysql::MySqlPoolOptions::new().max_connections(1).connect(&base).await.expect("pool");
                    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.expect("database");
                    pool.close().await;
                })
            };
            admin(format!("CREATE DATABASE {db}"));
            let mut u = url::Url::parse(&base).expect("mysql url");
            u.set_path(&db);
            let q = open(u.as_str());
            let pool = rt.block_on(raw_sql::mysql_pool(u.as_str()));
            let port = u.port().unwrap_or(3306);
            let pid = cpu::pid_listening(port);
            let server = move || pid.map(cpu::cpu_ns);
            for round in 1..=rounds {
                report.run("mysql-one-handle", round, || {
                    cpu::measure(&rt, &server, ITERS, N, || through_queue(Arc::clone(&q), batch, false))
                });
                report.run("mysql-raw", round, || {
                    cpu::measure(&rt, &server, ITERS, N, || raw_sql::mysql(pool.clone(), batch))
                });
                report.run("mysql-raw-leased", round, || {
                    cpu::measure(&rt, &server, ITERS, N, || raw_sql::mysql_leased(pool.clone(), batch))
                });
            }
            rt.block_on(pool.close());
            rt.block_on(async { q.close().await.expect("close") });
            admin(format!("DROP DATABASE {db}"));
        }
        "sqlite" => {
            // A database file of this run's own.
            let file = std::env::temp_dir().join(format!("{}.db", unique_name("platform-cpu")));
            let q = open(&format!("sqlite://{}", file.display()));
            let pool = rt.block_on(raw_sql::sqlite_pool(&file));
            for round in 1..=rounds {
                report.run("sqlite-one-handle", round, || {
                    cpu::measure(&rt, &|| None, ITERS, N, || through_queue(Arc::clone(&q), batch, false))
                });
                report.run("sqlite-raw", round, || {
                    cpu::measure(&rt, &|| None, ITERS, N, || raw_sql::sqlite(pool.clone(), batch))
                });
                report.run("sqlite-raw-leased", round, || {
                    cpu::measure(&rt, &|| None, ITERS, N, || raw_sql::sqlite_leased(pool.clone(), batch))
                });
            }
            rt.block_on(pool.close());
            rt.block_on(async { q.close().await.expect("close") });
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
        }
        "nats" => {
            let u = url("NATS").expect("PLATFORM_TEST_NATS_URL is unset");
            let q = open(&u);
            let port = url::Url::parse(&u).ok().and_then(|p| p.port()).unwrap_or(4222);
            let pid = cpu::pid_listening(port);
            let server = move || pid.map(cpu::cpu_ns);
            let client = rt.block_on(async { async_nats::connect(u.as_str()).await.expect("nats") });
            for round in 1..=rounds {
                report.run("nats-one-handle", round, || {
                    cpu::measure(&rt, &server, ITERS, N, || through_queue(Arc::clone(&q), batch, false))
                });
                report.run("nats-raw", round, || {
                    cpu::measure(&rt, &server, ITERS, N, || raw_nats(client.clone(), batch))
                });
            }
        }
        other => panic!("--cpu takes memory, sqlite, redis, postgres, mysql or nats, not {other}"),
    }
    report.summary();
}

criterion_group!(benches, bench);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--cpu") {
        let rest: Vec<String> = args[at + 1..].iter().filter(|a| !a.starts_with("--")).cloned().collect();
        cpu_report(&rest);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
