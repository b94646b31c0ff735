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
//! bytes the body. Queues written by earlier versions (a sorted set of ids and hashes
//! of bodies, headers and lease records, or a hash per message) are moved into this
//! layout when a handle first reaches them; every process of a queue should run this
//! version or later. Needs Redis 6.2 or later (`LMOVE`, `SMISMEMBER`), or Valkey.
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

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use platform_core::{Error, ErrorKind, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, ServerErrorKind, Value};
use tokio::sync::Notify;

use crate::QueueHandle;
use crate::lease::{Claimed, LeaseStore, LeasedQueue, NewMessage, Release, StoredMessage};
use crate::message::{decode_headers, encode_headers};
use crate::options::QueueUrl;
use crate::{Capabilities, Headers};

/// The longest a handle's claims go without asking whether a delay or a lease is due.
const PROBE_EVERY_MS: i64 = 20;

/// The most receivers one announcement wakes.
const MAX_WOKEN: usize = 64;

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["redis", "valkey"];

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

/// Helpers every script shares. `head` reads an entry's fields (nil for an entry in
/// another shape: such an entry's id is `~` and its position in its receive's list);
/// `holder` finds which receive holds a delivery's lease (its own, once extended apart
/// from its batch); `settle` marks deliveries of a receive settled and drops the
/// receive's keys once all are; `take` settles one delivery and returns its entry.
/// Whole batches go to the server as one command (`chunked`, in runs of 1,000 under
/// Lua's limit on unpacked values).
const COMMON: &str = r"
local call = redis.call
local function chunked(cmd, key, args)
  local n = #args
  if n == 0 then return end
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
local function head(e)
  local a, f, il, hl, s = string.match(e, '^(%d+):(%d*):(%d+):(%d+):()')
  if not a then return nil end
  il, hl = tonumber(il), tonumber(hl)
  if s + il + hl - 1 > #e then return nil end
  return tonumber(a), f, il, hl, s
end
local function id_of(e, pos)
  local a, _, il, _, s = head(e)
  if not a then return '~' .. pos end
  return string.sub(e, s, s + il - 1)
end
local function make(a, f, id, h, b)
  return a .. ':' .. f .. ':' .. #id .. ':' .. #h .. ':' .. id .. h .. b
end
-- The entry with its attempts and first failure replaced; an entry in another shape
-- becomes one of ours with a fresh id, its bytes the body.
local function rewritten(p, e, a, f)
  local x, _, il, hl, s = head(e)
  if not x then return make(a, f, 'foreign-' .. call('INCR', p .. ':seq'), '', e) end
  return a .. ':' .. f .. ':' .. il .. ':' .. hl .. ':' .. string.sub(e, s)
end
local function wake(p, n)
  redis.pcall('PUBLISH', p .. ':wake', n)
end
local function find(list, id)
  if string.byte(id, 1) == 126 then
    local n = tonumber(string.sub(id, 2))
    return n and call('LINDEX', list, n - 1)
  end
  for i, e in ipairs(call('LRANGE', list, 0, -1)) do
    if id_of(e, i) == id then return e end
  end
  return nil
end
local function holder(p, tok, id, now)
  local s = call('ZSCORE', p .. ':leases', tok)
  if s and tonumber(s) > now then
    local done = p .. ':done:' .. tok
    local have = call('SCARD', done)
    if have == 0 or call('SISMEMBER', done, id) == 0 then return tok, have end
  end
  local own = tok .. '/' .. id
  s = call('ZSCORE', p .. ':leases', own)
  if s and tonumber(s) > now then return own end
  return nil
end
local function settle(p, tok, ids, have)
  local list, done = p .. ':rcv:' .. tok, p .. ':done:' .. tok
  if (have or call('SCARD', done)) + #ids >= call('LLEN', list) then
    call('DEL', list, done)
    call('ZREM', p .. ':leases', tok)
  else
    chunked('SADD', done, ids)
  end
end
local function drop(p, own)
  call('DEL', p .. ':rcv:' .. own)
  call('ZREM', p .. ':leases', own)
end
local function take(p, id, tok, now)
  local h, have = holder(p, tok, id, now)
  if not h then return nil end
  if h ~= tok then
    local e = call('LINDEX', p .. ':rcv:' .. h, 0)
    drop(p, h)
    return e or nil
  end
  local e = find(p .. ':rcv:' .. tok, id)
  if e then settle(p, tok, {id}, have) end
  return e or nil
end
";

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

// ARGV: prefix, dedup ttl ms, now, n, then per message: entry, visible_at, dedup key ("" for none).
static INSERT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, ttl, now, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ready, later = {}, {}
for i = 0, n - 1 do
  local b = 5 + i * 3
  local vis, dk = tonumber(ARGV[b + 1]), ARGV[b + 2]
  if dk == '' or call('SET', p .. ':d:' .. dk, '1', 'NX', 'PX', ttl) then
    if vis <= now then
      ready[#ready + 1] = ARGV[b]
    else
      later[#later + 1] = vis
      later[#later + 1] = ARGV[b]
    end
  end
end
chunked('RPUSH', p .. ':ready', ready)
chunked('ZADD', p .. ':later', later)
if #ready > 0 then wake(p, tostring(#ready)) end
return #ready + #later / 2",
    )
});

// ARGV: prefix, now. Moves due delays and the entries of lapsed receives (not settled
// one by one) back to `…:ready`, the latter with one more attempt and a first failure.
// Returns how many it moved.
static MAINTAIN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, now = ARGV[1], ARGV[2]
local ready, leases = p .. ':ready', p .. ':leases'
local due = call('ZRANGEBYSCORE', p .. ':later', '-inf', now, 'LIMIT', 0, 1000)
chunked('ZREM', p .. ':later', due)
chunked('RPUSH', ready, due)
local moved = #due
local lapsed = call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 100)
for _, tok in ipairs(lapsed) do
  local list, done = p .. ':rcv:' .. tok, p .. ':done:' .. tok
  local settled = {}
  for _, id in ipairs(call('SMEMBERS', done)) do settled[id] = true end
  local back = {}
  for i, e in ipairs(call('LRANGE', list, 0, -1)) do
    local a, f, il, hl, s = head(e)
    if not a then
      if not settled['~' .. i] then back[#back + 1] = rewritten(p, e, 1, now) end
    elseif not settled[string.sub(e, s, s + il - 1)] then
      if f == '' then f = now end
      back[#back + 1] = (a + 1) .. ':' .. f .. ':' .. il .. ':' .. hl .. ':' .. string.sub(e, s)
    end
  end
  chunked('RPUSH', ready, back)
  call('DEL', list, done)
  moved = moved + #back
end
chunked('ZREM', leases, lapsed)
if moved > 0 then wake(p, tostring(moved)) end
return moved",
    )
});

// ARGV: prefix, id, token, now.
static ACK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, id, tok = ARGV[1], ARGV[2], ARGV[3]
local h, have = holder(p, tok, id, tonumber(ARGV[4]))
if not h then return 0 end
if h == tok then settle(p, tok, {id}, have) else drop(p, h) end
return 1",
    )
});

// ARGV: prefix, now, then per receive: its token, how many of its deliveries follow, and
// their ids. Returns 1 or 0 per id, in order. The deliveries of one receive are judged
// together: one lease lookup, and when they are all of it, the
// receive's keys go without a look at its entries.
static ACK_MANY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, now = ARGV[1], tonumber(ARGV[2])
local leases = p .. ':leases'
local out, k, i = {}, 0, 3
while i <= #ARGV do
  local tok, n = ARGV[i], tonumber(ARGV[i + 1])
  local ids = {}
  for j = 1, n do
    ids[j] = ARGV[i + 1 + j]
    out[k + j] = 0
  end
  local s = call('ZSCORE', leases, tok)
  local live = s and tonumber(s) > now
  local have, marked = 0, nil
  if live then
    have = call('SCARD', p .. ':done:' .. tok)
    if have > 0 then marked = gathered('SMISMEMBER', p .. ':done:' .. tok, ids) end
  end
  local seen, mine, own, own_at = {}, {}, {}, {}
  for j, id in ipairs(ids) do
    if not seen[id] then
      seen[id] = true
      if live and (not marked or marked[j] == 0) then
        mine[#mine + 1] = id
        out[k + j] = 1
      else
        own[#own + 1] = tok .. '/' .. id
        own_at[#own_at + 1] = k + j
      end
    end
  end
  if #mine > 0 then settle(p, tok, mine, have) end
  if #own > 0 then
    local scores = gathered('ZMSCORE', leases, own)
    for m, key in ipairs(own) do
      if scores[m] and tonumber(scores[m]) > now then
        drop(p, key)
        out[own_at[m]] = 1
      end
    end
  end
  k, i = k + n, i + 2 + n
end
return out",
    )
});

// ARGV: prefix, id, token, now, visible_at, failed (0/1), refund (0/1).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, now = ARGV[1], ARGV[4]
local e = take(p, ARGV[2], ARGV[3], tonumber(now))
if not e then return 0 end
local a, f = head(e)
a, f = a or 0, f or ''
if ARGV[6] == '1' and f == '' then f = now end
if ARGV[7] ~= '1' then a = a + 1 end
local back, vis = rewritten(p, e, a, f), tonumber(ARGV[5])
if vis <= tonumber(now) then
  call('RPUSH', p .. ':ready', back)
  wake(p, '1')
else
  call('ZADD', p .. ':later', vis, back)
end
return 1",
    )
});

// ARGV: prefix, id, token, now, until. A delivery still sharing its receive's lease with
// others unsettled moves to a receive of its own; otherwise its lease moves on.
static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, id, tok = ARGV[1], ARGV[2], ARGV[3]
local h, have = holder(p, tok, id, tonumber(ARGV[4]))
if not h then return 0 end
local list, done = p .. ':rcv:' .. tok, p .. ':done:' .. tok
if h ~= tok or call('LLEN', list) - have <= 1 then
  call('ZADD', p .. ':leases', ARGV[5], h)
  return 1
end
local e = find(list, id)
if not e then return 0 end
local own = tok .. '/' .. id
call('RPUSH', p .. ':rcv:' .. own, e)
call('ZADD', p .. ':leases', ARGV[5], own)
call('SADD', done, id)
return 1",
    )
});

// ARGV: prefix, target prefix, id, token, now, headers ("" for none).
static MOVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, t, id = ARGV[1], ARGV[2], ARGV[3]
local e = take(p, id, ARGV[4], tonumber(ARGV[5]))
if not e then return 0 end
local a, _, il, hl, s = head(e)
local body = e
if a then body = string.sub(e, s + il + hl) else id = 'foreign-' .. call('INCR', p .. ':seq') end
call('RPUSH', t .. ':ready', make(0, '', id, ARGV[6], body))
wake(t, '1')
return 1",
    )
});

// ARGV: from prefix, to prefix, limit. Moves visible messages, attempts 0.
static REDRIVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local f, t = ARGV[1], ARGV[2]
local es = call('LRANGE', f .. ':ready', 0, tonumber(ARGV[3]) - 1)
if #es == 0 then return 0 end
local back = {}
for i, e in ipairs(es) do back[i] = rewritten(t, e, 0, '') end
call('LTRIM', f .. ':ready', #es, -1)
chunked('RPUSH', t .. ':ready', back)
wake(t, tostring(#back))
return #back",
    )
});

/// The marker entry earlier versions kept in each key of a queue.
const EARLIER_MARK: &str =
    "~platform-queue~ this entry keeps the key in the encoding whose operations cost the same at any size";

// ARGV: prefix, now. Moves up to 1,000 messages of the earlier layouts into this one:
// a sorted set `…:z` of ids scored by visibility (or lease end) with hashes `…:b`
// (bodies), `…:h` (headers) and `…:l` (`attempts|first failure|token…`), or, before
// that, a hash `…:m:ID` per message. A message visible now goes to `…:ready`, one
// delayed or leased to `…:later` until then. Returns how many it read.
static MIGRATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "local MARK = '{EARLIER_MARK}'\n{COMMON}\n{}",
        r"
local p, now = ARGV[1], tonumber(ARGV[2])
local z = p .. ':z'
if call('EXISTS', z) == 0 then return 0 end
local all = call('ZRANGE', z, 0, 999, 'WITHSCORES')
local ids, scores = {}, {}
for i = 1, #all, 2 do
  if all[i] ~= MARK then
    ids[#ids + 1] = all[i]
    scores[#ids] = tonumber(all[i + 1])
  end
end
if #ids == 0 then
  call('DEL', z, p .. ':b', p .. ':h', p .. ':l')
  return 0
end
local b = gathered('HMGET', p .. ':b', ids)
local h = gathered('HMGET', p .. ':h', ids)
local l = gathered('HMGET', p .. ':l', ids)
local ready, later = {}, {}
for i, id in ipairs(ids) do
  local body, heads, rec = b[i], h[i], l[i]
  if not body then
    local v = call('HMGET', p .. ':m:' .. id, 'b', 'h', 'a', 'f')
    if v[1] then body, heads, rec = v[1], v[2], (v[3] or '0') .. '|' .. (v[4] or '') .. '|' end
    call('DEL', p .. ':m:' .. id)
  end
  if body then
    local a, f = 0, ''
    if rec then
      local x, y = string.match(rec, '^(%d*)|(%d*)')
      a, f = tonumber(x) or 0, y or ''
    end
    if not heads or heads == '{}' then heads = '' end
    local e = make(a, f, id, heads, body)
    if scores[i] <= now then
      ready[#ready + 1] = e
    else
      later[#later + 1] = scores[i]
      later[#later + 1] = e
    end
  end
end
chunked('RPUSH', p .. ':ready', ready)
chunked('ZADD', p .. ':later', later)
chunked('HDEL', p .. ':b', ids)
chunked('HDEL', p .. ':h', ids)
chunked('HDEL', p .. ':l', ids)
chunked('ZREM', z, ids)
if #ready > 0 then wake(p, tostring(#ready)) end
return #ids"
    ))
});

fn prefix(queue: &str) -> String {
    format!("platform:queue:{{{queue}}}")
}

/// A message as one list entry: `attempts:first failure:id length:headers length:`,
/// then the id, the headers (JSON, empty for none) and the body.
fn entry(id: &str, headers: &Headers, body: &[u8]) -> Vec<u8> {
    let heads = if headers.is_empty() { String::new() } else { encode_headers(headers) };
    let mut e = Vec::with_capacity(16 + id.len() + heads.len() + body.len());
    let _ = write!(e, "0::{}:{}:", id.len(), heads.len());
    e.extend_from_slice(id.as_bytes());
    e.extend_from_slice(heads.as_bytes());
    e.extend_from_slice(body);
    e
}

/// The fields of an entry: attempts, first failure, id, headers and body (a slice of
/// the entry, not a copy); `None` for an entry in another shape.
fn parse_entry(raw: &Bytes) -> Option<(u32, Option<i64>, String, Headers, Bytes)> {
    let mut at = 0;
    let mut fields = [&raw[..0]; 4];
    for (k, field) in fields.iter_mut().enumerate() {
        let len = raw.get(at..)?.iter().position(|&b| b == b':')?;
        *field = &raw[at..at + len];
        let digits = field.iter().all(u8::is_ascii_digit);
        if !digits || (field.is_empty() && k != 1) {
            return None;
        }
        at += len + 1;
    }
    let number = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<usize>().ok();
    let attempts = u32::try_from(number(fields[0])?).ok()?;
    let first_failure = if fields[1].is_empty() { None } else { Some(i64::try_from(number(fields[1])?).ok()?) };
    let (id_len, heads_len) = (number(fields[2])?, number(fields[3])?);
    let body_at = at.checked_add(id_len)?.checked_add(heads_len)?;
    if body_at > raw.len() {
        return None;
    }
    let id = std::str::from_utf8(&raw[at..at + id_len]).ok()?.to_owned();
    let heads = &raw[at + id_len..body_at];
    let headers = if heads.is_empty() { Headers::new() } else { decode_headers(&String::from_utf8_lossy(heads)) };
    Some((attempts, first_failure, id, headers, raw.slice(body_at..)))
}

/// An entry as a message: claimed (`delivered`: this delivery counted in its attempts)
/// or listed. An entry in another shape is a message whose body is all its bytes and
/// whose id is `~` and its position in its list, counted from 1.
fn message_of(raw: Bytes, position: usize, delivered: bool) -> StoredMessage {
    let extra = u32::from(delivered);
    match parse_entry(&raw) {
        Some((attempts, first_failure, id, headers, body)) => {
            StoredMessage::new(id, body, headers, attempts.saturating_add(extra), first_failure)
        }
        None => StoredMessage::new(format!("~{position}"), raw, Headers::new(), extra, None),
    }
}

/// A claim's answer: the entries it moved, whether a delay or a lease is due, and how
/// many entries were left visible.
fn decode_claim(replies: Vec<Value>, taken: usize, probes: usize) -> Result<(Vec<Bytes>, bool, i64)> {
    let bad = || Error::internal("unexpected reply to a redis claim").with_backend("redis");
    if replies.len() != taken + probes + 1 {
        return Err(bad());
    }
    let mut replies = replies.into_iter();
    let mut entries = Vec::with_capacity(taken);
    for reply in replies.by_ref().take(taken) {
        match reply {
            Value::BulkString(b) => entries.push(Bytes::from(b)),
            Value::Nil => {}
            _ => return Err(bad()),
        }
    }
    let mut due = false;
    for reply in replies.by_ref().take(probes) {
        match reply {
            Value::Array(a) => due |= !a.is_empty(),
            Value::Set(a) => due |= !a.is_empty(),
            _ => return Err(bad()),
        }
    }
    let left = match replies.next() {
        Some(Value::Int(n)) => n,
        _ => return Err(bad()),
    };
    Ok((entries, due, left))
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
    /// Queues this handle has moved out of the earlier layouts.
    migrated: Mutex<HashSet<String>>,
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

    /// Moves `queue` out of the earlier layouts, once per handle.
    async fn migrate(&self, queue: &str) -> Result<()> {
        if self.migrated.lock().unwrap_or_else(|e| e.into_inner()).contains(queue) {
            return Ok(());
        }
        let p = prefix(queue);
        loop {
            let read: i64 = MIGRATE
                .arg(&p)
                .arg(crate::lease::now_ms())
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(map_err)?;
            if read == 0 {
                break;
            }
        }
        self.migrated.lock().unwrap_or_else(|e| e.into_inner()).insert(queue.to_owned());
        Ok(())
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
            migrated: Mutex::default(),
        };
        Self::new(store, u.options).map(QueueHandle::new)
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
        self.migrate(queue).await?;
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

    async fn release(
        &self,
        queue: &str,
        id: &str,
        token: &str,
        now_ms: i64,
        visible_at_ms: i64,
        how: Release,
    ) -> Result<bool> {
        let (failed, refund) = (how.records_failure(), how.refund());
        let n: i64 = RELEASE
            .arg(prefix(queue))
            .arg(id)
            .arg(token)
            .arg(now_ms)
            .arg(visible_at_ms)
            .arg(u8::from(failed))
            .arg(refund)
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
        let heads = if headers.is_empty() { String::new() } else { encode_headers(headers) };
        let n: i64 = MOVE
            .arg(prefix(queue))
            .arg(prefix(target))
            .arg(id)
            .arg(token)
            .arg(now_ms)
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
        self.migrate(queue).await?;
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
        self.migrate(from).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_other_shapes_are_told_apart() {
        let mut headers = Headers::new();
        headers.insert("k".into(), "v:1".into());
        let raw = Bytes::from(entry("id-1", &headers, b"\xff:body"));
        let (attempts, first_failure, id, got, body) = parse_entry(&raw).expect("ours");
        assert_eq!((attempts, first_failure, id.as_str(), body.as_ref()), (0, None, "id-1", &b"\xff:body"[..]));
        assert_eq!(got, headers);
        let redelivered = Bytes::from_static(b"3:1700000000000:2:0:idbody");
        let m = message_of(redelivered, 1, true);
        assert_eq!(
            (m.id.as_str(), m.attempts, m.first_failure_ms, m.body.as_ref()),
            ("id", 4, Some(1_700_000_000_000), &b"body"[..])
        );
        for other in [&b"plain"[..], b"1:2:3", b"7:8:9:10:short", b"a::1:0:x", b"1::x:0:y", b""] {
            let m = message_of(Bytes::copy_from_slice(other), 2, true);
            assert_eq!((m.id.as_str(), m.attempts, m.body.as_ref()), ("~2", 1, other), "{other:?}");
        }
    }
}
