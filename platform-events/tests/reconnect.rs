//! A subscription outlives its server's restart: private servers (never the shared
//! ones) are killed with SIGKILL and started again; the subscription says
//! `Reconnected`, and what is published afterwards arrives.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use platform_core::testkit::server::{PrivateServer, find_binary, free_port};
use platform_core::testkit::skip;
use platform_events::{Broadcast, Received, open_broadcast};

/// How long a restarted server and its clients may take to be back.
const BACK: Duration = Duration::from_secs(30);

async fn survives_restart<F, Fut>(hub: &dyn Broadcast, restart: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut sub = hub.subscribe("svc.>").await.expect("subscribe");
    hub.publish("svc.a", "before".into()).await.expect("publish");
    match tokio::time::timeout(BACK, sub.recv()).await {
        Ok(Some(Received::Message(m))) => assert_eq!(m.payload.as_ref(), b"before"),
        other => panic!("expected the first message, got {other:?}"),
    }
    restart().await;
    match tokio::time::timeout(BACK, sub.recv()).await {
        Ok(Some(Received::Reconnected)) => {}
        other => panic!("expected Reconnected after the restart, got {other:?}"),
    }
    // Published until one arrives: the publisher's own connection comes back on its
    // own schedule.
    let deadline = tokio::time::Instant::now() + BACK;
    let arrived = loop {
        assert!(tokio::time::Instant::now() < deadline, "nothing published after the restart arrived in {BACK:?}");
        if hub.publish("svc.a", "after".into()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if let Ok(Some(Received::Message(m))) = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await {
            break m.payload;
        }
    };
    assert_eq!(arrived.as_ref(), b"after");
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_subscription_survives_a_server_restart() {
    let Some(bin) = find_binary("redis-server", &[]) else { return skip("redis-server not found") };
    let port = free_port();
    let mut server = PrivateServer::start(port, None, move || {
        let mut cmd = Command::new(&bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""]);
        cmd
    })
    .await;
    let hub = open_broadcast(&format!("redis://127.0.0.1:{port}")).await.expect("open");
    survives_restart(&*hub, || server.kill_and_restart()).await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_subscription_survives_a_server_restart() {
    let Some(bin) = find_binary("nats-server", &[PathBuf::from("/usr/sbin")]) else {
        return skip("nats-server not found");
    };
    let port = free_port();
    let mut server = PrivateServer::start(port, None, move || {
        let mut cmd = Command::new(&bin);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        cmd
    })
    .await;
    let hub = open_broadcast(&format!("nats://127.0.0.1:{port}")).await.expect("open");
    survives_restart(&*hub, || server.kill_and_restart()).await;
}

/// The listening connection is terminated on the server (as a failover or an idle
/// timeout would): the handle listens again on a new one.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_subscription_survives_a_lost_connection() {
    let Some(base) = platform_core::testkit::server_url("POSTGRES") else { return };
    let namespace = platform_core::testkit::unique_ident("ns");
    let sep = if base.contains('?') { '&' } else { '?' };
    let hub = open_broadcast(&format!("{base}{sep}namespace={namespace}")).await.expect("open");
    let admin = sqlx::PgPool::connect(&base).await.expect("admin");
    let terminate = || async {
        let killed: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN \"' || $1 || '\"'",
        )
        .bind(&namespace)
        .fetch_all(&admin)
        .await
        .expect("terminate");
        assert_eq!(killed.len(), 1, "one listening connection");
    };
    survives_restart(&*hub, terminate).await;
}
