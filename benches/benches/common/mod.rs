//! What every bench shares: the runtime, the timing loop and the server URLs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Two worker threads: the machine has two cores.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Runs `iters` iterations, each timing itself, and sums what they measured.
pub(crate) fn timed<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, mut iteration: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    rt.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            total += iteration().await;
        }
        total
    })
}

/// `PLATFORM_TEST_<NAME>_URL`, when set.
pub(crate) fn url(name: &str) -> Option<String> {
    std::env::var(format!("PLATFORM_TEST_{name}_URL")).ok().filter(|u| !u.is_empty())
}

/// Counts what the consumers of one iteration settled, and tells every consumer the
/// moment the last one is in: a consumer waiting on an empty queue stops then, instead
/// of when its wait runs out (which would time the wait, not the work).
#[derive(Debug, Default)]
#[allow(dead_code)] // the store bench has no consumers
pub(crate) struct Done {
    count: AtomicUsize,
    target: usize,
    all: CancellationToken,
}

#[allow(dead_code)]
impl Done {
    pub(crate) fn new(target: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self { target, ..Self::default() })
    }

    /// Whether messages are still outstanding.
    pub(crate) fn more(&self) -> bool {
        !self.all.is_cancelled()
    }

    /// Counts `n` more settled messages.
    pub(crate) fn add(&self, n: usize) {
        if self.count.fetch_add(n, Ordering::Relaxed) + n >= self.target {
            self.all.cancel();
        }
    }

    /// `work`'s output, or `None` once everything is settled.
    pub(crate) async fn or_done<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            () = self.all.cancelled() => None,
            out = work => Some(out),
        }
    }
}
