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
