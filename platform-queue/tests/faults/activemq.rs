//! ActiveMQ (KahaDB, scheduler on) killed with SIGKILL mid-run and restarted on its
//! store, reached over STOMP.

use super::*;

const JAR: &str = "/usr/share/activemq/bin/activemq.jar";

/// Starts ActiveMQ with its base in `dir`, STOMP on `stomp` and the other
/// connectors on `others`.
fn activemq(dir: &Path, stomp: u16, others: (u16, u16)) -> Command {
    let d = dir.display();
    let mut cmd = Command::new("java");
    cmd.current_dir(dir).args([
        "-Xms64m".to_owned(),
        "-Xmx256m".to_owned(),
        format!("-Dplatform.stomp.port={stomp}"),
        format!("-Dplatform.openwire.port={}", others.0),
        format!("-Dplatform.mqtt.port={}", others.1),
        "-Dactivemq.home=/usr/share/activemq".to_owned(),
        format!("-Dactivemq.base={d}"),
        format!("-Dactivemq.conf={d}/conf"),
        format!("-Dactivemq.data={d}/data"),
        "-jar".to_owned(),
        JAR.to_owned(),
        "start".to_owned(),
        format!("xbean:file:{d}/conf/activemq.xml"),
    ]);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_activemq_kill_and_restart_loses_nothing() {
    if !Path::new(JAR).is_file() || find_binary("java", &[]).is_none() {
        return missing("ActiveMQ (Debian package activemq) or java");
    }
    let dir = temp_dir("activemq-fault");
    std::fs::create_dir_all(dir.join("conf")).expect("conf dir");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/activemq.xml");
    std::fs::copy(&config, dir.join("conf/activemq.xml")).expect("broker file");
    let (stomp, others, base) = (free_port(), (free_port(), free_port()), dir.clone());
    let mut server = Private::start(stomp, Some(dir), move || activemq(&base, stomp, others)).await;
    let url = format!("stomp://127.0.0.1:{stomp}?queue={}&visibility_timeout=2s", unique_name("fault"));
    let queue =
        eventually(Duration::from_secs(30), || async { platform_queue::open(&url).await.ok() }).await.expect("open");
    assert!(queue.capabilities().delay, "the scheduler is on in scripts/activemq.xml");
    let total = 600;
    let (received, duplicates) = run_through_crash(queue, total, || server.kill_and_restart()).await;
    report("stomp on activemq", total, received, duplicates);
}
