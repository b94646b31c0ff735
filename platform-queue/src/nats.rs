//! NATS JetStream queues: `nats://host:4222?queue=jobs`.
//!
//! - [x] a work-queue stream per queue (`PQ_<NAME>`, subject `platform.queue.<NAME>`,
//!   file storage) and one durable pull consumer (`worker`), shared by every receiver
//! - [x] leases are the consumer's `ack_wait` (the visibility timeout); `extend` sends
//!   `+WPI`, which renews for one more visibility timeout whatever length is asked. The
//!   client keeps the deadline too (the server cannot tell a stale ack from a live one),
//!   and a newer delivery of the same message to this handle ends the older lease at
//!   once, since the client's clock may have started after the server's
//! - [x] attempts from the server's delivery count; `nack(delay)` is `-NAK` with delay
//! - [x] dead letters in a second stream (`PQ_<DLQ>`, limits retention), readable
//!   without removing them; redrive republishes and deletes
//! - [x] dedup by `Nats-Msg-Id` within the stream's duplicate window (`dedup_window`)
//! - [ ] ~~delay~~: NATS 2.9 has no scheduled delivery; `Unsupported`
//! - [ ] ~~atomic batches~~: each message of a batch is published and confirmed on its own
//!
//! Headers travel JSON-encoded in one NATS header (`Platform-Headers`), so any bytes
//! and spacing survive exactly; a message without headers or dedup key is published
//! with no NATS headers at all. The first-failure time of a dead letter is the time
//! the message was first published (JetStream keeps no failure time).
//!
//! URL: `nats://[user:password@]host:port`, plus the common
//! parameters and `consumer` (the durable consumer's name, default `worker`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self as js, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use platform_core::{CheckOutcome, Error, HealthCheck, Result};
use time::OffsetDateTime;

use crate::QueueHandle;
use crate::driver::{Acker, dead_letter_headers};
use crate::lease::clock::LeaseClock;
use crate::message::{decode_headers, encode_headers, exhausted_reason};
use crate::options::{QueueOptions, QueueUrl};
use crate::{Capabilities, DeadLetter, Delivery, Headers, Message, Queue, ReceiveOptions};

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["nats"];

const HEADERS: &str = "Platform-Headers";
const ATTEMPTS_BASE: &str = "Platform-Attempts-Base";
const MSG_ID: &str = "Nats-Msg-Id";

/// Maps an error of the NATS client onto the portable kinds.
pub(crate) fn map_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    platform_core::nats::map_error(e)
}

fn stream_name(queue: &str) -> String {
    let safe: String = queue.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("PQ_{safe}")
}

fn subject(queue: &str) -> String {
    format!("platform.queue.{queue}")
}

/// A queue on NATS JetStream.
pub struct NatsQueue {
    client: async_nats::Client,
    js: js::Context,
    consumer: PullConsumer,
    dlq: stream::Stream,
    options: QueueOptions,
    max_payload: usize,
    /// What every delivery's acker shares, made once.
    shared: Arc<NatsRef>,
}

impl fmt::Debug for NatsQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsQueue").field("options", &self.options).finish_non_exhaustive()
    }
}

impl fmt::Display for NatsQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.client.server_info();
        write!(f, "nats({}:{}/{})", info.host, info.port, self.options.queue)
    }
}

impl NatsQueue {
    /// The options.
    pub fn options(&self) -> &QueueOptions {
        &self.options
    }

    /// Opens a queue from `nats://…`, creating its streams and consumer as needed.
    pub async fn from_url(url: &str) -> Result<QueueHandle<Self>> {
        let mut u = QueueUrl::parse(url)?;
        let consumer_name = u.take("consumer").unwrap_or_else(|| "worker".to_owned());
        u.finish("nats")?;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(u.driver_url(&[]))
            .await
            .map_err(map_err)?;
        let max_payload = client.server_info().max_payload;
        let js = js::new(client.clone());
        let o = &u.options;
        let work = js
            .get_or_create_stream(stream::Config {
                name: stream_name(&o.queue),
                subjects: vec![subject(&o.queue)],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                duplicate_window: o.dedup_window,
                ..Default::default()
            })
            .await
            .map_err(map_err)?;
        let dlq = js
            .get_or_create_stream(stream::Config {
                name: stream_name(&o.dead_letter),
                subjects: vec![subject(&o.dead_letter)],
                retention: RetentionPolicy::Limits,
                storage: StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(map_err)?;
        let consumer: PullConsumer = work
            .get_or_create_consumer(
                &consumer_name,
                pull::Config {
                    durable_name: Some(consumer_name.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: o.visibility_timeout,
                    max_deliver: -1,
                    max_ack_pending: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(map_err)?;
        let shared =
            Arc::new(NatsRef { js: js.clone(), options: u.options.clone(), max_payload, leases: Mutex::default() });
        Ok(QueueHandle::new(Self { client, js, consumer, dlq, options: u.options, max_payload, shared }))
    }

    fn nats_headers(&self, headers: &Headers, extra: &[(&str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADERS, encode_headers(headers).as_str());
        for (k, v) in extra {
            h.insert(*k, v.as_str());
        }
        h
    }

    async fn publish(&self, subject: String, headers: HeaderMap, body: Bytes) -> Result<()> {
        let ack = self.js.publish_with_headers(subject, headers, body).await.map_err(map_err)?;
        ack.await.map_err(map_err)?;
        Ok(())
    }

    fn to_dead(&self, m: &async_nats::jetstream::message::StreamMessage) -> DeadLetter {
        let headers = m.headers.get(HEADERS).map(|v| decode_headers(v.as_str())).unwrap_or_default();
        DeadLetter::new(m.sequence.to_string(), m.payload.clone(), headers)
    }
}

#[async_trait]
impl HealthCheck for NatsQueue {
    fn name(&self) -> String {
        "queue:nats".into()
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        self.client.flush().await.map_err(map_err)?;
        let version = format!("nats-server {}", self.client.server_info().version);
        Ok(CheckOutcome::new(started.elapsed()).with_version(version))
    }
}

#[async_trait]
impl Queue for NatsQueue {
    fn queue_name(&self) -> &str {
        &self.options.queue
    }

    fn backend(&self) -> &'static str {
        "nats"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delay: false,
            atomic_batch: false,
            dedup_window: Some(self.options.dedup_window),
            max_body_bytes: self.max_payload.saturating_sub(64 * 1024),
            max_batch: 1000,
            max_receive: 1000,
            ..Capabilities::default()
        }
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.send_batch(vec![message]).await
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        for m in &messages {
            let headers = if m.headers.is_empty() { 0 } else { encode_headers(&m.headers).len() };
            let size = m.body.len() + headers + 256;
            if size > self.max_payload {
                return Err(Error::invalid_input(format!(
                    "message of {size} bytes with headers exceeds the server's max payload {}",
                    self.max_payload
                ))
                .with_backend("nats")
                .with_op("send")
                .with_detail("headers", "too large"));
            }
        }
        let subject = subject(&self.options.queue);
        // Publish all, then wait for every confirmation: pipelined, not atomic.
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let ack = if m.headers.is_empty() && m.dedup_key.is_none() {
                // No headers to carry: a plain publish, which neither side parses headers for.
                self.js.publish(subject.clone(), m.body).await
            } else {
                let extra: Vec<(&str, String)> = m.dedup_key.iter().map(|k| (MSG_ID, k.clone())).collect();
                let headers = self.nats_headers(&m.headers, &extra);
                self.js.publish_with_headers(subject.clone(), headers, m.body).await
            };
            pending.push(ack.map_err(map_err)?);
        }
        for ack in pending {
            ack.await.map_err(map_err)?;
        }
        Ok(())
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + options.wait;
        let mut pause = Duration::from_millis(5);
        loop {
            // A no-wait pull that finds only unacked messages gets no answer from some
            // servers; `expires` makes the server end it, the timeout covers the rest.
            let fetch = async {
                let mut batch = self
                    .consumer
                    .fetch()
                    .max_messages(options.max)
                    .expires(Duration::from_millis(200))
                    .messages()
                    .await
                    .map_err(map_err)?;
                let mut out = Vec::new();
                while let Some(m) = batch.next().await {
                    let m = m.map_err(map_err)?;
                    if let Some(d) = self.deliver(m).await? {
                        out.push(d);
                    }
                }
                Ok::<_, Error>(out)
            };
            let out = match tokio::time::timeout(Duration::from_secs(2), fetch).await {
                Ok(out) => out?,
                Err(_) => Vec::new(),
            };
            if !out.is_empty() {
                return Ok(out);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut out = Vec::new();
        for seq in self.dlq_sequences().await? {
            if out.len() >= limit {
                break;
            }
            match self.dlq.get_raw_message(seq).await {
                Ok(m) => out.push(self.to_dead(&m)),
                Err(e) if e.to_string().to_ascii_lowercase().contains("not found") => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        Ok(out)
    }

    async fn redrive(&self, limit: usize) -> Result<usize> {
        let mut moved = 0;
        for dead in self.dead_letters(limit).await? {
            let headers = self.nats_headers(&dead.headers, &[]);
            self.publish(subject(&self.options.queue), headers, dead.body.clone()).await?;
            let seq: u64 = dead.id.parse().unwrap_or(0);
            self.dlq.delete_message(seq).await.map_err(map_err)?;
            moved += 1;
        }
        Ok(moved)
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

impl NatsQueue {
    async fn dlq_sequences(&self) -> Result<std::ops::RangeInclusive<u64>> {
        let mut dlq = self.dlq.clone();
        let info = dlq.info().await.map_err(map_err)?;
        let state = &info.state;
        if state.messages == 0 {
            return Ok(std::ops::RangeInclusive::new(1, 0));
        }
        Ok(state.first_sequence..=state.last_sequence)
    }

    /// Turns a fetched message into a delivery, or dead-letters it when its leases ran
    /// out `max_attempts` times.
    async fn deliver(&self, m: js::Message) -> Result<Option<Delivery>> {
        let info = m.info().map_err(|e| Error::internal(e.to_string()).with_backend("nats"))?;
        let delivered = u32::try_from(info.delivered).unwrap_or(u32::MAX);
        let published = info.published;
        let stream_seq = info.stream_sequence;
        let nh = m.headers.as_ref();
        let base: u32 = nh.and_then(|h| h.get(ATTEMPTS_BASE)).and_then(|v| v.as_str().parse().ok()).unwrap_or(0);
        let attempt = base + delivered;
        let headers = nh.and_then(|h| h.get(HEADERS)).map(|v| decode_headers(v.as_str())).unwrap_or_default();
        let lease = Arc::new(LeaseClock::until(Instant::now() + self.options.visibility_timeout));
        {
            let mut leases = self.shared.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(older) = leases.insert(stream_seq, Arc::downgrade(&lease)).and_then(|w| w.upgrade()) {
                older.expire();
            }
            if leases.len() > 4096 {
                leases.retain(|_, w| w.strong_count() > 0);
            }
        }
        let acker = NatsAcker {
            queue: Arc::clone(&self.shared),
            message: m,
            attempt,
            headers: headers.clone(),
            published: OffsetDateTime::from_unix_timestamp_nanos(published.unix_timestamp_nanos()).ok(),
            lease,
        };
        if attempt > self.options.max_attempts {
            let reason = format!("lease expired on each of {} attempts", attempt - 1);
            acker.move_to_dlq(&reason, attempt - 1).await?;
            return Ok(None);
        }
        let vt = self.options.visibility_timeout;
        let body = acker.message.payload.clone();
        Ok(Some(Delivery::new(stream_seq.to_string(), body, headers, attempt, vt, Box::new(acker))))
    }
}

/// What an acker needs of its queue.
struct NatsRef {
    js: js::Context,
    options: QueueOptions,
    max_payload: usize,
    /// The lease of the latest delivery of each stream sequence this handle holds. The
    /// lease clock starts when the client sees a message, which can be later than the
    /// server's; a newer delivery of the same message proves the older lease lost.
    leases: Mutex<HashMap<u64, Weak<LeaseClock>>>,
}

struct NatsAcker {
    queue: Arc<NatsRef>,
    message: js::Message,
    attempt: u32,
    headers: Headers,
    published: Option<OffsetDateTime>,
    lease: Arc<LeaseClock>,
}

impl fmt::Debug for NatsAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsAcker").field("attempt", &self.attempt).finish_non_exhaustive()
    }
}

impl NatsAcker {
    async fn settle(&self, kind: AckKind) -> Result<()> {
        self.message.double_ack_with(kind).await.map_err(map_err)
    }

    async fn republish(&self, subject: String, headers: HeaderMap) -> Result<()> {
        let body = self.message.payload.clone();
        if body.len() > self.queue.max_payload {
            return Err(Error::invalid_input("message too large to move").with_backend("nats"));
        }
        let ack = self.queue.js.publish_with_headers(subject, headers, body).await.map_err(map_err)?;
        ack.await.map_err(map_err)?;
        Ok(())
    }

    async fn move_to_dlq(&self, reason: &str, attempts: u32) -> Result<()> {
        let o = &self.queue.options;
        let dl = dead_letter_headers(&self.headers, reason, &o.queue, attempts, self.published);
        let mut h = HeaderMap::new();
        h.insert(HEADERS, encode_headers(&dl).as_str());
        // Stored in the dead-letter stream first, then removed here: a crash between the
        // two leaves a copy in both, never in neither.
        self.republish(subject(&o.dead_letter), h).await?;
        self.settle(AckKind::Ack).await
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(&self) -> Result<()> {
        self.lease.check("nats", "ack")?;
        self.settle(AckKind::Ack).await
    }

    async fn nack(&self, delay: Option<Duration>, reason: Option<&str>) -> Result<bool> {
        self.lease.check("nats", "nack")?;
        let max = self.queue.options.max_attempts;
        if self.attempt >= max {
            let why = exhausted_reason(max, reason);
            self.move_to_dlq(&why, self.attempt).await?;
            return Ok(true);
        }
        self.settle(AckKind::Nak(delay.filter(|d| !d.is_zero()))).await?;
        Ok(false)
    }

    async fn dead_letter(&self, reason: &str) -> Result<()> {
        self.lease.check("nats", "dead_letter")?;
        self.move_to_dlq(reason, self.attempt).await
    }

    async fn extend(&self, _lease: Duration) -> Result<()> {
        self.lease.check("nats", "extend")?;
        self.settle(AckKind::Progress).await?;
        self.lease.renew(Instant::now() + self.queue.options.visibility_timeout);
        Ok(())
    }

    async fn release(&self) -> Result<()> {
        self.lease.check("nats", "release")?;
        // The server counts every delivery; a copy that remembers the attempts so far
        // comes back with this delivery not counted.
        // No Nats-Msg-Id: the copy must not be taken for a duplicate of the original.
        let mut h = HeaderMap::new();
        h.insert(HEADERS, encode_headers(&self.headers).as_str());
        h.insert(ATTEMPTS_BASE, (self.attempt - 1).to_string().as_str());
        self.republish(subject(&self.queue.options.queue), h).await?;
        self.settle(AckKind::Ack).await
    }
}
