//! Durable delivery: notifications queued on SQLite, delivered by a worker in a child
//! process that is killed (SIGKILL) mid-run; a second worker delivers the rest, and
//! the vendor's double has every notification (0 lost).

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use platform_notify::durable::DurableHandler;
use platform_notify::testkit::{Doubles, Reply};
use platform_notify::{Address, Dispatcher, Notification, Route, open};
use platform_queue::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

const QUEUE_VAR: &str = "PLATFORM_NOTIFY_CHILD_QUEUE";
const DOUBLES_VAR: &str = "PLATFORM_NOTIFY_CHILD_DOUBLES";

fn dispatcher(doubles: &str) -> Arc<Dispatcher> {
    let discord = open(&format!("discord://1/t?base_url={doubles}")).unwrap();
    Arc::new(Dispatcher::new().notifier("discord", discord).route(Route::new("all", &["discord"])).unwrap())
}

async fn work(queue_url: &str, doubles: &str, shutdown: CancellationToken) {
    let queue = platform_queue::open(queue_url).await.unwrap();
    let config = WorkerConfig::default().with_concurrency(2).with_poll_wait(Duration::from_millis(100));
    Worker::new(queue, DurableHandler::new(dispatcher(doubles))).with_config(config).run(shutdown).await.unwrap();
}

fn delivered(d: &Doubles) -> BTreeSet<String> {
    d.received("discord").iter().filter_map(|r| r.json()["content"].as_str().map(str::to_owned)).collect()
}

/// The worker the kill test starts in a child process; nothing to do in a plain run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_worker_of_the_kill_test() {
    let (Ok(queue), Ok(doubles)) = (std::env::var(QUEUE_VAR), std::env::var(DOUBLES_VAR)) else { return };
    work(&queue, &doubles, CancellationToken::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_no_notification() {
    let doubles = Doubles::start().await;
    // Discord's bucket empties after every send: the worker paces itself, so the run
    // lasts long enough to be killed in the middle.
    doubles.discord_bucket_empty_for(0.05);
    let dir = platform_core::testkit::server::temp_dir("notify-durable");
    let queue_url = format!("sqlite://{}/queue.db?queue=notify&visibility_timeout=2s", dir.display());
    let queue = platform_queue::open(&queue_url).await.unwrap();
    let d = dispatcher(doubles.url());
    let total = 40;
    for i in 0..total {
        d.enqueue(queue.as_ref(), &Notification::new(format!("n{i}")), &Address::Configured).await.unwrap();
    }
    // One failure on the way: it goes back on the queue after the vendor's delay.
    doubles.script("discord", [Reply::new(503).header("retry-after", "0.2")]);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_worker_of_the_kill_test", "--nocapture"])
        .env(QUEUE_VAR, &queue_url)
        .env(DOUBLES_VAR, doubles.url())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while delivered(&doubles).len() < 10 {
        assert!(started.elapsed() < Duration::from_secs(60), "the child delivered {:?}", delivered(&doubles).len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    platform_core::testkit::server::kill(&mut child);
    let at_kill = delivered(&doubles).len();
    assert!(at_kill < total, "killed before the end ({at_kill} of {total})");

    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(work_owned(queue_url.clone(), doubles.url().to_owned(), shutdown.clone()));
    let started = Instant::now();
    while delivered(&doubles).len() < total {
        assert!(started.elapsed() < Duration::from_secs(60), "only {} of {total} delivered", delivered(&doubles).len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    worker.await.unwrap();
    let expected: BTreeSet<String> = (0..total).map(|i| format!("n{i}")).collect();
    assert_eq!(delivered(&doubles), expected);
    assert!(queue.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(doubles.violations(), Vec::<String>::new());
    platform_core::testkit::server::remove_dir(&dir);
}

async fn work_owned(queue_url: String, doubles: String, shutdown: CancellationToken) {
    work(&queue_url, &doubles, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_fails_for_good_is_dead_lettered_with_its_reasons() {
    let doubles = Doubles::start().await;
    doubles.script("slack", [Reply::new(410).body("channel_is_archived")]);
    let slack = open(&format!("slack://T/B/X?base_url={}/services", doubles.url())).unwrap();
    let d = Arc::new(Dispatcher::new().notifier("slack", slack).route(Route::new("ops", &["slack"])).unwrap());
    let queue =
        platform_queue::open(&format!("memory://{}", platform_core::testkit::unique_name("notify"))).await.unwrap();
    assert!(d.enqueue(queue.as_ref(), &Notification::new("x").tag("none"), &Address::Configured).await.is_ok());
    let unrouted = Dispatcher::new().enqueue(queue.as_ref(), &Notification::new("y"), &Address::Configured).await;
    assert!(unrouted.unwrap_err().is_invalid_input(), "a notification no route takes is refused, not queued");
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn({
        let (queue, shutdown) = (Arc::clone(&queue), shutdown.clone());
        async move { Worker::new(queue, DurableHandler::new(d)).run(shutdown).await }
    });
    let started = Instant::now();
    let dead = loop {
        let dead = queue.dead_letters(10).await.unwrap();
        if !dead.is_empty() {
            break dead;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    let reason = format!("{:?}", dead[0].reason());
    assert!(reason.contains("channel_is_archived"), "{reason}");
}
