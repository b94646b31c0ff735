//! The WebSocket hub (feature `hub`): `GET /ws` on the service's own port, channels over
//! any [`Broadcast`], resume with an offset and an epoch.
//!
//! ```rust,ignore
//! let hub = Hub::start(open_broadcast("memory://app").await?, HubConfig::new(shared_key)?).await?;
//! let app = contract.apply(Router::new().merge(hub.routes()));
//! hub.publish("jobs.42.events", json!({"progress": 50})).await?;
//! ```
//!
//! - **Auth**: the shared key (`SHARED_WS_KEY`) as query `key=`, header `X-Shared-Key`,
//!   `Authorization: Bearer`, or, from browsers, the subprotocols
//!   `["platform-ws", "key.<key>"]` (the hub answers with the marker `platform-ws`,
//!   never the key). A missing or wrong key is a 401 problem before the upgrade;
//!   keys are compared in constant time and never logged.
//! - **Client frames** (JSON text): `{"op":"subscribe","channel":"jobs.*.events",
//!   "since":{"epoch":"…","offset":41}}`, `{"op":"unsubscribe","channel":…}`,
//!   `{"op":"publish","channel":…,"data":…}`, `{"op":"ping"}`.
//! - **Server frames**: `{"type":"event","channel":…,"offset":42,"epoch":"…","data":…}`,
//!   `subscribed` (with `epoch`, the current `offset`, and for a resume `recovered` and
//!   a `reason` when it is false), `unsubscribed`, `published`, `pong`, and `error`
//!   (`code`, `message`) for a frame the hub refused.
//! - **Offsets** count every event delivered, across channels, so one `since` resumes
//!   a wildcard subscription too. Over a [`Broadcast`] ([`Hub::start`]) they are this
//!   node's own; over a shared [`HubLog`] ([`Hub::start_shared`]: Redis, Postgres, NATS) the
//!   log gives them, so a client resumes on any node, also one started after the
//!   client left. The **epoch** names the history the offsets belong to: it is new
//!   whenever that history may have a hole (over a broadcast: the node started, the
//!   broadcast lagged or reconnected; over a log: the log was flushed or lost). A resume with `since` replays
//!   exactly the events after `offset` that match, in order, then goes on live, with no
//!   gap and no duplicate (history and live delivery are switched under one lock); when
//!   the epoch differs or the history was trimmed past `offset`, the answer is
//!   `recovered: false` with the reason, never a silent skip.
//! - **Slow clients never block others**: each connection has a queue bounded in
//!   frames and in bytes (frames encoded once, shared by every connection); a client
//!   whose queue is full is closed with code 4008 and resumes with `since`.
//! - **Delivery classes**: events on droppable channels (`system.logs` by default) are
//!   shed for a client whose queue is half full, and never close it; other events are
//!   never shed. A node-wide bound on queued bytes drops the client holding the most
//!   first, and the hub's health check fails above 90 % of it (add the hub to the
//!   service's checks and `/readyz` turns 503 before memory runs out).
//! - **Outages**: while the broadcast is unreachable, a publish on this node still
//!   reaches this node's clients, and the hub's health check (for `/readyz`) fails;
//!   the broadcast subscribes again by itself, and the node starts a new epoch. Over a
//!   shared log a publish needs the log (its offset comes from there) and fails.
//! - **Jobs** (optional, [`HubConfig::with_jobs`]): a publish on `jobs.enqueue`
//!   enqueues a job on platform-queue and answers with its id; the worker reports with
//!   [`Hub::job_event`], which clients see on `jobs.<id>.events` and `jobs.events`.
//! - **Presence** (optional, [`HubConfig::with_presence`]): joins and leaves are
//!   events on `presence.<channel>`, so they travel, resume and are authorized like any
//!   other; `{"op":"presence","channel":…}` answers with who is there.
//! - **Heartbeat**: the hub pings every 25 s and closes with 4009 a connection that
//!   sent nothing, not even a pong, for 35 s ([`HubConfig::with_heartbeat`]).
//! - **Close codes**: 4008 too slow, 4009 no pong, 1008 too many subscriptions, 1009 frame too large,
//!   1003 binary frames.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use platform_core::{Error, Result};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::broadcast::{Broadcast, Received};
use crate::channel::{Pattern, validate_channel};

pub use platform_auth::Principal;

/// The subprotocol a browser offers beside `key.<key>`, echoed by the hub.
pub const SUBPROTOCOL: &str = platform_auth::shared_key::SUBPROTOCOL;
/// Bytes a connection's read buffer starts from.
const READ_BUFFER: usize = 4 * 1024;
/// Close code for a client that fell behind its queue.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Close code for a client that answered no ping in time.
pub const CLOSE_NO_PONG: u16 = 4009;

/// What a client asks to do on a channel, for the [`Authorizer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Subscribe to a channel or pattern.
    Subscribe,
    /// Publish on a channel.
    Publish,
}

/// Decides per connection's principal, channel (or pattern) and access whether a
/// frame may go on; the default lets every authenticated connection do everything. A
/// connection that came with the shared key is the principal `shared-key`; one that
/// came with a credential of [`HubConfig::with_authenticator`] is that method's
/// principal (a user, with its tenant), so a service can keep each client to its own
/// channels.
pub type Authorizer = Arc<dyn Fn(&Principal, &str, Access) -> bool + Send + Sync>;

/// Handles a client's publish on one channel instead of broadcasting it (a publish on
/// `jobs.enqueue` enqueues a job): given the connection's principal (to check what the
/// data asks for against who asks) and the frame's `data`, returns what the `published`
/// answer carries as `result` (the job's id), or the error the client gets.
pub type PublishHook =
    Arc<dyn Fn(&Principal, Value) -> futures::future::BoxFuture<'static, Result<Value>> + Send + Sync>;

/// How the hub behaves.
#[derive(Clone)]
pub struct HubConfig {
    auth: platform_auth::AuthChain,
    history: usize,
    queue: usize,
    max_subscriptions: usize,
    max_frame: usize,
    ping_every: std::time::Duration,
    pong_within: std::time::Duration,
    max_queued_bytes: usize,
    max_node_bytes: usize,
    droppable: Vec<Pattern>,
    presence: Vec<Pattern>,
    authorizer: Option<Authorizer>,
    hooks: Vec<(String, PublishHook)>,
    jobs: Option<Arc<dyn platform_queue::Queue>>,
}

impl fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubConfig")
            .field("history", &self.history)
            .field("hooks", &self.hooks.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>())
            .field("queue", &self.queue)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

impl HubConfig {
    /// The shared key clients must present (at least 16 characters; compared by
    /// platform-auth's shared-key method); history 10,000 events, 1,024 queued frames
    /// per connection, 100 subscriptions per connection, client frames up to 64 KiB.
    pub fn new(shared_key: impl Into<String>) -> Result<Self> {
        Ok(Self {
            auth: platform_auth::AuthChain::new()
                .with(Arc::new(platform_auth::shared_key::SharedKey::new(shared_key)?)),
            history: 10_000,
            queue: 1024,
            max_subscriptions: 100,
            max_frame: 64 * 1024,
            ping_every: std::time::Duration::from_secs(25),
            pong_within: std::time::Duration::from_secs(10),
            max_queued_bytes: 4 * 1024 * 1024,
            max_node_bytes: 256 * 1024 * 1024,
            droppable: vec![Pattern::parse("system.logs").expect("a pattern")],
            presence: Vec::new(),
            authorizer: None,
            hooks: Vec::new(),
            jobs: None,
        })
    }

    /// Bytes of frames a connection may have queued (default 4 MiB) before it is
    /// closed as too slow, and bytes all connections of the node may have queued
    /// (default 256 MiB) before the one with the most is dropped; the hub's health
    /// check (for `/readyz`) fails above 90 % of the node's bound.
    #[must_use]
    pub fn with_byte_bounds(mut self, per_connection: usize, per_node: usize) -> Self {
        self.max_queued_bytes = per_connection.max(1);
        self.max_node_bytes = per_node.max(1);
        self
    }

    /// Channels whose events a slow client may miss (default `system.logs`): they are
    /// shed once a connection's queue is half full, and never close it.
    pub fn with_droppable(mut self, patterns: &[&str]) -> Result<Self> {
        self.droppable = patterns.iter().map(|p| Pattern::parse(p)).collect::<Result<_>>()?;
        Ok(self)
    }

    /// Channels with presence (none by default): a client that subscribes to one of
    /// them by name (not by a wildcard) joins it, with the `info` its `subscribe` frame
    /// carries (up to 1 KiB of JSON), and leaves when it unsubscribes or goes. Joins and
    /// leaves are events on `presence.<channel>` (`{"event": "join" | "leave", "client",
    /// "info"}`), delivered and resumed like any other, through every node; a
    /// `{"op": "presence", "channel"}` frame answers with who is there now.
    pub fn with_presence(mut self, patterns: &[&str]) -> Result<Self> {
        self.presence = patterns.iter().map(|p| Pattern::parse(p)).collect::<Result<_>>()?;
        Ok(self)
    }

    fn has_presence(&self, channel: &str) -> bool {
        !channel.starts_with("presence.") && self.presence.iter().any(|p| p.matches(channel))
    }

    /// Decides per channel and access (see [`Authorizer`]); refused frames get an
    /// `error` frame with code `permission_denied`.
    #[must_use]
    pub fn with_authorizer(mut self, authorizer: Authorizer) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Also takes connections that prove who they are with `method` (a JWT access
    /// token as `Authorization: Bearer`, or as `?access_token=` from a browser, …),
    /// tried after the shared key; the [`Authorizer`] sees the principal.
    #[must_use]
    pub fn with_authenticator(mut self, method: Arc<dyn platform_auth::Authenticator>) -> Self {
        self.auth = self.auth.with(method);
        self
    }

    /// Jobs over `queue`: a client's publish on `jobs.enqueue` enqueues its `data` as
    /// a job (see [`Hub::enqueue_job`]) and is answered with the job's id; the job's
    /// events follow on `jobs.<id>.events` and `jobs.events`.
    #[must_use]
    pub fn with_jobs(mut self, queue: Arc<dyn platform_queue::Queue>) -> Self {
        self.jobs = Some(queue);
        self
    }

    /// Handles publishes on `channel` with `hook` instead of broadcasting them (see
    /// [`PublishHook`]).
    #[must_use]
    pub fn on_publish(mut self, channel: impl Into<String>, hook: PublishHook) -> Self {
        self.hooks.push((channel.into(), hook));
        self
    }

    fn allows(&self, who: &platform_auth::Principal, channel: &str, access: Access) -> bool {
        self.authorizer.as_ref().is_none_or(|a| a(who, channel, access))
    }

    /// Events kept for resumes (across channels).
    #[must_use]
    pub fn with_history(mut self, events: usize) -> Self {
        self.history = events.max(1);
        self
    }

    /// Pings every connection every `every` (default 25 s) and closes with 4009 one
    /// that sent nothing, not even a pong, for `every + within` (default 10 s more).
    #[must_use]
    pub fn with_heartbeat(mut self, every: std::time::Duration, within: std::time::Duration) -> Self {
        self.ping_every = every.max(std::time::Duration::from_millis(10));
        self.pong_within = within;
        self
    }

    /// Frames a connection may have queued before it is closed as too slow.
    #[must_use]
    pub fn with_queue(mut self, frames: usize) -> Self {
        self.queue = frames.max(1);
        self
    }
}

/// The largest payload a shared log takes.
pub const MAX_LOG_PAYLOAD: usize = 1 << 20;

/// One event of a shared [`HubLog`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LogEntry {
    /// Its offset in the log, from 1, one more for each event appended.
    pub offset: u64,
    /// The channel it was published on.
    pub channel: Arc<str>,
    /// What was published.
    pub payload: Bytes,
}

impl LogEntry {
    /// An entry. Logs call it.
    pub fn new(offset: u64, channel: &str, payload: Bytes) -> Self {
        Self { offset, channel: channel.into(), payload }
    }
}

/// What [`HubLog::read`] found.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LogRead {
    /// The log's epoch; `None` when it has none (flushed, and nothing appended since).
    pub epoch: Option<String>,
    /// The offset of the last event appended (0: none).
    pub head: u64,
    /// The oldest offset the log still holds (`head + 1` when it holds none).
    pub first: u64,
    /// The entries after the offset asked for, oldest first, up to the limit.
    pub entries: Vec<LogEntry>,
}

impl LogRead {
    /// A read. Logs call it.
    pub fn new(epoch: Option<String>, head: u64, first: u64, entries: Vec<LogEntry>) -> Self {
        Self { epoch, head, first, entries }
    }
}

/// What a log's [`feed`](HubLog::feed) hands the hub.
#[derive(Debug)]
#[non_exhaustive]
pub enum LogFeed {
    /// An event appended, in offset order, with the epoch it was appended in.
    Entry(Arc<str>, LogEntry),
    /// The feed may have missed entries (its connection was lost and is back): the hub
    /// reads them from the log.
    Resync,
}

/// A history shared by every node of a service: one sequence of offsets for all of
/// them, so a client resumes on any node. Implemented on Redis
/// ([`RedisHubLog`](crate::redis::RedisHubLog)), PostgreSQL
/// ([`PostgresHubLog`](crate::postgres::PostgresHubLog)) and NATS JetStream
/// ([`NatsHubLog`](crate::nats::NatsHubLog)).
///
/// # Contract
/// - [`append`](Self::append) stores an event with the next offset and hands it to
///   every feed; feeds see entries in offset order.
/// - The log has an epoch from when it is opened; it changes whenever the log may have
///   lost entries (flushed, restored), and offsets start again from 1.
/// - [`read`](Self::read) returns what is kept after an offset; the log keeps at least
///   its configured number of recent events.
#[async_trait::async_trait]
pub trait HubLog: fmt::Debug + fmt::Display + Send + Sync {
    /// The backend's name.
    fn backend(&self) -> &'static str;

    /// Appends `payload` on `channel`; returns the epoch and the offset it got.
    async fn append(&self, channel: &str, payload: Bytes) -> Result<(String, u64)>;

    /// Up to `limit` entries after offset `after`, with the log's epoch and bounds.
    async fn read(&self, after: u64, limit: usize) -> Result<LogRead>;

    /// Every entry appended from now on, in offset order; subscribed when it returns.
    async fn feed(&self) -> Result<mpsc::Receiver<LogFeed>>;
}

/// Opens a shared hub log from a URL: `redis://host:6379?namespace=app&history=10000`,
/// `postgres://…?namespace=app&history=10000` or `nats://host:4222?namespace=app`
/// (the features `redis`, `postgres`, `nats`).
#[allow(clippy::unused_async)]
#[cfg_attr(
    not(any(feature = "redis", feature = "postgres", feature = "nats")),
    allow(unreachable_code, unused_variables, unused_mut)
)]
pub async fn open_log(url: &str) -> Result<Arc<dyn HubLog>> {
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase()).unwrap_or_default();
    Ok(match scheme.as_str() {
        #[cfg(feature = "redis")]
        "redis" | "valkey" => Arc::new(crate::redis::RedisHubLog::from_url(url).await?),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Arc::new(crate::postgres::PostgresHubLog::from_url(url).await?),
        #[cfg(feature = "nats")]
        "nats" => Arc::new(crate::nats::NatsHubLog::from_url(url).await?),
        other => {
            let feature = match other {
                "redis" | "valkey" => Some("redis"),
                "postgres" | "postgresql" => Some("postgres"),
                "nats" => Some("nats"),
                _ => None,
            };
            let mut known = Vec::new();
            #[cfg(feature = "redis")]
            known.extend(["redis", "valkey"]);
            #[cfg(feature = "postgres")]
            known.extend(["postgres", "postgresql"]);
            #[cfg(feature = "nats")]
            known.push("nats");
            return Err(platform_core::config::scheme_error("platform-events hub log", other, feature, &known, url));
        }
    })
}

/// Opens the hub log named by `{PREFIX}_URL` (`open_log_from_env("HUB_LOG")` reads
/// `HUB_LOG_URL`).
pub async fn open_log_from_env(prefix: &str) -> Result<Arc<dyn HubLog>> {
    let url: String = platform_core::config::Env::new(prefix).require("URL")?;
    open_log(&url).await
}

/// The namespace and history length a hub log URL names (`namespace`, default `hub`;
/// `history`, default 10,000 events).
#[cfg(any(feature = "redis", feature = "postgres", feature = "nats"))]
pub(crate) fn log_params(params: &mut platform_core::config::UrlParams) -> Result<(String, usize)> {
    let namespace = params.take("namespace").unwrap_or_else(|| "hub".to_owned());
    crate::bus::validate_group(&namespace)
        .map_err(|_| params.error("namespace", "must be letters, digits, '-' or '_'"))?;
    let history = params.take_number::<usize>("history")?.unwrap_or(10_000);
    if history == 0 {
        return Err(params.error("history", "must be at least 1"));
    }
    Ok((namespace, history))
}

/// Where the hub's events come from.
enum Source {
    /// A broadcast: offsets are the node's own.
    Broadcast(Arc<dyn Broadcast>),
    /// A shared log: offsets are the log's.
    Log(Arc<dyn HubLog>),
}

/// How a subscription was answered, or what it needs first.
enum Attach {
    Done,
    /// Read the shared log after this offset, then try again.
    Read(u64),
    /// This node has not delivered the client's offset yet: wait for it.
    Wait,
}

/// One delivered event, encoded once.
#[derive(Debug)]
struct Event {
    offset: u64,
    channel: Arc<str>,
    frame: Utf8Bytes,
}

/// A connection's subscriptions and its queue.
struct Conn {
    id: u64,
    patterns: Vec<Pattern>,
    tx: mpsc::Sender<Outgoing>,
    /// Bytes of frames queued and not yet written.
    queued: Arc<AtomicUsize>,
    /// Ends the connection at once, dropping what it had queued.
    kill: tokio_util::sync::CancellationToken,
    /// Droppable events it missed.
    shed: u64,
}

enum Outgoing {
    Frame(Utf8Bytes),
    Close(u16, &'static str),
}

/// History and connections, switched under one lock so a resume has no gap.
struct State_ {
    epoch: String,
    next_offset: u64,
    history: VecDeque<Event>,
    conns: Vec<Conn>,
}

/// The hub: one per node.
pub struct Hub {
    source: Source,
    /// This node's name in client ids.
    node: String,
    /// Who is on each presence channel, over every node, as the presence events told.
    members: Mutex<std::collections::HashMap<String, std::collections::BTreeMap<String, Value>>>,
    config: HubConfig,
    state: Mutex<State_>,
    next_conn: AtomicU64,
    /// Bytes queued over every connection.
    node_bytes: Arc<AtomicUsize>,
    pump: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Broadcast(b) => b.to_string(),
            Source::Log(l) => l.to_string(),
        };
        f.debug_struct("Hub").field("source", &source).field("config", &self.config).finish()
    }
}

fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

impl Hub {
    /// Starts the hub over `broadcast`: it hears every channel (`>`) and serves them.
    pub async fn start(broadcast: Arc<dyn Broadcast>, config: HubConfig) -> Result<Arc<Self>> {
        let mut feed = broadcast.subscribe(">").await?;
        let hub = Self::new(Source::Broadcast(broadcast), config, new_epoch(), 0);
        let weak = Arc::downgrade(&hub);
        let pump = tokio::spawn(async move {
            while let Some(received) = feed.recv().await {
                let Some(hub) = weak.upgrade() else { return };
                match received {
                    Received::Message(p) => hub.deliver(None, &p.channel, &p.payload),
                    // The history may have a hole now: a new epoch says so to resumes.
                    _ => hub.new_epoch(),
                }
            }
        });
        *hub.pump.lock().unwrap_or_else(PoisonError::into_inner) = Some(pump);
        Ok(hub)
    }

    /// Starts the hub over a shared `log`: every node started over the same log serves
    /// the same offsets, and a client resumes on any of them.
    pub async fn start_shared(log: Arc<dyn HubLog>, config: HubConfig) -> Result<Arc<Self>> {
        // Subscribed first, so nothing appended after the read below is missed.
        let mut feed = log.feed().await?;
        let at = log.read(u64::MAX - 1, 0).await?;
        let hub = Self::new(Source::Log(Arc::clone(&log)), config, at.epoch.unwrap_or_default(), at.head);
        let weak = Arc::downgrade(&hub);
        let pump = tokio::spawn(async move {
            while let Some(item) = feed.recv().await {
                let Some(hub) = weak.upgrade() else { return };
                match item {
                    LogFeed::Entry(epoch, entry) => hub.take_entry(&*log, &epoch, entry).await,
                    LogFeed::Resync => hub.catch_up(&*log, u64::MAX).await,
                }
            }
        });
        *hub.pump.lock().unwrap_or_else(PoisonError::into_inner) = Some(pump);
        Ok(hub)
    }

    fn new(source: Source, config: HubConfig, epoch: String, last: u64) -> Arc<Self> {
        Arc::new(Self {
            source,
            node: new_epoch()[..8].to_owned(),
            members: Mutex::default(),
            config,
            state: Mutex::new(State_ { epoch, next_offset: last + 1, history: VecDeque::new(), conns: Vec::new() }),
            next_conn: AtomicU64::new(1),
            node_bytes: Arc::default(),
            pump: Mutex::default(),
        })
    }

    /// Publishes `data` on `channel` to every node's subscribers.
    pub async fn publish(&self, channel: &str, data: Value) -> Result<()> {
        validate_channel(channel)?;
        let payload = Bytes::from(serde_json::to_vec(&data)?);
        match &self.source {
            Source::Broadcast(b) => match b.publish(channel, payload.clone()).await {
                // The broadcast is down: this node's clients still get it (the other
                // nodes start a new epoch when their broadcast is back).
                Err(e)
                    if matches!(
                        e.kind(),
                        platform_core::ErrorKind::Unavailable | platform_core::ErrorKind::Timeout
                    ) =>
                {
                    tracing::warn!(target: "platform::hub", error = %e, channel, "broadcast unreachable: delivered on this node only");
                    self.deliver(None, channel, &payload);
                    Ok(())
                }
                other => other,
            },
            Source::Log(log) => {
                if payload.len() > MAX_LOG_PAYLOAD {
                    let why = format!("is {} bytes, over the {MAX_LOG_PAYLOAD} the log takes", payload.len());
                    return Err(Error::invalid_input(format!("the data {why}")).with_detail("data", why));
                }
                log.append(channel, payload).await.map(drop)
            }
        }
    }

    /// An entry from the log's feed: delivered in offset order, what the feed skipped
    /// read from the log first.
    async fn take_entry(&self, log: &dyn HubLog, epoch: &str, entry: LogEntry) {
        let (current, last) = self.position();
        if epoch != current {
            // The log was flushed or lost: its offsets start again.
            self.reset(epoch, entry.offset.saturating_sub(1), !current.is_empty());
        } else if entry.offset <= last {
            return;
        } else if entry.offset > last + 1 {
            self.catch_up(log, entry.offset - 1).await;
            if self.position().1 >= entry.offset {
                return;
            }
        }
        self.deliver(Some(entry.offset), &entry.channel, &entry.payload);
    }

    /// Delivers what the log holds after this node's offset, up to `upto`.
    async fn catch_up(&self, log: &dyn HubLog, upto: u64) {
        loop {
            let (current, last) = self.position();
            if last >= upto {
                return;
            }
            let read = match log.read(last, 1000).await {
                Ok(r) => r,
                Err(e) => {
                    // Its clients may have missed events: they resume with `since`.
                    tracing::warn!(target: "platform::hub", error = %e, "hub log unreadable: clients reconnect");
                    self.disconnect_all();
                    return;
                }
            };
            let Some(epoch) = read.epoch else { return };
            if epoch != current {
                self.reset(&epoch, read.first.saturating_sub(1), true);
                continue;
            }
            if read.first > last + 1 {
                tracing::warn!(target: "platform::hub", missed = read.first - last - 1, "hub log trimmed past this node: clients reconnect");
                self.reset(&epoch, read.first - 1, false);
                self.disconnect_all();
                continue;
            }
            let mut moved = false;
            for e in read.entries.iter().filter(|e| e.offset == self.position().1 + 1 && e.offset <= upto) {
                self.deliver(Some(e.offset), &e.channel, &e.payload);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    /// This node's history starts again at `last` in `epoch`.
    fn reset(&self, epoch: &str, last: u64, warn: bool) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.epoch = epoch.to_owned();
        s.next_offset = last + 1;
        s.history.clear();
        if warn {
            tracing::warn!(target: "platform::hub", epoch, "the hub log's history was lost: new epoch");
        }
    }

    /// The epoch and the offset of the last event delivered.
    pub fn position(&self) -> (String, u64) {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (s.epoch.clone(), s.next_offset - 1)
    }

    /// `GET /ws`, and `GET /asyncapi` (the frames as an AsyncAPI 3.0 document), to
    /// merge into the service's router.
    pub fn routes(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/ws", get(upgrade))
            .route("/asyncapi", get(|| async { axum::Json(asyncapi()) }))
            .with_state(Arc::clone(self))
    }

    fn new_epoch(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.epoch = new_epoch();
        s.history.clear();
        tracing::warn!(target: "platform::hub", epoch = %s.epoch, "broadcast lagged or reconnected: new epoch");
    }

    /// Delivers an event: at `offset` (a log's), or at this node's next.
    fn deliver(&self, offset: Option<u64>, channel: &str, payload: &[u8]) {
        let data = event_data(payload);
        if let Some(of) = channel.strip_prefix("presence.") {
            self.note_presence(of, &data);
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let offset = offset.unwrap_or(s.next_offset);
        s.next_offset = offset + 1;
        let frame = event_frame(offset, &s.epoch, channel, &data);
        let droppable = self.config.droppable.iter().any(|p| p.matches(channel));
        let (len, limit) = (frame.len(), self.config.max_queued_bytes);
        let mut slow = Vec::new();
        for c in &mut s.conns {
            if !c.patterns.iter().any(|p| p.matches(channel)) {
                continue;
            }
            let room = if droppable { limit / 2 } else { limit };
            // Counted before it is queued, so the writer never takes back more than
            // was added.
            let before = c.queued.fetch_add(len, Ordering::Relaxed);
            self.node_bytes.fetch_add(len, Ordering::Relaxed);
            if before + len > room || c.tx.try_send(Outgoing::Frame(frame.clone())).is_err() {
                c.queued.fetch_sub(len, Ordering::Relaxed);
                self.node_bytes.fetch_sub(len, Ordering::Relaxed);
                if droppable {
                    c.shed += 1;
                } else {
                    slow.push(c.id);
                }
            }
        }
        for id in slow {
            if let Some(c) = s.conns.iter().find(|c| c.id == id) {
                // The queue is full: the close goes after what it holds.
                let tx = c.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(Outgoing::Close(CLOSE_TOO_SLOW, "too slow: resubscribe with since")).await;
                });
            }
            s.conns.retain(|c| c.id != id);
        }
        // Over the node's bound: the connection holding the most goes first, at once
        // (its writer gives its bytes back as it ends).
        let mut releasing = 0;
        while self.node_bytes.load(Ordering::Relaxed).saturating_sub(releasing) > self.config.max_node_bytes {
            let Some(i) = (0..s.conns.len()).max_by_key(|i| s.conns[*i].queued.load(Ordering::Relaxed)) else { break };
            let c = s.conns.swap_remove(i);
            let held = c.queued.load(Ordering::Relaxed);
            tracing::warn!(target: "platform::hub", queued = held, "node over its byte bound: slowest client dropped");
            c.kill.cancel();
            if held == 0 {
                break;
            }
            releasing += held;
        }
        s.history.push_back(Event { offset, channel: channel.into(), frame });
        while s.history.len() > self.config.history {
            s.history.pop_front();
        }
    }

    /// Adds `pattern` to connection `id` and answers with the `subscribed` frame and
    /// what `since` missed: from this node's history, or, over a shared log whose
    /// events this node no longer (or never) held, from the log.
    async fn subscribe(
        &self,
        id: u64,
        pattern: Pattern,
        since: Option<Since>,
    ) -> std::result::Result<(), &'static str> {
        let mut fetched = None;
        let mut waited = std::time::Duration::ZERO;
        for _ in 0..100 {
            match self.attach(id, &pattern, since.as_ref(), fetched.as_ref(), None)? {
                Attach::Done => return Ok(()),
                Attach::Read(after) => {
                    let Source::Log(log) = &self.source else { break };
                    match log.read(after, self.config.history).await {
                        Ok(read) => fetched = Some(read),
                        Err(_) => {
                            let why = "the history could not be read";
                            return self.attach(id, &pattern, since.as_ref(), None, Some(why)).map(drop);
                        }
                    }
                }
                // The client saw an offset on another node that this one is about to
                // deliver: waiting a moment beats a duplicate or a false gap.
                Attach::Wait if waited < std::time::Duration::from_secs(2) => {
                    let pause = std::time::Duration::from_millis(20);
                    tokio::time::sleep(pause).await;
                    waited += pause;
                }
                Attach::Wait => break,
            }
        }
        let why = "the offset is ahead of this node's history";
        self.attach(id, &pattern, since.as_ref(), None, Some(why)).map(drop)
    }

    /// The synchronous part of [`subscribe`](Self::subscribe), under the lock that
    /// delivery takes, so nothing falls between the replay and live delivery.
    fn attach(
        &self,
        id: u64,
        pattern: &Pattern,
        since: Option<&Since>,
        fetched: Option<&LogRead>,
        give_up: Option<&'static str>,
    ) -> std::result::Result<Attach, &'static str> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (epoch, last) = (s.epoch.clone(), s.next_offset - 1);
        let oldest = s.history.front().map_or(s.next_offset, |e| e.offset);
        let shared = matches!(self.source, Source::Log(_));
        let mut replay = Vec::new();
        let mut answer = json!({"type": "subscribed", "channel": pattern.as_str(), "epoch": epoch, "offset": last});
        if let Some(since) = since {
            let cached = |s: &State_, after: u64| -> Vec<Utf8Bytes> {
                let matching = s.history.iter().filter(|e| e.offset > after && pattern.matches(&e.channel));
                matching.map(|e| e.frame.clone()).collect()
            };
            let why = if let Some(why) = give_up {
                Some(why)
            } else if since.epoch != epoch {
                Some("the epoch changed: the history is not the one the offset belongs to")
            } else if since.offset > last {
                if shared {
                    return Ok(Attach::Wait);
                }
                Some("the offset is ahead of this node's history")
            } else if since.offset + 1 >= oldest {
                replay = cached(&s, since.offset);
                None
            } else if !shared {
                Some("the history no longer reaches back to the offset")
            } else if let Some(read) = fetched {
                // The log's entries up to this node's offset, then this node's own.
                let upto = read.entries.last().map_or(since.offset, |e| e.offset).min(last);
                if read.epoch.as_deref() != Some(epoch.as_str()) {
                    Some("the epoch changed: the history is not the one the offset belongs to")
                } else if read.first > since.offset + 1 {
                    Some("the history no longer reaches back to the offset")
                } else if upto < last && oldest > upto + 1 {
                    Some("the offset is further back than the history read at once")
                } else {
                    let from_log = read.entries.iter().filter(|e| e.offset <= upto && pattern.matches(&e.channel));
                    let frame = |e: &LogEntry| event_frame(e.offset, &epoch, &e.channel, &event_data(&e.payload));
                    replay = from_log.map(frame).collect();
                    replay.extend(cached(&s, upto));
                    None
                }
            } else {
                return Ok(Attach::Read(since.offset));
            };
            answer["recovered"] = json!(why.is_none());
            if let Some(why) = why {
                answer["reason"] = json!(why);
            }
        }
        let Some(conn) = s.conns.iter_mut().find(|c| c.id == id) else { return Err("closed") };
        if conn.patterns.len() >= self.config.max_subscriptions {
            return Err("too many subscriptions");
        }
        if !conn.patterns.iter().any(|p| p.as_str() == pattern.as_str()) {
            conn.patterns.push(pattern.clone());
        }
        let frames = std::iter::once(Utf8Bytes::from(answer.to_string())).chain(replay);
        for f in frames {
            let len = f.len();
            conn.queued.fetch_add(len, Ordering::Relaxed);
            self.node_bytes.fetch_add(len, Ordering::Relaxed);
            if conn.tx.try_send(Outgoing::Frame(f)).is_err() {
                conn.queued.fetch_sub(len, Ordering::Relaxed);
                self.node_bytes.fetch_sub(len, Ordering::Relaxed);
                return Err("too slow");
            }
        }
        Ok(Attach::Done)
    }

    fn unsubscribe(&self, id: u64, pattern: &str) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = s.conns.iter_mut().find(|c| c.id == id) {
            c.patterns.retain(|p| p.as_str() != pattern);
        }
    }

    fn register(&self) -> (u64, mpsc::Receiver<Outgoing>, Arc<AtomicUsize>, tokio_util::sync::CancellationToken) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.config.queue);
        let (queued, kill) = (Arc::new(AtomicUsize::new(0)), tokio_util::sync::CancellationToken::new());
        let conn = Conn { id, patterns: Vec::new(), tx, queued: Arc::clone(&queued), kill: kill.clone(), shed: 0 };
        self.state.lock().unwrap_or_else(PoisonError::into_inner).conns.push(conn);
        (id, rx, queued, kill)
    }

    /// Keeps the members of `channel` as a presence event says.
    fn note_presence(&self, channel: &str, event: &Value) {
        let Some(client) = event["client"].as_str() else { return };
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        match event["event"].as_str() {
            Some("join") => {
                members.entry(channel.to_owned()).or_default().insert(client.to_owned(), event["info"].clone());
            }
            Some("leave") => {
                if let Some(m) = members.get_mut(channel) {
                    m.remove(client);
                    if m.is_empty() {
                        members.remove(channel);
                    }
                }
            }
            _ => {}
        }
    }

    /// Who is on presence channel `channel` now, over every node: client ids and infos.
    pub fn presence(&self, channel: &str) -> Vec<(String, Value)> {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        members.get(channel).map(|m| m.iter().map(|(c, i)| (c.clone(), i.clone())).collect()).unwrap_or_default()
    }

    /// Announces a join or a leave of `client` on `channel`.
    async fn announce(&self, channel: &str, client: &str, event: &str, info: &Value) {
        let data = json!({"event": event, "client": client, "info": info});
        if let Err(e) = self.publish(&format!("presence.{channel}"), data).await {
            tracing::warn!(target: "platform::hub", error = %e, channel, event, "presence not announced");
        }
    }

    /// Enqueues `data` as a job on `queue` (a JSON body with the `job-id` header) and
    /// announces it `queued` on `jobs.<id>.events` and `jobs.events`; returns its id.
    /// The worker reads the id with [`job_id`] and reports with
    /// [`job_event`](Self::job_event).
    pub async fn enqueue_job(&self, queue: &dyn platform_queue::Queue, data: Value) -> Result<String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let message = platform_queue::Message::json(&data)?.with_header(JOB_ID_HEADER, id.clone());
        queue.send(message).await?;
        self.job_event(&id, JobEvent::Queued).await?;
        Ok(id)
    }

    /// Publishes what happened to job `id` on `jobs.<id>.events` and `jobs.events`:
    /// `{"job_id", "state", "progress"?, "result"?, "error"?}`.
    pub async fn job_event(&self, id: &str, event: JobEvent) -> Result<()> {
        let mut data = json!({"job_id": id});
        let state = match event {
            JobEvent::Queued => "queued",
            JobEvent::Running => "running",
            JobEvent::Progress(p) => {
                data["progress"] = json!(p.min(100));
                "progress"
            }
            JobEvent::Succeeded(result) => {
                data["result"] = result;
                "succeeded"
            }
            JobEvent::Failed(error) => {
                data["error"] = json!(error);
                "failed"
            }
        };
        data["state"] = json!(state);
        self.publish(&format!("jobs.{id}.events"), data.clone()).await?;
        self.publish("jobs.events", data).await
    }

    /// Bytes of frames queued over every connection now.
    pub fn queued_bytes(&self) -> usize {
        self.node_bytes.load(Ordering::Relaxed)
    }

    /// Droppable events connection-wide shed so far, over the open connections.
    pub fn shed(&self) -> u64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).conns.iter().map(|c| c.shed).sum()
    }

    fn unregister(&self, id: u64) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).conns.retain(|c| c.id != id);
    }

    /// Closes every connection with 1012 (service restart): clients resume with `since`,
    /// here or on another node. For draining a node, and for tests that cut sockets.
    pub fn disconnect_all(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for c in s.conns.drain(..) {
            let _ = c.tx.try_send(Outgoing::Close(1012, "service restart: resume with since"));
        }
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).conns.len()
    }
}

#[async_trait::async_trait]
impl platform_core::HealthCheck for Hub {
    fn name(&self) -> String {
        "hub".into()
    }

    /// Down above 90 % of the node's byte bound, so `/readyz` turns 503 before the
    /// bound drops clients, and down while its broadcast or log is unreachable (the
    /// node then serves its own clients only).
    async fn check(&self) -> Result<platform_core::CheckOutcome> {
        let started = std::time::Instant::now();
        let (queued, cap) = (self.queued_bytes(), self.config.max_node_bytes);
        if queued.saturating_mul(10) > cap.saturating_mul(9) {
            return Err(Error::unavailable(format!("{queued} bytes queued for clients, bound {cap}")));
        }
        let source = match &self.source {
            Source::Broadcast(b) => b.check().await.map(|o| o.version.unwrap_or_default()),
            Source::Log(l) => l.read(u64::MAX - 1, 0).await.map(|r| format!("{l}, head {}", r.head)),
        };
        let source = source.map_err(|e| Error::unavailable(format!("the hub's source is unreachable: {e}")))?;
        let version = format!("{} connections, {queued} bytes queued; {source}", self.connections());
        Ok(platform_core::CheckOutcome::new(started.elapsed()).with_version(version))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(p) = self.pump.lock().unwrap_or_else(PoisonError::into_inner).take() {
            p.abort();
        }
    }
}

/// The `/ws` contract as an AsyncAPI 3.0 document: one channel, the client's frames as
/// `send` operations and the server's as `receive`.
pub fn asyncapi() -> Value {
    let text = |desc: &str| json!({"type": "string", "description": desc});
    let channel =
        text("A channel name (dot-separated segments) or, to subscribe, a pattern (`*` one segment, `>` the rest)");
    let since = json!({"type": "object", "required": ["epoch", "offset"], "properties": {
        "epoch": text("The epoch of the last event received"),
        "offset": {"type": "integer", "minimum": 0, "description": "The offset of the last event received"}}});
    let message = |name: &str, summary: &str, required: &[&str], props: Value| {
        (
            name.to_owned(),
            json!({"name": name, "summary": summary, "contentType": "application/json",
            "payload": {"type": "object", "required": required, "properties": props}}),
        )
    };
    let client = [
        message(
            "subscribe",
            "Subscribe to a channel or pattern, resuming after `since`; on a presence channel, join it with `info`",
            &["op", "channel"],
            json!({"op": {"const": "subscribe"}, "channel": channel, "since": since,
                "info": {"description": "What others see of this client on a presence channel (JSON, up to 1 KiB)"}}),
        ),
        message(
            "presence_query",
            "Ask who is on a presence channel",
            &["op", "channel"],
            json!({"op": {"const": "presence"}, "channel": channel}),
        ),
        message(
            "unsubscribe",
            "Stop receiving a channel or pattern",
            &["op", "channel"],
            json!({"op": {"const": "unsubscribe"}, "channel": channel}),
        ),
        message(
            "publish",
            "Publish data on a channel (or hand it to the channel's hook: `jobs.enqueue`)",
            &["op", "channel", "data"],
            json!({"op": {"const": "publish"}, "channel": channel, "data": {}}),
        ),
        message("ping", "Ask for a pong", &["op"], json!({"op": {"const": "ping"}})),
    ];
    let server = [
        message(
            "event",
            "An event on a subscribed channel",
            &["type", "channel", "offset", "epoch", "data"],
            json!({"type": {"const": "event"}, "channel": channel, "offset": {"type": "integer"}, "epoch": text("The history the offset belongs to"), "data": {}}),
        ),
        message(
            "subscribed",
            "A subscription is in place; for a resume, whether the missed range follows",
            &["type", "channel", "epoch", "offset"],
            json!({"type": {"const": "subscribed"}, "channel": channel, "epoch": {"type": "string"}, "offset": {"type": "integer"},
                "recovered": {"type": "boolean"}, "reason": text("Why the missed range cannot follow")}),
        ),
        message(
            "unsubscribed",
            "A subscription ended",
            &["type", "channel"],
            json!({"type": {"const": "unsubscribed"}, "channel": channel}),
        ),
        message(
            "published",
            "A publish was accepted",
            &["type", "channel"],
            json!({"type": {"const": "published"}, "channel": channel, "result": {}}),
        ),
        message("pong", "The answer to ping", &["type"], json!({"type": {"const": "pong"}})),
        message(
            "presence",
            "Who is on a presence channel now (joins and leaves are events on presence.<channel>)",
            &["type", "channel", "clients"],
            json!({"type": {"const": "presence"}, "channel": channel, "clients": {"type": "array", "items": {"type": "object",
                "required": ["client"], "properties": {"client": {"type": "string"}, "info": {}}}}}),
        ),
        message(
            "error",
            "A frame was refused; the connection stays open",
            &["type", "code", "message"],
            json!({"type": {"const": "error"}, "code": text("bad_frame, bad_channel, permission_denied, invalid_input, …"), "message": {"type": "string"}}),
        ),
    ];
    let refs = |msgs: &[(String, Value)]| -> Vec<Value> {
        msgs.iter().map(|(n, _)| json!({"$ref": format!("#/channels/ws/messages/{n}")})).collect()
    };
    let all: serde_json::Map<String, Value> = client.iter().chain(server.iter()).cloned().collect();
    json!({
        "asyncapi": "3.0.0",
        "info": {"title": "The /ws contract", "version": "1",
            "description": "Authenticated by the shared key: query key=, header X-Shared-Key, Authorization: Bearer, or the subprotocols platform-ws and key.<key>. Close codes: 4008 too slow, 4009 no pong, 1008 too many subscriptions, 1009 frame too large, 1003 binary frames."},
        "channels": {"ws": {"address": "/ws", "messages": all}},
        "operations": {
            "clientFrames": {"action": "receive", "channel": {"$ref": "#/channels/ws"}, "messages": refs(&client)},
            "serverFrames": {"action": "send", "channel": {"$ref": "#/channels/ws"}, "messages": refs(&server)},
        },
    })
}

#[derive(Debug, Deserialize)]
struct Since {
    epoch: String,
    offset: u64,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum ClientFrame {
    Subscribe { channel: String, since: Option<Since>, info: Option<Value> },
    Presence { channel: String },
    Unsubscribe { channel: String },
    Publish { channel: String, data: Value },
    Ping,
}

/// What a payload carries: its JSON, or, when it is not JSON, its text.
fn event_data(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

/// The frame of one event.
fn event_frame(offset: u64, epoch: &str, channel: &str, data: &Value) -> Utf8Bytes {
    json!({"type": "event", "channel": channel, "offset": offset, "epoch": epoch, "data": data}).to_string().into()
}

async fn upgrade(State(hub): State<Arc<Hub>>, uri: Uri, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    use platform_auth::{RequestKind, RequestParts};
    let request = RequestParts::new(&axum::http::Method::GET, &uri, &headers, RequestKind::WebSocketUpgrade);
    let principal = match hub.config.auth.authenticate(&request).await {
        Ok(principal) => principal,
        Err(e) if e.kind() == platform_core::ErrorKind::Unauthenticated => {
            let why = format!(
                "a valid credential is required (the shared key as key=, X-Shared-Key, Bearer or the subprotocol): {}",
                e.message()
            );
            return Error::new(platform_core::ErrorKind::Unauthenticated, why).into_response();
        }
        Err(e) => return e.into_response(),
    };
    // A browser that offered the marker gets it back (never the key).
    let offered = headers.get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let by_protocol = offered.split(',').any(|p| p.trim() == SUBPROTOCOL);
    let ws = if by_protocol { ws.protocols([SUBPROTOCOL]) } else { ws };
    // The library's own limit is a backstop; frames over `max_frame` get a close 1009.
    let backstop = hub.config.max_frame.saturating_mul(16).max(1 << 20);
    // A small read buffer (tungstenite's default is 128 KiB, taken on the first read):
    // client frames are small, and idle connections are most of a hub's memory.
    ws.max_message_size(backstop).read_buffer_size(READ_BUFFER).on_upgrade(move |socket| serve(hub, socket, principal))
}

/// The channel whose publishes enqueue jobs (with [`HubConfig::with_jobs`]).
pub const JOBS_ENQUEUE: &str = "jobs.enqueue";
/// The queue message header carrying a job's id.
pub const JOB_ID_HEADER: &str = "job-id";

/// What happened to a job, for [`Hub::job_event`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum JobEvent {
    /// Enqueued.
    Queued,
    /// A worker took it.
    Running,
    /// This far along, in percent.
    Progress(u8),
    /// Done, with its result (a download URL, a count).
    Succeeded(Value),
    /// Given up, with the reason.
    Failed(String),
}

/// The id of the job a queue delivery carries (see [`Hub::enqueue_job`]).
pub fn job_id(delivery: &platform_queue::Delivery) -> Option<&str> {
    delivery.header(JOB_ID_HEADER)
}

/// What one connection is: its id for presence and the presence channels it joined.
struct Session {
    client: String,
    joined: Vec<String>,
    principal: platform_auth::Principal,
}

async fn serve(hub: Arc<Hub>, mut socket: WebSocket, principal: platform_auth::Principal) {
    let (id, mut rx, queued, kill) = hub.register();
    let mut session = Session { client: format!("{}-{id}", hub.node), joined: Vec::new(), principal };
    let written = |len: usize| {
        queued.fetch_sub(len, Ordering::Relaxed);
        hub.node_bytes.fetch_sub(len, Ordering::Relaxed);
    };
    let (every, within) = (hub.config.ping_every, hub.config.pong_within);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = kill.cancelled() => break,
            _ = heartbeat.tick() => {
                if heard.elapsed() > every + within {
                    let close = CloseFrame { code: CLOSE_NO_PONG, reason: "no pong".into() };
                    let _ = tokio::time::timeout(within, socket.send(Message::Close(Some(close)))).await;
                    break;
                }
                match tokio::time::timeout(within, socket.send(Message::Ping(Bytes::new()))).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            out = rx.recv() => match out {
                Some(Outgoing::Frame(f)) => {
                    let len = f.len();
                    let sent = tokio::select! {
                        // The frame's bytes are shared, not copied per connection.
                        sent = socket.send(Message::Text(f)) => sent.is_ok(),
                        () = kill.cancelled() => false,
                    };
                    written(len);
                    if !sent {
                        break;
                    }
                }
                Some(Outgoing::Close(code, why)) => {
                    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: why.into() }))).await;
                    break;
                }
                None => break,
            },
            incoming = socket.recv() => {
                let Some(Ok(msg)) = incoming else { break };
                heard = tokio::time::Instant::now();
                match msg {
                    Message::Text(text) if text.len() > hub.config.max_frame => {
                        let close = CloseFrame { code: 1009, reason: "frame too large".into() };
                        let _ = socket.send(Message::Close(Some(close))).await;
                        break;
                    }
                    Message::Text(text) => {
                        if let Some((code, why)) = handle(&hub, id, &mut session, text.as_str(), &mut socket).await {
                            let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: why.into() }))).await;
                            break;
                        }
                    }
                    Message::Binary(_) => {
                        let _ = socket.send(Message::Close(Some(CloseFrame { code: 1003, reason: "text frames only".into() }))).await;
                        break;
                    }
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
        }
    }
    hub.unregister(id);
    for channel in std::mem::take(&mut session.joined) {
        hub.announce(&channel, &session.client, "leave", &Value::Null).await;
    }
    // What it still had queued is given back.
    rx.close();
    while let Ok(out) = rx.try_recv() {
        if let Outgoing::Frame(f) = out {
            written(f.len());
        }
    }
}

/// Handles one client frame; `Some` closes the connection with that code.
async fn handle(
    hub: &Hub,
    id: u64,
    session: &mut Session,
    text: &str,
    socket: &mut WebSocket,
) -> Option<(u16, &'static str)> {
    let reply = |v: Value| Message::Text(v.to_string().into());
    let error = |code: &str, message: String| reply(json!({"type": "error", "code": code, "message": message}));
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let _ = socket.send(error("bad_frame", e.to_string())).await;
            return None;
        }
    };
    let asked = match &frame {
        ClientFrame::Subscribe { channel, .. } | ClientFrame::Presence { channel } => {
            Some((channel, Access::Subscribe))
        }
        ClientFrame::Publish { channel, .. } => Some((channel, Access::Publish)),
        ClientFrame::Unsubscribe { .. } | ClientFrame::Ping => None,
    };
    if let Some((channel, access)) = asked
        && !hub.config.allows(&session.principal, channel, access)
    {
        let _ = socket.send(error("permission_denied", format!("not allowed on {channel:?}"))).await;
        return None;
    }
    match frame {
        ClientFrame::Ping => {
            let _ = socket.send(reply(json!({"type": "pong"}))).await;
        }
        ClientFrame::Subscribe { channel, since, info } => match Pattern::parse(&channel) {
            Err(e) => {
                let _ = socket.send(error("bad_channel", e.to_string())).await;
            }
            Ok(_) if info.as_ref().is_some_and(|i| i.to_string().len() > 1024) => {
                let _ = socket.send(error("invalid_input", "info is over 1 KiB".to_owned())).await;
            }
            Ok(pattern) => {
                let joins = !pattern.is_wildcard() && hub.config.has_presence(&channel);
                match hub.subscribe(id, pattern, since).await {
                    Ok(()) => {}
                    Err("too many subscriptions") => return Some((1008, "too many subscriptions")),
                    Err(_) => return Some((CLOSE_TOO_SLOW, "too slow: resubscribe with since")),
                }
                if joins && !session.joined.contains(&channel) {
                    hub.announce(&channel, &session.client, "join", &info.unwrap_or(Value::Null)).await;
                    session.joined.push(channel);
                }
            }
        },
        ClientFrame::Presence { channel } => {
            let answer = if hub.config.has_presence(&channel) {
                let clients: Vec<Value> =
                    hub.presence(&channel).into_iter().map(|(c, i)| json!({"client": c, "info": i})).collect();
                reply(json!({"type": "presence", "channel": channel, "clients": clients}))
            } else {
                error("invalid_input", format!("presence is off for {channel:?}"))
            };
            let _ = socket.send(answer).await;
        }
        ClientFrame::Unsubscribe { channel } => {
            if let Some(at) = session.joined.iter().position(|c| *c == channel) {
                session.joined.remove(at);
                hub.announce(&channel, &session.client, "leave", &Value::Null).await;
            }
            hub.unsubscribe(id, &channel);
            let _ = socket.send(reply(json!({"type": "unsubscribed", "channel": channel}))).await;
        }
        ClientFrame::Publish { channel, data } => {
            let hook = hub.config.hooks.iter().find(|(c, _)| *c == channel).map(|(_, h)| Arc::clone(h));
            let done = match (hook, &hub.config.jobs) {
                (Some(hook), _) => hook(&session.principal, data).await.map(Some),
                (None, Some(queue)) if channel == JOBS_ENQUEUE => {
                    hub.enqueue_job(&**queue, data).await.map(|id| Some(json!({"job_id": id})))
                }
                (None, _) => hub.publish(&channel, data).await.map(|()| None),
            };
            let answer = match done {
                Ok(None) => reply(json!({"type": "published", "channel": channel})),
                Ok(Some(result)) => reply(json!({"type": "published", "channel": channel, "result": result})),
                Err(e) => error(e.kind().code(), e.to_string()),
            };
            let _ = socket.send(answer).await;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn readiness_fails_near_the_node_bound() {
        use platform_core::HealthCheck as _;
        let broadcast = crate::open_broadcast("memory://hub-health").await.unwrap();
        let hub = Hub::start(broadcast, HubConfig::new("a-key-of-16-chars").unwrap().with_byte_bounds(100, 1000))
            .await
            .unwrap();
        assert!(hub.check().await.is_ok());
        hub.node_bytes.store(950, Ordering::Relaxed);
        let err = hub.check().await.unwrap_err();
        assert!(err.to_string().contains("950 bytes queued"), "{err}");
        hub.node_bytes.store(800, Ordering::Relaxed);
        assert!(hub.check().await.is_ok());
    }
}
