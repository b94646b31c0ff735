//! Client-held leases that republish: a broker without nack or delivery counts
//! settles everything but `ack` by sending a copy that carries the attempts so far,
//! then acknowledging the original.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use platform_core::{Error, Result};
use time::OffsetDateTime;

use super::client::ClientLease;
use crate::QueueOptions;
use crate::driver::Acker;
use crate::message::{exhausted_reason, rfc3339};

/// A broker without nack or delivery counts (STOMP, Kafka): every settle other than
/// `ack` sends a copy (carrying the attempts counted so far) and then acknowledges the
/// original, so a crash in between gives a duplicate, never a loss.
#[async_trait]
pub(crate) trait Republish: Send + Sync + 'static {
    /// The backend's name, for errors.
    const BACKEND: &'static str;
    /// The client-kept lease and the attempts.
    fn held(&self) -> &Holding;
    /// Why the broker has taken the message back whatever the lease says (connection
    /// dropped, partition reassigned); `None` while the delivery is still this client's.
    fn lost(&self) -> Option<&'static str>;
    /// `Conflict` once [`lost`](Self::lost) says the broker took the message back.
    fn still_held(&self, op: &'static str) -> Result<()> {
        match self.lost() {
            None => Ok(()),
            Some(why) => {
                Err(Error::conflict(format!("lease was lost ({why})")).with_backend(Self::BACKEND).with_op(op))
            }
        }
    }
    /// Acknowledges the original.
    fn ack_original(&self) -> Result<()>;
    /// Sends a copy that remembers `counted` attempts, visible after `delay`, then
    /// acknowledges the original.
    async fn requeue(&self, delay: Option<Duration>, counted: u32) -> Result<()>;
    /// Sends a dead-letter copy, then acknowledges the original.
    async fn move_to_dlq(&self, reason: &str, attempts: u32) -> Result<()>;
}

/// What every republishing acker keeps: its lease and where it stands in the attempts.
pub(crate) struct Holding {
    /// The client-kept lease.
    pub(crate) lease: ClientLease,
    /// This delivery's attempt (1 on the first).
    pub(crate) attempt: u32,
    /// The queue's `max_attempts`.
    pub(crate) max_attempts: u32,
}

impl Holding {
    pub(crate) fn new(options: &QueueOptions, attempt: u32) -> Self {
        Self { lease: ClientLease::new(options.visibility_timeout), attempt, max_attempts: options.max_attempts }
    }
}

/// Where a republished copy carries the attempts counted before it.
pub(crate) const ATTEMPTS_BASE: &str = "platform-attempts-base";
/// Where a republished copy carries when its message first failed.
pub(crate) const FIRST_FAILURE: &str = "platform-first-failure";

/// The history a republished copy carries: the attempts counted so far and, once one
/// failed, when the first failure was.
pub(crate) fn requeue_marks(counted: u32, first_failure: Option<&str>) -> Vec<(&'static str, String)> {
    let mut marks = vec![(ATTEMPTS_BASE, counted.to_string())];
    let first = first_failure.map(str::to_owned).or_else(|| (counted > 0).then(|| rfc3339(OffsetDateTime::now_utc())));
    marks.extend(first.map(|f| (FIRST_FAILURE, f)));
    marks
}

/// The [`Acker`] over a [`Republish`]; the lease timer holds the same value.
pub(crate) struct Republishing<R>(pub(crate) std::sync::Arc<R>);

impl<R: Republish> Republishing<R> {
    /// Starts the lease timer: past the deadline, unsettled, the message goes back
    /// (its attempt counted) or, on its last attempt, to the dead letters.
    pub(crate) fn start(inner: std::sync::Arc<R>) -> Self {
        let timer = std::sync::Arc::clone(&inner);
        tokio::spawn(async move {
            if !timer.held().lease.expired().await || timer.still_held("expire").is_err() {
                return;
            }
            let Holding { attempt, max_attempts: max, .. } = *timer.held();
            let _ = if attempt >= max {
                timer.move_to_dlq(&format!("lease expired on each of {max} attempts"), attempt).await
            } else {
                timer.requeue(None, attempt).await
            };
        });
        Self(inner)
    }

    fn take(&self, op: &'static str) -> Result<()> {
        self.0.still_held(op)?;
        self.0.held().lease.take(R::BACKEND, op)
    }

    fn finish<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() && self.0.still_held("settle").is_ok() {
            self.0.held().lease.untake();
        }
        result
    }
}

impl<R> fmt::Debug for Republishing<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Republishing").finish_non_exhaustive()
    }
}

#[async_trait]
impl<R: Republish> Acker for Republishing<R> {
    async fn ack(&self) -> Result<()> {
        self.take("ack")?;
        let r = self.0.ack_original();
        self.finish(r)
    }

    async fn nack(&self, delay: Option<Duration>, reason: Option<&str>) -> Result<bool> {
        self.take("nack")?;
        let Holding { attempt, max_attempts: max, .. } = *self.0.held();
        let r = if attempt >= max {
            self.0.move_to_dlq(&exhausted_reason(max, reason), attempt).await.map(|()| true)
        } else {
            self.0.requeue(delay, attempt).await.map(|()| false)
        };
        self.finish(r)
    }

    async fn dead_letter(&self, reason: &str) -> Result<()> {
        self.take("dead_letter")?;
        let r = self.0.move_to_dlq(reason, self.0.held().attempt).await;
        self.finish(r)
    }

    async fn extend(&self, lease: Duration) -> Result<()> {
        self.0.still_held("extend")?;
        self.0.held().lease.extend(R::BACKEND, lease)
    }

    async fn release(&self) -> Result<()> {
        self.take("release")?;
        // A copy that does not count this delivery, then the original goes.
        let r = self.0.requeue(None, self.0.held().attempt - 1).await;
        self.finish(r)
    }
}
