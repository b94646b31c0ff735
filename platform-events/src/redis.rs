//! Broadcast over Redis or Valkey pub/sub: `redis://host:6379`, `valkey://host:6379`.
//!
//! A publish is one `PUBLISH`; a subscription is a connection of its own, with
//! `SUBSCRIBE` for a channel name and `PSUBSCRIBE` for a pattern. Redis globs know no
//! segments (`*` crosses dots), so a pattern subscribes to the glob that covers it and
//! the subscription keeps only the channels the pattern matches. Redis pub/sub is
//! at-most-once: a subscriber that is not connected misses what is published, and
//! nothing is stored. A subscription whose connection drops subscribes again on a new
//! one (backing off up to 2 s) and then yields `Received::Reconnected`.
//!
//! Parameters: `buffer` (messages a slow subscription holds before it lags, default
//! 1024). Payloads up to 8 MiB: a subscriber's output buffer on the server is cut at
//! 32 MiB by default, which would drop the connection.

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use platform_core::redis::map_error as map_err;
use platform_core::{CheckOutcome, HealthCheck, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::broadcast;

use crate::broadcast::{Broadcast, BroadcastCapabilities, BroadcastHandle, Feed, Published, Subscription};
use crate::channel::Pattern;
use crate::driver::BroadcastUrl;

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["redis", "valkey"];

/// The largest payload: well under the server's 32 MiB pub/sub output buffer limit.
const MAX_PAYLOAD: usize = 8 << 20;

/// Broadcast over Redis pub/sub.
pub struct RedisBroadcast {
    client: redis::Client,
    conn: ConnectionManager,
    location: String,
    buffer: usize,
}

impl RedisBroadcast {
    /// Opens `redis://[:password@]host:port[/db]?buffer=1024`.
    pub async fn from_url(url: &str) -> Result<BroadcastHandle<Self>> {
        let BroadcastUrl { url: mut parsed, params, buffer, .. } = BroadcastUrl::parse(url)?;
        params.finish("redis")?;
        if parsed.scheme() == "valkey" {
            let raw = parsed.as_str().replacen("valkey://", "redis://", 1);
            parsed = url::Url::parse(&raw).map_err(|e| platform_core::Error::invalid_input(e.to_string()))?;
        }
        let client = redis::Client::open(parsed.as_str()).map_err(map_err)?;
        let location = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(6)
            .set_max_delay(Duration::from_secs(2));
        let conn = client.get_connection_manager_with_config(config).await.map_err(map_err)?;
        Ok(BroadcastHandle::new(Self { client, conn, location, buffer }))
    }
}

/// The Redis glob that covers `pattern`: `*` and `>` become `*` (our segment
/// characters are no glob specials), narrowed again by the pattern itself.
fn glob(pattern: &str) -> String {
    pattern.split('.').map(|s| if s == ">" { "*" } else { s }).collect::<Vec<_>>().join(".")
}

/// A pub/sub connection subscribed to `pattern`: `PSUBSCRIBE` on its glob when it
/// holds a wildcard, `SUBSCRIBE` otherwise. Returns once the server confirmed.
async fn listen(client: &redis::Client, pattern: &str, wildcard: bool) -> Result<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await.map_err(map_err)?;
    if wildcard {
        pubsub.psubscribe(glob(pattern)).await.map_err(map_err)?;
    } else {
        pubsub.subscribe(pattern).await.map_err(map_err)?;
    }
    Ok(pubsub)
}

impl fmt::Debug for RedisBroadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroadcast").field("location", &self.location).finish_non_exhaustive()
    }
}

impl fmt::Display for RedisBroadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis({})", self.location)
    }
}

#[async_trait]
impl HealthCheck for RedisBroadcast {
    fn name(&self) -> String {
        "broadcast:redis".into()
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        let info: String =
            redis::cmd("INFO").arg("server").query_async(&mut self.conn.clone()).await.map_err(map_err)?;
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()));
        let version = match field("valkey_version:") {
            Some(v) => format!("Valkey {v}"),
            None => format!("Redis {}", field("redis_version:").unwrap_or_else(|| "(version not told)".into())),
        };
        Ok(CheckOutcome::new(started.elapsed()).with_version(version))
    }
}

#[async_trait]
impl Broadcast for RedisBroadcast {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn capabilities(&self) -> BroadcastCapabilities {
        BroadcastCapabilities::new(MAX_PAYLOAD, self.buffer)
    }

    async fn publish(&self, channel: &str, payload: Bytes) -> Result<()> {
        let _receivers: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload.as_ref())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription> {
        let wildcard = Pattern::parse(pattern)?.is_wildcard();
        let mut pubsub = listen(&self.client, pattern, wildcard).await?;
        let (tx, rx) = broadcast::channel(self.buffer);
        let (client, owned) = (self.client.clone(), pattern.to_owned());
        let feeder = tokio::spawn(async move {
            loop {
                let mut messages = pubsub.into_on_message();
                while let Some(m) = messages.next().await {
                    let published = Published {
                        channel: m.get_channel_name().into(),
                        payload: Bytes::copy_from_slice(m.get_payload_bytes()),
                    };
                    if tx.send(Feed::Published(published)).is_err() {
                        return;
                    }
                }
                // The connection is gone: subscribe again, then say that a gap was.
                let mut pause = Duration::from_millis(50);
                pubsub = loop {
                    if tx.receiver_count() == 0 {
                        return;
                    }
                    match listen(&client, &owned, wildcard).await {
                        Ok(p) => break p,
                        Err(e) => {
                            tracing::debug!(error = %e, "redis subscription lost; subscribing again");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(2));
                        }
                    }
                };
                if tx.send(Feed::Reconnected).is_err() {
                    return;
                }
            }
        });
        crate::driver::subscription(pattern, rx, Some(feeder))
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Where the event bus keeps its groups on Redis (a hash per namespace,
/// `platform:events:{namespace}:groups`), every group a queue of platform-queue's
/// Redis backend on a connection of its own.
pub struct RedisGroups {
    namespace: String,
    key: String,
    bus: crate::queued::BusUrl,
    conn: ConnectionManager,
    location: String,
}

impl fmt::Debug for RedisGroups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisGroups").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

/// The event bus on Redis or Valkey.
pub type RedisBus = crate::queued::QueuedBus<RedisGroups>;

impl RedisBus {
    /// Opens the bus: the URL is the queue's (its parameters apply to every group's
    /// queue) plus `namespace`.
    pub async fn from_url(url: &str) -> Result<crate::BusHandle<Self>> {
        let bus = crate::queued::BusUrl::parse(url)?;
        // Opened once to check the queue's parameters and learn its limits.
        let probe = platform_queue::redis::RedisQueue::from_url(&bus.queue_url(&bus.queue_name("_"))).await?;
        let (options, caps) = (probe.driver().options().clone(), platform_queue::Queue::capabilities(&probe));
        platform_queue::Queue::close(&probe).await?;
        let mut server = url::Url::parse(url).map_err(|e| platform_core::Error::invalid_input(e.to_string()))?;
        server.set_query(None);
        if server.scheme() == "valkey" {
            let _ = server.set_scheme("redis");
        }
        let client = redis::Client::open(server.as_str()).map_err(map_err)?;
        let config = ConnectionManagerConfig::new().set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config).await.map_err(map_err)?;
        let location = format!("{}:{}", server.host_str().unwrap_or_default(), server.port().unwrap_or(6379));
        let key = format!("platform:events:{}:groups", bus.namespace);
        let groups = RedisGroups { namespace: bus.namespace.clone(), key, bus: bus.clone(), conn, location };
        Ok(crate::BusHandle::new(Self::new(groups, bus, options, &caps)))
    }
}

#[async_trait]
impl crate::queued::GroupStore for RedisGroups {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn registry_ttl(&self) -> Duration {
        crate::queued::SHARED_REGISTRY_TTL
    }

    async fn register(&self, group: &str, pattern: &str) -> Result<(String, bool)> {
        let mut conn = self.conn.clone();
        let (created, held): (bool, String) = redis::pipe()
            .atomic()
            .hset_nx(&self.key, group, pattern)
            .hget(&self.key, group)
            .query_async(&mut conn)
            .await
            .map_err(map_err)?;
        Ok((held, created))
    }

    async fn groups(&self) -> Result<Vec<(String, String)>> {
        let mut conn = self.conn.clone();
        let all: std::collections::HashMap<String, String> =
            redis::cmd("HGETALL").arg(&self.key).query_async(&mut conn).await.map_err(map_err)?;
        Ok(all.into_iter().collect())
    }

    async fn open_queue(
        &self,
        options: platform_queue::QueueOptions,
    ) -> Result<std::sync::Arc<dyn platform_queue::Queue>> {
        let url = self.bus.queue_url(&options.queue);
        Ok(std::sync::Arc::new(platform_queue::redis::RedisQueue::from_url(&url).await?))
    }

    async fn ping(&self) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await.map_err(map_err)?;
        Ok(info.lines().find_map(|l| l.strip_prefix("redis_version:")).map(|v| format!("redis {v}")))
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_cover_their_patterns() {
        assert_eq!(glob("jobs.*.events"), "jobs.*.events");
        assert_eq!(glob("jobs.>"), "jobs.*");
        assert_eq!(glob(">"), "*");
    }
}
