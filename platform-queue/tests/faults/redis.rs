//! Redis killed with SIGKILL mid-run and restarted on its append-only file.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill_and_restart_loses_nothing() {
    let Some(mut server) = Private::redis_aof().await else { return missing("redis-server") };
    let port = server.port();
    let url = format!("redis://127.0.0.1:{port}?queue={}&visibility_timeout=2s", unique_name("fault"));
    let queue = platform_queue::open(&url).await.expect("open");
    let total = 1000;
    let (received, duplicates) = run_through_crash(queue, total, || server.kill_and_restart()).await;
    report("redis", total, received, duplicates);
}
