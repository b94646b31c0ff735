//! Helpers for tests against real servers, shared by every platform crate.
//!
//! Not semver-stable beyond the crate's major version.
//!
//! - [`server_url`] reads `PLATFORM_TEST_<NAME>_URL`. Unset, the test is skipped with
//!   a printed reason, unless `PLATFORM_TEST_REQUIRE_ALL=1`, where a skip is a failure.
//! - [`eventually`] waits on a condition with a deadline (never sleep-then-assert).
//! - [`unique_name`] and [`unique_ident`] give names no other test run uses.

use std::future::Future;
use std::time::Duration;

use crate::{Error, ErrorKind, Result};

/// The variable that turns every skip into a failure (CI sets it).
pub const REQUIRE_ALL_VAR: &str = "PLATFORM_TEST_REQUIRE_ALL";

/// The file to which every skip appends one line (set by `scripts/test` to count skips).
pub const SKIP_LOG_VAR: &str = "PLATFORM_TEST_SKIP_LOG";

/// The variable that holds the URL of server `name` (`REDIS` → `PLATFORM_TEST_REDIS_URL`).
pub fn server_var(name: &str) -> String {
    format!("PLATFORM_TEST_{}_URL", name.to_ascii_uppercase())
}

/// Whether skips are failures in this run.
pub fn require_all() -> bool {
    std::env::var(REQUIRE_ALL_VAR).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// The URL of test server `name`, from `PLATFORM_TEST_<NAME>_URL`.
///
/// Unset or empty: prints `skipped: set PLATFORM_TEST_<NAME>_URL` and returns `None`,
/// so the test returns early; with `PLATFORM_TEST_REQUIRE_ALL=1` it panics instead.
///
/// ```no_run
/// # async fn t() {
/// let Some(url) = platform_core::testkit::server_url("REDIS") else { return };
/// # let _ = url; }
/// ```
#[track_caller]
pub fn server_url(name: &str) -> Option<String> {
    let var = server_var(name);
    match std::env::var(&var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => {
            skip(&format!("set {var}"));
            None
        }
    }
}

/// The program a test drives (a contract checker, a browser), from
/// `PLATFORM_TEST_<NAME>_BIN` (`scripts/services.env` points it at what
/// `scripts/start-services` installed).
///
/// Unset, or not a file: skipped as [`server_url`] does (a failure with
/// `PLATFORM_TEST_REQUIRE_ALL=1`).
#[track_caller]
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    let var = format!("PLATFORM_TEST_{}_BIN", name.to_ascii_uppercase());
    match std::env::var(&var) {
        Ok(v) if std::path::Path::new(v.trim()).is_file() => Some(v.trim().into()),
        Ok(v) if !v.trim().is_empty() => {
            skip(&format!("{var}={v} is not a file (scripts/start-services installs it)"));
            None
        }
        _ => {
            skip(&format!("set {var}"));
            None
        }
    }
}

/// The flags headless Chromium runs with in tests (no sandbox, GPU, background
/// networking, component updates or first-run screens), with a fresh profile in
/// `profile`; the caller adds what it does (`--dump-dom`, `--screenshot=…`) and the URL.
pub fn chromium_flags(profile: &std::path::Path) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ]
    .map(String::from)
    .to_vec();
    flags.push(format!("--user-data-dir={}", profile.display()));
    flags
}

/// Reports a skipped test with `reason`; panics when skips are failures.
#[track_caller]
pub fn skip(reason: &str) {
    if require_all() {
        panic!("test cannot be skipped with {REQUIRE_ALL_VAR}=1: {reason}");
    }
    println!("skipped: {reason}");
    eprintln!("skipped: {reason}");
    // scripts/test counts skips from this file, since the test harness hides output.
    if let Ok(path) = std::env::var(SKIP_LOG_VAR) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{reason}");
        }
    }
}

/// Polls `condition` every 20 ms (growing to 200 ms) until it yields `Some`, or fails
/// with `Timeout` after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut condition: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = condition().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= until {
            return Err(Error::new(ErrorKind::Timeout, format!("condition not met within {deadline:?}")));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A name no other run uses: `prefix-` and 12 random lowercase hex digits
/// (fits queue, bucket and topic naming rules).
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", prefix.to_ascii_lowercase(), &id[..12])
}

/// Like [`unique_name`] with `_` instead of `-`, for SQL schemas and identifiers.
pub fn unique_ident(prefix: &str) -> String {
    unique_name(prefix).replace('-', "_")
}

/// Compares `text` with the golden file at `path`; with `PLATFORM_UPDATE_GOLDEN` set,
/// writes it there first. For conversations and rendered SQL that must not drift.
pub fn assert_golden(path: &std::path::Path, text: &str) {
    if std::env::var_os("PLATFORM_UPDATE_GOLDEN").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the golden file's directory");
        }
        std::fs::write(path, text).expect("the golden file");
    }
    let want = std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(text, want, "{} differs (PLATFORM_UPDATE_GOLDEN=1 rewrites it)", path.display());
}

/// How long one behaviour may run before it fails: a wedged server fails its tests
/// instead of hanging the whole run.
pub const BEHAVIOUR_DEADLINE: std::time::Duration = std::time::Duration::from_secs(180);

/// Writes a module `$backend` with one `#[tokio::test]` per behaviour, each calling
/// `kit::behaviour(&harness)` (where `kit` is the testkit at path `$kit`) when
/// `harness` (an `Option`) is `Some`, and failing after [`BEHAVIOUR_DEADLINE`]. The
/// crates' `conformance_tests!` macros are this over their behaviour lists.
#[doc(hidden)]
#[macro_export]
macro_rules! behaviour_tests {
    ($backend:ident, $($kit:ident)::+, $harness:expr, $($behaviour:ident),+) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            use $($kit)::+ as kit;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let Some(harness) = $harness else { return };
                    let deadline = $crate::testkit::BEHAVIOUR_DEADLINE;
                    if tokio::time::timeout(deadline, kit::$behaviour(&harness)).await.is_err() {
                        panic!("{} did not finish within {deadline:?}", stringify!($behaviour));
                    }
                }
            )+
        }
    };
}

/// Runs each behaviour in turn with the harness `$h`: what a testkit's `run_all` is made of.
#[doc(hidden)]
#[macro_export]
macro_rules! run_behaviours {
    ($h:expr, $($behaviour:ident),+) => {
        $( $behaviour($h).await; )+
    };
}

/// Private servers for fault tests: started on a free port and a data directory of
/// their own (never the shared ones), killed with SIGKILL and started again on the
/// same data.
pub mod server {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use super::{eventually, unique_name};

    /// A port nothing listens on now.
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
    }

    /// `name` on `PATH` or in one of `extra_dirs`.
    pub fn find_binary(name: &str, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).chain(extra_dirs.iter().cloned()).map(|d| d.join(name)).find(|p| p.is_file())
    }

    fn port_open(port: u16) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }

    /// Waits until `port` accepts connections (`up`, 90 s at most: a JVM broker
    /// recovering its store on two loaded cores has taken over 30) or refuses them
    /// (30 s at most).
    pub async fn wait_port(port: u16, up: bool) {
        let deadline = Duration::from_secs(if up { 90 } else { 30 });
        eventually(deadline, || async move { (port_open(port) == up).then_some(()) })
            .await
            .unwrap_or_else(|_| panic!("port {port} never became {}", if up { "open" } else { "closed" }));
    }

    /// A fresh directory under the system's temp directory.
    pub fn temp_dir(prefix: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// SIGKILL, then reap.
    pub fn kill(child: &mut Child) {
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts `cmd` with its output discarded.
    pub fn spawn(cmd: &mut Command) -> Child {
        cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start server")
    }

    /// Removes `dir` and everything in it, if it is there.
    pub fn remove_dir(dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A private server: `command` starts it listening on `port`; `dir`, its data, is
    /// removed on drop, when the server is killed too.
    pub struct PrivateServer {
        port: u16,
        dir: Option<PathBuf>,
        command: Box<dyn Fn() -> Command + Send>,
        child: Option<Child>,
    }

    impl std::fmt::Debug for PrivateServer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PrivateServer").field("port", &self.port).field("dir", &self.dir).finish_non_exhaustive()
        }
    }

    impl PrivateServer {
        /// Starts the server and waits until it listens.
        pub async fn start(port: u16, dir: Option<PathBuf>, command: impl Fn() -> Command + Send + 'static) -> Self {
            let mut s = Self { port, dir, command: Box::new(command), child: None };
            s.child = Some(spawn(&mut (s.command)()));
            wait_port(port, true).await;
            s
        }

        /// A Redis on a free port keeping its data in an append-only file synced on
        /// every write, in a temp directory; `None` when `redis-server` is not found.
        pub async fn redis_aof() -> Option<Self> {
            let bin = find_binary("redis-server", &[])?;
            let (dir, port) = (temp_dir("redis-private"), free_port());
            let data = dir.clone();
            let server = Self::start(port, Some(dir), move || {
                let mut cmd = Command::new(&bin);
                cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
                    .args(["--appendonly", "yes", "--appendfsync", "always"])
                    .arg("--dir")
                    .arg(&data);
                cmd
            });
            Some(server.await)
        }

        /// A NATS server with JetStream storing on disk in a temp directory, on a free
        /// port; `None` when `nats-server` is not found.
        pub async fn nats_jetstream() -> Option<Self> {
            let bin = find_binary("nats-server", &[PathBuf::from("/usr/sbin")])?;
            let (dir, port) = (temp_dir("nats-private"), free_port());
            let data = dir.clone();
            let server = Self::start(port, Some(dir), move || {
                let mut cmd = Command::new(&bin);
                cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]).arg(&data);
                cmd
            });
            Some(server.await)
        }

        /// The port it listens on.
        pub fn port(&self) -> u16 {
            self.port
        }

        /// Kills it with SIGKILL, waits until the port is closed, starts it again on
        /// the same data and waits until it listens.
        pub async fn kill_and_restart(&mut self) {
            self.kill().await;
            self.restart().await;
        }

        /// Kills it with SIGKILL and waits until the port is closed: an outage until
        /// [`restart`](Self::restart).
        pub async fn kill(&mut self) {
            if let Some(child) = self.child.as_mut() {
                kill(child);
            }
            self.child = None;
            wait_port(self.port, false).await;
        }

        /// Starts it again on the same data (after [`kill`](Self::kill)) and waits
        /// until it listens.
        pub async fn restart(&mut self) {
            self.child = Some(spawn(&mut (self.command)()));
            wait_port(self.port, true).await;
        }
    }

    impl Drop for PrivateServer {
        fn drop(&mut self) {
            if let Some(c) = &mut self.child {
                kill(c);
            }
            if let Some(dir) = &self.dir {
                remove_dir(dir);
            }
        }
    }

    /// A private PostgreSQL cluster: `initdb` in a temp directory, `fsync=on`, trust
    /// authentication for user `postgres`, on a free port; killed and removed on drop.
    #[derive(Debug)]
    pub struct PrivatePostgres {
        bin: PathBuf,
        dir: PathBuf,
        port: u16,
        child: Option<Child>,
    }

    /// initdb and postgres refuse to run as root: run them as `postgres` when we are
    /// root. The server is our own child either way, so a kill is reaped and leaves no
    /// zombie that would keep its pid file alive.
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

    impl PrivatePostgres {
        /// Makes a cluster and starts it, waiting until it listens; `None` when the
        /// server binaries (`/usr/lib/postgresql/*/bin/initdb`) are not installed.
        pub async fn start() -> Option<Self> {
            let bin_dir = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
                d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").is_file()).max()
            })?;
            let dir = temp_dir("pg-private");
            let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
            let status = as_postgres(&bin_dir.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(dir.join("data"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("initdb");
            assert!(status.success(), "initdb failed");
            let mut s = Self { bin: bin_dir.join("postgres"), dir, port: free_port(), child: None };
            s.spawn();
            wait_port(s.port, true).await;
            Some(s)
        }

        /// The port it listens on.
        pub fn port(&self) -> u16 {
            self.port
        }

        /// `postgres://postgres@127.0.0.1:{port}/postgres`.
        pub fn url(&self) -> String {
            format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
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

        /// SIGKILL the postmaster and its children, as a crashed machine would.
        fn crash(&mut self) {
            if let Some(c) = &mut self.child {
                kill(c);
            }
            let _ = Command::new("pkill").args(["-9", "-f", "--"]).arg(self.dir.display().to_string()).status();
        }

        /// Kills it with SIGKILL, waits until the port is closed, starts it again (it
        /// recovers from its WAL; the crashed postmaster's pid file does not stop it)
        /// and waits until it listens.
        pub async fn kill_and_restart(&mut self) {
            self.crash();
            wait_port(self.port, false).await;
            self.spawn();
            wait_port(self.port, true).await;
        }
    }

    impl Drop for PrivatePostgres {
        fn drop(&mut self) {
            self.crash();
            remove_dir(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn names_are_unique_and_valid() {
        let a = unique_name("Jobs");
        assert_ne!(a, unique_name("Jobs"));
        assert!(a.starts_with("jobs-") && a.len() == 17, "{a}");
        assert!(unique_ident("t").chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert_eq!(server_var("redis"), "PLATFORM_TEST_REDIS_URL");
    }

    #[test]
    fn unset_server_is_a_skip_or_a_failure() {
        let outcome = std::panic::catch_unwind(|| server_url("SURELY_NOT_SET_ANYWHERE"));
        match outcome {
            Ok(url) => {
                assert!(!require_all());
                assert_eq!(url, None);
            }
            Err(_) => assert!(require_all()),
        }
    }

    #[tokio::test]
    async fn eventually_waits_for_the_condition() {
        let n = AtomicU32::new(0);
        let v =
            eventually(Duration::from_secs(5), || async { (n.fetch_add(1, Ordering::SeqCst) >= 3).then_some(7) }).await;
        assert_eq!(v.unwrap(), 7);
        let err = eventually(Duration::from_millis(50), || async { None::<()> }).await.unwrap_err();
        assert!(err.is_timeout());
    }
}
