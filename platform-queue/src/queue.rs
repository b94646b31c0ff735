//! The `Queue` trait, its conveniences, and the tracing decorator `open()` wraps around it.

use std::fmt::{self, Debug, Display};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use platform_core::{CORRELATION_ID_HEADER, CheckOutcome, CorrelationId, HealthCheck, Result};
use serde::Serialize;
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
/// - **Order** is not promised.
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

/// Wraps a backend with one tracing span per call and fills in the correlation id
/// header from the current task when a message has none. `open()` returns backends
/// wrapped in it.
pub struct Traced<Q: ?Sized>(pub Arc<Q>);

impl<Q: Queue + ?Sized> Debug for Traced<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Debug::fmt(&self.0, f)
    }
}

impl<Q: Queue + ?Sized> Display for Traced<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(&self.0, f)
    }
}

fn stamp(mut message: Message) -> Message {
    if !message.headers.contains_key(CORRELATION_ID_HEADER)
        && let Some(id) = CorrelationId::current()
    {
        message.headers.insert(CORRELATION_ID_HEADER.to_owned(), id.to_string());
    }
    message
}

impl<Q: Queue + ?Sized> Traced<Q> {
    fn span(&self, op: &'static str) -> tracing::Span {
        tracing::debug_span!("queue", backend = self.0.backend(), op, queue = %self.0.queue_name(), n = tracing::field::Empty)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<Q: Queue + ?Sized> HealthCheck for Traced<Q> {
    fn name(&self) -> String {
        self.0.name()
    }
    fn critical(&self) -> bool {
        self.0.critical()
    }
    async fn check(&self) -> Result<CheckOutcome> {
        self.0.check().instrument(self.span("health")).await
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<Q: Queue + ?Sized> Queue for Traced<Q> {
    fn queue_name(&self) -> &str {
        self.0.queue_name()
    }
    fn backend(&self) -> &'static str {
        self.0.backend()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn send(&self, message: Message) -> Result<()> {
        let span = self.span("send");
        span.record("n", 1);
        self.0.send(stamp(message)).instrument(span).await
    }
    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        let span = self.span("send_batch");
        span.record("n", messages.len());
        self.0.send_batch(messages.into_iter().map(stamp).collect()).instrument(span).await
    }
    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Delivery>> {
        let span = self.span("receive");
        let got = self.0.receive(options).instrument(span.clone()).await;
        if let Ok(d) = &got {
            span.record("n", d.len());
        }
        got
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.0.dead_letters(limit).instrument(self.span("dead_letters")).await
    }
    async fn redrive(&self, limit: usize) -> Result<usize> {
        self.0.redrive(limit).instrument(self.span("redrive")).await
    }
    async fn close(&self) -> Result<()> {
        self.0.close().instrument(self.span("close")).await
    }
}
