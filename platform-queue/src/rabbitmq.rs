//! RabbitMQ queues: `amqp://user:password@host:5672/vhost?queue=jobs`.
//!
//! - [x] a durable quorum queue per queue name (`queue_type=classic` for a classic
//!   one); publisher confirms on every send, a batch's confirms awaited together
//! - [x] receives take from a push consumer (`basic.consume`) with a prefetch window
//!   (`prefetch`, default 32 unacked per handle): messages wait in the client before a
//!   receive asks, so a receive costs no round trip while the window holds some
//! - [x] manual acks; the lease is kept by the client and starts when a receive hands
//!   the message out: a delivery not settled within the visibility timeout, or dropped
//!   unsettled, is returned to the queue, and a crashed consumer's connection closes,
//!   which returns everything it held (prefetched messages too)
//! - [x] attempts from the quorum queue's `x-delivery-count`, plus what was carried
//!   across delays; a classic queue counts only whether a message was redelivered, so
//!   there every nack and expired lease republishes a copy that carries its attempts
//! - [x] delay and `nack(delay)`: a durable holding queue per delay length
//!   (`<queue>.delay.<ms>`, TTL, dead-lettered back into the queue); no plugin needed
//!   and no head-of-line blocking between different delays
//! - [x] dead letters in a durable classic queue, read without removing them; redrive
//! - [ ] ~~dedup~~: RabbitMQ has no publish-side dedup; `Unsupported`
//! - [ ] ~~atomic batches~~: each message is confirmed on its own
//!
//! Headers travel as AMQP string headers, exactly. TLS (`amqps://`) is not compiled in.
//!
//! URL: `amqp://[user:password@]host[:port][/vhost]` plus the common parameters,
//! `queue_type` (`quorum`, the default, or `classic`) and `prefetch` (1 to 65535).
//!
//! What the queue type costs: a quorum queue replicates and fsyncs every message
//! (Raft) and counts deliveries itself; a classic queue is faster to publish to and
//! consume from, keeps messages on one node, and loses the broker's delivery count.
//! A queue that exists already keeps its type: opening it as the other is a `Conflict`.
//! A larger `prefetch` takes more messages per round trip, and holds them from other
//! consumers until this handle's receives take them.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use platform_core::{CheckOutcome, Error, ErrorKind, HealthCheck, Result};

use crate::QueueHandle;
use crate::driver::{Acker, dead_letter_headers};
use crate::lease::client::ClientLease;
use crate::message::exhausted_reason;
use crate::options::{QueueOptions, QueueUrl};
use crate::{Capabilities, DeadLetter, Delivery, Headers, Message, Queue, ReceiveOptions};

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["amqp"];

const ATTEMPTS_BASE: &str = "x-platform-attempts-base";
const FIRST_FAILURE: &str = "x-platform-first-failure";

/// Maps a lapin error onto the portable kinds.
#[doc(hidden)] // for platform-events' bus on the same client; not part of the API
pub fn map_err(e: lapin::Error) -> Error {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let kind = if lower.contains("access_refused") || lower.contains("authentication") || lower.contains("auth") {
        ErrorKind::Unauthenticated
    } else if lower.contains("not_found") || lower.contains("no queue") {
        ErrorKind::NotFound
    } else if lower.contains("precondition_failed") {
        ErrorKind::Conflict
    } else if lower.contains("resource_locked")
        || lower.contains("resource_error")
        || lower.contains("io")
        || lower.contains("connection")
        || lower.contains("channel")
        || lower.contains("closed")
    {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Internal
    };
    Error::new(kind, text).with_backend("rabbitmq").with_source(e)
}

fn string_headers(h: &Headers, extra: &[(&str, String)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in h {
        t.insert(k.clone().into(), AMQPValue::LongString(LongString::from(v.clone().into_bytes())));
    }
    for (k, v) in extra {
        t.insert((*k).into(), AMQPValue::LongString(LongString::from(v.clone().into_bytes())));
    }
    t
}

fn value_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        AMQPValue::ShortInt(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Splits AMQP headers into the user's headers and ours.
fn read_headers(props: &BasicProperties) -> (Headers, u32, u32, Option<String>) {
    let mut user = Headers::new();
    let (mut delivery_count, mut base, mut first_failure) = (0, 0, None);
    if let Some(table) = props.headers() {
        for (k, v) in table {
            let key = k.as_str();
            match key {
                "x-delivery-count" => delivery_count = value_text(v).and_then(|s| s.parse().ok()).unwrap_or(0),
                ATTEMPTS_BASE => base = value_text(v).and_then(|s| s.parse().ok()).unwrap_or(0),
                FIRST_FAILURE => first_failure = value_text(v),
                _ if key.starts_with("x-death")
                    || key.starts_with("x-first-death")
                    || key.starts_with("x-last-death") => {}
                _ => {
                    if let Some(text) = value_text(v) {
                        user.insert(key.to_owned(), text);
                    }
                }
            }
        }
    }
    (user, delivery_count, base, first_failure)
}

fn persistent(headers: FieldTable) -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2).with_headers(headers)
}

/// The properties a message published with `headers` carries: persistent, the headers
/// as AMQP strings, as this backend's queues read them. For publishers that route into
/// these queues through an exchange of their own (platform-events' bus).
#[doc(hidden)]
pub fn message_properties(headers: &Headers) -> BasicProperties {
    persistent(string_headers(headers, &[]))
}

fn capabilities() -> Capabilities {
    Capabilities {
        dedup: false,
        dedup_window: None,
        atomic_batch: false,
        max_delay: Some(Duration::from_secs(u64::from(u32::MAX) / 1000)),
        ..Capabilities::default()
    }
}

/// Which kind of RabbitMQ queue holds the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueType {
    /// Replicated; counts deliveries (`x-delivery-count`).
    Quorum,
    /// One node; says only whether a message was redelivered.
    Classic,
}

/// Unacked messages a handle's consumer holds at most, unless `prefetch` says.
const DEFAULT_PREFETCH: u16 = 32;

/// The push consumer of a handle, on a channel of its own.
struct Consumer {
    channel: Channel,
    stream: lapin::Consumer,
}

struct Shared {
    conn: Connection,
    publisher: Channel,
    options: QueueOptions,
    queue_type: QueueType,
    prefetch: u16,
    declared_delays: Mutex<std::collections::HashSet<u64>>,
    /// Started by the first receive, and again after its channel closed.
    consumer: tokio::sync::Mutex<Option<Consumer>>,
}

impl Shared {
    async fn confirm(&self, routing_key: &str, body: &[u8], props: BasicProperties) -> Result<()> {
        let confirm = self
            .publisher
            .basic_publish("".into(), routing_key.into(), BasicPublishOptions::default(), body, props)
            .await
            .map_err(map_err)?;
        match confirm.await.map_err(map_err)? {
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => {
                Err(Error::unavailable("broker refused the message (nack)").with_backend("rabbitmq"))
            }
        }
    }

    /// Starts consuming the queue on a fresh channel, at most `prefetch` unacked.
    async fn consume(&self) -> Result<Consumer> {
        let channel = self.conn.create_channel().await.map_err(map_err)?;
        channel.basic_qos(self.prefetch, BasicQosOptions::default()).await.map_err(map_err)?;
        let queue: ShortString = self.options.queue.as_str().into();
        let stream = channel
            .basic_consume(queue, "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(map_err)?;
        Ok(Consumer { channel, stream })
    }

    /// The holding queue for `delay`: messages wait there, then return to the queue.
    async fn delay_queue(&self, delay: Duration) -> Result<String> {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
        let name = format!("{}.delay.{ms}", self.options.queue);
        let known = self.declared_delays.lock().unwrap_or_else(|e| e.into_inner()).contains(&ms);
        if !known {
            let mut args = FieldTable::default();
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms as i64));
            args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
            args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(self.options.queue.as_str().into()));
            args.insert("x-expires".into(), AMQPValue::LongLongInt(ms as i64 + 600_000));
            let opts = QueueDeclareOptions { durable: true, ..Default::default() };
            self.publisher.queue_declare(name.as_str().into(), opts, args).await.map_err(map_err)?;
            self.declared_delays.lock().unwrap_or_else(|e| e.into_inner()).insert(ms);
        }
        Ok(name)
    }
}

/// A queue on RabbitMQ.
pub struct RabbitMqQueue {
    shared: Arc<Shared>,
    location: String,
}

impl fmt::Debug for RabbitMqQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqQueue")
            .field("location", &self.location)
            .field("options", &self.shared.options)
            .finish()
    }
}

impl fmt::Display for RabbitMqQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rabbitmq({}/{})", self.location, self.shared.options.queue)
    }
}

impl RabbitMqQueue {
    /// Opens a queue from `amqp://…`, declaring it and its dead-letter queue.
    pub async fn from_url(url: &str) -> Result<QueueHandle<Self>> {
        let (u, queue_type, prefetch) = Self::settings(url)?;
        let location = format!("{}:{}", u.url().host_str().unwrap_or("localhost"), u.url().port().unwrap_or(5672));
        let conn = Connection::connect(&u.driver_url(&[]), ConnectionProperties::default()).await.map_err(map_err)?;
        let publisher = conn.create_channel().await.map_err(map_err)?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(map_err)?;
        let o = &u.options;
        let mut args = FieldTable::default();
        let kind = if queue_type == QueueType::Quorum { "quorum" } else { "classic" };
        args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        publisher.queue_declare(o.queue.as_str().into(), durable, args).await.map_err(map_err)?;
        publisher
            .queue_declare(o.dead_letter.as_str().into(), durable, FieldTable::default())
            .await
            .map_err(map_err)?;
        let shared = Arc::new(Shared {
            conn,
            publisher,
            options: u.options,
            queue_type,
            prefetch,
            declared_delays: Mutex::default(),
            consumer: tokio::sync::Mutex::default(),
        });
        Ok(QueueHandle::new(Self { shared, location }))
    }

    /// Checks `url` as [`from_url`](Self::from_url) does, without connecting: the queue
    /// options it names and what the queue can do, or the error `from_url` would give.
    pub fn check_url(url: &str) -> Result<(QueueOptions, Capabilities)> {
        Ok((Self::settings(url)?.0.options, capabilities()))
    }

    fn settings(url: &str) -> Result<(QueueUrl, QueueType, u16)> {
        let mut u = QueueUrl::parse(url)?;
        let queue_type = match u.take("queue_type").as_deref() {
            None | Some("quorum") => QueueType::Quorum,
            Some("classic") => QueueType::Classic,
            Some(other) => {
                return Err(platform_core::config::url_error(
                    "rabbitmq",
                    "queue_type",
                    &format!("`{other}` is not a queue type (quorum or classic)"),
                ));
            }
        };
        let prefetch = u.take_parsed::<u16>("prefetch")?.unwrap_or(DEFAULT_PREFETCH);
        if prefetch == 0 {
            return Err(platform_core::config::url_error("rabbitmq", "prefetch", "must be at least 1"));
        }
        u.finish("rabbitmq")?;
        Ok((u, queue_type, prefetch))
    }

    async fn deliver(&self, d: AmqpDelivery) -> Result<Option<Delivery>> {
        let (headers, delivery_count, base, first_failure) = read_headers(&d.properties);
        let redeliveries = match self.shared.queue_type {
            QueueType::Quorum => delivery_count,
            QueueType::Classic => u32::from(d.redelivered),
        };
        let attempt = base + redeliveries + 1;
        let o = &self.shared.options;
        let body = Bytes::from(d.data);
        let inner = Arc::new(Held {
            shared: Arc::clone(&self.shared),
            body: body.clone(),
            headers: headers.clone(),
            attempt,
            first_failure,
            state: ClientLease::new(o.visibility_timeout),
            amqp: d.acker,
        });
        if attempt > o.max_attempts {
            let reason = format!("lease expired on each of {} attempts", attempt - 1);
            inner.state.take("rabbitmq", "receive")?;
            if let Err(e) = inner.move_to_dlq(&reason, attempt - 1).await {
                // Back to the queue: the next delivery tries again.
                let _ = inner.amqp.nack(BasicNackOptions { requeue: true, multiple: false }).await;
                return Err(e);
            }
            return Ok(None);
        }
        // The client keeps the lease: past it, the message goes back to the queue.
        let timer = Arc::clone(&inner);
        tokio::spawn(async move {
            if timer.state.expired().await {
                let _ = timer.give_back(timer.attempt).await;
            }
        });
        let id = d.delivery_tag.to_string();
        Ok(Some(Delivery::new(id, body, headers, attempt, o.visibility_timeout, Box::new(RabbitAcker(inner)))))
    }

    /// Takes what the consumer holds, up to `max`, waiting until `deadline` for the
    /// first. A consumer whose channel failed is dropped, and the next receive starts
    /// another (the broker requeued what the old one held).
    async fn take(&self, max: usize, deadline: tokio::time::Instant) -> Result<Vec<Delivery>> {
        let mut slot = self.shared.consumer.lock().await;
        if slot.as_ref().is_none_or(|c| !c.channel.status().connected()) {
            *slot = Some(self.shared.consume().await?);
        }
        let mut out = Vec::new();
        while let Some(consumer) = slot.as_mut() {
            let next = if out.is_empty() {
                match tokio::time::timeout_at(deadline, consumer.stream.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            } else {
                match consumer.stream.next().now_or_never() {
                    Some(next) => next,
                    None => break,
                }
            };
            match next {
                Some(Ok(d)) => out.extend(self.deliver(d).await?),
                Some(Err(e)) => {
                    *slot = None;
                    return Err(map_err(e));
                }
                None => {
                    *slot = None;
                    return Err(Error::unavailable("the consumer was cancelled by the broker").with_backend("rabbitmq"));
                }
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl HealthCheck for RabbitMqQueue {
    fn name(&self) -> String {
        "queue:rabbitmq".into()
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        // A passive declare is a real round trip to the broker.
        let opts = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
        let q = self
            .shared
            .publisher
            .queue_declare(self.shared.options.queue.as_str().into(), opts, FieldTable::default())
            .await
            .map_err(map_err)?;
        // The client does not expose the broker's version; say what was reached.
        let version = format!("RabbitMQ (AMQP 0-9-1, {} ready)", q.message_count());
        Ok(CheckOutcome::new(started.elapsed()).with_version(version))
    }
}

#[async_trait]
impl Queue for RabbitMqQueue {
    fn queue_name(&self) -> &str {
        &self.shared.options.queue
    }

    fn backend(&self) -> &'static str {
        "rabbitmq"
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.send_batch(vec![message]).await
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            let key = match m.delay.filter(|d| !d.is_zero()) {
                Some(d) => self.shared.delay_queue(d).await?,
                None => self.shared.options.queue.clone(),
            };
            let props = persistent(string_headers(&m.headers, &[]));
            let confirm = self
                .shared
                .publisher
                .basic_publish("".into(), key.as_str().into(), BasicPublishOptions::default(), &m.body, props)
                .await
                .map_err(map_err)?;
            confirms.push(confirm);
        }
        for c in confirms {
            if let Confirmation::Nack(_) = c.await.map_err(map_err)? {
                return Err(Error::unavailable("broker refused a message (nack)").with_backend("rabbitmq"));
            }
        }
        Ok(())
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Delivery>> {
        self.take(options.max, tokio::time::Instant::now() + options.wait).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        // Take up to `limit` without acking, then close the channel: the broker puts
        // them back where they were.
        let channel = self.shared.conn.create_channel().await.map_err(map_err)?;
        let queue: ShortString = self.shared.options.dead_letter.as_str().into();
        let mut out = Vec::new();
        while out.len() < limit {
            let got = channel.basic_get(queue.clone(), BasicGetOptions { no_ack: false }).await.map_err(map_err)?;
            let Some(got) = got else { break };
            let d = got.delivery;
            let (headers, ..) = read_headers(&d.properties);
            out.push(DeadLetter::new(d.delivery_tag.to_string(), Bytes::from(d.data), headers));
        }
        let _ = channel.close(200, "".into()).await;
        Ok(out)
    }

    async fn redrive(&self, limit: usize) -> Result<usize> {
        let channel = self.shared.conn.create_channel().await.map_err(map_err)?;
        let queue: ShortString = self.shared.options.dead_letter.as_str().into();
        let mut moved = 0;
        while moved < limit {
            let got = channel.basic_get(queue.clone(), BasicGetOptions { no_ack: false }).await.map_err(map_err)?;
            let Some(got) = got else { break };
            let d = got.delivery;
            let (headers, ..) = read_headers(&d.properties);
            // Stored again first, removed from the dead letters second.
            self.shared.confirm(&self.shared.options.queue, &d.data, persistent(string_headers(&headers, &[]))).await?;
            d.acker.ack(BasicAckOptions::default()).await.map_err(map_err)?;
            moved += 1;
        }
        let _ = channel.close(200, "".into()).await;
        Ok(moved)
    }

    async fn close(&self) -> Result<()> {
        let _ = self.shared.conn.close(200, "closed".into()).await;
        Ok(())
    }
}

/// One delivery as its acker and lease timer share it.
struct Held {
    shared: Arc<Shared>,
    body: Bytes,
    headers: Headers,
    attempt: u32,
    first_failure: Option<String>,
    state: ClientLease,
    amqp: lapin::Acker,
}

impl Held {
    fn first_failure_now(&self) -> String {
        self.first_failure.clone().unwrap_or_else(|| crate::message::rfc3339(time::OffsetDateTime::now_utc()))
    }

    /// Sends a copy that remembers `counted` attempts (and the first failure, once one
    /// was counted) to `key`, then acks the original.
    async fn republish(&self, key: &str, counted: u32) -> Result<()> {
        let mut extra = vec![(ATTEMPTS_BASE, counted.to_string())];
        if counted > 0 || self.first_failure.is_some() {
            extra.push((FIRST_FAILURE, self.first_failure_now()));
        }
        let props = persistent(string_headers(&self.headers, &extra));
        self.shared.confirm(key, &self.body, props).await?;
        self.amqp.ack(BasicAckOptions::default()).await.map(drop).map_err(map_err)
    }

    /// Returns the message to the queue with this delivery counted as `counted`
    /// attempts: a quorum queue counts the requeue itself, a classic one gets a copy
    /// that carries the count.
    async fn give_back(&self, counted: u32) -> Result<()> {
        if self.shared.queue_type == QueueType::Quorum && counted == self.attempt {
            let opts = BasicNackOptions { requeue: true, multiple: false };
            return self.amqp.nack(opts).await.map(drop).map_err(map_err);
        }
        self.republish(&self.shared.options.queue, counted).await
    }

    async fn move_to_dlq(&self, reason: &str, attempts: u32) -> Result<()> {
        let first = self.first_failure.as_deref().and_then(crate::message::parse_rfc3339);
        let o = &self.shared.options;
        let headers = dead_letter_headers(&self.headers, reason, &o.queue, attempts, first);
        self.shared.confirm(&o.dead_letter, &self.body, persistent(string_headers(&headers, &[]))).await?;
        self.amqp.ack(BasicAckOptions::default()).await.map_err(map_err)?;
        Ok(())
    }
}

/// The acker a [`Delivery`] holds. Dropped unsettled (a job abandoned, a receive's
/// result thrown away), it gives the message back at once instead of at the end of
/// its lease.
struct RabbitAcker(Arc<Held>);

impl Drop for RabbitAcker {
    fn drop(&mut self) {
        if self.0.state.take("rabbitmq", "drop").is_err() {
            return;
        }
        let held = Arc::clone(&self.0);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = held.give_back(held.attempt).await;
            });
        }
    }
}

impl fmt::Debug for RabbitAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitAcker").field("attempt", &self.0.attempt).finish_non_exhaustive()
    }
}

impl RabbitAcker {
    fn take(&self, op: &'static str) -> Result<()> {
        self.0.state.take("rabbitmq", op)
    }

    fn finish<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.0.state.untake();
        }
        result
    }
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(&self) -> Result<()> {
        self.take("ack")?;
        let r = self.0.amqp.ack(BasicAckOptions::default()).await.map(drop).map_err(map_err);
        self.finish(r)
    }

    async fn nack(&self, delay: Option<Duration>, reason: Option<&str>) -> Result<bool> {
        self.take("nack")?;
        let (held, max) = (&self.0, self.0.shared.options.max_attempts);
        let r = if held.attempt >= max {
            let why = exhausted_reason(max, reason);
            held.move_to_dlq(&why, held.attempt).await.map(|()| true)
        } else {
            match delay.filter(|d| !d.is_zero()) {
                // Parked in the holding queue as a new message that remembers its attempts.
                Some(d) => {
                    async {
                        let key = held.shared.delay_queue(d).await?;
                        held.republish(&key, held.attempt).await.map(|()| false)
                    }
                    .await
                }
                None => held.give_back(held.attempt).await.map(|()| false),
            }
        };
        self.finish(r)
    }

    async fn dead_letter(&self, reason: &str) -> Result<()> {
        self.take("dead_letter")?;
        let r = self.0.move_to_dlq(reason, self.0.attempt).await;
        self.finish(r)
    }

    async fn extend(&self, lease: Duration) -> Result<()> {
        self.0.state.extend("rabbitmq", lease)
    }

    async fn release(&self) -> Result<()> {
        self.take("release")?;
        // A copy that does not count this delivery, then the original goes.
        let r = self.0.republish(&self.0.shared.options.queue, self.0.attempt - 1).await;
        self.finish(r)
    }
}
