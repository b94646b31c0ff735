//! `Worker`: runs a handler over a queue with concurrency, retries, lease extension
//! and graceful shutdown.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use platform_core::{CORRELATION_ID_HEADER, CorrelationId, ErrorKind, Result, RetryPolicy, with_correlation};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{Delivery, Queue, ReceiveOptions};

/// What a worker runs for each message.
///
/// `Ok` acks the message. `Err` nacks it with the retry policy's delay, so it comes
/// back later with its attempt count one higher, and is dead-lettered after the
/// queue's `max_attempts`; an `InvalidInput` error dead-letters it at once (a
/// message that cannot be decoded will not get better). A panic counts as a failure.
/// A handler may settle the delivery itself; the worker then leaves it alone.
///
/// Closures `Fn(Arc<Delivery>) -> impl Future<Output = Result<()>>` are handlers.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one message.
    async fn handle(&self, delivery: Arc<Delivery>) -> Result<()>;
}

#[async_trait]
impl<F, Fut> Handler for F
where
    F: Fn(Arc<Delivery>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    async fn handle(&self, delivery: Arc<Delivery>) -> Result<()> {
        self(delivery).await
    }
}

/// Settles (acks, nacks) a worker keeps in flight after their handlers returned; a
/// handler that returns while this many are in flight keeps its slot until one lands.
pub const SETTLES_IN_FLIGHT: usize = 256;

/// How a worker runs.
///
/// The defaults reach a backend's speed with handlers that take no time, and need no
/// tuning for that, nor hoard messages when handlers are slow:
/// - a handler's slot frees when it returns, while its ack goes on in the background
///   (up to [`SETTLES_IN_FLIGHT`] at once, gathered into batch acks where the backend
///   has them), so `concurrency` bounds only handlers that run, not ack round trips;
/// - each receive asks for the free slots plus what the handlers will finish during
///   two receive round trips (measured as it runs), at most `prefetch`: fast handlers
///   get full batches, slow ones fetch little ahead and leave the rest to competing
///   workers.
///
/// Raise `concurrency` for handlers that wait on I/O (each waits in its own slot).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Handlers running at once.
    pub concurrency: usize,
    /// Messages fetched ahead of free handlers at most (0: fetch only for free
    /// handlers); how many are, follows the handlers' pace (see [`WorkerConfig`]).
    pub prefetch: usize,
    /// Delays between attempts of a failing message (turned into `nack(delay)`).
    pub retry: RetryPolicy,
    /// How long one `receive` waits for messages.
    pub poll_wait: Duration,
    /// How long shutdown waits for running handlers before giving their messages back.
    pub shutdown_timeout: Duration,
}

impl Default for WorkerConfig {
    /// 4 handlers, up to 100 fetched ahead, the default retry policy, 1 s polls, 30 s
    /// to drain.
    fn default() -> Self {
        Self {
            concurrency: 4,
            prefetch: 100,
            retry: RetryPolicy::default().with_max_attempts(u32::MAX),
            poll_wait: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl WorkerConfig {
    /// Sets the concurrency (at least 1).
    #[must_use]
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Sets the prefetch bound.
    #[must_use]
    pub fn with_prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// Sets the retry policy.
    #[must_use]
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets the poll wait.
    #[must_use]
    pub fn with_poll_wait(mut self, d: Duration) -> Self {
        self.poll_wait = d;
        self
    }

    /// Sets the shutdown timeout.
    #[must_use]
    pub fn with_shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }
}

/// Counters of a worker, readable while it runs.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Handled and acked.
    pub succeeded: AtomicU64,
    /// Failed and given back for a retry.
    pub retried: AtomicU64,
    /// Sent to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Handlers that panicked (also counted as retried or dead-lettered).
    pub panicked: AtomicU64,
    /// Given back unstarted or unfinished at shutdown, without an attempt counted.
    pub released: AtomicU64,
    /// Lease extensions made while handlers ran.
    pub extended: AtomicU64,
}

impl WorkerStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages finished for good (acked or dead-lettered).
    pub fn finished(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed) + self.dead_lettered.load(Ordering::Relaxed)
    }
}

/// Runs a [`Handler`] over a queue until its cancellation token fires.
///
/// ```
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use platform_queue::{Delivery, QueueExt, Worker, open};
/// use tokio_util::sync::CancellationToken;
///
/// let queue = open("memory://worker-doc").await?;
/// queue.send_bytes("job").await?;
/// let stop = CancellationToken::new();
/// let worker = Worker::new(queue, |job: Arc<Delivery>| async move {
///     assert_eq!(job.body().as_ref(), b"job");
///     Ok(())
/// });
/// let stats = worker.stats();
/// let running = tokio::spawn(worker.run(stop.clone()));
/// while stats.finished() < 1 { tokio::time::sleep(std::time::Duration::from_millis(5)).await; }
/// stop.cancel();
/// running.await.unwrap()?;
/// # Ok::<_, platform_queue::Error>(()) }).unwrap();
/// ```
pub struct Worker {
    queue: Arc<dyn Queue>,
    handler: Arc<dyn Handler>,
    config: WorkerConfig,
    stats: Arc<WorkerStats>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker").field("queue", &self.queue.to_string()).field("config", &self.config).finish()
    }
}

impl Worker {
    /// A worker running `handler` over `queue` with the default config.
    pub fn new(queue: Arc<dyn Queue>, handler: impl Handler) -> Self {
        Self { queue, handler: Arc::new(handler), config: WorkerConfig::default(), stats: Arc::default() }
    }

    /// Replaces the config.
    #[must_use]
    pub fn with_config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// The worker's counters, to watch while it runs.
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until `shutdown` fires, then drains: stops fetching, lets running handlers
    /// finish up to `shutdown_timeout`, gives back prefetched messages without counting
    /// an attempt, and never dead-letters on shutdown. Returns the counters.
    pub async fn run(self, shutdown: CancellationToken) -> Result<Arc<WorkerStats>> {
        let concurrency = self.config.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        let settles = Arc::new(Semaphore::new(SETTLES_IN_FLIGHT));
        let pace = Arc::new(Pace::default());
        let mut buffer: VecDeque<(Delivery, Instant)> = VecDeque::new();
        let mut running = tokio::task::JoinSet::new();
        let max_receive = self.queue.capabilities().max_receive;
        let handlers_stop = CancellationToken::new();

        while !shutdown.is_cancelled() {
            while running.try_join_next().is_some() {}
            if buffer.is_empty() {
                let ahead = pace.ahead(concurrency, self.config.prefetch);
                let want = (slots.available_permits() + ahead).clamp(1, max_receive);
                let options = ReceiveOptions::new(want, self.config.poll_wait);
                let asked = Instant::now();
                let got = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    got = self.queue.receive(options) => got,
                };
                if matches!(&got, Ok(ds) if !ds.is_empty()) {
                    Pace::record(&pace.receive_us, asked.elapsed());
                }
                match got {
                    Ok(ds) => buffer.extend(ds.into_iter().map(|d| (d, Instant::now()))),
                    Err(e) if e.kind() == ErrorKind::Cancelled => break,
                    Err(e) => {
                        tracing::warn!(queue = %self.queue, error = %e, "receive failed");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        }
                    }
                }
                continue;
            }
            // While every handler is busy, buffered messages keep their leases alive: wake
            // when the first of them is half way through its lease.
            let renew_in = buffer
                .iter()
                .map(|(d, fetched)| (d.lease() / 2).saturating_sub(fetched.elapsed()))
                .min()
                .unwrap_or(Duration::from_secs(1))
                .max(Duration::from_millis(10));
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = Arc::clone(&slots).acquire_owned() => p.expect("semaphore never closes"),
                _ = tokio::time::sleep(renew_in) => {
                    renew_buffered(&mut buffer).await;
                    continue;
                }
            };
            let Some((delivery, fetched)) = buffer.pop_front() else { continue };
            // The lease must run from hand-out: renew it when the message sat in the buffer.
            if fetched.elapsed() > delivery.lease() / 4
                && let Err(e) = delivery.extend(delivery.lease()).await
            {
                tracing::debug!(id = delivery.id(), error = %e, "lease lost while prefetched");
                continue;
            }
            let job = Job {
                delivery: Arc::new(delivery),
                handler: Arc::clone(&self.handler),
                retry: self.config.retry,
                stats: Arc::clone(&self.stats),
                queue: self.queue.queue_name().to_owned(),
                stop: handlers_stop.clone(),
            };
            running.spawn(job.run(permit, Arc::clone(&settles), Arc::clone(&pace)));
        }

        // Drain: nothing new starts; prefetched messages go back without penalty.
        for (delivery, _) in buffer.drain(..) {
            if delivery.release().await.is_ok() {
                WorkerStats::bump(&self.stats.released);
            }
        }
        let drained =
            tokio::time::timeout(self.config.shutdown_timeout, async { while running.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            // Handlers still running give their messages back, unpenalised.
            handlers_stop.cancel();
            while running.join_next().await.is_some() {}
        }
        Ok(self.stats)
    }
}

/// Extends the leases of buffered messages past half their lease; drops the ones whose
/// lease was lost (they come back to someone else).
async fn renew_buffered(buffer: &mut VecDeque<(Delivery, Instant)>) {
    let mut kept = VecDeque::with_capacity(buffer.len());
    for (d, fetched) in buffer.drain(..) {
        if fetched.elapsed() < d.lease() / 2 {
            kept.push_back((d, fetched));
            continue;
        }
        match d.extend(d.lease()).await {
            Ok(()) => kept.push_back((d, Instant::now())),
            Err(e) if e.is_conflict() => tracing::debug!(id = d.id(), "lease lost while prefetched"),
            Err(e) => {
                tracing::warn!(id = d.id(), error = %e, "could not extend a prefetched lease");
                kept.push_back((d, fetched));
            }
        }
    }
    *buffer = kept;
}

/// How fast handlers finish and receives return, as moving averages in µs (0: not yet
/// measured), for how many messages to fetch ahead.
#[derive(Default)]
struct Pace {
    handler_us: AtomicU64,
    receive_us: AtomicU64,
}

impl Pace {
    /// Folds `took` into the average at `slot` (weight 1/8).
    fn record(slot: &AtomicU64, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = slot.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { old - old / 8 + us / 8 };
        slot.store(new, Ordering::Relaxed);
    }

    /// What `concurrency` handlers finish during two receives, at most `cap`; nothing
    /// before both were measured.
    fn ahead(&self, concurrency: usize, cap: usize) -> usize {
        let (handler, receive) = (self.handler_us.load(Ordering::Relaxed), self.receive_us.load(Ordering::Relaxed));
        if handler == 0 || receive == 0 {
            return 0;
        }
        let n = 2 * concurrency as u64 * receive / handler;
        usize::try_from(n).unwrap_or(usize::MAX).min(cap)
    }
}

struct Job {
    delivery: Arc<Delivery>,
    handler: Arc<dyn Handler>,
    retry: RetryPolicy,
    stats: Arc<WorkerStats>,
    queue: String,
    stop: CancellationToken,
}

impl Job {
    /// Runs the handler in the slot `permit` holds, then settles in one of `settles`,
    /// the slot given back as soon as the settle has its own.
    async fn run(self, permit: tokio::sync::OwnedSemaphorePermit, settles: Arc<Semaphore>, pace: Arc<Pace>) {
        let started = Instant::now();
        let d = &self.delivery;
        let correlation =
            d.header(CORRELATION_ID_HEADER).and_then(|c| CorrelationId::parse(c).ok()).unwrap_or_default();
        let span = tracing::info_span!("job", queue = %self.queue, id = d.id(), attempt = d.attempt(), correlation_id = %correlation);
        let handler = Arc::clone(&self.handler);
        let work = with_correlation(correlation, {
            let d = Arc::clone(d);
            async move { handler.handle(d).await }
        });
        let mut work = std::panic::AssertUnwindSafe(work).catch_unwind().boxed();
        let outcome = loop {
            let renew_at = tokio::time::Instant::from_std(d.lease_deadline()) - d.lease() / 3;
            tokio::select! {
                out = &mut work => break Some(out),
                _ = self.stop.cancelled() => break None,
                _ = tokio::time::sleep_until(renew_at) => {
                    match d.extend(d.lease()).await {
                        Ok(()) => WorkerStats::bump(&self.stats.extended),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not extend lease");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        };
        Pace::record(&pace.handler_us, started.elapsed());
        let settling = settles.acquire_owned().await.expect("semaphore never closes");
        drop(permit);
        self.settle(outcome).instrument(span).await;
        drop(settling);
    }

    async fn settle(&self, outcome: Option<std::thread::Result<Result<()>>>) {
        let d = &self.delivery;
        if d.is_settled() {
            return;
        }
        let failure = match outcome {
            None => {
                if d.release().await.is_ok() {
                    WorkerStats::bump(&self.stats.released);
                }
                return;
            }
            Some(Ok(Ok(()))) => match d.ack().await {
                Ok(()) => {
                    WorkerStats::bump(&self.stats.succeeded);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ack failed; the message will come back");
                    return;
                }
            },
            Some(Ok(Err(e))) => e,
            Some(Err(panic)) => {
                WorkerStats::bump(&self.stats.panicked);
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".to_owned());
                platform_core::Error::internal(format!("handler panicked: {msg}"))
            }
        };
        tracing::warn!(error = %failure, "job failed");
        let reason = failure.to_string();
        let result = if failure.is_invalid_input() {
            d.dead_letter(&reason).await.map(|()| true)
        } else {
            let delay = self.retry.delay_for(d.attempt()).unwrap_or(self.retry.max_delay);
            d.nack_with_reason(Some(delay), &reason).await
        };
        match result {
            Ok(true) => WorkerStats::bump(&self.stats.dead_lettered),
            Ok(false) => WorkerStats::bump(&self.stats.retried),
            Err(e) => tracing::warn!(error = %e, "could not give the message back; it returns when its lease runs out"),
        }
    }
}
