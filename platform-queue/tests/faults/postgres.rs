//! PostgreSQL (a private cluster made with initdb) killed with SIGKILL mid-run and restarted.

use super::*;

struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// initdb and postgres refuse to run as root: run them as `postgres` when we are root.
/// The server is our own child either way, so a kill is reaped and leaves no zombie
/// that would keep its pid file alive.
fn as_postgres(bin: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let id = |flag: &str, user: Option<&str>| -> Option<u32> {
        let out = Command::new("id").arg(flag).args(user).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    let mut cmd = Command::new(bin);
    if id("-u", None) == Some(0)
        && let (Some(uid), Some(gid)) = (id("-u", Some("postgres")), id("-g", Some("postgres")))
    {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

impl PgServer {
    fn start(bin_dir: PathBuf) -> Self {
        let dir = temp_dir("pg-fault");
        let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
        let data = dir.join("data");
        let status = as_postgres(&bin_dir.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        let mut s = Self { bin: bin_dir.join("postgres"), dir, port: free_port(), child: None };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = as_postgres(&self.bin);
        cmd.arg("-D").arg(self.dir.join("data")).args(["-p", &self.port.to_string(), "-k"]).arg(&self.dir).args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=on",
        ]);
        self.child = Some(spawn(&mut cmd));
    }

    /// SIGKILL the postmaster and its children, like a crashed machine would.
    fn crash(&mut self) {
        if let Some(c) = &mut self.child {
            kill(c);
        }
        let _ = Command::new("pkill").args(["-9", "-f", "--"]).arg(self.dir.display().to_string()).status();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.crash();
        remove_dir(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kill_and_restart_loses_nothing() {
    let bin_dir = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
        d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").is_file()).max()
    });
    let Some(bin_dir) = bin_dir else { return missing("PostgreSQL server binaries (initdb)") };
    let mut server = PgServer::start(bin_dir);
    wait_port(server.port, true).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?queue={}&visibility_timeout=2s",
        server.port,
        unique_name("fault")
    );
    let queue =
        eventually(Duration::from_secs(30), || async { platform_queue::open(&url).await.ok() }).await.expect("open");
    let total = 1000;
    let (received, duplicates) = run_through_crash(queue, total, || async {
        server.crash();
        wait_port(server.port, false).await;
        // A crashed postmaster leaves its pid file; postgres starts anyway and recovers from WAL.
        server.spawn();
        wait_port(server.port, true).await;
    })
    .await;
    report("postgres", total, received, duplicates);
}
