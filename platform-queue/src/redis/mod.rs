//! Redis and Valkey queues: `redis://host:6379/0?queue=jobs`.
//!
//! - [x] leases, attempts, nack with delay, extend, release
//! - [x] dead letters and redrive, delay, dedup (`SET NX PX`), atomic batches
//! - [x] durable as far as the server persists (turn on AOF; the queue warns at open
//!   when `maxmemory-policy` can evict keys)
//! - [ ] ~~Redis Cluster~~: dead-lettering moves messages between queues, which needs
//!   one node
//!
//! Layout: a message is one list entry that carries everything about it
//! (`attempts:first failure:id length:headers length:` then id, headers and body), so
//! no operation on the hot path looks a message up by id or copies its body through a
//! script. Per queue `platform:queue:{NAME}`:
//!
//! - `…:ready`, a list of the messages visible now, oldest first;
//! - `…:later`, a sorted set of delayed messages scored by when they become visible;
//! - `…:rcv:{TOKEN}`, one list per receive: a claim is one `MULTI`/`EXEC` of `LMOVE`s
//!   from `…:ready` into it, plus the receive's lease end in `…:leases`, a sorted set
//!   of tokens;
//! - `…:done:{TOKEN}`, the ids of a receive settled one by one, until the whole receive
//!   is settled and its keys go;
//! - `…:rcv:{TOKEN}/{ID}`, a receive of its own for a delivery whose lease was extended
//!   apart from its batch.
//!
//! The token fences: a holder whose lease ran out finds its token gone from `…:leases`.
//! Due delays and lapsed receives are moved back to `…:ready` (attempts counted, first
//! failure set) by a script that a claim runs only when the first entry of either
//! sorted set is due, which a claim asks in the same `MULTI` (at most every 20 ms per
//! handle). A send is one `RPUSH` (a `MULTI` when some messages are delayed); a send
//! with dedup keys, an ack and everything conditional are Lua scripts, atomic on the
//! server. A whole receive
//! acked together costs the server a handful of commands whatever its size. An entry
//! another client pushed onto `…:ready` in another shape is delivered as it is, its
//! bytes the body. Needs Redis 6.2 or later (`LMOVE`, `SMISMEMBER`), or Valkey.
//!
//! Waiting receives wake when a message becomes visible: every send, release, dead
//! letter, redrive and moved-back delay or lapsed lease publishes how many became
//! visible on `platform:queue:{NAME}:wake`, and each queue handle keeps one subscriber
//! connection on its queue's channel (opened by the first receive that waits), which
//! wakes that many waiting receives. Delays and lease expiries are found by polling,
//! at most every 200 ms, and so is everything when the server refuses pub/sub (an ACL
//! user without channel rights: announcing is best effort and never fails the
//! operation).
//!
//! URL: `redis://[user:password@]host[:port][/db]`, `valkey://` as an alias, plus the
//! common parameters and `response_timeout` (default 10s). TLS is not compiled in:
//! `rediss://` and `valkeys://` are refused with `Unsupported`.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use platform_core::{Error, Result};
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Notify;

mod entry;
mod scripts;

use self::entry::{decode_claim, entry, message_of, prefix};
use self::scripts::{ACK, ACK_MANY, EXTEND, INSERT, MAINTAIN, MOVE, REDRIVE, RELEASE};

use crate::Headers;
use crate::QueueHandle;
use crate::lease::{Claimed, Lease, LeaseStore, LeasedQueue, NewMessage, Release, StoredMessage};
use crate::message::encode_headers;
use crate::options::QueueUrl;

/// The longest a handle's claims go without asking whether a delay or a lease is due.
const PROBE_EVERY_MS: i64 = 20;

/// The most receivers one announcement wakes.
const MAX_WOKEN: usize = 64;

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["redis", "valkey"];

/// A queue in Redis or Valkey.
pub type RedisQueue = LeasedQueue<RedisStore>;

/// Maps a Redis error onto the portable kinds.
pub(crate) fn map_err(e: redis::RedisError) -> Error {
    platform_core::redis::map_error(e)
}

/// The store behind [`RedisQueue`].
pub struct RedisStore {
    conn: ConnectionManager,
    location: String,
    client: redis::Client,
    /// The channel this handle's queue announces visible messages on.
    wake_channel: String,
    wake: Arc<Notify>,
    listener: OnceLock<tokio::task::JoinHandle<()>>,
    /// The listener is subscribed: a send made now wakes a waiting receive.
    listening: Arc<std::sync::atomic::AtomicBool>,
    /// How many messages the last claim left visible. A claim's first round moves no
    /// more than this (at least one), so that a claim of 100 from a queue of 3 does not
    /// run 97 moves that find nothing; when that was too few, it learns the true length
    /// and moves the rest in a second round.
    ready_hint: AtomicUsize,
    /// When this handle's claims last asked whether a delay or a lease is due (ms).
    probed_at: AtomicI64,
}

impl RedisStore {
    /// Whether this handle's wake subscription is live: a send wakes its waiting
    /// receives at once. It starts with the first receive that waits; until then, and
    /// while the server refuses or drops it, receives poll.
    pub fn wakes_live(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Starts, once, the task that turns messages on the wake channel into wake-ups; it
    /// reconnects on its own, and wakes every waiter after a gap in which it may have
    /// missed one.
    fn ensure_listener(&self) {
        if self.listener.get().is_some() {
            return;
        }
        let (client, channel) = (self.client.clone(), self.wake_channel.clone());
        let wake = Arc::downgrade(&self.wake);
        let listening = Arc::clone(&self.listening);
        self.listener.get_or_init(|| {
            tokio::spawn(async move {
                // A server that refuses the subscription (an ACL user without channel
                // rights) is asked again less and less often; receives poll meanwhile.
                let mut retry = Duration::from_secs(1);
                loop {
                    let subscribed = match client.get_async_pubsub().await {
                        Ok(mut pubsub) => pubsub.subscribe(&channel).await.map(|()| pubsub),
                        Err(e) => Err(e),
                    };
                    match subscribed {
                        Ok(pubsub) => {
                            retry = Duration::from_secs(1);
                            listening.store(true, Ordering::Relaxed);
                            let mut messages = pubsub.into_on_message();
                            while let Some(message) = messages.next().await {
                                let Some(w) = wake.upgrade() else { return };
                                // A send says how many messages it added: that many
                                // receivers wake, not every one that waits (they would
                                // all run a claim, and all but one find nothing).
                                match message.get_payload::<String>().ok().and_then(|p| p.parse::<usize>().ok()) {
                                    Some(added) => (0..added.min(MAX_WOKEN)).for_each(|_| w.notify_one()),
                                    None => w.notify_waiters(),
                                }
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "redis wake subscriber could not subscribe"),
                    }
                    listening.store(false, Ordering::Relaxed);
                    let Some(w) = wake.upgrade() else { return };
                    w.notify_waiters();
                    drop(w);
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(60));
                }
            })
        });
    }

    /// Inserts messages without dedup keys: nothing is conditional, so the batch is
    /// one `RPUSH` (a `MULTI`/`EXEC` with a `ZADD` when some are delayed). The
    /// announcement goes beside it, not inside: a user without channel rights would
    /// make the server refuse the whole transaction, and announcing is best effort.
    async fn insert_plain(&self, queue: &str, messages: &[NewMessage], now_ms: i64) -> Result<()> {
        let p = prefix(queue);
        let (ready, later): (Vec<_>, Vec<_>) = messages.iter().partition(|m| m.visible_at_ms <= now_ms);
        let fresh = |m: &NewMessage| entry(&uuid::Uuid::now_v7().to_string(), &m.headers, &m.body);
        let mut conn = self.conn.clone();
        if later.is_empty() {
            // One pipeline, the push first; the announcement's own error is not the send's.
            let mut both = redis::pipe();
            both.ignore_errors();
            let push = both.cmd("RPUSH").arg(format!("{p}:ready"));
            for m in &ready {
                push.arg(fresh(m));
            }
            both.cmd("PUBLISH").arg(format!("{p}:wake")).arg(ready.len());
            let results: Vec<redis::RedisResult<i64>> = both.query_async(&mut conn).await.map_err(map_err)?;
            return results.into_iter().next().unwrap_or(Ok(0)).map(drop).map_err(map_err);
        }
        let mut tx = redis::pipe();
        if !ready.is_empty() {
            tx.atomic();
            let push = tx.cmd("RPUSH").arg(format!("{p}:ready"));
            for m in &ready {
                push.arg(fresh(m));
            }
            push.ignore();
        }
        let delay = tx.cmd("ZADD").arg(format!("{p}:later"));
        for m in &later {
            delay.arg(m.visible_at_ms).arg(fresh(m));
        }
        delay.ignore();
        if ready.is_empty() {
            return tx.query_async::<()>(&mut conn).await.map_err(map_err);
        }
        let mut announce = redis::cmd("PUBLISH");
        announce.arg(format!("{p}:wake")).arg(ready.len());
        let mut side = self.conn.clone();
        // Both are queued on the one connection, the send first. Were the announcement
        // ever to overtake it, a woken receive would find nothing and wait for the next
        // announcement or poll: later, never lost.
        let (stored, _) = tokio::join!(tx.query_async::<()>(&mut conn), announce.query_async::<i64>(&mut side));
        stored.map_err(map_err)
    }

    /// One `MULTI`: moves up to `max` visible entries into the receive's list, sets its
    /// lease, and asks whether a delay or a lease is due and how many entries are left.
    async fn lease(
        &self,
        p: &str,
        max: usize,
        now_ms: i64,
        lease_until_ms: i64,
        token: &str,
    ) -> Result<(Vec<Bytes>, bool, i64)> {
        let (ready, leases) = (format!("{p}:ready"), format!("{p}:leases"));
        let held = format!("{p}:rcv:{token}");
        let mut tx = redis::pipe();
        tx.atomic();
        for _ in 0..max {
            tx.cmd("LMOVE").arg(&ready).arg(&held).arg("LEFT").arg("RIGHT");
        }
        tx.cmd("ZADD").arg(&leases).arg(lease_until_ms).arg(token).ignore();
        // Whether a delay or a lease is due is asked at most every `PROBE_EVERY_MS` per
        // handle: something due is found that much later at worst, and a busy queue's
        // claims skip two commands.
        let last = self.probed_at.load(Ordering::Relaxed);
        let probes = if now_ms >= last + PROBE_EVERY_MS || now_ms < last {
            self.probed_at.store(now_ms, Ordering::Relaxed);
            tx.cmd("ZRANGEBYSCORE").arg(format!("{p}:later")).arg("-inf").arg(now_ms).arg("LIMIT").arg(0).arg(1);
            tx.cmd("ZRANGEBYSCORE").arg(&leases).arg("-inf").arg(now_ms).arg("LIMIT").arg(0).arg(1);
            2
        } else {
            0
        };
        tx.cmd("LLEN").arg(&ready);
        let replies: Vec<Value> = tx.query_async(&mut self.conn.clone()).await.map_err(map_err)?;
        decode_claim(replies, max, probes)
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("location", &self.location).finish_non_exhaustive()
    }
}

impl RedisQueue {
    /// Opens a queue from `redis://…`; nothing is created until the first send.
    pub async fn from_url(url: &str) -> Result<QueueHandle<Self>> {
        let mut u = QueueUrl::parse(url)?;
        let timeout = u.take_duration("response_timeout")?.unwrap_or(Duration::from_secs(10));
        u.finish("redis")?;
        let mut raw = u.driver_url(&[]);
        if let Some(rest) = raw.strip_prefix("valkey://") {
            raw = format!("redis://{rest}");
        }
        let client = redis::Client::open(raw.as_str()).map_err(map_err)?;
        let info = client.get_connection_info();
        let location = info.addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(6)
            .set_max_delay(Duration::from_secs(2));
        let mut conn = client.get_connection_manager_with_config(config).await.map_err(map_err)?;
        let policy: redis::RedisResult<Vec<String>> =
            redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(&mut conn).await;
        if let Ok(p) = policy
            && p.get(1).is_some_and(|v| v != "noeviction")
        {
            tracing::warn!(policy = %p[1], "redis maxmemory-policy can evict queued messages; use noeviction");
        }
        let wake_channel = format!("{}:wake", prefix(&u.options.queue));
        let store = RedisStore {
            conn,
            location,
            client,
            wake_channel,
            wake: Arc::new(Notify::new()),
            listener: OnceLock::new(),
            listening: Arc::default(),
            ready_hint: AtomicUsize::new(usize::MAX),
            probed_at: AtomicI64::new(0),
        };
        Self::new(store, u.options).map(QueueHandle::new)
    }
}

#[async_trait]
impl LeaseStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn insert(&self, queue: &str, messages: Vec<NewMessage>, now_ms: i64, dedup_until_ms: i64) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        if messages.iter().all(|m| m.dedup_key.is_none()) {
            return self.insert_plain(queue, &messages, now_ms).await;
        }
        let mut inv = INSERT.prepare_invoke();
        let ttl = (dedup_until_ms - now_ms).max(1);
        inv.arg(prefix(queue)).arg(ttl).arg(now_ms).arg(messages.len());
        for m in &messages {
            inv.arg(entry(&uuid::Uuid::now_v7().to_string(), &m.headers, &m.body))
                .arg(m.visible_at_ms)
                .arg(m.dedup_key.as_deref().unwrap_or(""));
        }
        let _: i64 = inv.invoke_async(&mut self.conn.clone()).await.map_err(map_err)?;
        Ok(())
    }

    async fn claim(&self, queue: &str, max: usize, now_ms: i64, lease_until_ms: i64, token: &str) -> Result<Claimed> {
        let p = prefix(queue);
        let mut out = Vec::with_capacity(max);
        let (mut maintained, mut rounds) = (false, 0);
        loop {
            rounds += 1;
            let room = max - out.len();
            let count = if maintained { room } else { room.min(self.ready_hint.load(Ordering::Relaxed).max(1)) };
            let (entries, due, left) = self.lease(&p, count, now_ms, lease_until_ms, token).await?;
            self.ready_hint.store(usize::try_from(left).unwrap_or(0), Ordering::Relaxed);
            for raw in entries {
                let position = out.len() + 1;
                out.push(message_of(raw, position, true));
            }
            if due && !maintained {
                // Something is due: move it back, and lease from it when room is left.
                maintained = true;
                let moved: i64 =
                    MAINTAIN.arg(&p).arg(now_ms).invoke_async(&mut self.conn.clone()).await.map_err(map_err)?;
                if moved > 0 && out.len() < max {
                    continue;
                }
            }
            if count < room && left > 0 && rounds < 3 {
                continue;
            }
            if out.is_empty() {
                // Nothing was moved: the lease guards no list.
                let _: i64 = redis::cmd("ZREM")
                    .arg(format!("{p}:leases"))
                    .arg(token)
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(map_err)?;
            }
            // Without a live subscription no send would wake a receive that waits, so a
            // claim that emptied the queue tells nothing the next receive could wait on.
            let more = left > 0 || (due && !maintained) || !self.wakes_live();
            return Ok(Claimed::new(out, more));
        }
    }

    async fn ack(&self, l: Lease<'_>) -> Result<bool> {
        let n: i64 = ACK
            .arg(prefix(l.queue))
            .arg(l.id)
            .arg(l.token)
            .arg(l.now_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map_err)?;
        Ok(n == 1)
    }

    async fn ack_many(&self, queue: &str, items: &[(&str, &str)], now_ms: i64) -> Result<Option<Vec<bool>>> {
        // The deliveries of each receive together, its token sent once.
        let mut receives: Vec<(&str, Vec<usize>)> = Vec::new();
        for (at, (_, token)) in items.iter().enumerate() {
            match receives.iter_mut().rev().find(|(t, _)| t == token) {
                Some((_, ats)) => ats.push(at),
                None => receives.push((token, vec![at])),
            }
        }
        let mut inv = ACK_MANY.prepare_invoke();
        inv.arg(prefix(queue)).arg(now_ms);
        for (token, ats) in &receives {
            inv.arg(*token).arg(ats.len());
            for &at in ats {
                inv.arg(items[at].0);
            }
        }
        let held: Vec<i64> = inv.invoke_async(&mut self.conn.clone()).await.map_err(map_err)?;
        let mut out = vec![false; items.len()];
        for (&at, h) in receives.iter().flat_map(|(_, ats)| ats).zip(held) {
            out[at] = h == 1;
        }
        Ok(Some(out))
    }

    async fn release(&self, l: Lease<'_>, visible_at_ms: i64, how: Release) -> Result<bool> {
        let (failed, refund) = (how.records_failure(), how.refund());
        let n: i64 = RELEASE
            .arg(prefix(l.queue))
            .arg(l.id)
            .arg(l.token)
            .arg(l.now_ms)
            .arg(visible_at_ms)
            .arg(u8::from(failed))
            .arg(refund)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map_err)?;
        Ok(n == 1)
    }

    async fn extend(&self, l: Lease<'_>, until_ms: i64) -> Result<bool> {
        let n: i64 = EXTEND
            .arg(prefix(l.queue))
            .arg(l.id)
            .arg(l.token)
            .arg(l.now_ms)
            .arg(until_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map_err)?;
        Ok(n == 1)
    }

    async fn move_to(&self, l: Lease<'_>, target: &str, headers: &Headers) -> Result<bool> {
        let heads = if headers.is_empty() { String::new() } else { encode_headers(headers) };
        let n: i64 = MOVE
            .arg(prefix(l.queue))
            .arg(prefix(target))
            .arg(l.id)
            .arg(l.token)
            .arg(l.now_ms)
            .arg(heads)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map_err)?;
        Ok(n == 1)
    }

    /// Visible messages first, then delayed ones; messages under a lease are not listed.
    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<StoredMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let p = prefix(queue);
        let last = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        let mut both = redis::pipe();
        both.cmd("LRANGE").arg(format!("{p}:ready")).arg(0).arg(last);
        both.cmd("ZRANGE").arg(format!("{p}:later")).arg(0).arg(last);
        let (mut raw, later): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            both.query_async(&mut self.conn.clone()).await.map_err(map_err)?;
        raw.extend(later);
        raw.truncate(limit);
        Ok(raw.into_iter().enumerate().map(|(i, e)| message_of(Bytes::from(e), i + 1, false)).collect())
    }

    async fn redrive(&self, from: &str, to: &str, limit: usize, _now_ms: i64) -> Result<usize> {
        if limit == 0 {
            return Ok(0);
        }
        let n: i64 = REDRIVE
            .arg(prefix(from))
            .arg(prefix(to))
            .arg(limit)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map_err)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn ping(&self) -> Result<Option<String>> {
        let info: String =
            redis::cmd("INFO").arg("server").query_async(&mut self.conn.clone()).await.map_err(map_err)?;
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()));
        Ok(field("valkey_version:")
            .map(|v| format!("valkey {v}"))
            .or_else(|| field("redis_version:").map(|v| format!("redis {v}"))))
    }

    async fn wait_for_work(&self, queue: &str, timeout: Duration) {
        if self.wake_channel != format!("{}:wake", prefix(queue)) {
            tokio::time::sleep(timeout).await;
            return;
        }
        self.ensure_listener();
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }

    fn max_poll_interval(&self) -> Duration {
        Duration::from_millis(200)
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
