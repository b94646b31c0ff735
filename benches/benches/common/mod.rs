//! What every bench shares: the runtime, the timing loop and the server URLs.

use std::time::Duration;

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
