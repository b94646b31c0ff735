//! The outbox relay against real databases and buses: what commits is published once
//! per group, in order; what rolls back never is; poison is parked; several relays
//! never publish one row twice; a relay killed with SIGKILL mid-batch loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use platform_core::testkit::{eventually, unique_ident};
use platform_core::{CheckOutcome, Envelope, HealthCheck, Result};
use platform_db::Db;
use platform_db::migrate::Migrator;
use platform_db::outbox::{self, OutboxMessage};
use platform_db::testkit::{Harness as _, UrlHarness};
use platform_events::relay::{Relay, RelayConfig, stage};
use platform_events::{BusCapabilities, EventBus, Group, open_bus};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// The databases the relay runs on here: SQLite always, PostgreSQL and MariaDB when
/// their URLs are set.
fn databases() -> Vec<(&'static str, UrlHarness)> {
    let mut out = vec![("sqlite", UrlHarness::sqlite_temp())];
    out.extend(UrlHarness::from_env("POSTGRES").map(|h| ("postgres", h)));
    out.extend(UrlHarness::from_env("MYSQL").map(|h| ("mysql", h)));
    out
}

async fn fresh_db(h: &UrlHarness) -> (String, Db) {
    let url = h.fresh_url().await.expect("database");
    let db = platform_db::open(&url).await.expect("open");
    Migrator::new(vec![outbox::migration(1)]).run(&db).await.expect("migrate");
    (url, db)
}

fn event(n: u64, key: &str) -> Envelope {
    let mut e = Envelope::raw("todo.changed", "1", json!({ "n": n }));
    e.extensions.insert("partitionkey".into(), json!(key));
    e
}

/// Stages `n` events (numbered from `from`) on `topic`, one transaction each; every
/// seventh transaction rolls back. Returns the numbers that committed.
async fn stage_many(db: &Db, topic: &str, from: u64, n: u64) -> Vec<u64> {
    let mut committed = Vec::new();
    for i in from..from + n {
        let mut tx = db.begin().await.expect("begin");
        stage(&mut tx, topic, &event(i, &format!("k{}", i % 5))).await.expect("stage");
        if i % 7 == 3 {
            tx.rollback().await.expect("rollback");
        } else {
            tx.commit().await.expect("commit");
            committed.push(i);
        }
    }
    committed
}

async fn drain_all(group: &Group, want: usize) -> Vec<Envelope> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < want && tokio::time::Instant::now() < deadline {
        for d in group.receive(100, Duration::from_millis(300)).await.expect("receive") {
            d.ack().await.expect("ack");
            got.push(d.into_parts().0);
        }
    }
    got
}

fn n(e: &Envelope) -> u64 {
    e.payload["n"].as_u64().expect("n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_are_published_once_in_order() {
    for (name, h) in databases() {
        let (_, db) = fresh_db(&h).await;
        let bus = flaky().await;
        let group = bus.subscribe("todo.>", "view").await.unwrap();
        let mut committed = stage_many(&db, "todo.items", 0, 120).await;
        committed.extend(stage_many(&db, "todo.lists", 120, 30).await);
        let relay =
            Relay::new(db.clone(), Arc::clone(&bus) as Arc<dyn EventBus>, RelayConfig::default().with_batch(50));
        assert!(relay.lag().await.unwrap().is_some(), "{name}: rows wait");
        while relay.run_once().await.unwrap().published > 0 {}
        assert_eq!(relay.lag().await.unwrap(), None, "{name}: everything sent");
        assert_eq!(*bus.order.lock().unwrap(), committed, "{name}: published once each, in the order written");
        let mut got: Vec<u64> = drain_all(&group, committed.len()).await.iter().map(n).collect();
        got.sort_unstable();
        assert_eq!(got, committed, "{name}: each committed event delivered once");
        relay.check().await.expect("health");
        db.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_rows_are_parked_and_the_rest_go_on() {
    for (name, h) in databases() {
        let (_, db) = fresh_db(&h).await;
        let bus = open_bus(&format!("memory://{}", unique_ident("relay"))).await.unwrap();
        let group = bus.subscribe("in.*", "g").await.unwrap();
        let mut tx = db.begin().await.unwrap();
        stage(&mut tx, "in.a", &event(1, "k")).await.unwrap();
        outbox::enqueue(&mut tx, &OutboxMessage::new("in.a", b"not an envelope".to_vec())).await.unwrap();
        outbox::enqueue(&mut tx, &OutboxMessage::new("in..bad", event(2, "k").to_json().unwrap())).await.unwrap();
        stage(&mut tx, "in.a", &event(3, "k")).await.unwrap();
        tx.commit().await.unwrap();
        let relay = Relay::new(db.clone(), Arc::clone(&bus), RelayConfig::default());
        let stats = relay.run_once().await.unwrap();
        assert_eq!((stats.published, stats.parked), (2, 2), "{name}: {stats:?}");
        let mut got: Vec<u64> = drain_all(&group, 2).await.iter().map(n).collect();
        got.sort_unstable();
        assert_eq!(got, [1, 3], "{name}");
        assert_eq!(outbox::parked(&db, 10).await.unwrap().len(), 2, "{name}");
        assert_eq!(relay.lag().await.unwrap(), None, "{name}: parked rows are not lag");
        db.close().await;
    }
}

/// A bus whose publishes fail while `down`, and that counts what it published.
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn EventBus>,
    down: Mutex<bool>,
    published: Mutex<BTreeMap<u64, usize>>,
    order: Mutex<Vec<u64>>,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Flaky({})", self.inner)
    }
}

#[async_trait]
impl HealthCheck for Flaky {
    fn name(&self) -> String {
        self.inner.name()
    }
    async fn check(&self) -> Result<CheckOutcome> {
        self.inner.check().await
    }
}

#[async_trait]
impl EventBus for Flaky {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    fn capabilities(&self) -> BusCapabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, topic: &str, events: Vec<Envelope>) -> Result<()> {
        if *self.down.lock().unwrap() {
            return Err(platform_core::Error::unavailable("the broker is down"));
        }
        {
            let mut counts = self.published.lock().unwrap();
            let mut order = self.order.lock().unwrap();
            for e in &events {
                *counts.entry(n(e)).or_default() += 1;
                order.push(n(e));
            }
        }
        self.inner.publish(topic, events).await
    }
    async fn subscribe(&self, pattern: &str, group: &str) -> Result<Group> {
        self.inner.subscribe(pattern, group).await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

async fn flaky() -> Arc<Flaky> {
    let inner = open_bus(&format!("memory://{}", unique_ident("relay"))).await.unwrap();
    Arc::new(Flaky { inner, down: Mutex::new(false), published: Mutex::default(), order: Mutex::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_bus_is_retried_with_backoff_then_parked() {
    let (_, db) = fresh_db(&UrlHarness::sqlite_temp()).await;
    let bus = flaky().await;
    let group = bus.subscribe("x.*", "g").await.unwrap();
    let committed = stage_many(&db, "x.y", 0, 10).await;
    *bus.down.lock().unwrap() = true;
    let retry = platform_core::RetryPolicy::default()
        .with_max_attempts(3)
        .with_initial_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1));
    let config = RelayConfig::default().with_retry(retry);
    let relay = Relay::new(db.clone(), Arc::clone(&bus) as Arc<dyn EventBus>, config);
    let first = relay.run_once().await.unwrap();
    assert_eq!((first.published, first.retried), (0, committed.len() as u64), "{first:?}");
    let again = relay.run_once().await.unwrap();
    assert_eq!(again.retried, 0, "nothing is claimable before the backoff ran out: {again:?}");
    *bus.down.lock().unwrap() = false;
    eventually(WAIT, || async { (relay.run_once().await.unwrap().published > 0).then_some(()) }).await.unwrap();
    while relay.run_once().await.unwrap().published > 0 {}
    assert_eq!(*bus.order.lock().unwrap(), committed, "the retry kept the order");
    assert_eq!(drain_all(&group, committed.len()).await.len(), committed.len());

    // Down for good: after max_attempts the rows are parked, not retried forever.
    let more = stage_many(&db, "x.z", 100, 3).await.len();
    *bus.down.lock().unwrap() = true;
    let parked = eventually(WAIT, || async {
        relay.run_once().await.unwrap();
        let parked = outbox::parked(&db, 10).await.unwrap();
        (parked.len() == more).then_some(parked)
    })
    .await
    .unwrap();
    assert!(parked.iter().all(|r| r.attempts == 3), "{parked:?}");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_relays_never_publish_a_row_twice() {
    for (name, h) in databases() {
        let (_, db) = fresh_db(&h).await;
        let bus = flaky().await;
        let committed = stage_many(&db, "many.rows", 0, 400).await;
        let relays: Vec<Relay> = (0..4)
            .map(|_| {
                Relay::new(db.clone(), Arc::clone(&bus) as Arc<dyn EventBus>, RelayConfig::default().with_batch(20))
            })
            .collect();
        let stop = CancellationToken::new();
        let tasks: Vec<_> = relays
            .iter()
            .map(|r| {
                let (r, stop) = (r.clone(), stop.clone());
                tokio::spawn(async move { r.run(stop).await })
            })
            .collect();
        let relay = relays[0].clone();
        eventually(WAIT, || async { relay.lag().await.unwrap().is_none().then_some(()) }).await.unwrap();
        stop.cancel();
        for t in tasks {
            t.await.unwrap();
        }
        let counts = bus.published.lock().unwrap().clone();
        assert_eq!(counts.keys().copied().collect::<Vec<_>>(), committed, "{name}: every row published");
        let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
        assert!(twice.is_empty(), "{name}: published more than once: {twice:?}");
        db.close().await;
    }
}

/// The child half of the kill test: relays the outbox at `RELAY_CHILD_DB` to the bus at
/// `RELAY_CHILD_BUS` until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by relay_killed_mid_batch_loses_nothing as a child process"]
async fn relay_child() {
    let (Ok(db), Ok(bus)) = (std::env::var("RELAY_CHILD_DB"), std::env::var("RELAY_CHILD_BUS")) else { return };
    let db = platform_db::open(&db).await.unwrap();
    let bus = open_bus(&bus).await.unwrap();
    // Small batches and a short lease, so the kill lands mid-stream.
    let config = RelayConfig::default().with_batch(10).with_lease(Duration::from_secs(2));
    Relay::new(db, bus, config).run(CancellationToken::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_batch_loses_nothing() {
    let dir = platform_core::testkit::server::temp_dir("relay-kill");
    let db_url = format!("sqlite://{}/outbox.db", dir.display());
    let bus_url = format!("sqlite://{}/bus.db?namespace=kill", dir.display());
    let db = platform_db::open(&db_url).await.unwrap();
    Migrator::new(vec![outbox::migration(1)]).run(&db).await.unwrap();
    let bus = open_bus(&bus_url).await.unwrap();
    let group = bus.subscribe("kill.>", "audit").await.unwrap();
    let committed: BTreeSet<u64> = stage_many(&db, "kill.rows", 0, 3000).await.into_iter().collect();

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "relay_child", "--ignored", "--nocapture"])
        .env("RELAY_CHILD_DB", &db_url)
        .env("RELAY_CHILD_BUS", &bus_url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has published some, and well before it is done.
    let sent = |db: Db| async move {
        let rows = db
            .fetch_all(&platform_db::Sql::new(format!(
                "SELECT COUNT(*) AS n FROM {} WHERE sent_at IS NOT NULL",
                outbox::TABLE
            )))
            .await
            .unwrap();
        rows[0].get::<i64>("n").unwrap()
    };
    let at_kill = eventually(WAIT, || async {
        let s = sent(db.clone()).await;
        (s >= 200).then_some(s)
    })
    .await
    .unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(at_kill < committed.len() as i64, "the child finished before the kill: {at_kill}");

    // A new relay takes over, including the batch the dead one had claimed.
    let relay = Relay::new(db.clone(), Arc::clone(&bus), RelayConfig::default().with_lease(Duration::from_secs(2)));
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (relay, stop) = (relay.clone(), stop.clone());
        async move { relay.run(stop).await }
    });
    eventually(WAIT, || async { relay.lag().await.unwrap().is_none().then_some(()) }).await.unwrap();
    stop.cancel();
    task.await.unwrap();

    let got = drain_all(&group, committed.len()).await;
    let unique: BTreeSet<u64> = got.iter().map(n).collect();
    let lost = committed.difference(&unique).count();
    let duplicates = got.len() - unique.len();
    eprintln!("relay killed after {at_kill} rows sent: lost {lost}, duplicates {duplicates}, of {}", committed.len());
    assert_eq!(lost, 0, "every committed event arrived");
    assert_eq!(unique, committed, "and nothing that did not commit");
    db.close().await;
    platform_core::testkit::server::remove_dir(&dir);
}
