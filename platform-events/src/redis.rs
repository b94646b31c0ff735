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
        let BroadcastUrl { url: parsed, params, buffer, .. } = BroadcastUrl::parse(url)?;
        params.finish("redis")?;
        let (client, conn, location) = connect(parsed).await?;
        Ok(BroadcastHandle::new(Self { client, conn, location, buffer }))
    }
}

/// A client, a connection manager and the address, for a URL whose parameters were
/// taken (`valkey://` read as `redis://`).
async fn connect(mut parsed: url::Url) -> Result<(redis::Client, ConnectionManager, String)> {
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
    Ok((client, conn, location))
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

/// Appends one event: the epoch (made when missing, starting the log again), the next
/// offset, the stream entry with that offset as its id, and the feed message, in one
/// atomic step, so feeds hear entries in offset order.
#[cfg(feature = "hub")]
const LOG_APPEND: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
local offset = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], offset .. '-0', 'c', ARGV[1], 'p', ARGV[2])
redis.call('PUBLISH', KEYS[4], epoch .. '\n' .. offset .. '\n' .. ARGV[1] .. '\n' .. ARGV[2])
return {epoch, offset}
";

/// Reads the epoch, the head, the oldest offset kept and up to `ARGV[2]` entries from
/// offset `ARGV[1]` on, flattened: epoch (nil for none), head, first, then offset,
/// channel, payload for each entry.
#[cfg(feature = "hub")]
const LOG_READ: &str = r"
local epoch = redis.call('GET', KEYS[1])
local head = tonumber(redis.call('GET', KEYS[2]) or '0')
local first = head + 1
local oldest = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
if #oldest > 0 then first = tonumber(string.match(oldest[1][1], '^(%d+)')) end
local out = {epoch or false, head, first}
if tonumber(ARGV[2]) > 0 then
  for _, e in ipairs(redis.call('XRANGE', KEYS[3], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])) do
    table.insert(out, tonumber(string.match(e[1], '^(%d+)')))
    table.insert(out, e[2][2])
    table.insert(out, e[2][4])
  end
end
return out
";

/// The hub's shared history on Redis or Valkey (feature `hub`):
/// `redis://host:6379?namespace=app&history=10000`.
///
/// The log is a stream (`platform:hub:{namespace}:log`, trimmed to about `history`
/// entries) whose ids are the offsets, a counter and an epoch beside it; a Lua script
/// appends and publishes on `platform:hub:{namespace}:feed` in one step, so every node
/// hears the entries in offset order. A flushed server loses the epoch: the next append
/// makes a new one and offsets start again, so no resume claims a history it lost. Keep
/// the history with AOF for it to outlive a restart.
#[cfg(feature = "hub")]
pub struct RedisHubLog {
    client: redis::Client,
    conn: ConnectionManager,
    keys: [String; 4],
    history: usize,
    location: String,
    append: redis::Script,
    read: redis::Script,
}

#[cfg(feature = "hub")]
impl RedisHubLog {
    /// Opens the log (its epoch made when it has none).
    pub async fn from_url(url: &str) -> Result<Self> {
        let BroadcastUrl { url: parsed, mut params, .. } = BroadcastUrl::parse(url)?;
        let (namespace, history) = crate::hub::log_params(&mut params)?;
        params.finish("redis")?;
        let (client, conn, location) = connect(parsed).await?;
        let keys = ["epoch", "seq", "log", "feed"].map(|k| format!("platform:hub:{namespace}:{k}"));
        let log = Self {
            client,
            conn,
            keys,
            history,
            location,
            append: redis::Script::new(LOG_APPEND),
            read: redis::Script::new(LOG_READ),
        };
        let _: Option<String> = redis::cmd("SET")
            .arg(&log.keys[0])
            .arg(uuid::Uuid::new_v4().simple().to_string()[..12].to_owned())
            .arg("NX")
            .query_async(&mut log.conn.clone())
            .await
            .map_err(map_err)?;
        Ok(log)
    }
}

#[cfg(feature = "hub")]
impl fmt::Debug for RedisHubLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisHubLog").field("location", &self.location).field("key", &self.keys[2]).finish()
    }
}

#[cfg(feature = "hub")]
impl fmt::Display for RedisHubLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis({}/{})", self.location, self.keys[2])
    }
}

/// A value of the read script's answer.
#[cfg(feature = "hub")]
fn parse<T: redis::FromRedisValue>(v: &redis::Value) -> Result<T> {
    T::from_redis_value_ref(v).map_err(|e| platform_core::Error::internal(format!("the hub log's read answered {e}")))
}

/// A feed message: `epoch \n offset \n channel \n payload`.
#[cfg(feature = "hub")]
fn parse_feed(raw: &[u8]) -> Option<crate::hub::LogFeed> {
    let mut parts = raw.splitn(4, |b| *b == b'\n');
    let epoch = std::str::from_utf8(parts.next()?).ok()?;
    let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let channel = std::str::from_utf8(parts.next()?).ok()?;
    let payload = Bytes::copy_from_slice(parts.next()?);
    Some(crate::hub::LogFeed::Entry(epoch.into(), crate::hub::LogEntry::new(offset, channel, payload)))
}

#[cfg(feature = "hub")]
#[async_trait]
impl crate::hub::HubLog for RedisHubLog {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn append(&self, channel: &str, payload: Bytes) -> Result<(String, u64)> {
        let fresh = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let mut invocation = self.append.prepare_invoke();
        for k in &self.keys {
            invocation.key(k);
        }
        invocation.arg(channel).arg(payload.as_ref()).arg(self.history).arg(fresh);
        invocation.invoke_async(&mut self.conn.clone()).await.map_err(map_err)
    }

    async fn read(&self, after: u64, limit: usize) -> Result<crate::hub::LogRead> {
        let mut invocation = self.read.prepare_invoke();
        for k in &self.keys[..3] {
            invocation.key(k);
        }
        invocation.arg(after.saturating_add(1)).arg(limit);
        let values: Vec<redis::Value> = invocation.invoke_async(&mut self.conn.clone()).await.map_err(map_err)?;
        let int = |v: &redis::Value| -> Result<u64> { parse(v) };
        let bytes = |v: &redis::Value| -> Result<Vec<u8>> { parse(v) };
        let [epoch, head, first, rest @ ..] = values.as_slice() else {
            return Err(platform_core::Error::internal("the hub log's read script answered short"));
        };
        let epoch: Option<String> = match epoch {
            redis::Value::Nil => None,
            v => Some(parse(v)?),
        };
        let mut entries = Vec::with_capacity(rest.len() / 3);
        for e in rest.chunks_exact(3) {
            let channel = String::from_utf8(bytes(&e[1])?).unwrap_or_default();
            entries.push(crate::hub::LogEntry::new(int(&e[0])?, &channel, Bytes::from(bytes(&e[2])?)));
        }
        Ok(crate::hub::LogRead::new(epoch, int(head)?, int(first)?, entries))
    }

    async fn feed(&self) -> Result<tokio::sync::mpsc::Receiver<crate::hub::LogFeed>> {
        let channel = self.keys[3].clone();
        let mut pubsub = listen(&self.client, &channel, false).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let client = self.client.clone();
        tokio::spawn(async move {
            loop {
                let mut messages = pubsub.into_on_message();
                while let Some(m) = messages.next().await {
                    let Some(item) = parse_feed(m.get_payload_bytes()) else { continue };
                    // Waiting here leaves the rest on the server; past its buffer it
                    // drops the connection, and the resync below reads the log.
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
                let mut pause = Duration::from_millis(50);
                pubsub = loop {
                    if tx.is_closed() {
                        return;
                    }
                    match listen(&client, &channel, false).await {
                        Ok(p) => break p,
                        Err(e) => {
                            tracing::debug!(error = %e, "hub log feed lost; subscribing again");
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
