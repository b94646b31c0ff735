//! PostgreSQL (a private cluster made with initdb) killed with SIGKILL mid-run and restarted.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kill_and_restart_loses_nothing() {
    let Some(mut server) = PrivatePostgres::start().await else {
        return missing("PostgreSQL server binaries (initdb)");
    };
    let url = format!("{}?queue={}&visibility_timeout=2s", server.url(), unique_name("fault"));
    let queue =
        eventually(Duration::from_secs(30), || async { platform_queue::open(&url).await.ok() }).await.expect("open");
    let total = 1000;
    let (received, duplicates) = run_through_crash(queue, total, || server.kill_and_restart()).await;
    report("postgres", total, received, duplicates);
}
