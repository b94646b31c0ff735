//! Redis killed with SIGKILL mid-run and restarted on its append-only file.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill_and_restart_loses_nothing() {
    let Some(bin) = find_binary("redis-server", &[]) else { return missing("redis-server") };
    let (dir, port) = (temp_dir("redis-fault"), free_port());
    let data = dir.clone();
    let mut server = Private::start(port, Some(dir), move || {
        let mut cmd = Command::new(&bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&data);
        cmd
    })
    .await;
    let url = format!("redis://127.0.0.1:{port}?queue={}&visibility_timeout=2s", unique_name("fault"));
    let queue = platform_queue::open(&url).await.expect("open");
    let total = 1000;
    let (received, duplicates) = run_through_crash(queue, total, || server.kill_and_restart()).await;
    report("redis", total, received, duplicates);
}
