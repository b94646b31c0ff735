//! NATS (JetStream on file storage) killed with SIGKILL mid-run and restarted on its store.

use super::*;

struct NatsServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl NatsServer {
    fn start(bin: PathBuf) -> Self {
        let mut s = Self { bin, dir: temp_dir("nats-fault"), port: free_port(), child: None };
        s.spawn();
        s
    }

    fn start_process(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"]).arg(&self.dir);
        self.child = Some(spawn(&mut cmd));
    }
}

impl Restartable for NatsServer {
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

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            kill(c);
        }
        remove_dir(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_kill_and_restart_loses_nothing() {
    let Some(bin) = find_binary("nats-server", &[PathBuf::from("/usr/sbin")]) else { return missing("nats-server") };
    let mut server = NatsServer::start(bin);
    wait_port(server.port, true).await;
    let url = format!("nats://127.0.0.1:{}?queue={}&visibility_timeout=2s", server.port, unique_name("fault"));
    let queue =
        eventually(Duration::from_secs(30), || async { platform_queue::open(&url).await.ok() }).await.expect("open");
    let total = 1000;
    let (received, duplicates) = run_through_crash(queue, total, || kill_and_restart(&mut server)).await;
    report("nats", total, received, duplicates);
}
