//! Kafka queues (and Kafka-protocol brokers): `kafka://host:9092?queue=jobs`.
//!
//! - [x] topic = queue (created with `partitions`, default 8, when missing); a consumer
//!   group (`group`, default `platform-<queue>`) shares the work between processes
//! - [x] one group member per process and queue, shared by every handle: handles in one
//!   process never rebalance against each other
//! - [x] per-message acks over offsets: a partition's offset is committed up to its
//!   lowest unsettled message, so nothing handed out and unsettled is ever skipped
//! - [x] the lease is kept by the client; past it, `nack`, and `release` produce a copy
//!   (carrying its attempt count) and then settle the original
//! - [x] delay and `nack(delay)`: the message goes to `<queue>.retry` with a due time
//!   in a header; the member holds it (uncommitted, so a crash loses nothing) until due
//! - [x] dead letters in `<dead_letter>` (default `<queue>.dlq`), read from the offsets
//!   the redrive group committed; redrive produces them back and commits
//! - [x] ordering per key: a `key` header becomes the Kafka message key
//! - [x] a member that dies or leaves has its partitions reassigned; what it had not
//!   committed is read again by the new owner
//! - [ ] ~~dedup~~: Kafka's idempotent producer dedups retries, not keys; `Unsupported`
//! - [ ] ~~atomic batches~~: each message is acknowledged by the broker on its own
//! - [ ] attempts after a crash: a message read again after its member died starts from
//!   the count it carried (Kafka keeps no delivery count)
//!
//! Headers travel JSON-encoded in one Kafka header (`platform-headers`). What a real
//! cluster adds and the tests here cannot show: replication (`replication`, default the
//! broker's), retention (a message older than the topic's retention is gone, acked or
//! not), and rebalances between processes under load.
//!
//! URL: `kafka://host:port[,host:port…]`, plus the common parameters and `group`,
//! `partitions`, `replication`, `prefetch` (messages buffered per process, default 500;
//! behind them librdkafka keeps its own prefetch, at most 64 MiB),
//! `session_timeout`, and `member` (a name: handles with different names are separate
//! group members even in one process; default one member per process).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use platform_core::clock::now_ms;
use platform_core::{CheckOutcome, Error, ErrorKind, HealthCheck, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::QueueHandle;
use crate::driver::dead_letter_headers;
use crate::lease::republish::{ATTEMPTS_BASE, FIRST_FAILURE, Holding, Republish, Republishing, requeue_marks};
use crate::message::{decode_headers, encode_headers};
use crate::options::{QueueOptions, QueueUrl};
use crate::{Capabilities, DeadLetter, Delivery, Headers, Message, Queue, ReceiveOptions};

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["kafka"];

const HEADERS: &str = "platform-headers";
const DUE: &str = "platform-due-ms";
const KEY_HEADER: &str = "key";
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading the dead letters waits for more past every partition's watermark.
const QUIET: Duration = Duration::from_millis(300);
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Maps a Kafka client error onto the portable kinds.
#[doc(hidden)] // for platform-events' bus on the same client; not part of the API
pub fn map_err(e: KafkaError) -> Error {
    let code = e.rdkafka_error_code();
    let kind = match code {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::InvalidArgument,
        ) => ErrorKind::InvalidInput,
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed,
        ) => ErrorKind::PermissionDenied,
        Some(RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::Authentication) => {
            ErrorKind::Unauthenticated
        }
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => ErrorKind::NotFound,
        Some(RDKafkaErrorCode::TopicAlreadyExists) => ErrorKind::AlreadyExists,
        Some(
            RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut | RDKafkaErrorCode::OperationTimedOut,
        ) => ErrorKind::Timeout,
        Some(
            RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::AssignmentLost,
        ) => ErrorKind::Conflict,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, e.to_string()).with_backend("kafka")
}

fn blocking_err(e: tokio::task::JoinError) -> Error {
    Error::internal(format!("kafka worker thread failed: {e}")).with_backend("kafka")
}

/// A fetched message, until it is settled.
#[derive(Clone)]
struct Fetched {
    topic: String,
    partition: i32,
    offset: i64,
    epoch: u64,
    body: Bytes,
    headers: Headers,
    base: u32,
    first_failure: Option<String>,
}

/// Per partition: the offsets fetched and not yet committed past.
#[derive(Default)]
struct Track {
    epoch: u64,
    /// offset -> settled
    open: BTreeMap<i64, bool>,
}

/// The group member. Closing one waits for the broker (leave the group, commit), for
/// ever when the broker is gone; so it closes on a thread of its own, and dropping a
/// queue never blocks the caller.
struct Member(Option<StreamConsumer<HubContext>>);

impl std::ops::Deref for Member {
    type Target = StreamConsumer<HubContext>;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            let _ = std::thread::Builder::new().name("kafka-member-close".into()).spawn(move || drop(consumer));
        }
    }
}

/// What the group member and the handles share.
struct HubState {
    consumer: Member,
    ready: Mutex<VecDeque<Fetched>>,
    delayed: Mutex<BinaryHeap<Reverse<(i64, u64, usize)>>>,
    delayed_items: Mutex<HashMap<usize, Fetched>>,
    next_delayed: AtomicU64,
    arrived: tokio::sync::Notify,
    drained: tokio::sync::Notify,
    prefetch: usize,
}

/// Rebalance handling: a revoked partition's settled prefix is committed and its
/// epoch moves on, so its buffered messages are dropped and late settles refused.
struct HubContext {
    tracks: Arc<Mutex<HashMap<(String, i32), Track>>>,
    paused: Arc<AtomicBool>,
    joined: Arc<tokio::sync::watch::Sender<bool>>,
}

impl ClientContext for HubContext {}

impl ConsumerContext for HubContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut commit = TopicPartitionList::new();
            let mut tracks = self.tracks.lock().unwrap_or_else(|e| e.into_inner());
            for el in list.elements() {
                let key = (el.topic().to_owned(), el.partition());
                if let Some(track) = tracks.get_mut(&key) {
                    if let Some(next) = commit_point(track) {
                        let _ = commit.add_partition_offset(el.topic(), el.partition(), Offset::Offset(next));
                    }
                    track.epoch += 1;
                    track.open.clear();
                }
            }
            drop(tracks);
            if commit.count() > 0 {
                let _ = consumer.commit(&commit, CommitMode::Sync);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            if self.paused.load(Ordering::Acquire) {
                let _ = consumer.pause(list);
            }
            self.joined.send_replace(true);
        }
    }
}

/// Drops the settled prefix; returns the offset to commit when it moved.
fn commit_point(track: &mut Track) -> Option<i64> {
    let mut next = None;
    while let Some((&offset, &settled)) = track.open.first_key_value() {
        if !settled {
            break;
        }
        track.open.pop_first();
        next = Some(offset + 1);
    }
    next
}

/// The process's group member for one (brokers, group, topic).
struct Hub {
    state: Arc<HubState>,
    joined: tokio::sync::watch::Receiver<bool>,
    tracks: Arc<Mutex<HashMap<(String, i32), Track>>>,
    commits: Arc<Commits>,
    task: tokio::task::JoinHandle<()>,
    committer: tokio::task::JoinHandle<()>,
}

impl Drop for Hub {
    /// What settled and is not committed yet is committed before the member leaves the
    /// group (on a thread: the member's close waits for it), so a consumer that acks and
    /// closes at once does not hand its acked messages to the next member.
    fn drop(&mut self) {
        self.task.abort();
        self.committer.abort();
        let list = due_list(&self.tracks, &self.commits);
        if list.count() > 0 {
            let state = Arc::clone(&self.state);
            let _ = std::thread::Builder::new().name("kafka-final-commit".into()).spawn(move || {
                let _ = state.consumer.commit(&list, CommitMode::Sync);
            });
        }
    }
}

/// Offsets to commit, per partition with the epoch they were settled in; acks that
/// land together go to the broker in one commit.
#[derive(Default)]
struct Commits {
    due: Mutex<HashMap<(String, i32), (i64, u64)>>,
    wake: tokio::sync::Notify,
}

/// Commits what settled, a few milliseconds after the first of a group of acks; a
/// partition that moved since is skipped (its new owner reads from the last commit).
async fn commit_settled(
    state: Arc<HubState>,
    tracks: Arc<Mutex<HashMap<(String, i32), Track>>>,
    commits: Arc<Commits>,
) {
    loop {
        commits.wake.notified().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let list = due_list(&tracks, &commits);
        if list.count() > 0 {
            let _ = state.consumer.commit(&list, CommitMode::Async);
        }
    }
}

/// Takes the offsets due for a commit, leaving out partitions that moved since.
fn due_list(tracks: &Mutex<HashMap<(String, i32), Track>>, commits: &Commits) -> TopicPartitionList {
    let due = std::mem::take(&mut *commits.due.lock().unwrap_or_else(|e| e.into_inner()));
    let mut list = TopicPartitionList::new();
    let tracks = tracks.lock().unwrap_or_else(|e| e.into_inner());
    for ((topic, partition), (offset, epoch)) in due {
        if tracks.get(&(topic.clone(), partition)).is_some_and(|t| t.epoch == epoch) {
            let _ = list.add_partition_offset(&topic, partition, Offset::Offset(offset));
        }
    }
    list
}

type HubKey = (String, String, String, String);

fn hubs() -> &'static Mutex<HashMap<HubKey, Weak<Hub>>> {
    static HUBS: OnceLock<Mutex<HashMap<HubKey, Weak<Hub>>>> = OnceLock::new();
    HUBS.get_or_init(Mutex::default)
}

impl Hub {
    fn get(shared: &Shared) -> Result<Arc<Self>> {
        let o = &shared.options;
        let key = (shared.brokers.clone(), shared.group.clone(), o.queue.clone(), shared.member.clone());
        let mut all = hubs().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hub) = all.get(&key).and_then(Weak::upgrade) {
            return Ok(hub);
        }
        let tracks: Arc<Mutex<HashMap<(String, i32), Track>>> = Arc::default();
        let paused = Arc::new(AtomicBool::new(false));
        let (joined_tx, joined) = tokio::sync::watch::channel(false);
        let context =
            HubContext { tracks: Arc::clone(&tracks), paused: Arc::clone(&paused), joined: Arc::new(joined_tx) };
        let consumer: StreamConsumer<HubContext> = ClientConfig::new()
            .set("bootstrap.servers", &shared.brokers)
            .set("group.id", &shared.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", shared.session_timeout.as_millis().to_string())
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "50")
            .create_with_context(context)
            .map_err(map_err)?;
        let retry = format!("{}.retry", o.queue);
        consumer.subscribe(&[o.queue.as_str(), retry.as_str()]).map_err(map_err)?;
        let state = Arc::new(HubState {
            consumer: Member(Some(consumer)),
            ready: Mutex::default(),
            delayed: Mutex::default(),
            delayed_items: Mutex::default(),
            next_delayed: AtomicU64::new(0),
            arrived: tokio::sync::Notify::new(),
            drained: tokio::sync::Notify::new(),
            prefetch: shared.prefetch,
        });
        let task = tokio::spawn(fetch(Arc::clone(&state), Arc::clone(&tracks), paused, retry));
        let commits = Arc::new(Commits::default());
        let committer = tokio::spawn(commit_settled(Arc::clone(&state), Arc::clone(&tracks), Arc::clone(&commits)));
        let hub = Arc::new(Self { state, joined, tracks, commits, task, committer });
        all.insert(key, Arc::downgrade(&hub));
        Ok(hub)
    }

    /// Marks a fetched message settled; the committer commits past the settled prefix.
    /// `false` when its partition moved to another member since it was fetched.
    fn settle(&self, f: &Fetched) -> bool {
        let mut tracks = self.tracks.lock().unwrap_or_else(|e| e.into_inner());
        let Some(track) = tracks.get_mut(&(f.topic.clone(), f.partition)) else { return false };
        if track.epoch != f.epoch {
            return false;
        }
        match track.open.get_mut(&f.offset) {
            Some(settled) => *settled = true,
            None => return false,
        }
        if let Some(next) = commit_point(track) {
            let epoch = track.epoch;
            drop(tracks);
            let mut due = self.commits.due.lock().unwrap_or_else(|e| e.into_inner());
            let slot = due.entry((f.topic.clone(), f.partition)).or_insert((next, epoch));
            if slot.1 != epoch || slot.0 < next {
                *slot = (next, epoch);
            }
            drop(due);
            self.commits.wake.notify_one();
        }
        true
    }

    fn still_owned(&self, f: &Fetched) -> bool {
        let tracks = self.tracks.lock().unwrap_or_else(|e| e.into_inner());
        tracks.get(&(f.topic.clone(), f.partition)).is_some_and(|t| t.epoch == f.epoch)
    }

    /// Takes up to `max` due messages still owned by this member.
    fn take(&self, max: usize) -> Vec<Fetched> {
        let s = &self.state;
        // Due delayed messages go first.
        {
            let now = now_ms();
            let mut heap = s.delayed.lock().unwrap_or_else(|e| e.into_inner());
            let mut items = s.delayed_items.lock().unwrap_or_else(|e| e.into_inner());
            let mut ready = s.ready.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(Reverse((due, _, id))) = heap.peek().copied() {
                if due > now {
                    break;
                }
                heap.pop();
                if let Some(f) = items.remove(&id) {
                    ready.push_front(f);
                }
            }
        }
        let mut out = Vec::new();
        let mut ready = s.ready.lock().unwrap_or_else(|e| e.into_inner());
        while out.len() < max {
            let Some(f) = ready.pop_front() else { break };
            if self.still_owned(&f) {
                out.push(f);
            }
        }
        if ready.len() < s.prefetch / 2 {
            s.drained.notify_one();
        }
        out
    }

    fn next_due(&self) -> Option<i64> {
        self.state.delayed.lock().unwrap_or_else(|e| e.into_inner()).peek().map(|Reverse((due, ..))| *due)
    }
}

/// How long a full buffer holds the fetch loop back before the partitions are paused.
const PAUSE_AFTER: Duration = Duration::from_secs(5);

/// The member's fetch loop: registers each message with its partition's track and
/// queues it (or holds it until due); holds back, then pauses fetching, while the
/// buffer is full.
async fn fetch(
    state: Arc<HubState>,
    tracks: Arc<Mutex<HashMap<(String, i32), Track>>>,
    paused: Arc<AtomicBool>,
    retry: String,
) {
    let is_full = || state.ready.lock().unwrap_or_else(|e| e.into_inner()).len() >= state.prefetch;
    loop {
        if is_full() && !paused.load(Ordering::Acquire) {
            // Back-pressure first: stop taking messages from librdkafka (which bounds
            // its own prefetch) until receivers make room. Pausing the partitions
            // drops what librdkafka had fetched, so only a buffer that stays full for
            // `PAUSE_AFTER` pauses them, and the loop goes back to polling so that
            // rebalances are served.
            let drained = state.drained.notified();
            if is_full() && tokio::time::timeout(PAUSE_AFTER, drained).await.is_ok() {
                continue;
            }
        }
        let full = is_full();
        // Fetching stops while the buffer is full; the loop keeps polling so that
        // rebalances are served.
        if full != paused.load(Ordering::Acquire)
            && let Ok(list) = state.consumer.assignment()
        {
            paused.store(full, Ordering::Release);
            let _ = if full { state.consumer.pause(&list) } else { state.consumer.resume(&list) };
        }
        let message = tokio::select! {
            m = state.consumer.recv() => m,
            () = state.drained.notified(), if full => continue,
        };
        let m = match message {
            Ok(m) => m,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut user = Headers::new();
        let (mut base, mut first_failure, mut due) = (0, None, None);
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
                match h.key {
                    HEADERS => user = decode_headers(&value),
                    ATTEMPTS_BASE => base = value.parse().unwrap_or(0),
                    FIRST_FAILURE => first_failure = Some(value),
                    DUE => due = value.parse::<i64>().ok(),
                    _ => {}
                }
            }
        }
        let key = (m.topic().to_owned(), m.partition());
        let epoch = {
            let mut t = tracks.lock().unwrap_or_else(|e| e.into_inner());
            let track = t.entry(key).or_default();
            track.open.insert(m.offset(), false);
            track.epoch
        };
        let f = Fetched {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            epoch,
            body: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            headers: user,
            base,
            first_failure,
        };
        match due.filter(|d| m.topic() == retry && *d > now_ms()) {
            Some(due) => {
                let id = usize::try_from(state.next_delayed.fetch_add(1, Ordering::Relaxed)).unwrap_or(0);
                state.delayed_items.lock().unwrap_or_else(|e| e.into_inner()).insert(id, f);
                state.delayed.lock().unwrap_or_else(|e| e.into_inner()).push(Reverse((due, id as u64, id)));
            }
            None => state.ready.lock().unwrap_or_else(|e| e.into_inner()).push_back(f),
        }
        state.arrived.notify_waiters();
    }
}

struct Shared {
    brokers: String,
    group: String,
    member: String,
    options: QueueOptions,
    prefetch: usize,
    session_timeout: Duration,
    producer: FutureProducer,
}

impl Shared {
    fn record_headers(headers: &Headers, extra: &[(&str, String)]) -> OwnedHeaders {
        let mut out = OwnedHeaders::new();
        if !headers.is_empty() {
            out = out.insert(Header { key: HEADERS, value: Some(&encode_headers(headers)) });
        }
        for (k, v) in extra {
            out = out.insert(Header { key: k, value: Some(v) });
        }
        out
    }

    /// Produces to `topic` and waits for the broker's acknowledgement.
    async fn produce(&self, topic: &str, body: &[u8], headers: &Headers, extra: &[(&str, String)]) -> Result<()> {
        let mut record =
            FutureRecord::<[u8], [u8]>::to(topic).payload(body).headers(Self::record_headers(headers, extra));
        let key = headers.get(KEY_HEADER);
        if let Some(k) = key {
            record = record.key(k.as_bytes());
        }
        self.producer.send(record, TIMEOUT).await.map(drop).map_err(|(e, _)| map_err(e))
    }

    /// Produces so that the message is visible in the queue after `delay`.
    async fn produce_delayed(
        &self,
        body: &[u8],
        headers: &Headers,
        extra: &[(&str, String)],
        delay: Duration,
    ) -> Result<()> {
        let due = now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
        let mut all = extra.to_vec();
        all.push((DUE, due.to_string()));
        self.produce(&format!("{}.retry", self.options.queue), body, headers, &all).await
    }
}

/// A queue on Kafka.
pub struct KafkaQueue {
    shared: Arc<Shared>,
    hub: Mutex<Option<Arc<Hub>>>,
}

impl fmt::Debug for KafkaQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaQueue")
            .field("brokers", &self.shared.brokers)
            .field("group", &self.shared.group)
            .field("options", &self.shared.options)
            .finish()
    }
}

impl fmt::Display for KafkaQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kafka({}/{})", self.shared.brokers, self.shared.options.queue)
    }
}

fn capabilities() -> Capabilities {
    Capabilities {
        dedup: false,
        dedup_window: None,
        atomic_batch: false,
        max_body_bytes: 900 * 1024,
        ..Capabilities::default()
    }
}

/// What a queue URL says.
struct Settings {
    brokers: String,
    group: String,
    member: String,
    partitions: i32,
    replication: i32,
    prefetch: usize,
    session_timeout: Duration,
    options: QueueOptions,
}

impl Settings {
    fn parse(url: &str) -> Result<Self> {
        let mut u = QueueUrl::parse(url)?;
        let group = u.take("group");
        let member = u.take("member").unwrap_or_default();
        let partitions = u.take_parsed::<i32>("partitions")?.unwrap_or(8);
        let replication = u.take_parsed::<i32>("replication")?;
        let prefetch = u.take_parsed::<usize>("prefetch")?.unwrap_or(500);
        let session_timeout = u.take_duration("session_timeout")?.unwrap_or(Duration::from_secs(10));
        u.finish("kafka")?;
        let bad = |field: &str, why: &str| {
            Error::invalid_input(format!("queue url: {field} {why}")).with_op("open").with_detail(field, why)
        };
        if !(1..=10_000).contains(&partitions) {
            return Err(bad("partitions", "must be 1 to 10000"));
        }
        if !(1..=100_000).contains(&prefetch) {
            return Err(bad("prefetch", "must be 1 to 100000"));
        }
        if !u.url().username().is_empty() || u.url().password().is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("queue url {:?}: SASL credentials are not supported by the kafka backend yet", u.masked()),
            )
            .with_backend("kafka")
            .with_op("open"));
        }
        let host = u.url().host_str().unwrap_or("localhost").to_owned();
        let port = u.url().port().unwrap_or(9092);
        let brokers = format!("{host}:{port}");
        let o = u.options;
        let group = group.unwrap_or_else(|| format!("platform-{}", o.queue));
        let replication = replication.unwrap_or(-1);
        Ok(Self { brokers, group, member, partitions, replication, prefetch, session_timeout, options: o })
    }
}

impl KafkaQueue {
    /// Opens a queue from `kafka://…`, creating its topics when missing.
    pub async fn from_url(url: &str) -> Result<QueueHandle<Self>> {
        let Settings { brokers, group, member, partitions, replication, prefetch, session_timeout, options: o } =
            Settings::parse(url)?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("acks", "all")
            .set("message.timeout.ms", TIMEOUT.as_millis().to_string())
            .set("linger.ms", "1")
            .create()
            .map_err(map_err)?;
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &brokers).create().map_err(map_err)?;
        let names = [o.queue.clone(), format!("{}.retry", o.queue), o.dead_letter.clone()];
        let topics: Vec<NewTopic<'_>> =
            names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(replication))).collect();
        let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        let results = admin.create_topics(&topics, &opts).await.map_err(|e| map_err(e).with_op("open"))?;
        for r in results {
            if let Err((topic, code)) = r
                && code != RDKafkaErrorCode::TopicAlreadyExists
            {
                return Err(Error::new(
                    map_err(KafkaError::AdminOp(code)).kind(),
                    format!("cannot create topic {topic:?} on {brokers}: {code}"),
                )
                .with_backend("kafka")
                .with_op("open"));
            }
        }
        let shared = Arc::new(Shared { brokers, group, member, options: o, prefetch, session_timeout, producer });
        Ok(QueueHandle::new(Self { shared, hub: Mutex::new(None) }))
    }

    /// Checks `url` as [`from_url`](Self::from_url) does, without connecting: the queue
    /// options it names and what the queue can do, or the error `from_url` would give.
    pub fn check_url(url: &str) -> Result<(QueueOptions, Capabilities)> {
        Ok((Settings::parse(url)?.options, capabilities()))
    }

    /// The process's group member for this queue, joined on the first receive.
    fn hub(&self) -> Result<Arc<Hub>> {
        let mut slot = self.hub.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = slot.as_ref() {
            return Ok(Arc::clone(h));
        }
        let hub = Hub::get(&self.shared)?;
        *slot = Some(Arc::clone(&hub));
        Ok(hub)
    }

    fn deliver(&self, hub: &Arc<Hub>, f: Fetched) -> Delivery {
        let o = &self.shared.options;
        let attempt = f.base + 1;
        let id = format!("{}/{}/{}", f.topic, f.partition, f.offset);
        let acker = Arc::new(KafkaAcker {
            shared: Arc::clone(&self.shared),
            hub: Arc::clone(hub),
            held: Holding::new(o, attempt),
            fetched: f.clone(),
        });
        // The client keeps the lease: past it, a copy goes back and the original settles.
        let acker = Republishing::start(acker);
        Delivery::new(id, f.body, f.headers, attempt, o.visibility_timeout, Box::new(acker))
    }

    /// Reads the dead letters from the redrive group's committed offsets up to the end,
    /// at most `limit`, on a blocking thread; returns them with the consumer.
    async fn read_dead(&self, limit: usize) -> Result<(BaseConsumer, Vec<(i32, i64, Bytes, Headers)>)> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let topic = shared.options.dead_letter.clone();
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &shared.brokers)
                .set("group.id", format!("{}.redrive", shared.group))
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .create()
                .map_err(map_err)?;
            let meta = consumer.fetch_metadata(Some(&topic), TIMEOUT).map_err(map_err)?;
            let partitions: Vec<i32> =
                meta.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
            let mut list = TopicPartitionList::new();
            for p in &partitions {
                list.add_partition(&topic, *p);
            }
            let committed = consumer.committed_offsets(list, TIMEOUT).map_err(map_err)?;
            let mut ends = HashMap::new();
            let mut assign = TopicPartitionList::new();
            for el in committed.elements() {
                let (low, high) = consumer.fetch_watermarks(&topic, el.partition(), TIMEOUT).map_err(map_err)?;
                let start = match el.offset() {
                    Offset::Offset(n) => n.max(low),
                    _ => low,
                };
                if start < high {
                    ends.insert(el.partition(), high);
                    assign.add_partition_offset(&topic, el.partition(), Offset::Offset(start)).map_err(map_err)?;
                }
            }
            let mut out = Vec::new();
            if ends.is_empty() {
                return Ok((consumer, out));
            }
            consumer.assign(&assign).map_err(map_err)?;
            // The high watermark is where a partition's reading may stop, not where it
            // must: a broker may report it behind the last offset (tansu reports the
            // last batch's base offset + 1), so reading goes on until every partition
            // reached its watermark and nothing more came for `QUIET`.
            let deadline = Instant::now() + TIMEOUT;
            let mut done: HashMap<i32, bool> = ends.keys().map(|p| (*p, false)).collect();
            let mut quiet_since: Option<Instant> = None;
            while out.len() < limit && Instant::now() < deadline {
                let all_done = done.values().all(|d| *d);
                let Some(m) = consumer.poll(Duration::from_millis(if all_done { 50 } else { 200 })) else {
                    if all_done && quiet_since.get_or_insert_with(Instant::now).elapsed() >= QUIET {
                        break;
                    }
                    continue;
                };
                quiet_since = None;
                let m = m.map_err(map_err)?;
                let headers = m
                    .headers()
                    .and_then(|hs| hs.iter().find(|h| h.key == HEADERS).and_then(|h| h.value))
                    .map(|v| decode_headers(&String::from_utf8_lossy(v)))
                    .unwrap_or_default();
                if m.offset() + 1 >= ends[&m.partition()] {
                    done.insert(m.partition(), true);
                }
                out.push((m.partition(), m.offset(), Bytes::copy_from_slice(m.payload().unwrap_or_default()), headers));
            }
            Ok((consumer, out))
        })
        .await
        .map_err(blocking_err)?
    }
}

#[async_trait]
impl HealthCheck for KafkaQueue {
    fn name(&self) -> String {
        "queue:kafka".into()
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        let shared = Arc::clone(&self.shared);
        let version = tokio::task::spawn_blocking(move || {
            let meta = shared
                .producer
                .client()
                .fetch_metadata(Some(&shared.options.queue), Duration::from_secs(10))
                .map_err(map_err)?;
            let partitions = meta.topics().first().map_or(0, |t| t.partitions().len());
            Ok::<_, Error>(format!(
                "Kafka protocol, {} broker(s), topic with {partitions} partitions",
                meta.brokers().len()
            ))
        })
        .await
        .map_err(blocking_err)??;
        Ok(CheckOutcome::new(started.elapsed()).with_version(version))
    }
}

#[async_trait]
impl Queue for KafkaQueue {
    fn queue_name(&self) -> &str {
        &self.shared.options.queue
    }

    fn backend(&self) -> &'static str {
        "kafka"
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.send_batch(vec![message]).await
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        let shared = &self.shared;
        let sends = messages.iter().map(|m| async move {
            match m.delay.filter(|d| !d.is_zero()) {
                Some(d) => shared.produce_delayed(&m.body, &m.headers, &[], d).await,
                None => shared.produce(&shared.options.queue, &m.body, &m.headers, &[]).await,
            }
        });
        futures::future::try_join_all(sends).await.map_err(|e| e.with_op("send"))?;
        Ok(())
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Delivery>> {
        let hub = self.hub()?;
        // The first receive of a process joins the consumer group: it waits for the
        // member's first assignment (seconds), whatever `wait` says.
        let mut joined = hub.joined.clone();
        if !*joined.borrow() {
            let join = joined.wait_for(|j| *j);
            if tokio::time::timeout(JOIN_TIMEOUT, join).await.is_err() {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("no partition assignment from group {:?} within {JOIN_TIMEOUT:?}", self.shared.group),
                )
                .with_backend("kafka")
                .with_op("receive"));
            }
        }
        let deadline = tokio::time::Instant::now() + options.wait;
        loop {
            let arrived = hub.state.arrived.notified();
            let got = hub.take(options.max);
            if !got.is_empty() {
                return Ok(got.into_iter().map(|f| self.deliver(&hub, f)).collect());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            // Wake for a new message, a delayed one coming due, or the deadline.
            let mut until = deadline;
            if let Some(due) = hub.next_due() {
                let wait = Duration::from_millis(u64::try_from((due - now_ms()).max(1)).unwrap_or(1));
                until = until.min(now + wait);
            }
            let _ = tokio::time::timeout_at(until, arrived).await;
        }
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let (_, found) = self.read_dead(limit).await?;
        Ok(found
            .into_iter()
            .map(|(p, o, body, headers)| {
                DeadLetter::new(format!("{}/{p}/{o}", self.shared.options.dead_letter), body, headers)
            })
            .collect())
    }

    async fn redrive(&self, limit: usize) -> Result<usize> {
        let (consumer, found) = self.read_dead(limit).await?;
        let o = &self.shared.options;
        let mut commit = TopicPartitionList::new();
        for (p, offset, body, headers) in &found {
            // Stored again first, committed past second.
            self.shared.produce(&o.queue, body, headers, &[]).await?;
            commit.add_partition_offset(&o.dead_letter, *p, Offset::Offset(offset + 1)).map_err(map_err)?;
        }
        if commit.count() > 0 {
            tokio::task::spawn_blocking(move || consumer.commit(&commit, CommitMode::Sync))
                .await
                .map_err(blocking_err)?
                .map_err(map_err)?;
        }
        Ok(found.len())
    }

    async fn close(&self) -> Result<()> {
        // The member leaves the group once no handle or delivery holds it.
        self.hub.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }
}

struct KafkaAcker {
    shared: Arc<Shared>,
    hub: Arc<Hub>,
    held: Holding,
    fetched: Fetched,
}

#[async_trait]
impl Republish for KafkaAcker {
    const BACKEND: &'static str = "kafka";

    fn held(&self) -> &Holding {
        &self.held
    }

    /// Once its partition moved to another member, that member reads it again.
    fn lost(&self) -> Option<&'static str> {
        (!self.hub.still_owned(&self.fetched)).then_some("its partition moved to another consumer")
    }

    /// Marks the original settled; the partition's offset is committed past it once
    /// everything before it is settled too.
    fn ack_original(&self) -> Result<()> {
        if self.hub.settle(&self.fetched) {
            return Ok(());
        }
        self.still_held("ack")?;
        Err(Error::conflict("the message was already settled").with_backend("kafka"))
    }

    async fn requeue(&self, delay: Option<Duration>, counted: u32) -> Result<()> {
        let f = &self.fetched;
        let extra = requeue_marks(counted, f.first_failure.as_deref());
        match delay.filter(|d| !d.is_zero()) {
            Some(d) => self.shared.produce_delayed(&f.body, &f.headers, &extra, d).await?,
            None => self.shared.produce(&self.shared.options.queue, &f.body, &f.headers, &extra).await?,
        }
        self.ack_original()
    }

    async fn move_to_dlq(&self, reason: &str, attempts: u32) -> Result<()> {
        let f = &self.fetched;
        let first = f.first_failure.as_deref().and_then(crate::message::parse_rfc3339);
        let o = &self.shared.options;
        let headers = dead_letter_headers(&f.headers, reason, &o.queue, attempts, first);
        self.shared.produce(&o.dead_letter, &f.body, &headers, &[]).await?;
        self.ack_original()
    }
}
