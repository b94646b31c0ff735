//! RabbitMQ queues: `amqp://user:password@host:5672/vhost?queue=jobs`.
//!
//! - [x] a durable quorum queue per queue name; publisher confirms on every send
//! - [x] manual acks; the lease is kept by the client: a delivery not settled within
//!   the visibility timeout is returned to the queue (`basic.nack` with requeue), and a
//!   crashed consumer's channel closes, which returns its messages too
//! - [x] a receive works on a channel of its own, reused by a later receive once every
//!   message taken on it was settled (up to 16 idle per handle); one that a dropped
//!   delivery, an error or a cancelled receive left unsettled is closed instead
//! - [x] attempts from the quorum queue's `x-delivery-count`, plus what was carried
//!   across delays
//! - [x] delay and `nack(delay)`: a durable holding queue per delay length
//!   (`<queue>.delay.<ms>`, TTL, dead-lettered back into the queue); no plugin needed
//!   and no head-of-line blocking between different delays
//! - [x] dead letters in a durable classic queue, read without removing them; redrive
//! - [ ] ~~dedup~~: RabbitMQ has no publish-side dedup; `Unsupported`
//! - [ ] ~~atomic batches~~: each message is confirmed on its own
//!
//! Headers travel as AMQP string headers, exactly. TLS (`amqps://`) is not compiled in.
//!
//! URL: `amqp://[user:password@]host[:port][/vhost]` plus the common parameters.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
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
pub(crate) fn map_err(e: lapin::Error) -> Error {
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

struct Shared {
    conn: Connection,
    publisher: Channel,
    options: QueueOptions,
    declared_delays: Mutex<std::collections::HashSet<u64>>,
    /// Receive channels whose deliveries were all settled, kept for the next receive.
    idle_channels: Mutex<Vec<Channel>>,
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
        let u = QueueUrl::parse(url)?;
        u.finish("rabbitmq")?;
        let location = format!("{}:{}", u.url().host_str().unwrap_or("localhost"), u.url().port().unwrap_or(5672));
        let conn = Connection::connect(&u.driver_url(&[]), ConnectionProperties::default()).await.map_err(map_err)?;
        let publisher = conn.create_channel().await.map_err(map_err)?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(map_err)?;
        let o = &u.options;
        let mut quorum = FieldTable::default();
        quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        publisher.queue_declare(o.queue.as_str().into(), durable, quorum).await.map_err(map_err)?;
        publisher
            .queue_declare(o.dead_letter.as_str().into(), durable, FieldTable::default())
            .await
            .map_err(map_err)?;
        let shared = Arc::new(Shared {
            conn,
            publisher,
            options: u.options,
            declared_delays: Mutex::default(),
            idle_channels: Mutex::default(),
        });
        Ok(QueueHandle::new(Self { shared, location }))
    }

    async fn deliver(&self, channel: &Arc<ChannelGuard>, d: AmqpDelivery) -> Result<Option<Delivery>> {
        let (headers, delivery_count, base, first_failure) = read_headers(&d.properties);
        let attempt = base + delivery_count + 1;
        let o = &self.shared.options;
        let state = Arc::new(ClientLease::new(o.visibility_timeout));
        let body = Bytes::from(d.data);
        let acker = RabbitAcker {
            shared: Arc::clone(&self.shared),
            channel: Arc::clone(channel),
            body: body.clone(),
            headers: headers.clone(),
            attempt,
            first_failure,
            state: Arc::clone(&state),
            amqp: d.acker.clone(),
        };
        if attempt > o.max_attempts {
            let reason = format!("lease expired on each of {} attempts", attempt - 1);
            acker.move_to_dlq(&reason, attempt - 1).await?;
            channel.settled();
            return Ok(None);
        }
        // The client keeps the lease: past it, the message goes back to the queue.
        let timer_acker = d.acker.clone();
        tokio::spawn(async move {
            if state.expired().await {
                let _ = timer_acker.nack(BasicNackOptions { requeue: true, multiple: false }).await;
            }
        });
        let id = d.delivery_tag.to_string();
        Ok(Some(Delivery::new(id, body, headers, attempt, o.visibility_timeout, Box::new(acker))))
    }
}

/// A receive's channel. When its last delivery is gone it is kept for the next
/// receive if every message taken on it was settled, and closed otherwise: the broker
/// then requeues what was not settled (a delivery dropped mid-job comes back at once).
struct ChannelGuard {
    channel: Channel,
    shared: Arc<Shared>,
    /// Messages taken on this channel and not yet acked, nacked or moved, plus one
    /// while the receive runs: a receive that fails or is cancelled midway may have
    /// left messages on the channel unseen, so it is closed, never reused.
    outstanding: AtomicUsize,
}

impl ChannelGuard {
    /// An idle channel of this queue, or a new one.
    async fn take(shared: &Arc<Shared>) -> Result<Self> {
        let idle = {
            let mut idle = shared.idle_channels.lock().unwrap_or_else(|e| e.into_inner());
            std::iter::from_fn(|| idle.pop()).find(|c| c.status().connected())
        };
        let channel = match idle {
            Some(c) => c,
            None => shared.conn.create_channel().await.map_err(map_err)?,
        };
        Ok(Self { channel, shared: Arc::clone(shared), outstanding: AtomicUsize::new(1) })
    }

    fn taken(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    fn settled(&self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Idle receive channels kept per queue handle.
const IDLE_CHANNELS: usize = 16;

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        if *self.outstanding.get_mut() == 0 && self.channel.status().connected() {
            let mut idle = self.shared.idle_channels.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < IDLE_CHANNELS {
                idle.push(self.channel.clone());
                return;
            }
        }
        let channel = self.channel.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = channel.close(200, "".into()).await;
            });
        }
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
        Capabilities {
            dedup: false,
            dedup_window: None,
            atomic_batch: false,
            max_delay: Some(Duration::from_secs(u64::from(u32::MAX) / 1000)),
            ..Capabilities::default()
        }
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
        // One channel per receive: its deliveries are settled on it, and if this
        // process dies the channel closes and the broker requeues them.
        let channel = Arc::new(ChannelGuard::take(&self.shared).await?);
        let finished = |out: Vec<Delivery>| {
            channel.settled();
            Ok(out)
        };
        let deadline = tokio::time::Instant::now() + options.wait;
        let mut pause = Duration::from_millis(5);
        let queue: ShortString = self.shared.options.queue.as_str().into();
        loop {
            let mut out = Vec::new();
            let get = || channel.channel.basic_get(queue.clone(), BasicGetOptions { no_ack: false });
            while out.len() < options.max {
                let Some(first) = get().await.map_err(map_err)? else { break };
                // The reply says how many more wait: ask for those (up to the max) at
                // once, pipelined on the channel, instead of one round trip each.
                let more = usize::try_from(first.message_count).unwrap_or(usize::MAX).min(options.max - out.len() - 1);
                let rest = futures::future::join_all((0..more).map(|_| get())).await;
                let mut drained = false;
                for got in std::iter::once(Ok(Some(first))).chain(rest) {
                    match got.map_err(map_err)? {
                        Some(got) => {
                            channel.taken();
                            out.extend(self.deliver(&channel, got.delivery).await?);
                        }
                        None => drained = true,
                    }
                }
                if drained {
                    break;
                }
            }
            let now = tokio::time::Instant::now();
            if !out.is_empty() || now >= deadline {
                return finished(out);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
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

struct RabbitAcker {
    shared: Arc<Shared>,
    channel: Arc<ChannelGuard>,
    body: Bytes,
    headers: Headers,
    attempt: u32,
    first_failure: Option<String>,
    state: Arc<ClientLease>,
    amqp: lapin::Acker,
}

impl fmt::Debug for RabbitAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitAcker").field("attempt", &self.attempt).finish_non_exhaustive()
    }
}

impl RabbitAcker {
    fn take(&self, op: &'static str) -> Result<()> {
        self.state.take("rabbitmq", op)
    }

    fn untake(&self) {
        self.state.untake();
    }

    fn finish<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.untake();
        } else {
            self.channel.settled();
        }
        result
    }

    fn first_failure_now(&self) -> String {
        self.first_failure.clone().unwrap_or_else(|| crate::message::rfc3339(time::OffsetDateTime::now_utc()))
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

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(&self) -> Result<()> {
        self.take("ack")?;
        let r = self.amqp.ack(BasicAckOptions::default()).await.map(drop).map_err(map_err);
        self.finish(r)
    }

    async fn nack(&self, delay: Option<Duration>, reason: Option<&str>) -> Result<bool> {
        self.take("nack")?;
        let max = self.shared.options.max_attempts;
        let r = if self.attempt >= max {
            let why = exhausted_reason(max, reason);
            self.move_to_dlq(&why, self.attempt).await.map(|()| true)
        } else {
            match delay.filter(|d| !d.is_zero()) {
                // Parked in the holding queue as a new message that remembers its attempts.
                Some(d) => {
                    async {
                        let key = self.shared.delay_queue(d).await?;
                        let extra =
                            [(ATTEMPTS_BASE, self.attempt.to_string()), (FIRST_FAILURE, self.first_failure_now())];
                        let props = persistent(string_headers(&self.headers, &extra));
                        self.shared.confirm(&key, &self.body, props).await?;
                        self.amqp.ack(BasicAckOptions::default()).await.map_err(map_err)?;
                        Ok(false)
                    }
                    .await
                }
                None => {
                    let opts = BasicNackOptions { requeue: true, multiple: false };
                    self.amqp.nack(opts).await.map(|_| false).map_err(map_err)
                }
            }
        };
        self.finish(r)
    }

    async fn dead_letter(&self, reason: &str) -> Result<()> {
        self.take("dead_letter")?;
        let r = self.move_to_dlq(reason, self.attempt).await;
        self.finish(r)
    }

    async fn extend(&self, lease: Duration) -> Result<()> {
        self.state.extend("rabbitmq", lease)
    }

    async fn release(&self) -> Result<()> {
        self.take("release")?;
        // A copy that does not count this delivery, then the original goes.
        let r = async {
            let extra = [(ATTEMPTS_BASE, (self.attempt - 1).to_string())];
            let extra: Vec<(&str, String)> = match &self.first_failure {
                Some(f) => vec![extra[0].clone(), (FIRST_FAILURE, f.clone())],
                None => extra.to_vec(),
            };
            let props = persistent(string_headers(&self.headers, &extra));
            self.shared.confirm(&self.shared.options.queue, &self.body, props).await?;
            self.amqp.ack(BasicAckOptions::default()).await.map(drop).map_err(map_err)
        }
        .await;
        self.finish(r)
    }
}
