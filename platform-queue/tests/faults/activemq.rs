//! ActiveMQ (KahaDB, scheduler on) killed with SIGKILL mid-run and restarted on its
//! store, reached over STOMP.

use super::*;

const JAR: &str = "/usr/share/activemq/bin/activemq.jar";

struct ActiveMq {
    dir: PathBuf,
    stomp: u16,
    others: (u16, u16),
    child: Option<Child>,
}

impl ActiveMq {
    fn start() -> Self {
        let dir = temp_dir("activemq-fault");
        std::fs::create_dir_all(dir.join("conf")).expect("conf dir");
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/activemq.xml");
        std::fs::copy(&config, dir.join("conf/activemq.xml")).expect("broker file");
        let mut s = Self { dir, stomp: free_port(), others: (free_port(), free_port()), child: None };
        s.spawn();
        s
    }

    fn start_process(&mut self) {
        let d = self.dir.display();
        let mut cmd = Command::new("java");
        cmd.current_dir(&self.dir).args([
            "-Xms64m".to_owned(),
            "-Xmx256m".to_owned(),
            format!("-Dplatform.stomp.port={}", self.stomp),
            format!("-Dplatform.openwire.port={}", self.others.0),
            format!("-Dplatform.mqtt.port={}", self.others.1),
            "-Dactivemq.home=/usr/share/activemq".to_owned(),
            format!("-Dactivemq.base={d}"),
            format!("-Dactivemq.conf={d}/conf"),
            format!("-Dactivemq.data={d}/data"),
            "-jar".to_owned(),
            JAR.to_owned(),
            "start".to_owned(),
            format!("xbean:file:{d}/conf/activemq.xml"),
        ]);
        self.child = Some(spawn(&mut cmd));
    }
}

impl Restartable for ActiveMq {
    fn port(&self) -> u16 {
        self.stomp
    }

    fn child(&mut self) -> &mut Option<Child> {
        &mut self.child
    }

    fn spawn(&mut self) {
        self.start_process();
    }
}

impl Drop for ActiveMq {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            kill(c);
        }
        remove_dir(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_activemq_kill_and_restart_loses_nothing() {
    if !Path::new(JAR).is_file() || find_binary("java", &[]).is_none() {
        return missing("ActiveMQ (Debian package activemq) or java");
    }
    let mut server = ActiveMq::start();
    wait_port(server.stomp, true).await;
    let url = format!("stomp://127.0.0.1:{}?queue={}&visibility_timeout=2s", server.stomp, unique_name("fault"));
    let queue =
        eventually(Duration::from_secs(30), || async { platform_queue::open(&url).await.ok() }).await.expect("open");
    assert!(queue.capabilities().delay, "the scheduler is on in scripts/activemq.xml");
    let total = 600;
    let (received, duplicates) = run_through_crash(queue, total, || kill_and_restart(&mut server)).await;
    report("stomp on activemq", total, received, duplicates);
}
