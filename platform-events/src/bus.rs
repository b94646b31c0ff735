//! The durable event bus: at-least-once delivery of enveloped events to groups.

use std::fmt::{self, Debug, Display};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use platform_core::{CheckOutcome, Envelope, Error, ErrorKind, HealthCheck, Result};
use platform_queue::{Delivery, Queue, ReceiveOptions};
use tracing::Instrument as _;

use crate::channel::{Pattern, validate_channel};

/// Durable, at-least-once events for groups of consumers.
///
/// # Contract
/// - [`publish`](Self::publish) returns once the store has every event, for every group
///   whose pattern matches `topic` and that existed when the publish began. An error
///   may leave some groups with the events and others without: publish again (the
///   same `event_id`s). Where [`BusCapabilities::deduplicates`] says, a group that
///   already has an event within the dedup window does not get it twice; elsewhere it
///   may, and consumers dedupe by `event_id` (delivery is at-least-once anyway).
/// - [`subscribe`](Self::subscribe) creates `group` on `pattern` when it is new (its
///   events are those published from then on) and returns it as it is when it exists;
///   a group named again with another pattern is `Conflict`. A group outlives the
///   process: its events wait for it across restarts of consumers and of the server.
/// - One group's events are shared among its consumers (competing consumers); distinct
///   groups each get every event (fan-out).
/// - A delivery is acked, nacked (redelivered, after a delay if asked) or
///   dead-lettered. After the group's `max_attempts` deliveries an event goes to the
///   group's dead letters with its history (reason, attempts, first failure), as in
///   platform-queue; so does a message that is not an event envelope.
/// - Order per key is kept only where [`BusCapabilities::ordered_per_key`] says.
/// - Topics, patterns and group names are checked, and every event is encoded and
///   measured, before anything is sent: a bad one is `InvalidInput` and nothing is
///   stored. After [`close`](Self::close), calls fail with `Cancelled`.
#[async_trait]
pub trait EventBus: HealthCheck + Debug + Display + Send + Sync {
    /// The backend's name (`memory`, `sqlite`, `postgres`, `redis`).
    fn backend(&self) -> &'static str;

    /// What the backend can do.
    fn capabilities(&self) -> BusCapabilities;

    /// Stores `events` on `topic` for every group whose pattern matches it.
    async fn publish(&self, topic: &str, events: Vec<Envelope>) -> Result<()>;

    /// The group `group` following `pattern`, created when it is new.
    async fn subscribe(&self, pattern: &str, group: &str) -> Result<Group>;

    /// Releases the handle's connections; its groups' queues close with it.
    async fn close(&self) -> Result<()>;
}

/// What an event bus backend can do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusCapabilities {
    /// Events of one key (the envelope's `partitionkey` extension) reach a group's
    /// consumers in the order published, one at a time: the next is handed out once the
    /// one before is acked or dead-lettered (a nacked one comes back first). Events of
    /// other keys, and without one, pass them by. The in-process, SQLite and Postgres
    /// buses keep it; the brokers' buses do not (their queues cannot hold a key back).
    pub ordered_per_key: bool,
    /// A publish retried with the same `event_id`s does not give a group that has an
    /// event a second copy (within the backend's dedup window). Where false, a retried
    /// publish may deliver an event twice: consumers that must not act twice record
    /// what they handled (`platform_db::inbox`).
    pub deduplicates: bool,
    /// The largest encoded envelope, in bytes.
    pub max_event_bytes: usize,
    /// Events published in one call, at most.
    pub max_batch: usize,
}

/// A group of consumers and the events waiting for it: a queue of platform-queue, so
/// a [`Worker`](platform_queue::Worker) can run it, and its dead letters can be read and
/// redriven.
#[derive(Clone)]
pub struct Group {
    name: Arc<str>,
    pattern: Arc<str>,
    queue: Arc<dyn Queue>,
}

impl Group {
    /// A group over `queue`. Backends call it.
    pub fn new(name: &str, pattern: &str, queue: Arc<dyn Queue>) -> Self {
        Self { name: name.into(), pattern: pattern.into(), queue }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic pattern it follows.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The queue holding its events: for a `Worker`, dead letters and redrive.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    /// Up to `max` events, waiting up to `wait` for the first. A message that is not an
    /// event envelope is dead-lettered with the reason, never handed on.
    pub async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<EventDelivery>> {
        let deliveries = self.queue.receive(ReceiveOptions::new(max, wait)).await?;
        let mut out = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match Envelope::from_json(delivery.body()) {
                Ok(envelope) => out.push(EventDelivery { envelope, delivery }),
                Err(e) => delivery.dead_letter(&format!("not an event envelope: {e}")).await?,
            }
        }
        Ok(out)
    }
}

impl Group {
    /// As [`receive`](Self::receive), and what `registry` cannot read (a type it does
    /// not know, a version newer than it knows, a missing upcaster) goes to the group's
    /// dead letters with the registry's reason instead of being handed on.
    pub async fn receive_known(
        &self,
        registry: &crate::EventRegistry,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<EventDelivery>> {
        let mut out = Vec::new();
        for event in self.receive(max, wait).await? {
            match registry.check(event.envelope()) {
                Ok(()) => out.push(event),
                Err(e) => event.dead_letter(&format!("unknown event: {}", e.message())).await?,
            }
        }
        Ok(out)
    }
}

impl Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group").field("name", &self.name).field("pattern", &self.pattern).finish_non_exhaustive()
    }
}

/// The header naming the topic an event was published on.
pub const TOPIC_HEADER: &str = "event-topic";
/// The header naming the event's full type (`todo.created.v1`).
pub const TYPE_HEADER: &str = "event-type";
/// The header carrying the correlation id.
pub const CORRELATION_HEADER: &str = "correlation-id";
/// The header carrying the W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The header carrying the event's ordering key, when it has one.
pub const KEY_HEADER: &str = "event-key";
/// The envelope extension that names an event's ordering key (CloudEvents' partitioning
/// extension).
pub const KEY_EXTENSION: &str = "partitionkey";

/// One event delivered to a group: settle it with `ack`, `nack` or `dead_letter`.
#[derive(Debug)]
pub struct EventDelivery {
    envelope: Envelope,
    delivery: Delivery,
}

impl EventDelivery {
    /// The event.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The event, taken out (settle first, or keep the delivery with
    /// [`into_parts`](Self::into_parts)).
    pub fn into_parts(self) -> (Envelope, Delivery) {
        (self.envelope, self.delivery)
    }

    /// The topic it was published on.
    pub fn topic(&self) -> &str {
        self.delivery.header(TOPIC_HEADER).unwrap_or_default()
    }

    /// Which delivery this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.delivery.attempt()
    }

    /// The queue delivery under it.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Done: the group will not see it again.
    pub async fn ack(&self) -> Result<()> {
        self.delivery.ack().await
    }

    /// Failed: delivered again, after `delay` if given, until the group's attempts run out.
    pub async fn nack(&self, delay: Option<Duration>) -> Result<()> {
        self.delivery.nack(delay).await
    }

    /// Poison: straight to the group's dead letters with `reason`.
    pub async fn dead_letter(&self, reason: &str) -> Result<()> {
        self.delivery.dead_letter(reason).await
    }
}

/// Checks a group name: 1 to 100 letters, digits, `-` and `_`.
pub fn validate_group(name: &str) -> Result<()> {
    let ok =
        !name.is_empty() && name.len() <= 100 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if ok {
        return Ok(());
    }
    let why = "must be 1 to 100 letters, digits, '-' or '_'";
    Err(Error::invalid_input(format!("group {name:?} {why}")).with_detail("group", why))
}

/// What [`open_bus`](crate::open_bus) returns, over every backend: the portable layer
/// that checks topics, patterns, group names and batch sizes, keeps the closed state,
/// stamps the backend and operation on errors and opens one span per call.
pub struct BusHandle<B: ?Sized> {
    closed: AtomicBool,
    inner: B,
}

impl<B: EventBus> BusHandle<B> {
    /// Wraps a backend. Backends call it in their constructors.
    pub fn new(backend: B) -> Self {
        Self { closed: AtomicBool::new(false), inner: backend }
    }
}

crate::handle::portable_handle!(BusHandle, EventBus, "events", "the event bus handle is closed");

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<B: EventBus + ?Sized> EventBus for BusHandle<B> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn capabilities(&self) -> BusCapabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, topic: &str, events: Vec<Envelope>) -> Result<()> {
        self.check_open("publish")?;
        validate_channel(topic).map_err(self.stamp("publish"))?;
        let max = self.inner.capabilities().max_batch;
        if events.len() > max {
            let why = format!("{} events, over the {max} one publish takes", events.len());
            return Err(Error::invalid_input(why.clone())
                .with_detail("events", why)
                .in_context(self.backend(), "publish"));
        }
        if events.is_empty() {
            return Ok(());
        }
        let span = self.span("publish", topic);
        self.inner.publish(topic, events).instrument(span).await.map_err(self.stamp("publish"))
    }
    async fn subscribe(&self, pattern: &str, group: &str) -> Result<Group> {
        self.check_open("subscribe")?;
        Pattern::parse(pattern).map_err(self.stamp("subscribe"))?;
        validate_group(group).map_err(self.stamp("subscribe"))?;
        let span = self.span("subscribe", pattern);
        self.inner.subscribe(pattern, group).instrument(span).await.map_err(self.stamp("subscribe"))
    }
    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.close().instrument(self.span("close", "")).await.map_err(self.stamp("close"))
    }
}
