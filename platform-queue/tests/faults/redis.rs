//! Redis killed with SIGKILL mid-run and restarted on its append-only file.

use super::*;

struct RedisServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    fn start(bin: PathBuf) -> Self {
        let mut s = Self { bin, dir: temp_dir("redis-fault"), port: free_port(), child: None };
        s.spawn();
        s
    }

    fn start_process(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir);
        self.child = Some(spawn(&mut cmd));
    }
}

impl Restartable for RedisServer {
    fn port(&self) -> u16 {
        self.port
    }

    fn child(&mut self) -> &mut Option<Child> {
        &mut self.child
    }

    fn spawn(&mut self) {
        self.start_process();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            kill(c);
        }
        remove_dir(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill_and_restart_loses_nothing() {
    let Some(bin) = find_binary("redis-server", &[]) else { return missing("redis-server") };
    let mut server = RedisServer::start(bin);
    wait_port(server.port, true).await;
    let url = format!("redis://127.0.0.1:{}?queue={}&visibility_timeout=2s", server.port, unique_name("fault"));
    let queue = platform_queue::open(&url).await.expect("open");
    let total = 1000;
    let (received, duplicates) = run_through_crash(queue, total, || kill_and_restart(&mut server)).await;
    report("redis", total, received, duplicates);
}
