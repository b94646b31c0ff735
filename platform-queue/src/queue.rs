//! The `Queue` trait, its conveniences, and the portable handle every constructor returns.

use std::fmt::{self, Debug, Display};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use platform_core::{CORRELATION_ID_HEADER, CheckOutcome, CorrelationId, Error, ErrorKind, HealthCheck, Result};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{Capabilities, DeadLetter, Delivery, Message, ReceiveOptions};

/// A work queue: competing consumers, at-least-once delivery with leases.
///
/// # Contract
///
/// Every backend behaves the same; what it cannot do is `false` in
/// [`capabilities`](Queue::capabilities) and returns `ErrorKind::Unsupported`, never a
/// silent no-op. The conformance suite in `testkit` checks every point below.
///
/// - **Durable on return.** `send` and `send_batch` return after the backend has
///   stored the message(s). A batch is all or nothing where
///   [`Capabilities::atomic_batch`] holds; a batch over the limit, an oversized body or
///   an invalid header fails with `InvalidInput` before anything is sent.
/// - **Leases.** `receive` hands out each message to one receiver at a time, leased for
///   the visibility timeout from the moment it is handed out. Until the lease runs out
///   nobody else receives it. The holder settles it once: `ack` removes it, `nack`
///   makes it visible again (after a delay if given), `dead_letter` moves it to the
///   dead-letter queue; `extend` renews the lease.
/// - **Nothing is lost.** A message that was not acked comes back when its lease runs
///   out, whether its receiver crashed, dropped it, or hung.
/// - **Attempts.** `Delivery::attempt` is 1 on the first delivery and one more on each
///   redelivery, on every backend. A message delivered `max_attempts` times that fails
///   again goes to the dead-letter queue with its reason, original queue, attempts and
///   first-failure time in `x-dead-letter-*` headers; [`redrive`](Queue::redrive) puts
///   dead letters back with a fresh count.
/// - **Delay.** A delayed message is invisible before its time, visible soon after,
///   and survives a restart where [`Capabilities::durable`] holds.
/// - **Dedup.** A second send with the same dedup key inside the window is dropped.
/// - **Order** is not promised, except for messages with one
///   [`order_key`](Message::order_key) where [`Capabilities::ordered_per_key`] holds:
///   those are handed out one at a time in the order sent, each after the one before
///   it is acked or dead-lettered. Dead letters and redriven messages keep no order key.
/// - **Close.** After [`close`](Queue::close) every call fails with `Cancelled`.
#[async_trait]
pub trait Queue: HealthCheck + Debug + Display + Send + Sync + 'static {
    /// The queue's name.
    fn queue_name(&self) -> &str;

    /// The backend's name (`memory`, `redis`, …).
    fn backend(&self) -> &'static str;

    /// What this backend supports, and its limits.
    fn capabilities(&self) -> Capabilities;

    /// Stores one message.
    async fn send(&self, message: Message) -> Result<()>;

    /// Stores several messages; all or nothing where the backend allows.
    async fn send_batch(&self, messages: Vec<Message>) -> Result<()>;

    /// Leases up to `options.max` messages, waiting up to `options.wait` for the first.
    /// An empty vector when none came in time.
    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Delivery>>;

    /// Up to `limit` messages of the dead-letter queue, oldest first, without removing them.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Moves up to `limit` dead letters back to the queue with a fresh attempt count;
    /// returns how many moved.
    async fn redrive(&self, limit: usize) -> Result<usize>;

    /// Stops the queue handle: later calls fail with `Cancelled`. Messages already
    /// sent stay; unsettled deliveries come back when their leases run out.
    async fn close(&self) -> Result<()>;
}

macro_rules! forward_queue {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<T: Queue + ?Sized> Queue for $ptr<T> {
            fn queue_name(&self) -> &str {
                (**self).queue_name()
            }
            fn backend(&self) -> &'static str {
                (**self).backend()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            async fn send(&self, message: Message) -> Result<()> {
                (**self).send(message).await
            }
            async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
                (**self).send_batch(messages).await
            }
            async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Delivery>> {
                (**self).receive(options).await
            }
            async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
                (**self).dead_letters(limit).await
            }
            async fn redrive(&self, limit: usize) -> Result<usize> {
                (**self).redrive(limit).await
            }
            async fn close(&self) -> Result<()> {
                (**self).close().await
            }
        }
    )*};
}
forward_queue!(Arc, Box);

/// Conveniences over any [`Queue`]; implemented for every queue, never by hand.
pub trait QueueExt: Queue {
    /// Sends `value` as a JSON message.
    fn send_json<T: Serialize + ?Sized + Sync>(&self, value: &T) -> impl Future<Output = Result<()>> + Send {
        let message = Message::json(value);
        async move { self.send(message?).await }
    }

    /// Sends `body` with no headers.
    fn send_bytes(&self, body: impl Into<bytes::Bytes>) -> impl Future<Output = Result<()>> + Send {
        self.send(Message::new(body))
    }

    /// Acks every delivery, grouped where the backend can (see [`Delivery::ack_all`]);
    /// the first error, if any, after all were tried.
    fn ack_all<'a>(&self, deliveries: &'a [Delivery]) -> impl Future<Output = Result<()>> + Send + 'a {
        Delivery::ack_all(deliveries)
    }

    /// One delivery, waiting up to `wait`; `None` when none came.
    fn receive_one(&self, wait: Duration) -> impl Future<Output = Result<Option<Delivery>>> + Send {
        async move { Ok(self.receive(ReceiveOptions::new(1, wait)).await?.pop()) }
    }
}

impl<T: Queue + ?Sized> QueueExt for T {}

/// The portable queue: what [`open`](crate::open) and every backend's `from_url`
/// return, so no caller can skip it. It does the work every backend shares, once:
///
/// - validates input against the backend's [`Capabilities`] before the backend sees
///   it (body and header limits, batch size, delay and dedup support, receive sizes);
/// - keeps the closed state: after [`close`](Queue::close) every call fails with
///   `Cancelled`, a receive waiting at that moment included, and the backend's own
///   `close` runs once;
/// - stamps the backend's name and the operation on every error, those of
///   [`Delivery`] settles included;
/// - opens one tracing span per call, and fills in the correlation id header from the
///   current task when a message has none.
///
/// Backends implement [`Queue`] for the part that is theirs (see [`driver`](crate::driver));
/// [`QueueHandle::driver`] reaches the backend itself.
pub struct QueueHandle<Q: ?Sized> {
    /// Set by `close`; read on every call (an atomic load, no lock).
    closed: AtomicBool,
    /// Wakes receives waiting at `close`.
    closing: CancellationToken,
    inner: Q,
}

impl<Q: Queue> QueueHandle<Q> {
    /// Wraps a backend. Backends call it in their constructors.
    pub fn new(backend: Q) -> Self {
        Self { closed: AtomicBool::new(false), closing: CancellationToken::new(), inner: backend }
    }
}

impl<Q: Queue + ?Sized> QueueHandle<Q> {
    /// The backend under the portable layer, for what only it offers. Calls through it
    /// skip the portable layer's checks.
    pub fn driver(&self) -> &Q {
        &self.inner
    }

    fn span(&self, op: &'static str) -> tracing::Span {
        tracing::debug_span!("queue", backend = self.inner.backend(), op, queue = %self.inner.queue_name(), n = tracing::field::Empty)
    }

    /// Stamps backend and operation where the error has none yet.
    fn stamp(&self, op: &'static str) -> impl Fn(Error) -> Error + '_ {
        move |e| e.in_context(self.inner.backend(), op)
    }

    fn check_open(&self, op: &'static str) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.cancelled(op));
        }
        Ok(())
    }

    fn cancelled(&self, op: &'static str) -> Error {
        Error::new(ErrorKind::Cancelled, format!("queue {} is closed", self.inner.queue_name()))
            .with_backend(self.inner.backend())
            .with_op(op)
    }
}

impl<Q: Queue + ?Sized> Debug for QueueHandle<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Debug::fmt(&self.inner, f)
    }
}

impl<Q: Queue + ?Sized> Display for QueueHandle<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(&self.inner, f)
    }
}

fn stamp_correlation(mut message: Message) -> Message {
    if !message.headers.contains_key(CORRELATION_ID_HEADER)
        && let Some(id) = CorrelationId::current()
    {
        message.headers.insert(CORRELATION_ID_HEADER.to_owned(), id.to_string());
    }
    if !message.headers.contains_key(platform_core::TRACEPARENT_HEADER)
        && let Some(tp) = platform_core::current_traceparent()
    {
        message.headers.insert(platform_core::TRACEPARENT_HEADER.to_owned(), tp);
    }
    message
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<Q: Queue + ?Sized> HealthCheck for QueueHandle<Q> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn critical(&self) -> bool {
        self.inner.critical()
    }
    async fn check(&self) -> Result<CheckOutcome> {
        self.inner.check().instrument(self.span("health")).await.map_err(self.stamp("health"))
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<Q: Queue + ?Sized> Queue for QueueHandle<Q> {
    fn queue_name(&self) -> &str {
        self.inner.queue_name()
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn send(&self, message: Message) -> Result<()> {
        self.check_open("send")?;
        message.validate(&self.inner.capabilities()).map_err(self.stamp("send"))?;
        let span = self.span("send");
        span.record("n", 1);
        self.inner.send(stamp_correlation(message)).instrument(span).await.map_err(self.stamp("send"))
    }
    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        self.check_open("send_batch")?;
        self.inner.capabilities().validate_batch(&messages).map_err(self.stamp("send_batch"))?;
        if messages.is_empty() {
            return Ok(());
        }
        let span = self.span("send_batch");
        span.record("n", messages.len());
        let messages = messages.into_iter().map(stamp_correlation).collect();
        self.inner.send_batch(messages).instrument(span).await.map_err(self.stamp("send_batch"))
    }
    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Delivery>> {
        self.check_open("receive")?;
        options.validate(&self.inner.capabilities()).map_err(self.stamp("receive"))?;
        let span = self.span("receive");
        // A close ends a waiting receive; what it had claimed comes back when the
        // leases run out. The receive is polled first: one that is ready at once never
        // registers with the close signal (a lock each way).
        let got = tokio::select! {
            biased;
            got = self.inner.receive(options).instrument(span.clone()) => got.map_err(self.stamp("receive"))?,
            () = self.closing.cancelled() => return Err(self.cancelled("receive")),
        };
        span.record("n", got.len());
        let backend = self.inner.backend();
        Ok(got.into_iter().map(|d| d.stamped(backend)).collect())
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.check_open("dead_letters")?;
        self.inner.dead_letters(limit).instrument(self.span("dead_letters")).await.map_err(self.stamp("dead_letters"))
    }
    async fn redrive(&self, limit: usize) -> Result<usize> {
        self.check_open("redrive")?;
        self.inner.redrive(limit).instrument(self.span("redrive")).await.map_err(self.stamp("redrive"))
    }
    async fn close(&self) -> Result<()> {
        let again = self.closed.swap(true, Ordering::AcqRel);
        self.closing.cancel();
        if again {
            return Ok(());
        }
        self.inner.close().instrument(self.span("close")).await.map_err(self.stamp("close"))
    }
}
