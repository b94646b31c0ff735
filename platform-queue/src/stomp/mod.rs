//! STOMP 1.2 queues on ActiveMQ and RabbitMQ: `stomp://user:password@host:61613?queue=jobs`.
//!
//! - [x] `/queue/<name>` destinations, persistent sends confirmed by receipts
//! - [x] one subscription per handle with `client-individual` acks and a prefetch
//!   bound (`prefetch`, default 32; a `receive` returns at most that many); the lease
//!   starts when `receive` hands a message out and is kept by the client: past it,
//!   the message is sent again (its attempt counted) and the original acknowledged
//! - [x] acks are not confirmed by a receipt (frames are processed in order; if the
//!   connection drops first, the broker redelivers): waiting for one costs
//!   ActiveMQ a journal sync per message, 20 ms here
//! - [x] a crashed consumer's connection closes and the broker returns what it held;
//!   a broker-flagged redelivery counts as one more attempt
//! - [x] `nack(delay)`, dead letters and `release` republish a copy and then
//!   acknowledge the original: at least once, never lost
//! - [x] dead letters in `/queue/<dead_letter>`, read without removing them; redrive
//! - [x] delay: ActiveMQ's scheduler (`AMQ_SCHEDULED_DELAY`; probed once per broker:
//!   without `schedulerSupport="true"`, delay is `Unsupported`); RabbitMQ: a holding
//!   queue per delay length (`<queue>.delay.<ms>`, message TTL, dead-lettered back)
//! - [x] atomic batches on ActiveMQ (one STOMP transaction); RabbitMQ confirms each
//!   message on its own
//! - [x] heart-beats both ways (10 s); a dead connection is replaced on the next call
//! - [ ] ~~dedup~~: STOMP has no publish-side dedup; `Unsupported`
//!
//! Headers travel JSON-encoded in one STOMP header (`platform-headers`), so names
//! the brokers reserve (`destination`, `x-…`, `JMS…`) and any value survive exactly.
//! A handle that has received holds up to `prefetch` messages ready for its next
//! `receive`; they are not leased and not counted, and the broker gives them to
//! another consumer when the handle closes or its process dies.
//!
//! URL: `stomp://[user:password@]host[:port][/vhost]` (port 61613; the path is the
//! `host` header, RabbitMQ's virtual host, default `/`), plus the common parameters
//! and `prefetch`. TLS is not compiled in.

mod client;
// Public only for the frame codec's fuzz target and the raw STOMP loop of the
// benches; not part of the API.
#[doc(hidden)]
pub mod frame;

use std::collections::HashMap;
use std::fmt;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use platform_core::{CheckOutcome, Error, ErrorKind, HealthCheck, Result};

use self::client::{Conn, Connect, Subscription};
use self::frame::Frame;
use crate::QueueHandle;
use crate::driver::dead_letter_headers;
use crate::lease::republish::{ATTEMPTS_BASE, FIRST_FAILURE, Holding, Republish, Republishing, requeue_marks};
use crate::message::{decode_headers, encode_headers};
use platform_core::config::url_decode as percent_decode;

use crate::options::{QueueOptions, QueueUrl};
use crate::{Capabilities, DeadLetter, Delivery, Headers, Message, Queue, ReceiveOptions};

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["stomp"];

const HEADERS: &str = "platform-headers";
const DEFAULT_PREFETCH: usize = 32;

/// Maps a STOMP server's error text onto the portable kinds.
pub(crate) fn map_error(text: &str) -> ErrorKind {
    let lower = text.to_ascii_lowercase();
    if lower.contains("timed out") || lower.contains("timeout") {
        ErrorKind::Timeout
    } else if lower.contains("login") || lower.contains("passcode") || lower.contains("authenticat") {
        ErrorKind::Unauthenticated
    } else if lower.contains("access_refused") || lower.contains("not authorized") || lower.contains("permission") {
        ErrorKind::PermissionDenied
    } else if lower.contains("not_found") || lower.contains("not found") || lower.contains("no such") {
        ErrorKind::NotFound
    } else if lower.contains("precondition_failed") || lower.contains("inequivalent") {
        ErrorKind::Conflict
    } else if lower.contains("invalid") || lower.contains("bad ") || lower.contains("malformed") {
        ErrorKind::InvalidInput
    } else if lower.contains("closed") || lower.contains("connect") || lower.contains("read failed") {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Internal
    }
}

/// Which broker is on the other end; they differ in delay and prefetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    ActiveMq,
    RabbitMq,
    Other,
}

impl Flavor {
    fn of(server: &str) -> Self {
        let lower = server.to_ascii_lowercase();
        if lower.starts_with("activemq") {
            Self::ActiveMq
        } else if lower.starts_with("rabbitmq") {
            Self::RabbitMq
        } else {
            Self::Other
        }
    }

    fn prefetch_header(self) -> &'static str {
        match self {
            Self::ActiveMq => "activemq.prefetchSize",
            Self::RabbitMq | Self::Other => "prefetch-count",
        }
    }
}

fn destination(queue: &str) -> String {
    format!("/queue/{queue}")
}

struct Shared {
    settings: Connect,
    options: QueueOptions,
    prefetch: usize,
    flavor: Flavor,
    scheduler: bool,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

impl Shared {
    /// The live connection, replaced when it died.
    async fn conn(&self) -> Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.is_alive()) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(Conn::open(&self.settings).await?);
        *slot = Some(Arc::clone(&c));
        Ok(c)
    }

    /// A `SEND` of `body` to `queue`, `headers` JSON-encoded, `extra` as STOMP headers.
    fn send_frame(&self, queue: &str, body: &Bytes, headers: &Headers, extra: &[(&str, String)]) -> Frame {
        let mut f = Frame::new("SEND").header("destination", destination(queue)).header("persistent", "true");
        if !headers.is_empty() {
            f = f.header(HEADERS, encode_headers(headers));
        }
        for (k, v) in extra {
            f = f.header(k, v.clone());
        }
        f.body(body.clone())
    }

    /// The `SEND` that makes `body` visible in the queue after `delay`.
    fn delayed_frame(&self, body: &Bytes, headers: &Headers, extra: &[(&str, String)], delay: Duration) -> Frame {
        let queue = &self.options.queue;
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
        match self.flavor {
            Flavor::RabbitMq => {
                let holding = format!("{queue}.delay.{ms}");
                let mut all: Vec<(&str, String)> = extra.to_vec();
                all.extend([
                    ("x-message-ttl", ms.to_string()),
                    ("x-dead-letter-exchange", String::new()),
                    ("x-dead-letter-routing-key", queue.clone()),
                    ("x-expires", (ms + 600_000).to_string()),
                ]);
                self.send_frame(&holding, body, headers, &all)
            }
            Flavor::ActiveMq | Flavor::Other => {
                let mut all: Vec<(&str, String)> = extra.to_vec();
                all.push(("AMQ_SCHEDULED_DELAY", ms.to_string()));
                self.send_frame(queue, body, headers, &all)
            }
        }
    }
}

/// Whether the ActiveMQ at `address` runs its scheduler, asked once per process: a
/// message scheduled a second ahead must not arrive at once.
async fn probe_scheduler(settings: &Connect) -> Result<bool> {
    static KNOWN: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    let known = KNOWN.get_or_init(Mutex::default);
    if let Some(v) = known.lock().unwrap_or_else(|e| e.into_inner()).get(&settings.address) {
        return Ok(*v);
    }
    let conn = Conn::open(settings).await?;
    let dest = format!("/queue/platform.scheduler-probe.{}", uuid::Uuid::new_v4().simple());
    let mut sub = conn.subscribe(&dest, &[("activemq.prefetchSize", "1".into())]).await?;
    let probe = Frame::new("SEND")
        .header("destination", dest.clone())
        .header("AMQ_SCHEDULED_DELAY", "1000")
        .body(Bytes::from_static(b"probe"));
    conn.request(probe).await?;
    let early = tokio::time::timeout(Duration::from_millis(400), sub.messages.recv()).await;
    let scheduler = !matches!(early, Ok(Some(_)));
    let take = |conn: &Conn, f: &Frame| {
        if let Some(id) = f.get("ack") {
            let _ = conn.send(&Frame::new("ACK").header("id", id));
        }
    };
    match early {
        Ok(Some(f)) => {
            take(&conn, &f);
            let _ = conn.unsubscribe(&sub.id).await;
            conn.disconnect().await;
        }
        _ => {
            // Collect the probe when it comes due, so the queue is left empty.
            tokio::spawn(async move {
                if let Ok(Some(f)) = tokio::time::timeout(Duration::from_secs(5), sub.messages.recv()).await {
                    take(&conn, &f);
                }
                conn.disconnect().await;
            });
        }
    }
    known.lock().unwrap_or_else(|e| e.into_inner()).insert(settings.address.clone(), scheduler);
    Ok(scheduler)
}

/// A queue on a STOMP broker.
pub struct StompQueue {
    shared: Arc<Shared>,
    receiver: tokio::sync::Mutex<Option<(Arc<Conn>, Subscription)>>,
    location: String,
    server: String,
}

impl fmt::Debug for StompQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StompQueue")
            .field("location", &self.location)
            .field("server", &self.server)
            .field("options", &self.shared.options)
            .finish()
    }
}

impl fmt::Display for StompQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stomp({}/{})", self.location, self.shared.options.queue)
    }
}

impl StompQueue {
    /// Opens a queue from `stomp://…`, logging in once to learn the broker.
    pub async fn from_url(url: &str) -> Result<QueueHandle<Self>> {
        let mut u = QueueUrl::parse(url)?;
        let prefetch = u.take_parsed::<usize>("prefetch")?.unwrap_or(DEFAULT_PREFETCH);
        u.finish("stomp")?;
        if !(1..=10_000).contains(&prefetch) {
            return Err(Error::invalid_input(format!("queue url: prefetch must be 1 to 10000, got {prefetch}"))
                .with_op("open")
                .with_detail("prefetch", "1 to 10000"));
        }
        let host = u.url().host_str().unwrap_or("localhost").to_owned();
        let port = u.url().port().unwrap_or(61613);
        let address = format!("{host}:{port}");
        let path = u.url().path().trim_start_matches('/');
        let vhost = if path.is_empty() { "/".to_owned() } else { percent_decode(path) };
        let user = percent_decode(u.url().username());
        let login = (!user.is_empty()).then(|| (user, percent_decode(u.url().password().unwrap_or_default())));
        let settings = Connect { address: address.clone(), vhost, login };
        let conn = Arc::new(Conn::open(&settings).await.map_err(|e| e.with_op("open"))?);
        let server = conn.info.server.clone();
        let flavor = Flavor::of(&server);
        let scheduler = match flavor {
            Flavor::ActiveMq => probe_scheduler(&settings).await?,
            Flavor::RabbitMq => true,
            Flavor::Other => false,
        };
        let shared = Arc::new(Shared {
            settings,
            options: u.options,
            prefetch,
            flavor,
            scheduler,
            conn: tokio::sync::Mutex::new(Some(conn)),
        });
        Ok(QueueHandle::new(Self { shared, receiver: tokio::sync::Mutex::new(None), location: address, server }))
    }

    /// Turns a `MESSAGE` into a leased delivery, without waiting on anything: a receive
    /// cancelled after taking frames still leaves each one leased and timed.
    fn deliver(&self, conn: &Arc<Conn>, frame: Frame) -> Option<Delivery> {
        let ack_id = frame.get("ack").unwrap_or_default().to_owned();
        let redelivered = frame.get("redelivered") == Some("true");
        let headers = frame.get(HEADERS).map(decode_headers).unwrap_or_default();
        let base: u32 = frame.get(ATTEMPTS_BASE).and_then(|v| v.parse().ok()).unwrap_or(0);
        let first_failure = frame.get(FIRST_FAILURE).map(str::to_owned);
        let attempt = base + 1 + u32::from(redelivered);
        let o = &self.shared.options;
        let id = frame.get("message-id").unwrap_or(&ack_id).to_owned();
        let acker = Arc::new(StompAcker {
            shared: Arc::clone(&self.shared),
            conn: Arc::clone(conn),
            ack_id,
            body: frame.body.clone(),
            headers: headers.clone(),
            first_failure,
            held: Holding::new(o, attempt),
        });
        if attempt > o.max_attempts {
            // Redelivered by the broker past the limit (its holders crashed).
            let reason = format!("lease expired on each of {} attempts", attempt - 1);
            tokio::spawn(async move {
                let _ = acker.move_to_dlq(&reason, attempt - 1).await;
            });
            return None;
        }
        // The client keeps the lease: past it, a copy goes back and the original is acked.
        let acker = Republishing::start(acker);
        Some(Delivery::new(id, frame.body, headers, attempt, o.visibility_timeout, Box::new(acker)))
    }

    /// A temporary connection subscribed to the dead-letter queue: what it holds
    /// unacknowledged goes back when it disconnects.
    async fn dead_letter_subscription(&self, limit: usize) -> Result<(Conn, Subscription)> {
        let conn = Conn::open(&self.shared.settings).await?;
        let prefetch = [(self.shared.flavor.prefetch_header(), limit.clamp(1, 10_000).to_string())];
        let sub = conn.subscribe(&destination(&self.shared.options.dead_letter), &prefetch).await?;
        Ok((conn, sub))
    }
}

/// Waits for the next dead letter: up to a second for the first, then a short gap.
async fn next_dead(sub: &mut Subscription, first: bool) -> Option<Frame> {
    let wait = if first { Duration::from_millis(1000) } else { Duration::from_millis(250) };
    tokio::time::timeout(wait, sub.messages.recv()).await.ok().flatten()
}

#[async_trait]
impl HealthCheck for StompQueue {
    fn name(&self) -> String {
        "queue:stomp".into()
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        let conn = self.shared.conn().await?;
        // An empty transaction is a round trip that changes nothing.
        let tx = conn.next_id("health-");
        conn.request(Frame::new("BEGIN").header("transaction", tx.clone())).await?;
        conn.request(Frame::new("ABORT").header("transaction", tx)).await?;
        Ok(CheckOutcome::new(started.elapsed()).with_version(self.server.clone()))
    }
}

#[async_trait]
impl Queue for StompQueue {
    fn queue_name(&self) -> &str {
        &self.shared.options.queue
    }

    fn backend(&self) -> &'static str {
        "stomp"
    }

    fn capabilities(&self) -> Capabilities {
        let flavor = self.shared.flavor;
        Capabilities {
            delay: self.shared.scheduler,
            nack_delay: self.shared.scheduler,
            max_delay: match flavor {
                Flavor::RabbitMq => Some(Duration::from_millis(u64::from(u32::MAX) - 600_000)),
                _ => None,
            },
            dedup: false,
            dedup_window: None,
            atomic_batch: flavor == Flavor::ActiveMq,
            ..Capabilities::default()
        }
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.send_batch(vec![message]).await
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        let caps = self.capabilities();
        if messages.iter().any(|m| m.delay.is_some_and(|d| !d.is_zero())) && !caps.delay {
            let why = format!("{} has no scheduler: delay needs schedulerSupport=\"true\"", self.server);
            return Err(Error::new(ErrorKind::Unsupported, why).with_backend("stomp").with_op("send"));
        }
        let shared = &self.shared;
        let frames: Vec<Frame> = messages
            .iter()
            .map(|m| match m.delay.filter(|d| !d.is_zero()) {
                Some(d) => shared.delayed_frame(&m.body, &m.headers, &[], d),
                None => shared.send_frame(&shared.options.queue, &m.body, &m.headers, &[]),
            })
            .collect();
        let conn = shared.conn().await?;
        if frames.len() > 1 && shared.flavor == Flavor::ActiveMq {
            // All or nothing: one transaction, committed with a receipt.
            let tx = conn.next_id("tx");
            conn.send(&Frame::new("BEGIN").header("transaction", tx.clone()))?;
            for f in frames {
                conn.send(&f.header("transaction", tx.clone()))?;
            }
            return conn.request(Frame::new("COMMIT").header("transaction", tx)).await;
        }
        futures::future::try_join_all(frames.into_iter().map(|f| conn.request(f))).await?;
        Ok(())
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + options.wait;
        let mut slot = self.receiver.lock().await;
        loop {
            if slot.as_ref().is_none_or(|(c, _)| !c.is_alive()) {
                *slot = None;
                let conn = self.shared.conn().await?;
                let prefetch = [(self.shared.flavor.prefetch_header(), self.shared.prefetch.to_string())];
                let sub = conn.subscribe(&destination(&self.shared.options.queue), &prefetch).await?;
                *slot = Some((conn, sub));
            }
            let Some((conn, sub)) = slot.as_mut() else { continue };
            let mut frames = Vec::new();
            let mut gone = false;
            while frames.len() < options.max {
                match sub.messages.try_recv() {
                    Ok(f) => frames.push(f),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                        gone = true;
                        break;
                    }
                }
            }
            if frames.is_empty() && !gone {
                match tokio::time::timeout_at(deadline, sub.messages.recv()).await {
                    Ok(Some(f)) => {
                        frames.push(f);
                        while frames.len() < options.max {
                            let Ok(f) = sub.messages.try_recv() else { break };
                            frames.push(f);
                        }
                    }
                    Ok(None) => gone = true,
                    Err(_) => return Ok(Vec::new()),
                }
            }
            let conn = Arc::clone(conn);
            if gone {
                *slot = None;
            }
            let out: Vec<Delivery> = frames.into_iter().filter_map(|f| self.deliver(&conn, f)).collect();
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(out);
            }
            if gone {
                // The connection died; wait a little before logging in again.
                tokio::time::sleep(Duration::from_millis(100).min(deadline - tokio::time::Instant::now())).await;
            }
        }
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (conn, mut sub) = self.dead_letter_subscription(limit).await?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(f) = next_dead(&mut sub, out.is_empty()).await else { break };
            let headers = f.get(HEADERS).map(decode_headers).unwrap_or_default();
            let id = f.get("message-id").unwrap_or_default().to_owned();
            out.push(DeadLetter::new(id, f.body, headers));
        }
        // Nothing acknowledged: the broker keeps them all.
        conn.disconnect().await;
        Ok(out)
    }

    async fn redrive(&self, limit: usize) -> Result<usize> {
        if limit == 0 {
            return Ok(0);
        }
        let (conn, mut sub) = self.dead_letter_subscription(limit).await?;
        let mut moved = 0;
        while moved < limit {
            let Some(f) = next_dead(&mut sub, moved == 0).await else { break };
            let headers = f.get(HEADERS).map(decode_headers).unwrap_or_default();
            // Stored again first, removed from the dead letters second.
            let o = &self.shared.options;
            conn.request(self.shared.send_frame(&o.queue, &f.body, &headers, &[])).await?;
            conn.request(Frame::new("ACK").header("id", f.get("ack").unwrap_or_default())).await?;
            moved += 1;
        }
        conn.disconnect().await;
        Ok(moved)
    }

    async fn close(&self) -> Result<()> {
        self.receiver.lock().await.take();
        if let Some(c) = self.shared.conn.lock().await.take() {
            c.disconnect().await;
        }
        Ok(())
    }
}

struct StompAcker {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    ack_id: String,
    body: Bytes,
    headers: Headers,
    first_failure: Option<String>,
    held: Holding,
}

#[async_trait]
impl Republish for StompAcker {
    const BACKEND: &'static str = "stomp";

    fn held(&self) -> &Holding {
        &self.held
    }

    /// Once the connection it came on is gone, the broker has taken the message back.
    fn lost(&self) -> Option<&'static str> {
        (!self.conn.is_alive()).then_some("the connection dropped")
    }

    /// Acknowledges the original without waiting for a receipt: frames on a connection
    /// are processed in order, and should the connection drop first the broker
    /// redelivers (a duplicate, never a loss). Waiting would cost ActiveMQ's journal
    /// sync on every message.
    fn ack_original(&self) -> Result<()> {
        self.conn.send(&Frame::new("ACK").header("id", self.ack_id.clone()))
    }

    async fn requeue(&self, delay: Option<Duration>, counted: u32) -> Result<()> {
        let delay = delay.filter(|d| !d.is_zero());
        if delay.is_some() && !self.shared.scheduler {
            return Err(Error::unsupported("stomp", "nack with delay without a scheduler"));
        }
        let extra = requeue_marks(counted, self.first_failure.as_deref());
        let frame = match delay {
            Some(d) => self.shared.delayed_frame(&self.body, &self.headers, &extra, d),
            None => self.shared.send_frame(&self.shared.options.queue, &self.body, &self.headers, &extra),
        };
        self.conn.request(frame).await?;
        self.ack_original()
    }

    async fn move_to_dlq(&self, reason: &str, attempts: u32) -> Result<()> {
        let first = self.first_failure.as_deref().and_then(crate::message::parse_rfc3339);
        let o = &self.shared.options;
        let headers = dead_letter_headers(&self.headers, reason, &o.queue, attempts, first);
        self.conn.request(self.shared.send_frame(&o.dead_letter, &self.body, &headers, &[])).await?;
        self.ack_original()
    }
}
