//! Retry with exponential backoff that retries only retryable errors.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::Result;

/// How to retry: exponential backoff with optional jitter, bounded by attempts and time.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub initial_delay: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
    /// Growth factor per attempt.
    pub factor: f32,
    /// Whether to add random jitter (up to one more delay) to each wait.
    pub jitter: bool,
    /// Total attempts, the first included (`1` means no retry).
    pub max_attempts: u32,
    /// Give up once this much time has passed since the first attempt.
    pub max_elapsed: Option<Duration>,
}

impl Default for RetryPolicy {
    /// 100 ms, doubling, at most 30 s apart, with jitter, 5 attempts.
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            factor: 2.0,
            jitter: true,
            max_attempts: 5,
            max_elapsed: None,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn never() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// Sets the first delay.
    #[must_use]
    pub fn with_initial_delay(mut self, d: Duration) -> Self {
        self.initial_delay = d;
        self
    }

    /// Sets the longest delay.
    #[must_use]
    pub fn with_max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Sets the growth factor.
    #[must_use]
    pub fn with_factor(mut self, factor: f32) -> Self {
        self.factor = factor;
        self
    }

    /// Turns jitter on or off.
    #[must_use]
    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the total number of attempts, the first included.
    #[must_use]
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the time budget.
    #[must_use]
    pub fn with_max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = Some(d);
        self
    }

    fn builder(&self) -> ExponentialBuilder {
        let b = ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor.max(1.0))
            .with_max_times(self.max_attempts.saturating_sub(1) as usize);
        if self.jitter { b.with_jitter() } else { b }
    }

    /// The delays between attempts, in order (`max_attempts - 1` of them).
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        self.builder().build()
    }

    /// The wait before retry number `retry` (1 for the first retry), or `None` past
    /// the last attempt. Used by queue workers to turn a failure into `nack(delay)`.
    pub fn delay_for(&self, retry: u32) -> Option<Duration> {
        if retry == 0 {
            return Some(Duration::ZERO);
        }
        self.delays().nth(retry as usize - 1)
    }
}

/// Runs `op` until it succeeds, fails with an error that is not retryable, or the
/// policy runs out. Never waits less than an error's `retry_after`.
///
/// ```
/// # tokio_test_block_on(async {
/// use platform_core::{retry, Error, RetryPolicy};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// let calls = AtomicU32::new(0);
/// let policy = RetryPolicy::default().with_initial_delay(Duration::from_millis(1));
/// let n = retry(&policy, || async {
///     match calls.fetch_add(1, Ordering::SeqCst) {
///         0 => Err(Error::unavailable("try again")),
///         n => Ok(n),
///     }
/// }).await.unwrap();
/// assert_eq!(n, 1);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
/// # }
/// ```
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = tokio::time::Instant::now();
    let mut delays = policy.delays();
    loop {
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => e,
        };
        let Some(delay) = delays.next() else { return Err(err) };
        let delay = delay.max(err.retry_after().unwrap_or_default());
        if policy.max_elapsed.is_some_and(|max| started.elapsed() + delay > max) {
            return Err(err);
        }
        tracing::debug!(error = %err, delay_ms = delay.as_millis() as u64, "retrying");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, ErrorKind};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy::default().with_initial_delay(Duration::from_millis(10)).with_jitter(false)
    }

    #[test]
    fn delays_grow_and_cap() {
        let p = fast().with_max_delay(Duration::from_millis(50)).with_max_attempts(6);
        // backon computes in f32: allow a millisecond of rounding.
        let d: Vec<u64> = p.delays().map(|d| (d.as_micros() as u64 + 500) / 1000).collect();
        assert_eq!(d, vec![10, 20, 40, 50, 50]);
        assert_eq!(p.delay_for(1).map(|d| (d.as_micros() + 500) / 1000), Some(10));
        assert_eq!(p.delay_for(3).map(|d| (d.as_micros() + 500) / 1000), Some(40));
        assert_eq!(p.delay_for(6), None);
        assert_eq!(RetryPolicy::never().delays().count(), 0);
        let jittered = fast().with_jitter(true);
        for d in jittered.delays() {
            assert!(d >= Duration::from_millis(10));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_retryable_errors() {
        let calls = AtomicU32::new(0);
        let err = retry(&fast(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Error::invalid_input("bad"))
        })
        .await
        .unwrap_err();
        assert!(err.is_invalid_input());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let err = retry(&fast().with_max_attempts(3), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Error::new(ErrorKind::Timeout, "slow"))
        })
        .await
        .unwrap_err();
        assert!(err.is_timeout());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        retry(&fast(), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(Error::new(ErrorKind::RateLimited, "wait").with_retry_after(Duration::from_secs(5))),
                _ => Ok(()),
            }
        })
        .await
        .unwrap();
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_max_elapsed() {
        let calls = AtomicU32::new(0);
        let policy = fast()
            .with_max_attempts(100)
            .with_max_delay(Duration::from_secs(1))
            .with_max_elapsed(Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        let _ = retry(&policy, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Error::unavailable("down"))
        })
        .await;
        assert!(started.elapsed() <= Duration::from_secs(3));
        assert!(calls.load(Ordering::SeqCst) < 100);
        assert!(calls.load(Ordering::SeqCst) > 3);
    }

    #[tokio::test]
    async fn override_makes_an_error_retryable() {
        let calls = AtomicU32::new(0);
        let v = retry(&fast(), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(Error::internal("flaky").with_retryable(true)),
                n => Ok(n),
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 1);
    }
}
