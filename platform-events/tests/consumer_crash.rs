//! At-least-once through a consumer crash, on every backend: a child process takes a
//! batch from a group, acks part of it, and is killed with SIGKILL holding the rest.
//! Every event must then reach the group's other consumer or have been acked by the
//! child (lost: 0); events the child acked may not come again, except on Kafka, whose
//! acks are offsets: an ack behind an unsettled message of its partition is not
//! committed, and the event comes again (counted).

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use platform_core::Envelope;
use platform_core::testkit::{server_url, unique_ident};
use platform_events::open_bus;

const TOTAL: u64 = 100;
/// What the child takes before it dies (within RabbitMQ's default prefetch of 32), and
/// how many of those it acks.
const TAKEN: u64 = 30;
const ACKED: u64 = 10;
const WAIT: Duration = Duration::from_secs(60);

/// The child half: takes `TAKEN` events from the group at `CRASH_CHILD_BUS`, acks the
/// first `ACKED`, prints their numbers, then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the crash tests as a child process"]
async fn consumer_child() {
    let Ok(url) = std::env::var("CRASH_CHILD_BUS") else { return };
    let bus = open_bus(&url).await.unwrap();
    let group = bus.subscribe("crash.>", "workers").await.unwrap();
    let mut held = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while (held.len() as u64) < TAKEN && tokio::time::Instant::now() < deadline {
        let want = usize::try_from(TAKEN).unwrap() - held.len();
        held.extend(group.receive(want, Duration::from_millis(500)).await.unwrap());
    }
    let mut acked = Vec::new();
    for d in held.iter().take(usize::try_from(ACKED).unwrap()) {
        d.ack().await.unwrap();
        acked.push(d.envelope().payload["n"].as_u64().unwrap().to_string());
    }
    println!("ACKED {}", acked.join(","));
    println!("HOLDING {}", held.len());
    std::future::pending::<()>().await;
}

async fn crash_mid_batch(name: &str, url: &str, acks_are_final: bool) {
    let bus = open_bus(url).await.unwrap();
    let group = bus.subscribe("crash.>", "workers").await.unwrap();
    let events: Vec<Envelope> =
        (0..TOTAL).map(|i| Envelope::raw("crash.job", "1", serde_json::json!({ "n": i }))).collect();
    bus.publish("crash.jobs", events).await.unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "consumer_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("CRASH_CHILD_BUS", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut acked_by_child = BTreeSet::new();
    let mut holding = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest may print `test consumer_child ... ` ahead of the first line.
        if let Some((_, list)) = line.split_once("ACKED ") {
            acked_by_child = list.split(',').filter(|s| !s.is_empty()).map(|s| s.parse::<u64>().unwrap()).collect();
        }
        if let Some((_, n)) = line.split_once("HOLDING ") {
            holding = n.parse::<u64>().unwrap();
            break;
        }
    }
    assert_eq!(holding, TAKEN, "{name}: the child took its batch");
    child.kill().unwrap(); // SIGKILL, holding TAKEN - ACKED unsettled
    child.wait().unwrap();

    let (mut seen, mut deliveries) = (BTreeSet::new(), 0_u64);
    // Until every event the child did not ack has come back (a count would stop early
    // when Kafka brings acked ones back too).
    let missing = |seen: &BTreeSet<u64>| (0..TOTAL).any(|n| !seen.contains(&n) && !acked_by_child.contains(&n));
    let deadline = tokio::time::Instant::now() + WAIT;
    while missing(&seen) && tokio::time::Instant::now() < deadline {
        for d in group.receive(100, Duration::from_millis(500)).await.unwrap() {
            d.ack().await.unwrap();
            deliveries += 1;
            seen.insert(d.envelope().payload["n"].as_u64().unwrap());
        }
    }
    let again: Vec<_> = seen.intersection(&acked_by_child).collect();
    let lost = (0..TOTAL).filter(|n| !seen.contains(n) && !acked_by_child.contains(n)).count();
    eprintln!(
        "{name}: {TOTAL} published, child acked {} and died holding {}, lost {lost}, duplicates {}, acked ones again {}",
        acked_by_child.len(),
        TAKEN - ACKED,
        deliveries - seen.len() as u64,
        again.len()
    );
    assert_eq!(acked_by_child.len() as u64, ACKED, "{name}");
    assert_eq!(lost, 0, "{name}: every event the child did not ack came back");
    if acks_are_final {
        assert!(again.is_empty(), "{name}: events the child acked came again: {again:?}");
    }
    bus.close().await.ok();
}

/// `base` with a fresh namespace and `extra` parameters.
fn fresh(base: &str, extra: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}namespace={}&{extra}", unique_ident("crash"))
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_consumer_crash_loses_nothing() {
    let dir = platform_core::testkit::server::temp_dir("consumer-crash");
    crash_mid_batch("sqlite", &fresh(&format!("sqlite://{}/bus.db", dir.display()), "visibility_timeout=2s"), true)
        .await;
}

macro_rules! crash_test {
    ($feature:literal, $name:ident, $server:literal, $extra:literal, $final:literal) => {
        #[cfg(feature = $feature)]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(base) = server_url($server) else { return };
            crash_mid_batch($feature, &fresh(&base, $extra), $final).await;
        }
    };
}

crash_test!("postgres", postgres_consumer_crash_loses_nothing, "POSTGRES", "visibility_timeout=2s", true);
crash_test!("redis", redis_consumer_crash_loses_nothing, "REDIS", "visibility_timeout=2s", true);
crash_test!("nats", nats_consumer_crash_loses_nothing, "NATS", "visibility_timeout=2s", true);
crash_test!("rabbitmq", rabbitmq_consumer_crash_loses_nothing, "RABBITMQ", "visibility_timeout=2s", true);
crash_test!(
    "kafka",
    kafka_consumer_crash_loses_nothing,
    "KAFKA",
    "visibility_timeout=2s&partitions=2&session_timeout=6s",
    false
);
