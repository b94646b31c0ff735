//! NATS (JetStream on file storage) killed with SIGKILL mid-run and restarted on its store.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_kill_and_restart_loses_nothing() {
    let Some(mut server) = Private::nats_jetstream().await else { return missing("nats-server") };
    let port = server.port();
    let url = format!("nats://127.0.0.1:{port}?queue={}&visibility_timeout=2s", unique_name("fault"));
    let queue =
        eventually(Duration::from_secs(30), || async { platform_queue::open(&url).await.ok() }).await.expect("open");
    let total = 1000;
    let (received, duplicates) = run_through_crash(queue, total, || server.kill_and_restart()).await;
    report("nats", total, received, duplicates);
}
