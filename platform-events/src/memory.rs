//! In-process broadcast: `memory://name`.
//!
//! Handles opened with the same name in one process share their channels; different
//! names never meet. Parameters: `buffer` (messages a slow subscription holds before
//! it lags, default 1024) and `max_payload` (bytes, default 1 MiB).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use platform_core::{CheckOutcome, HealthCheck, Result};
use tokio::sync::broadcast;

use crate::broadcast::{Broadcast, BroadcastCapabilities, BroadcastHandle, Feed, Published, Subscription};
use crate::driver::BroadcastUrl;

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["memory"];

const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// The live instances by name: a handle keeps its instance alive, the registry only
/// finds it.
static INSTANCES: LazyLock<Mutex<HashMap<String, Weak<Instance>>>> = LazyLock::new(Mutex::default);

struct Instance {
    tx: broadcast::Sender<Feed>,
}

/// In-process broadcast over a `tokio::sync::broadcast` channel per name.
pub struct MemoryBroadcast {
    name: String,
    instance: Arc<Instance>,
    capabilities: BroadcastCapabilities,
}

impl MemoryBroadcast {
    /// Opens `memory://name?buffer=1024&max_payload=1048576`.
    pub fn from_url(url: &str) -> Result<BroadcastHandle<Self>> {
        let BroadcastUrl { url: parsed, mut params, buffer, .. } = BroadcastUrl::parse(url)?;
        let max_payload = params.take_number::<usize>("max_payload")?.unwrap_or(DEFAULT_MAX_PAYLOAD);
        params.finish("memory")?;
        let name = format!("{}{}", parsed.host_str().unwrap_or_default(), parsed.path());
        let mut instances = INSTANCES.lock().unwrap_or_else(|e| e.into_inner());
        instances.retain(|_, i| i.strong_count() > 0);
        let instance = match instances.get(&name).and_then(Weak::upgrade) {
            Some(i) => i,
            None => {
                let i = Arc::new(Instance { tx: broadcast::channel(buffer).0 });
                instances.insert(name.clone(), Arc::downgrade(&i));
                i
            }
        };
        let capabilities = BroadcastCapabilities::new(max_payload, buffer);
        Ok(BroadcastHandle::new(Self { name, instance, capabilities }))
    }
}

impl fmt::Debug for MemoryBroadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroadcast").field("name", &self.name).finish_non_exhaustive()
    }
}

impl fmt::Display for MemoryBroadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memory({})", self.name)
    }
}

#[async_trait]
impl HealthCheck for MemoryBroadcast {
    fn name(&self) -> String {
        "broadcast:memory".into()
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        Ok(CheckOutcome::new(started.elapsed())
            .with_version(format!("in-process ({} subscribers)", self.instance.tx.receiver_count())))
    }
}

#[async_trait]
impl Broadcast for MemoryBroadcast {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> BroadcastCapabilities {
        self.capabilities.clone()
    }

    async fn publish(&self, channel: &str, payload: Bytes) -> Result<()> {
        // No subscriber is no error: nobody was there to miss it.
        let _ = self.instance.tx.send(Feed::Published(Published { channel: Arc::from(channel), payload }));
        Ok(())
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription> {
        crate::driver::subscription(pattern, self.instance.tx.subscribe(), None)
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// The groups of every in-process event bus, by namespace.
static GROUPS: LazyLock<Mutex<HashMap<String, HashMap<String, String>>>> = LazyLock::new(Mutex::default);

/// The in-process event bus: `memory://namespace`, groups kept for the life of the
/// process, each group an in-process queue of platform-queue (`memory://` queue
/// parameters: `visibility_timeout`, `max_attempts`, `dedup_window`).
#[derive(Debug)]
pub struct MemoryGroups {
    namespace: String,
}

/// The in-process event bus.
pub type MemoryBus = crate::queued::QueuedBus<MemoryGroups>;

impl MemoryBus {
    /// Opens `memory://namespace?…` (`namespace=` wins over the host).
    pub fn from_url(url: &str) -> Result<crate::BusHandle<Self>> {
        let mut bus = crate::queued::BusUrl::parse(url)?;
        if let Some(host) = bus.host().filter(|_| !bus.namespace_given).map(str::to_owned) {
            crate::bus::validate_group(&host)?;
            bus.namespace = host;
        }
        // The queue's own parameters, checked by the queue itself.
        let probe = platform_queue::memory::MemoryQueue::from_url(&bus.queue_url(&bus.queue_name("_")))?;
        let (base, caps) = (probe.driver().options().clone(), platform_queue::Queue::capabilities(&probe));
        let groups = MemoryGroups { namespace: bus.namespace.clone() };
        Ok(crate::BusHandle::new(Self::new(groups, bus, base, &caps)))
    }
}

#[async_trait]
impl crate::queued::GroupStore for MemoryGroups {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn location(&self) -> String {
        "in process".to_owned()
    }

    async fn register(&self, group: &str, pattern: &str) -> Result<(String, bool)> {
        let mut all = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
        let groups = all.entry(self.namespace.clone()).or_default();
        let created = !groups.contains_key(group);
        Ok((groups.entry(group.to_owned()).or_insert_with(|| pattern.to_owned()).clone(), created))
    }

    async fn groups(&self) -> Result<Vec<(String, String)>> {
        let all = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
        let groups = all.get(&self.namespace).map(|g| g.iter().map(|(a, b)| (a.clone(), b.clone())).collect());
        Ok(groups.unwrap_or_default())
    }

    async fn open_queue(&self, options: platform_queue::QueueOptions) -> Result<Arc<dyn platform_queue::Queue>> {
        Ok(Arc::new(platform_queue::memory::MemoryQueue::with_options(options)?))
    }

    async fn ping(&self) -> Result<Option<String>> {
        Ok(Some("in process".to_owned()))
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
