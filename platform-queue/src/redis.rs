//! Redis and Valkey queues: `redis://host:6379/0?queue=jobs`.
//!
//! - [x] leases, attempts, nack with delay, extend, release
//! - [x] dead letters and redrive, delay, dedup (`SET NX PX`), atomic batches
//! - [x] durable as far as the server persists (turn on AOF; the queue warns at open
//!   when `maxmemory-policy` can evict keys)
//! - [ ] ~~Redis Cluster~~: dead-lettering moves keys between queues, which needs one node
//!
//! Waiting receives wake when a message becomes visible: every script that makes one
//! visible now publishes on `platform:queue:{NAME}:wake`, and each queue handle keeps
//! one subscriber connection on its queue's channel (opened by the first receive that
//! waits). A send announces how many messages it added and wakes that many waiting
//! receives; a release, dead-letter move or redrive wakes them all. Delays and lease expiries are still found by polling, at most every 200 ms,
//! and so is everything when the server refuses pub/sub (an ACL user without channel
//! rights: announcing is best effort and never fails the operation).
//!
//! Layout: each queue is a sorted set `platform:queue:{NAME}:z` of message ids scored
//! by the time they become visible (a lease moves the score to its end), and three
//! hashes keyed by message id: `…:b` (body), `…:h` (headers, only for messages that
//! have any) and `…:l` (attempts, first failure, lease token and lease end). Every operation is
//! one Lua script, so it is atomic on the server, and a script touches each structure
//! once per batch, not once per message. This gives delay, lease expiry and
//! redelivery in one structure, which Streams' pending lists do not. Messages written
//! in the earlier layout (one hash `…:m:ID` per message) are moved into the queue's
//! hashes when a receive or a dead-letter listing first reaches them. Each of these
//! keys also holds one marker entry (`~platform-queue~ …`, scored `+inf`), which keeps
//! it in the server's hash-table encoding: an empty queue's keys stay, at a few
//! hundred bytes each. A send without dedup keys is one `MULTI`/`EXEC` of plain
//! commands; everything conditional is a script. Needs Redis 6.2 or later
//! (`ZMSCORE`), or Valkey.
//!
//! URL: `redis://[user:password@]host[:port][/db]` or `rediss://` (TLS), `valkey://`
//! and `valkeys://` as aliases, plus the common parameters and `response_timeout`
//! (default 10s).

use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use platform_core::{Error, ErrorKind, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, ServerErrorKind};
use tokio::sync::Notify;

use crate::leased::{LeaseStore, LeasedQueue, NewMessage, StoredMessage};
use crate::message::{decode_headers, encode_headers};
use crate::url::QueueUrl;
use crate::{Capabilities, Headers};

/// An entry every key of a queue holds (score `+inf` in its sorted set), longer than
/// the 64 bytes up to which the server keeps a small hash or sorted set in its compact
/// encoding. In that encoding every change rewrites the key and every lookup scans it,
/// which made claims and acks of queues under 128 messages (the usual case: consumers
/// keep up) cost the server half again as much as in the hash-table encoding.
const MARK: &str =
    "~platform-queue~ this entry keeps the key in the encoding whose operations cost the same at any size";

/// The most receivers one announcement wakes.
const MAX_WOKEN: usize = 64;

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["redis", "rediss", "valkey", "valkeys"];

/// A queue in Redis or Valkey.
pub type RedisQueue = LeasedQueue<RedisStore>;

/// Maps a Redis error onto the portable kinds.
pub fn map_err(e: redis::RedisError) -> Error {
    use redis::ErrorKind as K;
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        ErrorKind::Unavailable
    } else {
        match e.kind() {
            K::AuthenticationFailed => ErrorKind::Unauthenticated,
            K::InvalidClientConfig => ErrorKind::InvalidInput,
            K::Io | K::ClusterConnectionNotFound => ErrorKind::Unavailable,
            K::Server(s) => match s {
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly => ErrorKind::Unavailable,
                ServerErrorKind::NoPerm => ErrorKind::PermissionDenied,
                ServerErrorKind::CrossSlot => ErrorKind::Unsupported,
                _ => ErrorKind::Internal,
            },
            _ => ErrorKind::Internal,
        }
    };
    Error::new(kind, e.to_string()).with_backend("redis").with_source(e)
}

/// Helpers every script shares. A message lives in three hashes of its queue, keyed by
/// its id: `…:b` (body), `…:h` (headers, only when there are any) and `…:l` (its lease
/// record, `attempts|first failure|token|lease end`, absent before the first delivery; records
/// written before the lease end was kept there are checked against the sorted set). Whole
/// batches go to the server as one command per hash (`chunked` and `gathered`, in runs
/// of 1,000 under Lua's limit on unpacked values), so a batch of 100 costs the server
/// a handful of calls, not several per message. `adopt` moves a message written in the
/// earlier layout (one hash `…:m:ID` per message) into the queue's hashes.
const HELD: &str = r"
local call = redis.call
local function chunked(cmd, key, args)
  local n = #args
  if n == 0 then return end
  if n <= 1000 then call(cmd, key, unpack(args)) return end
  for i = 1, n, 1000 do
    call(cmd, key, unpack(args, i, math.min(i + 999, n)))
  end
end
local function gathered(cmd, key, args)
  local n = #args
  if n == 0 then return {} end
  if n <= 1000 then return call(cmd, key, unpack(args)) end
  local out, k = {}, 0
  for i = 1, n, 1000 do
    local r = call(cmd, key, unpack(args, i, math.min(i + 999, n)))
    for j = 1, #r do k = k + 1; out[k] = r[j] end
  end
  return out
end
local function record(r)
  if not r then return 0, '', '' end
  local i = string.find(r, '|', 1, true)
  local j = i and string.find(r, '|', i + 1, true)
  if not j then return 0, '', '' end
  return tonumber(string.sub(r, 1, i - 1)) or 0, string.sub(r, i + 1, j - 1), string.sub(r, j + 1)
end
local function holds(r, token)
  return r ~= false and r ~= nil and #token > 0 and #r > #token and string.sub(r, -#token) == token
    and string.byte(r, -#token - 1) == 124
end
-- Whether a record ends in its lease's end (13 digits of milliseconds): records held
-- the end only in the sorted set before, and a lease end of another width still does.
local function timed(r)
  return #r > 14 and string.byte(r, -14) == 124
end
local function lease(p, id, r, token, now)
  if not r then return false end
  if timed(r) then
    return string.sub(r, -14 - #token, -15) == token and string.byte(r, -15 - #token) == 124
      and tonumber(string.sub(r, -13)) > now
  end
  if not holds(r, token) then return false end
  local s = redis.call('ZSCORE', p .. ':z', id)
  return s and tonumber(s) > now
end
-- The record `r` with its lease end replaced by `lease_end`.
local function until_end(r, lease_end)
  if timed(r) then r = string.sub(r, 1, -15) end
  if #lease_end == 13 then return r .. '|' .. lease_end end
  return r
end
local function any(key)
  return redis.call('EXISTS', key) == 1
end
local function keep(p, heads)
  redis.call('ZADD', p .. ':z', 'NX', 'inf', MARK)
  redis.call('HSET', p .. ':b', MARK, '')
  redis.call('HSET', p .. ':l', MARK, '')
  if heads then redis.call('HSET', p .. ':h', MARK, '') end
end
local function adopt(p, id)
  local k = p .. ':m:' .. id
  local v = redis.call('HMGET', k, 'b', 'h', 'a', 'f', 't')
  if not v[1] then return false end
  redis.call('HSET', p .. ':b', id, v[1])
  if v[2] and v[2] ~= '{}' then redis.call('HSET', p .. ':h', id, v[2]) end
  redis.call('HSET', p .. ':l', id, (v[3] or '0') .. '|' .. (v[4] or '') .. '|' .. (v[5] or ''))
  redis.call('DEL', k)
  return true
end
local function fetch(p, ids)
  local b = gathered('HMGET', p .. ':b', ids)
  local h = {}
  if any(p .. ':h') then h = gathered('HMGET', p .. ':h', ids) end
  local l = gathered('HMGET', p .. ':l', ids)
  for i, id in ipairs(ids) do
    if not b[i] and adopt(p, id) then
      b[i] = redis.call('HGET', p .. ':b', id)
      h[i] = redis.call('HGET', p .. ':h', id)
      l[i] = redis.call('HGET', p .. ':l', id)
    end
  end
  return b, h, l
end
local function forget(p, ids)
  chunked('HDEL', p .. ':b', ids)
  if any(p .. ':h') then chunked('HDEL', p .. ':h', ids) end
  chunked('HDEL', p .. ':l', ids)
  chunked('ZREM', p .. ':z', ids)
end
local function held(p, id, token, now)
  return lease(p, id, redis.call('HGET', p .. ':l', id), token, now)
end
";

fn script(body: &str) -> Script {
    Script::new(&format!("local MARK = '{MARK}'\n{HELD}\n{body}"))
}

// ARGV: prefix, dedup ttl ms, n, then per message: id, body, headers ("" for none), visible_at, dedup key ("" for none).
static INSERT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local bodies, heads, scored = {}, {}, {}
for i = 0, n - 1 do
  local b = 4 + i * 5
  local id, dk = ARGV[b], ARGV[b + 4]
  local fresh = true
  if dk ~= '' then fresh = redis.call('SET', p .. ':d:' .. dk, '1', 'NX', 'PX', ttl) end
  if fresh then
    bodies[#bodies + 1] = id
    bodies[#bodies + 1] = ARGV[b + 1]
    if ARGV[b + 2] ~= '' then
      heads[#heads + 1] = id
      heads[#heads + 1] = ARGV[b + 2]
    end
    scored[#scored + 1] = ARGV[b + 3]
    scored[#scored + 1] = id
  end
end
if #scored > 0 then
  keep(p, #heads > 0)
  chunked('HSET', p .. ':b', bodies)
  chunked('HSET', p .. ':h', heads)
  chunked('ZADD', p .. ':z', scored)
  redis.pcall('PUBLISH', p .. ':wake', tostring(#scored / 2))
end
return #scored / 2",
    )
});

// ARGV: prefix, now, lease_until, token, max. Returns four parts, one entry per message
// claimed in each list: the ids joined by spaces; the redeliveries as `position:attempts:first
// failure` joined by spaces (a message not named there is a first delivery: attempt 1, no
// failure); the bodies (nil for a message that is gone: its id is dropped from the
// sorted set); the headers (nil for none; an empty list when the queue has none at all);
// 1 when claimable messages were left beyond `max`, else 0.
// The lists the server returns are handed back as they are, so a message costs the script
// no more than its lease record and its new score.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, now, lease_end, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local z = p .. ':z'
local max = tonumber(ARGV[5])
local ids = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, max + 1)
local n, more = #ids, 0
if n == 0 then return {'', '', {}, {}, 0} end
if n > max then
  ids[n] = nil
  n = max
  more = 1
end
local tail = '|' .. token
if #lease_end == 13 then tail = tail .. '|' .. lease_end end
-- A first delivery's record is the same for the whole batch: built once, and grouped
-- acks then recognise it by identity instead of parsing each.
local first = '1||' .. tail
local b, h, l = fetch(p, ids)
local leased, records, again, gone = {}, {}, {}, {}
local k, na, ng = 0, 0, 0
for i = 1, n do
  local id = ids[i]
  if not b[i] then
    ng = ng + 1
    gone[ng] = id
  else
    local r = l[i]
    if r then
      local a, f = record(r)
      a = a + 1
      if a > 1 and f == '' then f = now end
      r = a .. '|' .. f .. tail
      na = na + 1
      again[na] = i .. ':' .. a .. ':' .. f
    else
      r = first
    end
    k = k + 2
    records[k - 1] = id
    records[k] = r
    leased[k - 1] = lease_end
    leased[k] = id
  end
end
chunked('HSET', p .. ':l', records)
chunked('ZADD', z, leased)
chunked('ZREM', z, gone)
-- Headers read for an adopted message may leave holes, which would cut the list short.
if next(h) ~= nil then
  for i = 1, n do
    if h[i] == nil then h[i] = false end
  end
end
return {table.concat(ids, ' '), table.concat(again, ' '), b, h, more}",
    )
});

// ARGV: prefix, id, token, now.
static ACK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, id = ARGV[1], ARGV[2]
if not held(p, id, ARGV[3], tonumber(ARGV[4])) then return 0 end
forget(p, {id})
return 1",
    )
});

// ARGV: prefix, now, then id, token pairs. Returns 1 or 0 per pair.
static ACK_MANY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, now = ARGV[1], tonumber(ARGV[2])
local ids, n = {}, 0
for i = 3, #ARGV, 2 do n = n + 1; ids[n] = ARGV[i] end
local l = gathered('HMGET', p .. ':l', ids)
local out, settled, k = {}, {}, 0
-- The messages of one receive share one record (see CLAIM): a record and token equal to
-- the last ones checked (strings compare by identity in Lua) get the same answer.
local last_r, last_t, last_ok
for i = 1, n do
  local r, t, ok = l[i], ARGV[2 + 2 * i], false
  if r and r == last_r and t == last_t then
    ok = last_ok
  else
    ok = lease(p, ids[i], r, t, now)
    if r and timed(r) then last_r, last_t, last_ok = r, t, ok end
  end
  if ok then
    k = k + 1
    settled[k] = ids[i]
    out[i] = 1
  else
    out[i] = 0
  end
end
forget(p, settled)
return out",
    )
});

// ARGV: prefix, id, token, now, visible_at, failed (0/1), refund (0/1).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, id, now = ARGV[1], ARGV[2], tonumber(ARGV[4])
if not held(p, id, ARGV[3], now) then return 0 end
local a, f = record(redis.call('HGET', p .. ':l', id))
if ARGV[6] == '1' and f == '' then f = ARGV[4] end
if ARGV[7] == '1' and a > 0 then a = a - 1 end
redis.call('HSET', p .. ':l', id, a .. '|' .. f .. '|')
redis.call('ZADD', p .. ':z', tonumber(ARGV[5]), id)
if tonumber(ARGV[5]) <= now then redis.pcall('PUBLISH', p .. ':wake', '') end
return 1",
    )
});

// ARGV: prefix, id, token, now, until.
static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, id = ARGV[1], ARGV[2]
local r = redis.call('HGET', p .. ':l', id)
if not lease(p, id, r, ARGV[3], tonumber(ARGV[4])) then return 0 end
redis.call('HSET', p .. ':l', id, until_end(r, ARGV[5]))
redis.call('ZADD', p .. ':z', tonumber(ARGV[5]), id)
return 1",
    )
});

// ARGV: prefix, target prefix, id, token, now, headers ("" for none).
static MOVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, t, id, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[5])
if not held(p, id, ARGV[4], now) then return 0 end
local body = redis.call('HGET', p .. ':b', id)
forget(p, {id})
keep(t, ARGV[6] ~= '')
redis.call('HSET', t .. ':b', id, body)
if ARGV[6] ~= '' then redis.call('HSET', t .. ':h', id, ARGV[6]) end
redis.call('ZADD', t .. ':z', now, id)
redis.pcall('PUBLISH', t .. ':wake', '')
return 1",
    )
});

// ARGV: prefix, limit.
static PEEK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', p .. ':z', '-inf', '(inf', 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return {} end
local b, h, l = fetch(p, ids)
local out = {}
for i, id in ipairs(ids) do
  if b[i] then
    local a, f = record(l[i])
    out[#out + 1] = id
    out[#out + 1] = b[i]
    out[#out + 1] = h[i] or ''
    out[#out + 1] = tostring(a)
    out[#out + 1] = f
  end
end
return out",
    )
});

// ARGV: from prefix, to prefix, limit, now.
static REDRIVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local f, t, now = ARGV[1], ARGV[2], ARGV[4]
local ids = redis.call('ZRANGEBYSCORE', f .. ':z', '-inf', '(inf', 'LIMIT', 0, tonumber(ARGV[3]))
if #ids == 0 then return 0 end
local b, h = fetch(f, ids)
forget(f, ids)
local bodies, heads, scored = {}, {}, {}
for i, id in ipairs(ids) do
  if b[i] then
    bodies[#bodies + 1] = id
    bodies[#bodies + 1] = b[i]
    if h[i] then
      heads[#heads + 1] = id
      heads[#heads + 1] = h[i]
    end
    scored[#scored + 1] = now
    scored[#scored + 1] = id
  end
end
if #scored > 0 then keep(t, #heads > 0) end
chunked('HSET', t .. ':b', bodies)
chunked('HSET', t .. ':h', heads)
chunked('HDEL', t .. ':l', ids)
chunked('ZADD', t .. ':z', scored)
if #scored > 0 then redis.pcall('PUBLISH', t .. ':wake', '') end
return #scored / 2",
    )
});

fn prefix(queue: &str) -> String {
    format!("platform:queue:{{{queue}}}")
}

/// Headers as a script argument: empty for none, so no field is written for them.
fn headers_arg(h: &Headers) -> String {
    if h.is_empty() { String::new() } else { encode_headers(h) }
}

/// What the claim script returns: ids joined by spaces, redeliveries
/// (`position:attempts:first failure`, positions from 1), bodies and headers,
/// and whether claimable messages were left beyond those leased (1) or not (0).
type Claimed = (String, String, Vec<Option<Vec<u8>>>, Vec<Option<Vec<u8>>>, i64);

fn decode_claimed((ids, again, bodies, heads, _): Claimed) -> Vec<StoredMessage> {
    let mut history: Vec<(u32, Option<i64>)> = vec![(1, None); bodies.len()];
    for entry in again.split(' ').filter(|e| !e.is_empty()) {
        let mut parts = entry.splitn(3, ':');
        let at = parts.next().and_then(|p| p.parse::<usize>().ok()).and_then(|p| p.checked_sub(1));
        let attempts = parts.next().and_then(|a| a.parse().ok()).unwrap_or(0);
        let first_failure = parts.next().and_then(|f| f.parse().ok());
        if let Some(slot) = at.and_then(|at| history.get_mut(at)) {
            *slot = (attempts, first_failure);
        }
    }
    let mut heads = heads.into_iter();
    ids.split(' ')
        .zip(bodies)
        .zip(history)
        .filter_map(|((id, body), (attempts, first_failure))| {
            let head = heads.next().flatten();
            let headers = head
                .filter(|h| !h.is_empty())
                .map_or_else(Headers::new, |h| decode_headers(&String::from_utf8_lossy(&h)));
            Some(StoredMessage::new(id.to_owned(), Bytes::from(body?), headers, attempts, first_failure))
        })
        .collect()
}

fn decode(flat: Vec<Vec<u8>>) -> Vec<StoredMessage> {
    flat.chunks_exact(5)
        .map(|c| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            StoredMessage::new(
                text(&c[0]),
                Bytes::copy_from_slice(&c[1]),
                if c[2].is_empty() { Headers::new() } else { decode_headers(&text(&c[2])) },
                text(&c[3]).parse().unwrap_or(0),
                text(&c[4]).parse().ok(),
            )
        })
        .collect()
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
}

impl RedisStore {
    /// Whether this handle's wake subscription is live: a send wakes its waiting
    /// receives at once. It starts with the first receive that waits; until then, and
    /// while the server refuses or drops it, receives poll.
    pub fn wakes_live(&self) -> bool {
        self.listening.load(std::sync::atomic::Ordering::Relaxed)
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
                            listening.store(true, std::sync::atomic::Ordering::Relaxed);
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
                    listening.store(false, std::sync::atomic::Ordering::Relaxed);
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
    /// one `MULTI`/`EXEC` of plain commands, which the server runs in about half the
    /// time of the same commands issued from a script. The announcement goes beside
    /// it, not inside: a user without channel rights would make the server refuse the
    /// whole transaction, and announcing is best effort.
    async fn insert_plain(&self, queue: &str, messages: &[NewMessage]) -> Result<()> {
        let p = prefix(queue);
        let ids: Vec<String> = messages.iter().map(|_| uuid::Uuid::now_v7().to_string()).collect();
        let heads = messages.iter().any(|m| !m.headers.is_empty());
        let mut tx = redis::pipe();
        tx.atomic();
        // The markers first, so that keys made here start in the large encoding.
        tx.cmd("ZADD").arg(format!("{p}:z")).arg("NX").arg("inf").arg(MARK).ignore();
        for hash in ["b", "l"].iter().chain(heads.then_some(&"h")) {
            tx.cmd("HSET").arg(format!("{p}:{hash}")).arg(MARK).arg("").ignore();
        }
        let bodies = tx.cmd("HSET").arg(format!("{p}:b"));
        for (id, m) in ids.iter().zip(messages) {
            bodies.arg(id).arg(m.body.as_ref());
        }
        bodies.ignore();
        if heads {
            let heads = tx.cmd("HSET").arg(format!("{p}:h"));
            for (id, m) in ids.iter().zip(messages).filter(|(_, m)| !m.headers.is_empty()) {
                heads.arg(id).arg(encode_headers(&m.headers));
            }
            heads.ignore();
        }
        let scored = tx.cmd("ZADD").arg(format!("{p}:z"));
        for (id, m) in ids.iter().zip(messages) {
            scored.arg(m.visible_at_ms).arg(id);
        }
        scored.ignore();
        let mut announce = redis::cmd("PUBLISH");
        announce.arg(format!("{p}:wake")).arg(messages.len());
        let (mut conn, mut side) = (self.conn.clone(), self.conn.clone());
        // Both are queued on the one connection, the transaction first. Were the
        // announcement ever to overtake it, a woken receive would find nothing and wait
        // for the next announcement or poll: later, never lost.
        let (stored, _) = tokio::join!(tx.query_async::<()>(&mut conn), announce.query_async::<i64>(&mut side));
        stored.map_err(map_err)
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
    pub async fn from_url(url: &str) -> Result<Self> {
        let mut u = QueueUrl::parse(url)?;
        let timeout = u.take_duration("response_timeout")?.unwrap_or(Duration::from_secs(10));
        u.finish("redis")?;
        let mut raw = u.driver_url(&[]);
        for (alias, real) in [("valkeys://", "rediss://"), ("valkey://", "redis://")] {
            if let Some(rest) = raw.strip_prefix(alias) {
                raw = format!("{real}{rest}");
            }
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
        };
        Self::new(store, u.options)
    }
}

#[async_trait]
impl LeaseStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn insert(&self, queue: &str, messages: Vec<NewMessage>, now_ms: i64, dedup_until_ms: i64) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        if messages.iter().all(|m| m.dedup_key.is_none()) {
            return self.insert_plain(queue, &messages).await;
        }
        let mut inv = INSERT.prepare_invoke();
        let ttl = (dedup_until_ms - now_ms).max(1);
        inv.arg(prefix(queue)).arg(ttl).arg(messages.len());
        for m in &messages {
            inv.arg(uuid::Uuid::now_v7().to_string())
                .arg(m.body.as_ref())
                .arg(headers_arg(&m.headers))
                .arg(m.visible_at_ms)
                .arg(m.dedup_key.as_deref().unwrap_or(""));
        }
        let _: i64 = inv.invoke_async(&mut self.conn.clone()).await.map_err(map_err)?;
        Ok(())
    }

    async fn claim(
        &self,
        queue: &str,
        max: usize,
        now_ms: i64,
        lease_until_ms: i64,
        token: &str,
    ) -> Result<(Vec<StoredMessage>, bool)> {
        let claimed: Claimed = CLAIM
            .arg(prefix(queue))
            .arg(now_ms)
            .arg(lease_until_ms)
            .arg(token)
            .arg(max)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map_err)?;
        // Without a live subscription no send would wake a receive that waits, so a
        // claim that emptied the queue tells nothing the next receive could wait on.
        let more = claimed.4 == 1 || !self.wakes_live();
        Ok((decode_claimed(claimed), more))
    }

    async fn ack(&self, queue: &str, id: &str, token: &str, now_ms: i64) -> Result<bool> {
        let n: i64 = ACK
            .arg(prefix(queue))
            .arg(id)
            .arg(token)
            .arg(now_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map_err)?;
        Ok(n == 1)
    }

    async fn ack_many(&self, queue: &str, items: &[(&str, &str)], now_ms: i64) -> Result<Option<Vec<bool>>> {
        let mut inv = ACK_MANY.prepare_invoke();
        inv.arg(prefix(queue)).arg(now_ms);
        for (id, token) in items {
            inv.arg(*id).arg(*token);
        }
        let held: Vec<i64> = inv.invoke_async(&mut self.conn.clone()).await.map_err(map_err)?;
        Ok(Some(held.into_iter().map(|h| h == 1).collect()))
    }

    async fn release(
        &self,
        queue: &str,
        id: &str,
        token: &str,
        now_ms: i64,
        visible_at_ms: i64,
        failed: bool,
        refund: bool,
    ) -> Result<bool> {
        let n: i64 = RELEASE
            .arg(prefix(queue))
            .arg(id)
            .arg(token)
            .arg(now_ms)
            .arg(visible_at_ms)
            .arg(u8::from(failed))
            .arg(u8::from(refund))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map_err)?;
        Ok(n == 1)
    }

    async fn extend(&self, queue: &str, id: &str, token: &str, now_ms: i64, until_ms: i64) -> Result<bool> {
        let n: i64 = EXTEND
            .arg(prefix(queue))
            .arg(id)
            .arg(token)
            .arg(now_ms)
            .arg(until_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map_err)?;
        Ok(n == 1)
    }

    async fn move_to(
        &self,
        queue: &str,
        id: &str,
        token: &str,
        now_ms: i64,
        target: &str,
        headers: &Headers,
    ) -> Result<bool> {
        let n: i64 = MOVE
            .arg(prefix(queue))
            .arg(prefix(target))
            .arg(id)
            .arg(token)
            .arg(now_ms)
            .arg(headers_arg(headers))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map_err)?;
        Ok(n == 1)
    }

    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<StoredMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let flat: Vec<Vec<u8>> =
            PEEK.arg(prefix(queue)).arg(limit).invoke_async(&mut self.conn.clone()).await.map_err(map_err)?;
        Ok(decode(flat))
    }

    async fn redrive(&self, from: &str, to: &str, limit: usize, now_ms: i64) -> Result<usize> {
        if limit == 0 {
            return Ok(0);
        }
        let n: i64 = REDRIVE
            .arg(prefix(from))
            .arg(prefix(to))
            .arg(limit)
            .arg(now_ms)
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

    fn groups_acks(&self) -> bool {
        true
    }

    fn max_poll_interval(&self) -> Duration {
        Duration::from_millis(200)
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
