//! Fault tests: kill and restart a private server mid-run; nothing acknowledged is lost.
//!
//! Each test starts its own server on a free port in a temp directory (never the
//! shared one), sends messages while a consumer receives and acks them, kills the
//! server with SIGKILL, restarts it on the same data, and checks that every message
//! arrived: lost must be 0; duplicates (at-least-once) are counted and printed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use platform_core::testkit::server::{PrivatePostgres, PrivateServer as Private, find_binary, free_port, temp_dir};
use platform_core::testkit::{eventually, skip, unique_name};
use platform_queue::{Message, Queue, ReceiveOptions};

#[cfg(feature = "stomp")]
mod activemq;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "mqtt")]
mod mosquitto;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

/// Sends `total` messages while one consumer receives and acks; calls `crash` after a
/// third was sent (some of those delayed past the crash). Returns (received distinct,
/// duplicates).
async fn run_through_crash<F, Fut>(queue: Arc<dyn Queue>, total: usize, crash: F) -> (usize, usize)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let consumer = {
        let queue = Arc::clone(&queue);
        tokio::spawn(async move {
            let mut seen: HashMap<String, usize> = HashMap::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            while seen.len() < total && tokio::time::Instant::now() < deadline {
                let got = match queue.receive(ReceiveOptions::new(20, Duration::from_millis(300))).await {
                    Ok(got) => got,
                    Err(e) => {
                        assert!(e.is_retryable() || e.is_internal(), "unexpected receive error: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                for d in got {
                    // Handed to a consumer counts as arrived; an ack that fails while the
                    // server is down may still have been applied, or the message returns.
                    *seen.entry(String::from_utf8_lossy(d.body()).into_owned()).or_default() += 1;
                    let _ = d.ack().await;
                }
            }
            seen
        })
    };
    let mut crash = Some(crash);
    // Some messages are delayed past the crash: scheduled messages survive a restart too.
    let delays = queue.capabilities().delay;
    for i in 0..total {
        if i == total / 3
            && let Some(crash) = crash.take()
        {
            crash().await;
        }
        let mut message = Message::new(format!("m{i}"));
        if delays && i < total / 3 && i % 25 == 0 {
            message = message.with_delay(Duration::from_secs(1));
        }
        // A send that fails while the server is down is retried: the caller saw an
        // error, so nothing was acknowledged yet.
        let mut tries = 0;
        while let Err(e) = queue.send(message.clone()).await {
            tries += 1;
            assert!(tries < 200, "send never recovered: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let seen = consumer.await.expect("consumer");
    let duplicates = seen.values().map(|n| n - 1).sum();
    (seen.len(), duplicates)
}

fn report(backend: &str, total: usize, received: usize, duplicates: usize) {
    let lost = total - received;
    println!("fault test {backend}: sent {total}, received {received}, lost {lost}, duplicates {duplicates}");
    assert_eq!(lost, 0, "{backend}: {lost} acknowledged messages lost across a server crash");
}

fn missing(what: &str) {
    skip(&format!("{what} not found; install it (scripts/start-services does)"));
}
