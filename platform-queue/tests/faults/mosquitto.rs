//! Mosquitto (persistence on, scripts/mosquitto.conf) killed with SIGKILL mid-run and
//! restarted on its store; the member's session resumes and gets back what it held.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_mosquitto_kill_and_restart_loses_nothing() {
    if find_binary("mosquitto", &[PathBuf::from("/usr/sbin")]).is_none() {
        return missing("mosquitto");
    }
    let (dir, port) = (temp_dir("mosquitto-fault"), free_port());
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mosquitto.conf");
    let mut conf = std::fs::read_to_string(template).expect("scripts/mosquitto.conf");
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    conf.push_str(&format!("listener {port} 127.0.0.1\npersistence_location {}/\nuser {user}\n", dir.display()));
    let conf_file = dir.join("mosquitto.conf");
    std::fs::write(&conf_file, conf).expect("config");
    let mut server = Private::start(port, Some(dir), move || {
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(&conf_file);
        cmd
    })
    .await;
    let url = format!(
        "mqtt://127.0.0.1:{port}?queue={}&visibility_timeout=5s&member=fault&session_expiry=5m",
        unique_name("fault")
    );
    let queue =
        eventually(Duration::from_secs(30), || async { platform_queue::open(&url).await.ok() }).await.expect("open");
    let total = 600;
    let (received, duplicates) = run_through_crash(queue, total, || server.kill_and_restart()).await;
    report("mqtt on mosquitto", total, received, duplicates);
}
