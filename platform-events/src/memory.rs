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
