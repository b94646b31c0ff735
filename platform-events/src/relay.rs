//! The outbox relay: events written in the same transaction as the state change they
//! describe ([`stage`]), published to any [`EventBus`] once that transaction committed.
//!
//! "Never lose an event; never emit one that didn't happen": a staged event exists
//! exactly when its transaction committed, and a row is marked sent only after the bus
//! said it has it. A relay that dies mid-batch leaves its rows claimed until the claim
//! runs out; another relay (or the same one restarted) publishes them then. So delivery
//! is at-least-once, and a consumer that must not apply an event twice records it in
//! `platform_db::inbox`, in its own transaction.
//!
//! # Contract
//! - [`Relay::run_once`] claims up to `batch` rows (PostgreSQL and MySQL: `FOR UPDATE
//!   SKIP LOCKED`, so several relays never claim one row; SQLite: one writer at a time),
//!   publishes them in row order, a run of one topic per publish, and marks each run sent
//!   once the bus acknowledged it.
//! - A publish that fails stops the batch: the failed run and every row after it are
//!   given back, claimable again after the retry policy's wait for the row's attempts; so one relay keeps the order rows were written in, per key
//!   and overall. Several relays at once keep it only per claimed batch.
//! - A row that is not an event envelope, or that the retry policy's attempts ran out
//!   on, is
//!   parked (`platform_db::outbox::parked` lists it) and the rows after it go on.
//! - [`Relay::lag`] is the age of the oldest row still to send (parked ones aside): the
//!   figure `/up` shows; [`Relay`] is a [`HealthCheck`] that reports it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use platform_core::{CheckOutcome, Envelope, HealthCheck, Result, RetryPolicy};
use platform_db::outbox::{self, OutboxMessage};
use platform_db::{Db, Tx};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::EventBus;
use crate::bus::{CORRELATION_HEADER, KEY_EXTENSION, TYPE_HEADER};

/// Writes `event` for `topic` into the outbox in the caller's transaction.
pub async fn stage(tx: &mut Tx, topic: &str, event: &Envelope) -> Result<()> {
    crate::channel::validate_channel(topic)?;
    let mut message = OutboxMessage::new(topic, event.to_json()?)
        .with_header(TYPE_HEADER, event.full_type())
        .with_header(CORRELATION_HEADER, event.correlation_id.to_string());
    if let Some(key) = event.extensions.get(KEY_EXTENSION).and_then(|k| k.as_str()) {
        message = message.with_key(key);
    }
    outbox::enqueue(tx, &message).await
}

/// How a relay works.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Rows claimed at a time (default 100).
    pub batch: u32,
    /// How long a claim holds its rows; a relay that dies leaves them this long
    /// (default 30 s).
    pub lease: Duration,
    /// Publishes a row may take before it is parked, and the waits between them
    /// (default: 10 attempts, from 100 ms doubling to 30 s, with jitter).
    pub retry: RetryPolicy,
    /// The longest pause between two claims while the outbox is empty (default 500 ms;
    /// the pause starts at 10 ms and doubles).
    pub max_idle: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 100,
            lease: Duration::from_secs(30),
            retry: RetryPolicy::default().with_max_attempts(10),
            max_idle: Duration::from_millis(500),
        }
    }
}

impl RelayConfig {
    /// Sets rows per claim.
    #[must_use]
    pub fn with_batch(mut self, batch: u32) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Sets the claim's lease.
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets the attempts before a row is parked and the waits between them.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// What one pass of the relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Rows published and marked sent.
    pub published: u64,
    /// Rows given back for a retry.
    pub retried: u64,
    /// Rows parked.
    pub parked: u64,
}

/// Publishes the outbox of `db` to `bus`.
#[derive(Debug, Clone)]
pub struct Relay {
    db: Db,
    bus: Arc<dyn EventBus>,
    config: RelayConfig,
}

impl Relay {
    /// A relay from `db`'s outbox to `bus`.
    pub fn new(db: Db, bus: Arc<dyn EventBus>, config: RelayConfig) -> Self {
        Self { db, bus, config }
    }

    /// The age of the oldest row still to send; `None` when all were sent.
    pub async fn lag(&self) -> Result<Option<Duration>> {
        outbox::lag(&self.db).await
    }

    fn retry_at(&self, attempts: u32) -> OffsetDateTime {
        let delay = self.config.retry.delay_for(attempts).unwrap_or(self.config.retry.max_delay);
        OffsetDateTime::now_utc() + delay
    }

    /// One claim, published; what it did.
    pub async fn run_once(&self) -> Result<RelayStats> {
        let claim = outbox::claim(&self.db, self.config.batch, self.config.lease).await?;
        let mut stats = RelayStats::default();
        let mut poison = Vec::new();
        // Runs of (topic, [(id, envelope)]) in row order.
        let mut runs: Vec<(String, Vec<(i64, Envelope)>)> = Vec::new();
        for r in &claim.records {
            match Envelope::from_json(&r.message.payload) {
                Ok(envelope) => match runs.last_mut() {
                    Some((topic, run)) if *topic == r.message.topic && run.len() < self.max_batch() => {
                        run.push((r.id, envelope));
                    }
                    _ => runs.push((r.message.topic.clone(), vec![(r.id, envelope)])),
                },
                Err(e) => {
                    tracing::warn!(id = r.id, topic = %r.message.topic, error = %e, "outbox row is not an event: parked");
                    poison.push(r.id);
                }
            }
        }
        stats.parked += outbox::park(&self.db, &claim, &poison).await?;
        let attempts = |id: i64| claim.records.iter().find(|r| r.id == id).map_or(1, |r| r.attempts);
        let mut runs = runs.into_iter();
        while let Some((topic, run)) = runs.next() {
            let ids: Vec<i64> = run.iter().map(|(id, _)| *id).collect();
            let events = run.into_iter().map(|(_, e)| e).collect();
            match self.bus.publish(&topic, events).await {
                Ok(()) => stats.published += outbox::mark_sent(&self.db, &claim, &ids).await?,
                Err(e) if e.is_invalid_input() => {
                    tracing::warn!(%topic, error = %e, "the bus refused outbox rows: parked");
                    stats.parked += outbox::park(&self.db, &claim, &ids).await?;
                }
                Err(e) => {
                    let tries = ids.iter().map(|id| attempts(*id)).max().unwrap_or(1);
                    tracing::warn!(%topic, error = %e, attempts = tries, "publishing outbox rows failed");
                    if tries >= self.config.retry.max_attempts {
                        stats.parked += outbox::park(&self.db, &claim, &ids).await?;
                        continue;
                    }
                    // Everything from here on waits, so that order is kept.
                    let mut rest = ids;
                    rest.extend(runs.flat_map(|(_, run)| run.into_iter().map(|(id, _)| id)));
                    stats.retried += outbox::release(&self.db, &claim, &rest, self.retry_at(tries)).await?;
                    break;
                }
            }
        }
        Ok(stats)
    }

    fn max_batch(&self) -> usize {
        self.bus.capabilities().max_batch.max(1)
    }

    /// Runs until `stop` is cancelled: claims while there is work, pauses (10 ms,
    /// doubling up to `max_idle`) while the outbox is empty, and backs off the same way
    /// after an error of the database.
    pub async fn run(&self, stop: CancellationToken) {
        let mut pause = Duration::from_millis(10);
        while !stop.is_cancelled() {
            let idle = match self.run_once().await {
                Ok(stats) => stats.published + stats.parked == 0,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay: claiming failed");
                    true
                }
            };
            if idle {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(self.config.max_idle);
            } else {
                pause = Duration::from_millis(10);
            }
        }
    }
}

#[async_trait]
impl HealthCheck for Relay {
    fn name(&self) -> String {
        "events:outbox-relay".to_owned()
    }

    fn critical(&self) -> bool {
        false
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        let lag = self.lag().await?;
        let lag = lag.map_or_else(|| "outbox empty".to_owned(), |l| format!("oldest unsent {} ms", l.as_millis()));
        Ok(CheckOutcome::new(started.elapsed()).with_version(lag))
    }
}
