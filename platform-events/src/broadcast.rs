//! Live broadcast: at-most-once fan-out by channel pattern, no acks, no history.

use std::fmt::{self, Debug, Display};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use platform_core::{CheckOutcome, Error, ErrorKind, HealthCheck, Result};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::channel::{Pattern, validate_channel};

/// Live fan-out of payloads by channel name: what WebSocket channels and cross-node
/// sync run on.
///
/// # Contract
/// - [`publish`](Self::publish) hands `payload` to every subscription, in any process
///   on the same server, whose pattern matches `channel` and that existed when the
///   publish was made; at most once, with no ack and no history: a subscriber that was
///   not there never sees it. A durable feed is the event bus's job.
/// - Patterns match by segment: `*` is exactly one, `>` (last) one or more
///   (see [`channel`](crate::channel)). Channel names and patterns are checked before
///   anything is sent: a bad one is `InvalidInput`, as is a payload over
///   [`BroadcastCapabilities::max_payload`].
/// - Payloads published on one channel by one handle arrive in the order published.
/// - A subscription that falls behind by more than its buffer gets
///   [`Received::Lagged`] with the count it missed, then the messages after; one whose
///   connection was lost gets [`Received::Reconnected`] once it is subscribed again:
///   never a silent skip.
/// - After [`close`](Self::close), calls fail with `Cancelled` and the handle's
///   subscriptions end (their `recv` returns `None`).
#[async_trait]
pub trait Broadcast: HealthCheck + Debug + Display + Send + Sync {
    /// The backend's name (`memory`, `redis`).
    fn backend(&self) -> &'static str;

    /// What the backend can carry.
    fn capabilities(&self) -> BroadcastCapabilities;

    /// Hands `payload` to the current subscribers of `channel`.
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<()>;

    /// Subscribes to every channel `pattern` matches, from now on.
    async fn subscribe(&self, pattern: &str) -> Result<Subscription>;

    /// Ends the handle's subscriptions and releases its connections.
    async fn close(&self) -> Result<()>;
}

/// What a broadcast backend can carry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BroadcastCapabilities {
    /// The largest payload, in bytes.
    pub max_payload: usize,
    /// Messages a subscription holds for a slow reader before it lags.
    pub buffer: usize,
}

impl BroadcastCapabilities {
    /// Capabilities with `max_payload` and `buffer`.
    pub fn new(max_payload: usize, buffer: usize) -> Self {
        Self { max_payload, buffer }
    }
}

/// One published payload, as subscriptions receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The channel it was published on.
    pub channel: Arc<str>,
    /// The payload.
    pub payload: Bytes,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// A payload published on a matching channel.
    Message(Published),
    /// The subscription fell behind and `missed` payloads (of any channel its buffer
    /// carried) were dropped before the next one.
    Lagged {
        /// How many were dropped.
        missed: u64,
    },
    /// The backend's connection was lost and is back, the subscription in place again:
    /// what was published meanwhile was missed, how much is not known.
    Reconnected,
}

/// What a backend feeds a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Feed {
    /// A payload published on some channel (the subscription keeps what its pattern
    /// matches).
    Published(Published),
    /// The connection was lost and is back; see [`Received::Reconnected`].
    Reconnected,
}

/// A live subscription: [`recv`](Self::recv) until it returns `None` (the handle was
/// closed or the backend's connection is gone for good). Dropping it unsubscribes.
pub struct Subscription {
    pattern: Pattern,
    rx: broadcast::Receiver<Feed>,
    closing: CancellationToken,
    /// Ends the task that feeds `rx` when the subscription is dropped.
    _feeder: Option<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Subscription {
    /// A subscription reading `rx`, keeping what `pattern` matches; `feeder` (if any)
    /// is the task that fills `rx` and ends with the subscription.
    pub(crate) fn new(
        pattern: Pattern,
        rx: broadcast::Receiver<Feed>,
        feeder: Option<tokio::task::JoinHandle<()>>,
    ) -> Self {
        Self { pattern, rx, closing: CancellationToken::new(), _feeder: feeder.map(AbortOnDrop) }
    }

    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        self.pattern.as_str()
    }

    /// The next payload on a matching channel, a lag signal, or `None` once the
    /// subscription ended.
    pub async fn recv(&mut self) -> Option<Received> {
        loop {
            let next = tokio::select! {
                biased;
                () = self.closing.cancelled() => return None,
                next = self.rx.recv() => next,
            };
            match next {
                Ok(Feed::Published(p)) if self.pattern.matches(&p.channel) => return Some(Received::Message(p)),
                Ok(Feed::Published(_)) => {}
                Ok(Feed::Reconnected) => return Some(Received::Reconnected),
                Err(broadcast::error::RecvError::Lagged(missed)) => return Some(Received::Lagged { missed }),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    fn ending_with(mut self, closing: &CancellationToken) -> Self {
        self.closing = closing.child_token();
        self
    }
}

impl Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").field("pattern", &self.pattern).finish_non_exhaustive()
    }
}

/// What [`open_broadcast`](crate::open_broadcast) returns, over every backend: the
/// portable layer that does the common work once.
///
/// - checks channel names, patterns and payload sizes before the backend sees them;
/// - keeps the closed state: calls after `close` fail with `Cancelled`, and
///   subscriptions end;
/// - stamps the backend's name and the operation on every error;
/// - opens one tracing span per call.
pub struct BroadcastHandle<B: ?Sized> {
    closed: AtomicBool,
    closing: CancellationToken,
    inner: B,
}

impl<B: Broadcast> BroadcastHandle<B> {
    /// Wraps a backend. Backends call it in their constructors.
    pub fn new(backend: B) -> Self {
        Self { closed: AtomicBool::new(false), closing: CancellationToken::new(), inner: backend }
    }
}

crate::handle::portable_handle!(BroadcastHandle, Broadcast, "broadcast", "the broadcast handle is closed");

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<B: Broadcast + ?Sized> Broadcast for BroadcastHandle<B> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn capabilities(&self) -> BroadcastCapabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<()> {
        self.check_open("publish")?;
        validate_channel(channel).map_err(self.stamp("publish"))?;
        let max = self.inner.capabilities().max_payload;
        if payload.len() > max {
            let why = format!("is {} bytes, over the {max} this backend carries", payload.len());
            let err = Error::invalid_input(format!("payload {why}")).with_detail("payload", why);
            return Err(err.in_context(self.inner.backend(), "publish"));
        }
        let span = self.span("publish", channel);
        self.inner.publish(channel, payload).instrument(span).await.map_err(self.stamp("publish"))
    }
    async fn subscribe(&self, pattern: &str) -> Result<Subscription> {
        self.check_open("subscribe")?;
        Pattern::parse(pattern).map_err(self.stamp("subscribe"))?;
        let span = self.span("subscribe", pattern);
        let sub = self.inner.subscribe(pattern).instrument(span).await.map_err(self.stamp("subscribe"))?;
        Ok(sub.ending_with(&self.closing))
    }
    async fn close(&self) -> Result<()> {
        let again = self.closed.swap(true, Ordering::AcqRel);
        self.closing.cancel();
        if again {
            return Ok(());
        }
        self.inner.close().instrument(self.span("close", "")).await.map_err(self.stamp("close"))
    }
}
