//! Broadcast over core NATS: `nats://host:4222`.
//!
//! Channels are NATS subjects and patterns are NATS wildcards, which mean the same
//! (`*` one token, `>` the rest), so the server does the matching. Core NATS is
//! at-most-once: a subscriber that is not connected misses what is published.
//! A subscription is registered on the server (flushed) before `subscribe` returns.
//! After a lost connection the client reconnects and subscribes again by itself; the
//! subscriptions then yield `Received::Reconnected`.
//!
//! Parameters: `buffer` (messages a slow subscription holds before it lags, default
//! 1024). The largest payload is the server's `max_payload` (1 MiB by default).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use platform_core::nats::map_error as map_err;
use platform_core::{CheckOutcome, HealthCheck, Result};
use tokio::sync::broadcast;

use crate::broadcast::{Broadcast, BroadcastCapabilities, BroadcastHandle, Feed, Published, Subscription};
use crate::driver::BroadcastUrl;

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["nats"];

/// Broadcast over one NATS connection.
pub struct NatsBroadcast {
    client: async_nats::Client,
    location: String,
    buffer: usize,
    /// The senders of live subscriptions, told when the client reconnected.
    feeds: Arc<Mutex<Vec<broadcast::Sender<Feed>>>>,
}

impl NatsBroadcast {
    /// Opens `nats://[user:password@]host:port?buffer=1024`.
    pub async fn from_url(url: &str) -> Result<BroadcastHandle<Self>> {
        let BroadcastUrl { url: parsed, params, buffer, .. } = BroadcastUrl::parse(url)?;
        params.finish("nats")?;
        let location = format!("{}:{}", parsed.host_str().unwrap_or("localhost"), parsed.port().unwrap_or(4222));
        let feeds: Arc<Mutex<Vec<broadcast::Sender<Feed>>>> = Arc::default();
        let told = Arc::clone(&feeds);
        // The client subscribes again by itself after a reconnect; what was published
        // meanwhile is missed, and the subscriptions are told.
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let told = Arc::clone(&told);
                async move {
                    if matches!(event, async_nats::Event::Connected) {
                        let mut feeds = told.lock().unwrap_or_else(|e| e.into_inner());
                        feeds.retain(|tx| tx.send(Feed::Reconnected).is_ok());
                    }
                }
            })
            .connect(parsed.as_str())
            .await
            .map_err(map_err)?;
        Ok(BroadcastHandle::new(Self { client, location, buffer, feeds }))
    }
}

impl fmt::Debug for NatsBroadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBroadcast").field("location", &self.location).finish_non_exhaustive()
    }
}

impl fmt::Display for NatsBroadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nats({})", self.location)
    }
}

#[async_trait]
impl HealthCheck for NatsBroadcast {
    fn name(&self) -> String {
        "broadcast:nats".into()
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        // A flush is a PING answered by the server's PONG.
        self.client.flush().await.map_err(map_err)?;
        let version = format!("NATS {}", self.client.server_info().version);
        Ok(CheckOutcome::new(started.elapsed()).with_version(version))
    }
}

#[async_trait]
impl Broadcast for NatsBroadcast {
    fn backend(&self) -> &'static str {
        "nats"
    }

    fn capabilities(&self) -> BroadcastCapabilities {
        BroadcastCapabilities::new(self.client.server_info().max_payload, self.buffer)
    }

    async fn publish(&self, channel: &str, payload: Bytes) -> Result<()> {
        self.client.publish(channel.to_owned(), payload).await.map_err(map_err)?;
        // Written to the server before returning, as the other backends do.
        self.client.flush().await.map_err(map_err)
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription> {
        let mut subscriber = self.client.subscribe(pattern.to_owned()).await.map_err(map_err)?;
        self.client.flush().await.map_err(map_err)?;
        let (tx, rx) = broadcast::channel(self.buffer);
        {
            let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
            feeds.retain(|tx| tx.receiver_count() > 0);
            feeds.push(tx.clone());
        }
        let feeder = tokio::spawn(async move {
            while let Some(m) = subscriber.next().await {
                let published = Published { channel: m.subject.as_str().into(), payload: m.payload };
                if tx.send(Feed::Published(published)).is_err() {
                    return;
                }
            }
        });
        crate::driver::subscription(pattern, rx, Some(feeder))
    }

    async fn close(&self) -> Result<()> {
        self.client.drain().await.map_err(map_err)
    }
}

/// Where the event bus keeps its groups on NATS: a JetStream stream per namespace
/// (`PE_{namespace}_GROUPS`) holding the last message per subject
/// `platform.events.{namespace}.groups.{group}`, the group's pattern; every group a
/// queue of platform-queue's JetStream backend on a connection of its own. (A plain
/// stream rather than a key-value bucket: NATS 2.9 answers async-nats' bucket creation
/// with a reply the client cannot read.)
pub struct NatsGroups {
    bus: crate::queued::BusUrl,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    stream: async_nats::jetstream::stream::Stream,
    location: String,
}

impl NatsGroups {
    fn subject(&self, group: &str) -> String {
        format!("platform.events.{}.groups.{group}", self.bus.namespace)
    }

    async fn pattern_of(&self, subject: &str) -> Result<Option<String>> {
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(Some(String::from_utf8_lossy(&m.payload).into_owned())),
            Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }
}

impl fmt::Debug for NatsGroups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsGroups").field("namespace", &self.bus.namespace).finish_non_exhaustive()
    }
}

/// The event bus on NATS JetStream.
pub type NatsBus = crate::queued::QueuedBus<NatsGroups>;

impl NatsBus {
    /// Opens the bus: the URL is the queue's (its parameters apply to every group's
    /// queue) plus `namespace`.
    pub async fn from_url(url: &str) -> Result<crate::BusHandle<Self>> {
        use async_nats::jetstream::{self as js, stream::StorageType};
        let bus = crate::queued::BusUrl::parse(url)?;
        // Opened once to check the queue's parameters and learn its limits.
        let probe = platform_queue::nats::NatsQueue::from_url(&bus.queue_url(&bus.queue_name("_"))).await?;
        let (options, caps) = (probe.driver().options().clone(), platform_queue::Queue::capabilities(&probe));
        platform_queue::Queue::close(&probe).await?;
        let mut server = url::Url::parse(url).map_err(|e| platform_core::Error::invalid_input(e.to_string()))?;
        server.set_query(None);
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(server.as_str())
            .await
            .map_err(map_err)?;
        let js = js::new(client.clone());
        let stream = js
            .get_or_create_stream(js::stream::Config {
                name: format!("PE_{}_GROUPS", bus.namespace),
                subjects: vec![format!("platform.events.{}.groups.*", bus.namespace)],
                max_messages_per_subject: 1,
                storage: StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(map_err)?;
        let location = format!("{}:{}", server.host_str().unwrap_or_default(), server.port().unwrap_or(4222));
        let groups = NatsGroups { bus: bus.clone(), client, js, stream, location };
        Ok(crate::BusHandle::new(Self::new(groups, bus, options, &caps)))
    }
}

#[async_trait]
impl crate::queued::GroupStore for NatsGroups {
    fn backend(&self) -> &'static str {
        "nats"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn registry_ttl(&self) -> Duration {
        crate::queued::SHARED_REGISTRY_TTL
    }

    async fn register(&self, group: &str, pattern: &str) -> Result<(String, bool)> {
        let subject = self.subject(group);
        if let Some(held) = self.pattern_of(&subject).await? {
            return Ok((held, false));
        }
        // Written only if the subject has no message yet: of two racing subscribers
        // one writes, and both read back what it wrote.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        let payload = Bytes::copy_from_slice(pattern.as_bytes());
        let created = match self.js.publish_with_headers(subject.clone(), headers, payload).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        let held = self.pattern_of(&subject).await?;
        let held =
            held.ok_or_else(|| platform_core::Error::unavailable(format!("group {group:?} was not recorded")))?;
        Ok((held, created))
    }

    async fn groups(&self) -> Result<Vec<(String, String)>> {
        let prefix = self.subject("");
        let mut subjects = self.stream.info_with_subjects(format!("{prefix}*")).await.map_err(map_err)?;
        let mut out = Vec::new();
        while let Some(next) = subjects.next().await {
            let (subject, _) = next.map_err(map_err)?;
            if let Some(pattern) = self.pattern_of(&subject).await? {
                out.push((subject[prefix.len()..].to_owned(), pattern));
            }
        }
        Ok(out)
    }

    async fn open_queue(&self, options: platform_queue::QueueOptions) -> Result<Arc<dyn platform_queue::Queue>> {
        let url = self.bus.queue_url(&options.queue);
        Ok(Arc::new(platform_queue::nats::NatsQueue::from_url(&url).await?))
    }

    async fn ping(&self) -> Result<Option<String>> {
        self.client.flush().await.map_err(map_err)?;
        Ok(Some(format!("nats-server {}", self.client.server_info().version)))
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// How long a hub log feed waits for a message before it checks its stream's epoch.
#[cfg(feature = "hub")]
const IDLE_CHECK: Duration = Duration::from_secs(2);

/// The hub's shared history on NATS JetStream (feature `hub`):
/// `nats://host:4222?namespace=app&history=10000`.
///
/// The log is a stream (`PLATFORM_HUB_{namespace}`, file storage, the newest `history`
/// messages kept) on the subjects `platform.hub.{namespace}.{channel}`; an offset is a
/// message's stream sequence, which JetStream gives in order, and each node's feed is an
/// ordered consumer. The epoch is the stream's creation time: a stream deleted and made
/// again starts a new one.
#[cfg(feature = "hub")]
pub struct NatsHubLog {
    js: async_nats::jetstream::Context,
    config: async_nats::jetstream::stream::Config,
    prefix: String,
    location: String,
    /// The epoch as this handle last read it (an append reads it again only when it
    /// had to make the stream).
    epoch: Mutex<String>,
}

#[cfg(feature = "hub")]
impl NatsHubLog {
    /// Opens the log, making its stream when it has none.
    pub async fn from_url(url: &str) -> Result<Self> {
        use async_nats::jetstream::stream;
        let BroadcastUrl { url: parsed, mut params, .. } = BroadcastUrl::parse(url)?;
        let (namespace, history) = crate::hub::log_params(&mut params)?;
        params.finish("nats")?;
        let location = format!("{}:{}", parsed.host_str().unwrap_or("localhost"), parsed.port().unwrap_or(4222));
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(parsed.as_str())
            .await
            .map_err(map_err)?;
        let prefix = format!("platform.hub.{namespace}.");
        let config = stream::Config {
            name: format!("PLATFORM_HUB_{namespace}"),
            subjects: vec![format!("{prefix}>")],
            max_messages: i64::try_from(history).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let log = Self { js: async_nats::jetstream::new(client), config, prefix, location, epoch: Mutex::default() };
        log.state().await?;
        Ok(log)
    }

    /// The stream, made when it is gone.
    async fn stream(&self) -> Result<async_nats::jetstream::stream::Stream> {
        self.js.get_or_create_stream(self.config.clone()).await.map_err(map_err)
    }

    /// The epoch and state of the stream.
    async fn state(&self) -> Result<(String, async_nats::jetstream::stream::State)> {
        let mut stream = self.stream().await?;
        let info = stream.info().await.map_err(map_err)?;
        let epoch = format!("{:x}", info.created.unix_timestamp_nanos());
        self.epoch.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone_from(&epoch);
        Ok((epoch, info.state.clone()))
    }

    /// The entry of a stream message.
    fn entry(&self, seq: u64, subject: &str, payload: Bytes) -> crate::hub::LogEntry {
        crate::hub::LogEntry::new(seq, subject.strip_prefix(&self.prefix).unwrap_or(subject), payload)
    }
}

#[cfg(feature = "hub")]
impl fmt::Debug for NatsHubLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsHubLog").field("location", &self.location).field("stream", &self.config.name).finish()
    }
}

#[cfg(feature = "hub")]
impl fmt::Display for NatsHubLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nats({}/{})", self.location, self.config.name)
    }
}

#[cfg(feature = "hub")]
#[async_trait]
impl crate::hub::HubLog for NatsHubLog {
    fn backend(&self) -> &'static str {
        "nats"
    }

    async fn append(&self, channel: &str, payload: Bytes) -> Result<(String, u64)> {
        let subject = format!("{}{channel}", self.prefix);
        let ack = match self.js.publish(subject.clone(), payload.clone()).await {
            Ok(pending) => pending.await,
            Err(e) => return Err(map_err(e)),
        };
        let ack = match ack {
            Ok(ack) => ack,
            // The stream is gone (deleted): made again, in a new epoch.
            Err(_) => {
                self.state().await?;
                self.js.publish(subject, payload).await.map_err(map_err)?.await.map_err(map_err)?
            }
        };
        let epoch = self.epoch.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        Ok((epoch, ack.sequence))
    }

    async fn read(&self, after: u64, limit: usize) -> Result<crate::hub::LogRead> {
        use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
        let (epoch, state) = self.state().await?;
        let (head, first) = (state.last_sequence, state.first_sequence.max(1));
        let first = if state.messages == 0 { head + 1 } else { first };
        let mut entries = Vec::new();
        let start = after.saturating_add(1).max(first);
        if limit > 0 && start <= head {
            let stream = self.stream().await?;
            let consumer = stream
                .create_consumer(pull::Config {
                    deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
                    ack_policy: AckPolicy::None,
                    inactive_threshold: Duration::from_secs(30),
                    ..Default::default()
                })
                .await
                .map_err(map_err)?;
            let want = usize::try_from(head - start + 1).unwrap_or(usize::MAX).min(limit);
            while entries.len() < want {
                let batch = (want - entries.len()).min(1000);
                let mut got = consumer
                    .fetch()
                    .max_messages(batch)
                    .expires(Duration::from_secs(2))
                    .messages()
                    .await
                    .map_err(map_err)?;
                let before = entries.len();
                while let Some(m) = got.next().await {
                    let m = m.map_err(map_err)?;
                    let seq = m.info().map_err(map_err)?.stream_sequence;
                    entries.push(self.entry(seq, m.subject.as_str(), m.payload.clone()));
                }
                if entries.len() == before {
                    break;
                }
            }
            let _ = stream.delete_consumer(&consumer.cached_info().name).await;
        }
        Ok(crate::hub::LogRead::new(Some(epoch), head, first, entries))
    }

    async fn feed(&self) -> Result<tokio::sync::mpsc::Receiver<crate::hub::LogFeed>> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull};
        let (mut epoch, state) = self.state().await?;
        let mut last = state.last_sequence;
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let (js, config, prefix) = (self.js.clone(), self.config.clone(), self.prefix.clone());
        let open = move |stream: async_nats::jetstream::stream::Stream, from: u64| async move {
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from },
                    ..Default::default()
                })
                .await
                .map_err(map_err)?;
            consumer.messages().await.map_err(map_err)
        };
        let mut messages = open(self.stream().await?, last + 1).await?;
        tokio::spawn(async move {
            loop {
                loop {
                    // Idle for a while: a stream deleted and made again leaves the
                    // ordered consumer waiting on the old one, so the epoch is checked.
                    let m = match tokio::time::timeout(IDLE_CHECK, messages.next()).await {
                        Ok(Some(Ok(m))) => m,
                        Ok(_) => break,
                        Err(_) => match js.get_stream(&config.name).await {
                            Ok(mut stream) => match stream.info().await {
                                Ok(info) if format!("{:x}", info.created.unix_timestamp_nanos()) == epoch => continue,
                                _ => break,
                            },
                            Err(_) => break,
                        },
                    };
                    let Ok(info) = m.info() else { continue };
                    let seq = info.stream_sequence;
                    let channel = m.subject.as_str().strip_prefix(&prefix).unwrap_or(m.subject.as_str());
                    let entry = crate::hub::LogEntry::new(seq, channel, m.payload.clone());
                    if tx.send(crate::hub::LogFeed::Entry(epoch.as_str().into(), entry)).await.is_err() {
                        return;
                    }
                    last = seq;
                }
                // The consumer or the stream is gone: open again where it stopped (from
                // the start of a stream made again), and have the hub read what it missed.
                let mut pause = Duration::from_millis(50);
                messages = loop {
                    if tx.is_closed() {
                        return;
                    }
                    let reopened = async {
                        let mut stream = js.get_or_create_stream(config.clone()).await.map_err(map_err)?;
                        let info = stream.info().await.map_err(map_err)?;
                        let now = format!("{:x}", info.created.unix_timestamp_nanos());
                        if now != epoch {
                            (epoch, last) = (now, 0);
                        }
                        open(stream, last + 1).await
                    };
                    match reopened.await {
                        Ok(m) => break m,
                        Err(e) => {
                            tracing::debug!(error = %e, "hub log feed lost; opening again");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(2));
                        }
                    }
                };
                if tx.send(crate::hub::LogFeed::Resync).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
