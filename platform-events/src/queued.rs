//! The event bus over platform-queue (the pg-boss model): every group is a queue, and a
//! publish writes each event into the queue of every group whose pattern matches its
//! topic. Leases, attempts, nack delays, dead letters with their history, redrive and
//! the `Worker` are the queue's, proven by its suite; what this layer adds is the
//! registry of groups and the fan-out.

use std::collections::HashMap;
use std::fmt::{self, Debug, Display};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use platform_core::{CheckOutcome, Envelope, Error, HealthCheck, Result};
use platform_queue::{Message, Queue, QueueOptions};

use crate::bus::{
    BusCapabilities, CORRELATION_HEADER, EventBus, Group, KEY_EXTENSION, KEY_HEADER, TOPIC_HEADER, TRACEPARENT_HEADER,
    TYPE_HEADER, validate_group,
};
use crate::channel::Pattern;

/// Where a queue-backed bus keeps its groups, and how it reaches a group's queue.
#[async_trait]
pub trait GroupStore: Debug + Send + Sync + 'static {
    /// The backend's name.
    fn backend(&self) -> &'static str;

    /// Where it lives, for `Display`.
    fn location(&self) -> String;

    /// Records `group` following `pattern` unless it exists; returns the pattern the
    /// group follows now (the one given, or the one it was created with) and whether
    /// this call created it.
    async fn register(&self, group: &str, pattern: &str) -> Result<(String, bool)>;

    /// How long a publisher may use the groups it read before reading them again:
    /// zero (the default) reads them on every publish. With more, a new group's
    /// `subscribe` returns only after this long, so every publish that starts after it
    /// returned, in any process, reads the groups afresh and reaches it.
    fn registry_ttl(&self) -> Duration {
        Duration::ZERO
    }

    /// Every group and the pattern it follows.
    async fn groups(&self) -> Result<Vec<(String, String)>>;

    /// Opens the queue named `queue` with the bus's queue options.
    async fn open_queue(&self, options: QueueOptions) -> Result<Arc<dyn Queue>>;

    /// Whether the broker routes a published event to the matching groups' queues
    /// itself (a topic exchange): publishes then go to [`route`](Self::route) and never
    /// read the groups. By default the bus copies each event into each group's queue.
    fn routes(&self) -> bool {
        false
    }

    /// Publishes `messages` on `topic` for the broker to route (see [`routes`](Self::routes)),
    /// returning once it has them.
    async fn route(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        let _ = (topic, messages);
        Err(Error::unsupported(self.backend(), "routing events by the broker"))
    }

    /// Called by `subscribe` once the group's queue (`queue`) is open: where the broker
    /// routes, ties the queue to the pattern. Repeated on every `subscribe`.
    async fn attach(&self, group: &str, pattern: &str, queue: &str) -> Result<()> {
        let _ = (group, pattern, queue);
        Ok(())
    }

    /// A real round trip; the server version when known.
    async fn ping(&self) -> Result<Option<String>>;

    /// Releases connections.
    async fn close(&self) -> Result<()>;
}

/// A bus URL as the queue-backed backends read it: `namespace` (default `events`),
/// which scopes group names and their queues (`{namespace}.{group}`), taken out; the
/// queue's own parameters (`visibility_timeout`, `max_attempts`, `dedup_window`, the
/// backend's) left for platform-queue, which rejects what it does not know.
#[derive(Debug, Clone)]
pub struct BusUrl {
    /// The namespace.
    pub namespace: String,
    /// Whether the URL named it (`namespace=`), or it is the default.
    pub namespace_given: bool,
    url: url::Url,
}

impl BusUrl {
    /// Parses `raw`; `queue` and `dead_letter` are refused (a group names its queues).
    pub fn parse(raw: &str) -> Result<Self> {
        let mut url = url::Url::parse(raw).map_err(|e| {
            let shown = platform_core::mask_url(raw);
            Error::invalid_input(format!("event bus url {shown:?}: {e}"))
                .with_op("open")
                .with_detail("url", e.to_string())
        })?;
        let mut namespace = None;
        let mut rest = Vec::new();
        for (k, v) in url.query_pairs() {
            match &*k {
                "namespace" => namespace = Some(v.into_owned()),
                "queue" | "dead_letter" => {
                    return Err(platform_core::config::url_error(
                        "event bus",
                        &k,
                        "is set per group: the bus names each group's queue and dead letters",
                    ));
                }
                _ => rest.push((k.into_owned(), v.into_owned())),
            }
        }
        let namespace_given = namespace.is_some();
        let namespace = namespace.unwrap_or_else(|| "events".to_owned());
        validate_group(&namespace).map_err(|_| {
            platform_core::config::url_error("event bus", "namespace", "must be letters, digits, '-' or '_'")
        })?;
        url.set_query(None);
        if !rest.is_empty() {
            url.query_pairs_mut().extend_pairs(rest);
        }
        Ok(Self { namespace, namespace_given, url })
    }

    /// The queue name of `group`.
    pub fn queue_name(&self, group: &str) -> String {
        format!("{}.{group}", self.namespace)
    }

    /// The URL's host, for backends whose host is a name (`memory://name`).
    pub fn host(&self) -> Option<&str> {
        self.url.host_str().filter(|h| !h.is_empty())
    }

    /// The queue URL for `queue`: the bus URL with `queue=` added.
    pub fn queue_url(&self, queue: &str) -> String {
        let mut url = self.url.clone();
        url.query_pairs_mut().append_pair("queue", queue);
        url.to_string()
    }
}

/// The options of queue `name`, the rest as in `base`.
pub fn queue_options(base: &QueueOptions, name: &str) -> QueueOptions {
    let mut options = base.clone();
    options.queue = name.to_owned();
    options.dead_letter = format!("{name}.dlq");
    options
}

/// An [`EventBus`] over a [`GroupStore`]: wrap it in [`BusHandle`](crate::BusHandle).
pub struct QueuedBus<G> {
    store: G,
    url: BusUrl,
    base: QueueOptions,
    caps: BusCapabilities,
    queues: Mutex<HashMap<String, Arc<dyn Queue>>>,
    /// The groups as last read, and when (see [`GroupStore::registry_ttl`]).
    registry: Mutex<Option<(Instant, Groups)>>,
}

/// Groups and the patterns they follow.
type Groups = Arc<[(String, Pattern)]>;

/// How long the buses whose groups live on a server reuse the groups they read: one
/// round trip per publish saved, one second more for a new group's first `subscribe`.
pub const SHARED_REGISTRY_TTL: Duration = Duration::from_secs(1);

impl<G: GroupStore> QueuedBus<G> {
    /// A bus over `store`; `base` is the queue options every group's queue starts from
    /// and `queue_caps` what the queues can carry.
    pub fn new(store: G, url: BusUrl, base: QueueOptions, queue_caps: &platform_queue::Capabilities) -> Self {
        let caps = BusCapabilities {
            ordered_per_key: queue_caps.ordered_per_key,
            deduplicates: queue_caps.dedup,
            max_event_bytes: queue_caps.max_body_bytes,
            max_batch: queue_caps.max_batch,
        };
        Self { store, url, base, caps, queues: Mutex::default(), registry: Mutex::default() }
    }

    /// The group store.
    pub fn store(&self) -> &G {
        &self.store
    }

    /// The groups and their patterns: as last read while that is fresh enough.
    async fn groups(&self) -> Result<Groups> {
        let ttl = self.store.registry_ttl();
        if let Some((at, groups)) = &*self.registry.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < ttl
        {
            return Ok(Arc::clone(groups));
        }
        let read_at = Instant::now();
        let groups: Groups = self
            .store
            .groups()
            .await?
            .into_iter()
            .filter_map(|(group, pattern)| Pattern::parse(&pattern).ok().map(|p| (group, p)))
            .collect();
        *self.registry.lock().unwrap_or_else(PoisonError::into_inner) = Some((read_at, Arc::clone(&groups)));
        Ok(groups)
    }

    async fn queue(&self, group: &str) -> Result<Arc<dyn Queue>> {
        let name = self.url.queue_name(group);
        if let Some(q) = self.queues.lock().unwrap_or_else(PoisonError::into_inner).get(&name) {
            return Ok(Arc::clone(q));
        }
        let opened = self.store.open_queue(queue_options(&self.base, &name)).await?;
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(Arc::clone(queues.entry(name).or_insert(opened)))
    }
}

/// The queue message that carries `event` published on `topic`, its `event_id` the
/// dedup key where the queue has dedup, its key the order key where the queue keeps
/// order.
fn encode(topic: &str, event: &Envelope, caps: &BusCapabilities) -> Result<Message> {
    let mut m = Message::new(event.to_json()?)
        .with_header(TOPIC_HEADER, topic)
        .with_header(TYPE_HEADER, event.full_type())
        .with_header(CORRELATION_HEADER, event.correlation_id.to_string());
    if caps.deduplicates {
        m = m.with_dedup_key(event.event_id.to_string());
    }
    if let Some(tp) = &event.traceparent {
        m = m.with_header(TRACEPARENT_HEADER, tp.clone());
    }
    if let Some(key) = event.extensions.get(KEY_EXTENSION).and_then(|k| k.as_str()) {
        m = m.with_header(KEY_HEADER, key);
        if caps.ordered_per_key {
            m = m.with_order_key(key);
        }
    }
    Ok(m)
}

impl<G: GroupStore> Debug for QueuedBus<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedBus").field("store", &self.store).field("namespace", &self.url.namespace).finish()
    }
}

impl<G: GroupStore> Display for QueuedBus<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventBus({}:{}/{})", self.store.backend(), self.store.location(), self.url.namespace)
    }
}

#[async_trait]
impl<G: GroupStore> HealthCheck for QueuedBus<G> {
    fn name(&self) -> String {
        format!("events:{}", self.store.backend())
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        let version = self.store.ping().await?;
        let outcome = CheckOutcome::new(started.elapsed());
        Ok(match version {
            Some(v) => outcome.with_version(v),
            None => outcome,
        })
    }
}

#[async_trait]
impl<G: GroupStore> EventBus for QueuedBus<G> {
    fn backend(&self) -> &'static str {
        self.store.backend()
    }

    fn capabilities(&self) -> BusCapabilities {
        self.caps.clone()
    }

    async fn publish(&self, topic: &str, events: Vec<Envelope>) -> Result<()> {
        let messages = events.iter().map(|e| encode(topic, e, &self.caps)).collect::<Result<Vec<_>>>()?;
        if let Some(big) = messages.iter().find(|m| m.body.len() > self.caps.max_event_bytes) {
            let why = format!(
                "is {} bytes encoded, over the {} this backend carries",
                big.body.len(),
                self.caps.max_event_bytes
            );
            return Err(Error::invalid_input(format!("an event {why}")).with_detail("events", why));
        }
        if self.store.routes() {
            return self.store.route(topic, messages).await;
        }
        let mut targets = Vec::new();
        for (group, pattern) in self.groups().await?.iter() {
            if pattern.matches(topic) {
                targets.push(self.queue(group).await?);
            }
        }
        let sends = targets.iter().map(|q| q.send_batch(messages.clone()));
        futures::future::try_join_all(sends).await.map(drop)
    }

    async fn subscribe(&self, pattern: &str, group: &str) -> Result<Group> {
        let (held, created) = self.store.register(group, pattern).await?;
        if created {
            // This process sees it at once; the others once their groups are stale.
            *self.registry.lock().unwrap_or_else(PoisonError::into_inner) = None;
            tokio::time::sleep(self.store.registry_ttl()).await;
        }
        if held != pattern {
            let why = format!("follows {held:?} already");
            return Err(Error::conflict(format!("group {group:?} {why}, not {pattern:?}")).with_detail("group", why));
        }
        let queue = self.queue(group).await?;
        self.store.attach(group, pattern, queue.queue_name()).await?;
        Ok(Group::new(group, pattern, queue))
    }

    async fn close(&self) -> Result<()> {
        let queues: Vec<_> =
            self.queues.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, q)| q).collect();
        for q in queues {
            q.close().await?;
        }
        self.store.close().await
    }
}
