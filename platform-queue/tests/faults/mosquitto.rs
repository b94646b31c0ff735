//! Mosquitto (persistence on, scripts/mosquitto.conf) killed with SIGKILL mid-run and
//! restarted on its store; the member's session resumes and gets back what it held.

use super::*;

struct Mosquitto {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    fn start() -> Self {
        let dir = temp_dir("mosquitto-fault");
        let port = free_port();
        let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mosquitto.conf");
        let mut conf = std::fs::read_to_string(template).expect("scripts/mosquitto.conf");
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        conf.push_str(&format!("listener {port} 127.0.0.1\npersistence_location {}/\nuser {user}\n", dir.display()));
        std::fs::write(dir.join("mosquitto.conf"), conf).expect("config");
        let mut s = Self { dir, port, child: None };
        s.spawn();
        s
    }
}

impl Restartable for Mosquitto {
    fn port(&self) -> u16 {
        self.port
    }

    fn child(&mut self) -> &mut Option<Child> {
        &mut self.child
    }

    fn spawn(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        self.child = Some(spawn(Command::new("mosquitto").arg("-c").arg(conf)));
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            kill(c);
        }
        remove_dir(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_mosquitto_kill_and_restart_loses_nothing() {
    if find_binary("mosquitto", &[PathBuf::from("/usr/sbin")]).is_none() {
        return missing("mosquitto");
    }
    let mut server = Mosquitto::start();
    wait_port(server.port, true).await;
    let url = format!(
        "mqtt://127.0.0.1:{}?queue={}&visibility_timeout=5s&member=fault&session_expiry=5m",
        server.port,
        unique_name("fault")
    );
    let queue =
        eventually(Duration::from_secs(30), || async { platform_queue::open(&url).await.ok() }).await.expect("open");
    let total = 600;
    let (received, duplicates) = run_through_crash(queue, total, || kill_and_restart(&mut server)).await;
    report("mqtt on mosquitto", total, received, duplicates);
}
