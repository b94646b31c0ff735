//! MQTT 5 queues on Mosquitto: `mqtt://[user:password@]host[:port]?queue=jobs&member=web-1`.
//!
//! - [x] topic `platform/queue/<queue>`, shared subscription `$share/<queue>/…` for
//!   competing consumers, QoS 1 with manual acknowledgements (`PUBACK` = ack)
//! - [x] one persistent session per process, queue and `member` (client id
//!   `platform-<queue>-<member>`), shared by every handle; it subscribes when the first
//!   handle opens, so a queue that has been opened never drops a message for want of a
//!   subscriber; a send the broker had no subscriber for is `Unavailable`, never lost
//!   silently
//! - [x] the lease is kept by the client, from hand-out; past it, and on `nack` and
//!   `release`, a copy (with its attempt count) is published and the original acked
//! - [x] a connection that drops is replaced; what it held comes back from the broker
//!   (flagged `DUP`, one more attempt) and its deliveries' settles are `Conflict`
//! - [x] delay and `nack(delay)`: the message carries its due time; the member that
//!   receives it holds it, unacknowledged, until due (a crash loses nothing)
//! - [x] dead letters as retained messages under `platform/dead/<dead_letter>/`, read
//!   without removing them; redrive publishes them back and clears them
//! - [x] a handle that holds messages nobody receives (a process that only sends)
//!   gives them back after one visibility timeout; the last handle to go unsubscribes
//!   and gives back what it held before it disconnects
//! - [ ] ~~dedup~~: MQTT has none; `Unsupported`
//! - [ ] ~~atomic batches~~: each message is acknowledged on its own
//!
//! What MQTT cannot promise, and what to do about it:
//! - A member that **crashes** keeps its session on the broker for `session_expiry`
//!   (default 1 day): the messages it held, and its share of new ones, wait for it to
//!   come back with the same `member`, and are given out again then. Give each process
//!   a stable `member` (its pod or host name; that is the default) and keep
//!   `session_expiry` longer than any outage. A member that never comes back loses
//!   what its session held when the session expires.
//! - Mosquitto drops QoS 1 messages past `max_queued_messages` (default 1,000) per
//!   client without telling the sender: run it with `max_queued_messages 0`, and with
//!   `persistence true` for messages to survive a broker restart (see
//!   `scripts/mosquitto.conf`).
//! - Mosquitto 2.0 writes its store every `autosave_interval`; a broker killed in
//!   between loses what it acknowledged since.
//!
//! Headers travel as MQTT 5 user properties (`h:<name>`), so any value survives
//! exactly. URL: `mqtt://[user:password@]host[:port]` (port 1883), plus the common
//! parameters, `member` (default the host name), `prefetch` (the session's receive
//! maximum, default 32: the most messages a process holds unacknowledged, delayed
//! ones included) and `session_expiry` (default `1d`). TLS is not compiled in.

mod link;

use std::collections::HashMap;
use std::fmt;

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use platform_core::{CheckOutcome, Error, ErrorKind, HealthCheck, Result, Secret};
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::v5::{PubAckReason, Publish, PublishProperties};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use self::link::{Failure, Link, Sink, TIMEOUT, error, lock};
use crate::QueueHandle;
use crate::driver::dead_letter_headers;
use crate::lease::republish::{ATTEMPTS_BASE, FIRST_FAILURE, Holding, Republish, Republishing, requeue_marks};
use platform_core::config::url_decode as percent_decode;

use crate::options::{QueueOptions, QueueUrl};
use crate::{Capabilities, DeadLetter, Delivery, Headers, Message, Queue, ReceiveOptions};

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["mqtt"];

const ID: &str = "platform-id";
const DUE: &str = "platform-due-ms";
const HEADER: &str = "h:";
/// Dead letters are retained messages; an empty retained message deletes one, so a
/// dead letter's payload is this byte and then the body.
const DEAD_MARK: u8 = 1;
const DEFAULT_PREFETCH: u16 = 32;
const DEFAULT_SESSION_EXPIRY: Duration = Duration::from_secs(86_400);
const MAX_PACKET: u32 = 4 * 1024 * 1024;

fn queue_topic(queue: &str) -> String {
    format!("platform/queue/{queue}")
}

fn dead_prefix(dead_letter: &str) -> String {
    format!("platform/dead/{dead_letter}")
}

fn now_ms() -> u64 {
    u64::try_from(platform_core::clock::now_ms()).unwrap_or(0)
}

/// Where the broker is and who logs in.
#[derive(Clone)]
struct Settings {
    host: String,
    port: u16,
    login: Option<(String, Secret<String>)>,
}

impl Settings {
    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn options(&self, client_id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, &self.host, self.port);
        o.set_keep_alive(Duration::from_secs(10)).set_connection_timeout(5).set_max_packet_size(Some(MAX_PACKET));
        if let Some((user, password)) = &self.login {
            o.set_credentials(user.clone(), password.expose().clone());
        }
        o
    }

    /// A throwaway connection (clean start, nothing kept) and what it receives.
    async fn temporary(&self) -> Result<(Arc<Link>, mpsc::UnboundedReceiver<Publish>)> {
        let mut o = self.options(&format!("platform-tmp-{}", uuid::Uuid::new_v4().simple()));
        o.set_clean_start(true);
        let (tx, rx) = mpsc::unbounded_channel();
        let sink: Sink = Arc::new(move |_, p| {
            let _ = tx.send(p);
        });
        Ok((Link::connect(o, sink).await?, rx))
    }
}

/// The user properties of a message: its id, its headers, and `extra`.
fn properties(id: &str, headers: &Headers, extra: &[(&str, String)]) -> PublishProperties {
    let mut user = Vec::with_capacity(headers.len() + extra.len() + 1);
    user.push((ID.to_owned(), id.to_owned()));
    user.extend(headers.iter().map(|(k, v)| (format!("{HEADER}{k}"), v.clone())));
    user.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    PublishProperties { user_properties: user, ..PublishProperties::default() }
}

/// What a received message carries besides its body.
struct Carried {
    id: Option<String>,
    headers: Headers,
    attempts_base: u32,
    first_failure: Option<String>,
    due_ms: u64,
}

fn carried(p: &Publish) -> Carried {
    let mut c = Carried { id: None, headers: Headers::new(), attempts_base: 0, first_failure: None, due_ms: 0 };
    for (k, v) in p.properties.iter().flat_map(|p| &p.user_properties) {
        if let Some(name) = k.strip_prefix(HEADER) {
            c.headers.insert(name.to_owned(), v.clone());
        } else {
            match k.as_str() {
                ID => c.id = Some(v.clone()),
                ATTEMPTS_BASE => c.attempts_base = v.parse().unwrap_or(0),
                FIRST_FAILURE => c.first_failure = Some(v.clone()),
                DUE => c.due_ms = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    c
}

/// A received message not yet handed out.
struct Held {
    link: Arc<Link>,
    publish: Publish,
    due_ms: u64,
    since: Instant,
}

/// Publishes a copy of `held` as it came (no attempt counted), then acks the
/// original; when no subscriber took the copy the original stays with the broker.
async fn give_back(producer: &Link, topic: &str, held: Held) {
    let props = held.publish.properties.clone().unwrap_or_default();
    if producer.deliver(topic.to_owned(), held.publish.payload.clone(), props).await.is_ok() {
        let _ = held.link.ack(&held.publish);
    }
}

/// What the session's connections received and nobody took yet. It outlives the
/// session: a member that leaves drains it.
#[derive(Default)]
struct Inbox {
    buffer: Mutex<Vec<Held>>,
    arrived: tokio::sync::Notify,
}

/// The process's member of one queue's shared subscription.
struct Session {
    key: SessionKey,
    mqtt: MqttOptions,
    /// Publishes go on a connection of their own: rumqttc stops taking requests while
    /// its outgoing window is full, which would hold back the subscriber's acks.
    producer_options: MqttOptions,
    producer: tokio::sync::Mutex<Option<Arc<Link>>>,
    topic: String,
    filter: String,
    visibility: Duration,
    current: watch::Sender<Option<Arc<Link>>>,
    inbox: Arc<Inbox>,
    stop: CancellationToken,
}

type SessionKey = (String, String, String);

fn sessions() -> &'static tokio::sync::Mutex<HashMap<SessionKey, Weak<Session>>> {
    static SESSIONS: OnceLock<tokio::sync::Mutex<HashMap<SessionKey, Weak<Session>>>> = OnceLock::new();
    SESSIONS.get_or_init(Default::default)
}

impl Session {
    /// The process's session for `client_id`, connected and subscribed.
    async fn open(
        settings: Settings,
        client_id: String,
        queue: &str,
        prefetch: u16,
        expiry: Duration,
        visibility: Duration,
    ) -> Result<Arc<Self>> {
        let user = settings.login.as_ref().map(|(u, _)| u.clone()).unwrap_or_default();
        let key = (settings.address(), user, client_id.clone());
        let mut all = sessions().lock().await;
        all.retain(|_, s| s.strong_count() > 0);
        if let Some(s) = all.get(&key).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let mut mqtt = settings.options(&client_id);
        mqtt.set_clean_start(false)
            .set_session_expiry_interval(Some(u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX)))
            .set_receive_maximum(Some(prefetch))
            .set_manual_acks(true);
        let topic = queue_topic(queue);
        let mut producer_options = settings.options(&format!("platform-pub-{}", uuid::Uuid::new_v4().simple()));
        producer_options.set_clean_start(true);
        let session = Arc::new(Self {
            key: key.clone(),
            mqtt,
            producer_options,
            producer: tokio::sync::Mutex::new(None),
            filter: format!("$share/{queue}/{topic}"),
            topic,
            visibility,
            current: watch::Sender::new(None),
            inbox: Arc::default(),
            stop: CancellationToken::new(),
        });
        let (ready, connected) = oneshot::channel();
        tokio::spawn(manage(Arc::downgrade(&session), ready));
        match connected.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.with_op("open")),
            Err(_) => return Err(Error::internal("the session ended before it connected").with_backend("mqtt")),
        }
        all.insert(key, Arc::downgrade(&session));
        Ok(session)
    }

    fn sink(&self) -> Sink {
        let (inbox, topic) = (Arc::clone(&self.inbox), self.topic.clone());
        Arc::new(move |link, publish| {
            if publish.topic.as_ref() != topic.as_bytes() {
                return;
            }
            let due_ms = carried(&publish).due_ms;
            lock(&inbox.buffer).push(Held { link: Arc::clone(link), publish, due_ms, since: Instant::now() });
            inbox.arrived.notify_waiters();
        })
    }

    async fn connect(&self) -> Result<Arc<Link>> {
        let link = Link::connect(self.mqtt.clone(), self.sink()).await?;
        if let Err(e) = link.subscribe(&self.filter).await {
            link.close();
            return Err(e);
        }
        Ok(link)
    }

    /// The publishing connection, replaced when it dropped.
    async fn producer(&self) -> Result<Arc<Link>> {
        let mut slot = self.producer.lock().await;
        if let Some(l) = slot.as_ref().filter(|l| l.is_alive()) {
            return Ok(Arc::clone(l));
        }
        let ignore: Sink = Arc::new(|_, _| {});
        let link = Link::connect(self.producer_options.clone(), ignore).await?;
        *slot = Some(Arc::clone(&link));
        Ok(link)
    }

    /// Up to `max` messages that are due, oldest first, and the next due time of the rest.
    fn take(&self, max: usize) -> (Vec<Held>, Option<u64>) {
        let now = now_ms();
        let mut buffer = lock(&self.inbox.buffer);
        buffer.retain(|h| h.link.is_alive());
        let (mut out, mut next) = (Vec::new(), None::<u64>);
        let mut i = 0;
        while i < buffer.len() {
            if buffer[i].due_ms <= now && out.len() < max {
                out.push(buffer.remove(i));
            } else {
                if buffer[i].due_ms > now {
                    next = Some(next.map_or(buffer[i].due_ms, |n| n.min(buffer[i].due_ms)));
                }
                i += 1;
            }
        }
        (out, next)
    }

    /// Gives back what waited here a whole visibility timeout past its due time with
    /// nobody receiving it, so a process that only sends never sits on work.
    async fn give_back_idle(&self) {
        let now = now_ms();
        let vt = u64::try_from(self.visibility.as_millis()).unwrap_or(u64::MAX);
        let idle: Vec<Held> = {
            let mut buffer = lock(&self.inbox.buffer);
            let (idle, keep) = std::mem::take(&mut *buffer).into_iter().partition(|h| {
                h.link.is_alive()
                    && h.since.elapsed() >= self.visibility
                    && now.saturating_sub(h.due_ms) >= vt
                    && h.due_ms <= now
            });
            *buffer = keep;
            idle
        };
        let Ok(producer) = self.producer().await else { return };
        for h in idle {
            give_back(&producer, &self.topic, h).await;
        }
    }
}

impl Drop for Session {
    /// The member leaves: it unsubscribes, gives back what it held and what the broker
    /// had queued for it, and disconnects.
    fn drop(&mut self) {
        self.stop.cancel();
        let Some(link) = self.current.borrow().clone() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            link.close();
            return;
        };
        let (filter, topic, inbox) = (self.filter.clone(), self.topic.clone(), Arc::clone(&self.inbox));
        let producer = self.producer.try_lock().ok().and_then(|mut p| p.take());
        let options = self.producer_options.clone();
        tracing::debug!(client_id = %self.key.2, "mqtt member leaves");
        runtime.spawn(async move {
            link.unsubscribe(&filter).await;
            let producer = match producer.filter(|p| p.is_alive()) {
                Some(p) => p,
                None => match Link::connect(options, Arc::new(|_, _| {})).await {
                    Ok(p) => p,
                    Err(_) => return link.close(),
                },
            };
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            loop {
                let arrived = inbox.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                let held = std::mem::take(&mut *lock(&inbox.buffer));
                for h in held.into_iter().filter(|h| Arc::ptr_eq(&h.link, &link)) {
                    give_back(&producer, &topic, h).await;
                }
                // Done once nothing more comes for a moment (or a copy found no taker,
                // so the broker keeps the original for this member).
                let quiet = tokio::time::timeout(Duration::from_millis(300), arrived).await.is_err();
                if quiet || tokio::time::Instant::now() >= deadline || !link.is_alive() {
                    break;
                }
            }
            link.close();
            producer.close();
        });
    }
}

/// Keeps the session connected: connects, subscribes, replaces a dropped connection,
/// and gives back idle messages. Ends when the session is dropped.
async fn manage(weak: Weak<Session>, ready: oneshot::Sender<Result<()>>) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(s) = weak.upgrade() else { return };
        if s.stop.is_cancelled() {
            return;
        }
        match s.connect().await {
            Ok(link) => {
                backoff = Duration::from_millis(100);
                s.current.send_replace(Some(Arc::clone(&link)));
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
                let (stop, tick) = (s.stop.clone(), (s.visibility / 2).max(Duration::from_millis(100)));
                drop(s);
                loop {
                    tokio::select! {
                        () = link.gone.cancelled() => break,
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(tick) => match weak.upgrade() {
                            Some(s) => s.give_back_idle().await,
                            None => return,
                        },
                    }
                }
                tracing::warn!(failure = ?link.failure(), "mqtt connection lost; reconnecting");
                if let Some(s) = weak.upgrade() {
                    s.current.send_replace(None);
                    lock(&s.inbox.buffer).retain(|h| h.link.is_alive());
                }
            }
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
                tracing::debug!(error = %e, "mqtt reconnect failed");
                drop(s);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// A queue on an MQTT 5 broker.
pub struct MqttQueue {
    session: Mutex<Option<Arc<Session>>>,
    settings: Settings,
    options: QueueOptions,
    prefetch: u16,
    client_id: String,
}

impl fmt::Debug for MqttQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttQueue")
            .field("address", &self.settings.address())
            .field("client_id", &self.client_id)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for MqttQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mqtt({}/{})", self.settings.address(), self.options.queue)
    }
}

fn default_member() -> String {
    let raw = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default();
    let member: String =
        raw.trim().chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).take(64).collect();
    if member.is_empty() { "member".to_owned() } else { member }
}

impl MqttQueue {
    /// Opens a queue from `mqtt://…`: connects the process's session and subscribes.
    pub async fn from_url(url: &str) -> Result<QueueHandle<Self>> {
        let mut u = QueueUrl::parse(url)?;
        let prefetch = u.take_parsed::<u16>("prefetch")?.unwrap_or(DEFAULT_PREFETCH);
        let member = u.take("member").unwrap_or_else(default_member);
        let expiry = u.take_duration("session_expiry")?.unwrap_or(DEFAULT_SESSION_EXPIRY);
        u.finish("mqtt")?;
        let bad = |key: &str, why: &str| {
            Error::invalid_input(format!("queue url: {key} {why}")).with_op("open").with_detail(key, why)
        };
        if prefetch == 0 {
            return Err(bad("prefetch", "must be 1 to 65535"));
        }
        if member.is_empty()
            || member.len() > 64
            || !member.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(bad("member", "must be 1 to 64 letters, digits or -_."));
        }
        if !matches!(u.url().path(), "" | "/") {
            return Err(bad("path", "must be empty (the queue is named by queue=)"));
        }
        let host = u.url().host_str().unwrap_or("localhost").to_owned();
        let port = u.url().port().unwrap_or(1883);
        let user = percent_decode(u.url().username());
        let login =
            (!user.is_empty()).then(|| (user, Secret::new(percent_decode(u.url().password().unwrap_or_default()))));
        let settings = Settings { host, port, login };
        let options = u.options;
        let client_id = format!("platform-{}-{member}", options.queue);
        let session = Session::open(
            settings.clone(),
            client_id.clone(),
            &options.queue,
            prefetch,
            expiry,
            options.visibility_timeout,
        )
        .await?;
        Ok(QueueHandle::new(Self { session: Mutex::new(Some(session)), settings, options, prefetch, client_id }))
    }

    fn session(&self, op: &'static str) -> Result<Arc<Session>> {
        lock(&self.session).clone().ok_or_else(|| {
            Error::new(ErrorKind::Cancelled, format!("queue {} is closed", self.options.queue))
                .with_backend("mqtt")
                .with_op(op)
        })
    }

    /// Turns a received message into a leased delivery; one past `max_attempts` (its
    /// holders crashed) goes to the dead letters instead.
    fn deliver(&self, session: &Arc<Session>, held: Held) -> Option<Delivery> {
        let c = carried(&held.publish);
        let attempt = c.attempts_base + 1 + u32::from(held.publish.dup);
        let o = &self.options;
        let id = c.id.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
        let body = held.publish.payload.clone();
        let acker = Arc::new(MqttAcker {
            session: Arc::clone(session),
            link: held.link,
            publish: held.publish,
            id: id.clone(),
            headers: c.headers.clone(),
            first_failure: c.first_failure,
            options: o.clone(),
            held: Holding::new(o, attempt),
        });
        if attempt > o.max_attempts {
            let reason = format!("lease expired on each of {} attempts", attempt - 1);
            tokio::spawn(async move {
                let _ = acker.move_to_dlq(&reason, attempt - 1).await;
            });
            return None;
        }
        let acker = Republishing::start(acker);
        Some(Delivery::new(id, body, c.headers, attempt, o.visibility_timeout, Box::new(acker)))
    }

    /// Every dead letter (oldest first), read on a throwaway connection: retained
    /// messages come right after the subscription, before a marker published after it.
    async fn scan_dead(&self) -> Result<(Arc<Link>, Vec<Publish>)> {
        let (link, mut rx) = self.settings.temporary().await?;
        let prefix = dead_prefix(&self.options.dead_letter);
        let marker = format!("{prefix}/~{}", uuid::Uuid::new_v4().simple());
        let scanned = async {
            link.subscribe(&format!("{prefix}/+")).await?;
            link.publish(marker.clone(), Bytes::new(), false, PublishProperties::default()).await?;
            let mut out = Vec::new();
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) if p.topic.as_ref() == marker.as_bytes() => break,
                    Ok(Some(p)) => {
                        if p.retain && p.payload.first() == Some(&DEAD_MARK) {
                            out.push(p);
                        }
                    }
                    _ => return Err(Error::unavailable("reading the dead letters timed out").with_backend("mqtt")),
                }
            }
            out.sort_by(|a, b| a.topic.cmp(&b.topic));
            Ok(out)
        };
        match scanned.await {
            Ok(out) => Ok((link, out)),
            Err(e) => {
                link.close();
                Err(e)
            }
        }
    }
}

#[async_trait]
impl HealthCheck for MqttQueue {
    fn name(&self) -> String {
        "queue:mqtt".into()
    }

    /// Connects and reads the broker's version from `$SYS/broker/version` (Mosquitto
    /// publishes it); a broker without it reports `MQTT 5`.
    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        let (link, mut rx) = self.settings.temporary().await?;
        let version = async {
            link.subscribe("$SYS/broker/version").await?;
            let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
            Ok::<_, Error>(match got {
                Ok(Some(p)) => String::from_utf8_lossy(&p.payload).into_owned(),
                _ => "MQTT 5".to_owned(),
            })
        }
        .await;
        link.close();
        Ok(CheckOutcome::new(started.elapsed()).with_version(version?))
    }
}

#[async_trait]
impl Queue for MqttQueue {
    fn queue_name(&self) -> &str {
        &self.options.queue
    }

    fn backend(&self) -> &'static str {
        "mqtt"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { dedup: false, dedup_window: None, atomic_batch: false, ..Capabilities::default() }
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.send_batch(vec![message]).await
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        let session = self.session("send")?;
        let link = session.producer().await.map_err(|e| e.with_op("send"))?;
        let now = now_ms();
        let sends = messages.into_iter().map(|m| {
            let id = uuid::Uuid::now_v7().simple().to_string();
            let extra: Vec<(&str, String)> = match m.delay.filter(|d| !d.is_zero()) {
                Some(d) => vec![(DUE, (now + u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)).to_string())],
                None => Vec::new(),
            };
            link.deliver(session.topic.clone(), m.body, properties(&id, &m.headers, &extra))
        });
        futures::future::try_join_all(sends).await.map_err(|e| e.with_op("send"))?;
        Ok(())
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Delivery>> {
        let session = self.session("receive")?;
        let deadline = tokio::time::Instant::now() + options.wait;
        loop {
            let arrived = session.inbox.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let (held, next_due) = session.take(options.max.min(usize::from(self.prefetch)));
            let out: Vec<Delivery> = held.into_iter().filter_map(|h| self.deliver(&session, h)).collect();
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(out);
            }
            let until = next_due.map_or(deadline, |due| {
                let wait = Duration::from_millis(due.saturating_sub(now_ms()));
                deadline.min(tokio::time::Instant::now() + wait)
            });
            tokio::select! {
                () = arrived => {}
                () = tokio::time::sleep_until(until) => {}
            }
            self.session("receive")?;
        }
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.session("dead_letters")?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (link, dead) = self.scan_dead().await?;
        link.close();
        Ok(dead
            .into_iter()
            .take(limit)
            .map(|p| {
                let c = carried(&p);
                DeadLetter::new(c.id.unwrap_or_default(), p.payload.slice(1..), c.headers)
            })
            .collect())
    }

    async fn redrive(&self, limit: usize) -> Result<usize> {
        let session = self.session("redrive")?;
        if limit == 0 {
            return Ok(0);
        }
        let (link, dead) = self.scan_dead().await?;
        let moved = async {
            let mut moved = 0;
            for p in dead.into_iter().take(limit) {
                let c = carried(&p);
                let id = c.id.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
                // Stored again first, removed from the dead letters second.
                link.deliver(session.topic.clone(), p.payload.slice(1..), properties(&id, &c.headers, &[])).await?;
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                link.publish(topic, Bytes::new(), true, PublishProperties::default()).await?;
                moved += 1;
            }
            Ok::<_, Error>(moved)
        }
        .await;
        link.close();
        moved.map_err(|e| e.with_op("redrive"))
    }

    async fn close(&self) -> Result<()> {
        // The session leaves once no handle or delivery holds it.
        lock(&self.session).take();
        Ok(())
    }
}

struct MqttAcker {
    session: Arc<Session>,
    link: Arc<Link>,
    publish: Publish,
    id: String,
    headers: Headers,
    first_failure: Option<String>,
    options: QueueOptions,
    held: Holding,
}

#[async_trait]
impl Republish for MqttAcker {
    const BACKEND: &'static str = "mqtt";

    fn held(&self) -> &Holding {
        &self.held
    }

    /// Once the connection it came on is gone, the broker gives the message out again.
    fn lost(&self) -> Option<&'static str> {
        (!self.link.is_alive()).then_some("the connection dropped")
    }

    fn ack_original(&self) -> Result<()> {
        self.link.ack(&self.publish)
    }

    async fn requeue(&self, delay: Option<Duration>, counted: u32) -> Result<()> {
        let mut extra = requeue_marks(counted, self.first_failure.as_deref());
        if let Some(d) = delay.filter(|d| !d.is_zero()) {
            extra.push((DUE, (now_ms() + u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)).to_string()));
        }
        let props = properties(&self.id, &self.headers, &extra);
        let producer = self.session.producer().await?;
        producer.deliver(queue_topic(&self.options.queue), self.publish.payload.clone(), props).await?;
        self.ack_original()
    }

    async fn move_to_dlq(&self, reason: &str, attempts: u32) -> Result<()> {
        let first = self.first_failure.as_deref().and_then(crate::message::parse_rfc3339);
        let o = &self.options;
        let headers = dead_letter_headers(&self.headers, reason, &o.queue, attempts, first);
        let mut payload = Vec::with_capacity(self.publish.payload.len() + 1);
        payload.push(DEAD_MARK);
        payload.extend_from_slice(&self.publish.payload);
        let topic = format!("{}/{}", dead_prefix(&o.dead_letter), uuid::Uuid::now_v7().simple());
        let producer = self.session.producer().await?;
        match producer.publish(topic, payload.into(), true, properties(&self.id, &headers, &[])).await? {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => self.ack_original(),
            reason => {
                Err(error(&Failure::PubAck(&reason), "the broker refused the dead letter").with_op("dead_letter"))
            }
        }
    }
}
