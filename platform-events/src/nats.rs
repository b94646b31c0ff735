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
