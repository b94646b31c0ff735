//! The event bus through a server crash: private servers (never the shared ones) are
//! killed with SIGKILL mid-stream and started again on their data; every event whose
//! publish returned `Ok` must reach each group (lost: 0), and the duplicates are
//! counted.

use std::collections::BTreeSet;
use std::time::Duration;

use platform_core::Envelope;
use platform_core::testkit::server::{PrivatePostgres, PrivateServer};
use platform_core::testkit::{eventually, skip};
use platform_events::open_bus;

const BACK: Duration = Duration::from_secs(60);

/// Publishes `total` events in batches of 10 to two groups, restarting the server
/// halfway; a failed batch is published again (same events) until it succeeds. Then
/// drains both groups and checks that nothing acknowledged went missing.
async fn nothing_acknowledged_is_lost<F, Fut>(name: &str, url: &str, restart: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let bus = eventually(BACK, || async { open_bus(url).await.ok() }).await.expect("open");
    let groups = [bus.subscribe("f.>", "one").await.unwrap(), bus.subscribe("f.*", "two").await.unwrap()];
    let total = 400_u64;
    let mut restart = Some(restart);
    for start in (0..total).step_by(10) {
        if start == total / 2 {
            (restart.take().expect("once"))().await;
        }
        let batch: Vec<Envelope> =
            (start..start + 10).map(|i| Envelope::raw("f.e", "1", serde_json::json!({ "n": i }))).collect();
        let deadline = tokio::time::Instant::now() + BACK;
        while let Err(e) = bus.publish("f.x", batch.clone()).await {
            assert!(tokio::time::Instant::now() < deadline, "{name}: publish failed for {BACK:?}: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for group in groups {
        let (mut seen, mut deliveries) = (BTreeSet::new(), 0);
        let deadline = tokio::time::Instant::now() + BACK;
        while (seen.len() as u64) < total && tokio::time::Instant::now() < deadline {
            let Ok(got) = group.receive(100, Duration::from_millis(500)).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            for d in got {
                if d.ack().await.is_ok() {
                    deliveries += 1;
                    seen.insert(d.envelope().payload["n"].as_u64().unwrap());
                }
            }
        }
        let lost = total - seen.len() as u64;
        eprintln!(
            "{name} group {}: {total} published, lost {lost}, duplicates {}",
            group.name(),
            deliveries - seen.len()
        );
        assert_eq!(lost, 0, "{name}: every acknowledged event reached group {}", group.name());
    }
    bus.close().await.ok();
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bus_survives_kill_and_restart() {
    let Some(mut server) = PrivateServer::redis_aof().await else { return skip("redis-server not found") };
    let url = format!("redis://127.0.0.1:{}?visibility_timeout=2s", server.port());
    nothing_acknowledged_is_lost("redis", &url, || server.kill_and_restart()).await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bus_survives_kill_and_restart() {
    let Some(mut server) = PrivateServer::nats_jetstream().await else { return skip("nats-server not found") };
    let url = format!("nats://127.0.0.1:{}?visibility_timeout=2s", server.port());
    nothing_acknowledged_is_lost("nats", &url, || server.kill_and_restart()).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bus_survives_kill_and_restart() {
    let Some(mut server) = PrivatePostgres::start().await else {
        return skip("PostgreSQL server binaries (initdb) not found");
    };
    let url = format!("{}?visibility_timeout=2s", server.url());
    nothing_acknowledged_is_lost("postgres", &url, || server.kill_and_restart()).await;
}
