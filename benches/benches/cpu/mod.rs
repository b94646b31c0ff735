//! CPU per message, on the client and on the server, for the loops of the queue bench:
//! `cargo bench -p platform-benches --bench queue -- --cpu redis 100 5` (backend, batch,
//! rounds). Criterion times whole iterations, and on a machine whose cores are shared
//! with other guests those times spread widely; the CPU each side spends per message
//! moves much less, and says which side a change saved. Each round runs every loop once,
//! in turn, so drift in the machine falls on all of them alike. Linux only (`/proc`).

use std::time::Duration;

/// Nanoseconds on CPU of every live thread of process `pid`.
pub(crate) fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Nanoseconds on CPU of process `root` and its children, live or ended: a
/// PostgreSQL server and its backends, autovacuum workers included. Ended children
/// count in clock ticks, as `root`'s `/proc` stat gives them (taken as 100 a second).
pub(crate) fn tree_cpu_ns(root: u32) -> u64 {
    let stat = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    // `pid (comm) state ppid …`: the command may hold spaces and parentheses, so the
    // fields are counted from the last `)`; `state` is field 0 there.
    let fields = |s: &str| -> Vec<u64> {
        s.rfind(')')
            .map_or_else(Vec::new, |at| s[at + 1..].split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
    };
    let ended = stat(root).map_or(0, |s| {
        let f = fields(&s);
        // cutime and cstime: fields 16 and 17 of the stat line, 13 and 14 here.
        (f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0)) * 10_000_000
    });
    let Ok(all) = std::fs::read_dir("/proc") else { return 0 };
    let children = all
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|s| fields(&s).get(1) == Some(&u64::from(root))));
    cpu_ns(root) + ended + children.map(cpu_ns).sum::<u64>()
}

/// The first line of a pid file, as a pid.
pub(crate) fn pid_in(file: &str) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.lines().next()?.trim().parse().ok()
}

/// The process that listens on TCP `port` on this machine (IPv4 or IPv6), found from
/// the socket's inode in `/proc/net/tcp*` and the open files of each process; `None`
/// when no listener is found or its process's files are not readable.
pub(crate) fn pid_listening(port: u16) -> Option<u32> {
    let wanted = format!(":{port:04X}");
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| {
                    // `sl local rem st … inode`: state 0A is LISTEN; the inode is field 9.
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let inode = f.get(9)?;
                    (f.get(1)?.ends_with(&wanted) && *f.get(3)? == "0A").then(|| format!("socket:[{inode}]"))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    std::fs::read_dir("/proc").ok()?.filter_map(Result::ok).find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(e.path().join("fd")).ok()?;
        fds.filter_map(Result::ok)
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
            .then_some(pid)
    })
}

/// What one measurement of one loop cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    wall: Duration,
    client_ns: u64,
    server_ns: Option<u64>,
    messages: usize,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.wall.as_secs_f64()
    }

    fn client_us(&self) -> f64 {
        self.client_ns as f64 / 1e3 / self.messages as f64
    }

    fn server_us(&self) -> Option<f64> {
        self.server_ns.map(|ns| ns as f64 / 1e3 / self.messages as f64)
    }
}

/// Runs `iteration` `iters` times on `rt` (each settles `per_iteration` messages) and
/// reads the CPU both sides spent meanwhile; `server` reads the server's, when it can.
pub(crate) fn measure<F, Fut>(
    rt: &tokio::runtime::Runtime,
    server: &dyn Fn() -> Option<u64>,
    iters: usize,
    per_iteration: usize,
    mut iteration: F,
) -> Sample
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Duration>,
{
    let me = std::process::id();
    let (client, host) = (cpu_ns(me), server());
    // The times the iterations report, as criterion takes them: a loop's setup (a
    // fresh stream, say) is left out of its time, though not out of its CPU.
    let wall = rt.block_on(async {
        let mut wall = Duration::ZERO;
        for _ in 0..iters {
            wall += iteration().await;
        }
        wall
    });
    Sample {
        wall,
        client_ns: cpu_ns(me).saturating_sub(client),
        server_ns: server().zip(host).map(|(after, before)| after.saturating_sub(before)),
        messages: iters * per_iteration,
    }
}

/// Prints one line per sample as it comes, and the medians at the end.
#[derive(Debug, Default)]
pub(crate) struct Report {
    rows: Vec<(String, Sample)>,
    only: Option<String>,
}

impl Report {
    /// A report of the loops whose label holds `only`, or of every loop.
    pub(crate) fn only(only: Option<String>) -> Self {
        Self { rows: Vec::new(), only }
    }

    /// Measures the loop `label` with `measure`, unless it is left out.
    pub(crate) fn run(&mut self, label: &str, round: usize, measure: impl FnOnce() -> Sample) {
        if self.only.as_ref().is_none_or(|o| label.contains(o.as_str())) {
            let s = measure();
            self.add(label, round, s);
        }
    }

    fn add(&mut self, label: &str, round: usize, s: Sample) {
        let server = s.server_us().map_or_else(|| "n/a".to_owned(), |us| format!("{us:.1}"));
        println!(
            "round {round} {label:<24} {:>9.0} msgs/s  client {:>6.1} µs/msg  server {server:>6} µs/msg",
            s.rate(),
            s.client_us()
        );
        self.rows.push((label.to_owned(), s));
    }

    pub(crate) fn summary(&self) {
        let mut labels: Vec<&str> = self.rows.iter().map(|(l, _)| l.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        println!("median of each loop:");
        for label in labels {
            let of = |f: &dyn Fn(&Sample) -> Option<f64>| {
                let mut v: Vec<f64> = self.rows.iter().filter(|(l, _)| l == label).filter_map(|(_, s)| f(s)).collect();
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied()
            };
            let server = of(&|s| s.server_us()).map_or_else(|| "n/a".to_owned(), |us| format!("{us:.1}"));
            println!(
                "{label:<24} {:>9.0} msgs/s  client {:>6.1} µs/msg  server {server:>6} µs/msg",
                of(&|s| Some(s.rate())).unwrap_or_default(),
                of(&|s| Some(s.client_us())).unwrap_or_default()
            );
        }
    }
}
