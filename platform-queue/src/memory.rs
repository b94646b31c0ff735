//! In-process queues: `memory://jobs`. Every handle opened with the same name in one
//! process shares the queue. Nothing survives the process.
//!
//! - [x] leases, attempts, nack with delay, extend, release
//! - [x] dead letters and redrive
//! - [x] delay, dedup, atomic batches
//! - [x] order per key (`Message::order_key`: one line per key, kept on one shard)
//! - [ ] ~~durable~~ (`capabilities().durable` is false)
//!
//! URL: `memory://NAME` or `memory://?queue=NAME`, plus the common parameters
//! (`visibility_timeout`, `max_attempts`, `dead_letter`, `dedup_window`).
//!
//! The queue implements [`Queue`] directly on integer sequence numbers, and is split
//! into one shard per core, each behind its own lock: a send puts its batch in the next
//! shard in turn; a receive starts at the next shard in its thread's turn (threads start
//! apart) and moves on to the others when that one has too little; a grouped ack takes
//! one lock per shard it touches. Consumers on different threads so rarely wait for one
//! another, and no shard waits while another stays busy. Order across shards
//! is not kept (the [`Queue`] contract promises none).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::{self, Debug, Display};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use platform_core::{CheckOutcome, Error, HealthCheck, Result};
use rustc_hash::FxHasher;
use tokio::sync::Notify;

use crate::driver::Acker;
use crate::lease::store::{ms, now_ms, time_of};
use crate::message::{DeliveryId, dead_letter_headers, exhausted_reason};
use crate::options::{QueueOptions, QueueUrl};
use crate::{Capabilities, DeadLetter, Delivery, Headers, Message, Queue, QueueHandle, ReceiveOptions};

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["memory"];

const BACKEND: &str = "memory";

/// Lease tokens: unique in the process, which is as far as a memory queue reaches.
/// Zero means "not leased".
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
struct Entry {
    body: Bytes,
    headers: Headers,
    visible_at: i64,
    token: u64,
    attempts: u32,
    first_failure: Option<i64>,
    /// The order key: the entry is claimable only at the front of its key's line.
    key: Option<Arc<str>>,
}

impl Entry {
    fn fresh(body: Bytes, headers: Headers, visible_at: i64) -> Self {
        Self { body, headers, visible_at, token: 0, attempts: 0, first_failure: None, key: None }
    }
}

/// One shard of a queue. Every message is in exactly one of two places: `ready`
/// (visible now, in send order) or `timed` (delayed, nacked with a delay, or leased:
/// keyed by the time it becomes claimable), except an entry with an order key behind
/// another of its key, which waits in its key's line until the one before it leaves.
/// A claim moves what came due from `timed` to `ready`, then takes from the front of
/// `ready`.
#[derive(Debug, Default)]
struct State {
    entries: HashMap<u64, Entry, BuildHasherDefault<FxHasher>>,
    ready: VecDeque<u64>,
    timed: BTreeSet<(i64, u64)>,
    /// Each order key's entries in send order; only the first is ever scheduled.
    lines: HashMap<Arc<str>, VecDeque<u64>, BuildHasherDefault<FxHasher>>,
}

impl State {
    fn push(&mut self, seq: u64, entry: Entry, now: i64) {
        if let Some(key) = &entry.key {
            let line = self.lines.entry(Arc::clone(key)).or_default();
            line.push_back(seq);
            if line.len() > 1 {
                // Scheduled when the one before it leaves.
                self.entries.insert(seq, entry);
                return;
            }
        }
        self.schedule(entry.visible_at, seq, now);
        self.entries.insert(seq, entry);
    }

    /// Takes `seq` out of its key's line; when it led the line, the next one in it is
    /// scheduled.
    fn unlink(&mut self, seq: u64, key: Option<&Arc<str>>, now: i64) {
        let Some(key) = key else { return };
        let Some(line) = self.lines.get_mut(key) else { return };
        let led = line.front() == Some(&seq);
        line.retain(|&s| s != seq);
        match line.front().copied() {
            None => {
                self.lines.remove(key);
            }
            Some(next) if led => {
                if let Some(at) = self.entries.get(&next).map(|e| e.visible_at) {
                    self.schedule(at, next, now);
                }
            }
            Some(_) => {}
        }
    }

    /// Files `seq` under the time it becomes claimable.
    fn schedule(&mut self, at: i64, seq: u64, now: i64) {
        if at <= now {
            self.ready.push_back(seq);
        } else {
            self.timed.insert((at, seq));
        }
    }

    /// Moves what came due by `now` to `ready`.
    fn promote(&mut self, now: i64) {
        while let Some(&(at, seq)) = self.timed.first()
            && at <= now
        {
            self.timed.pop_first();
            self.ready.push_back(seq);
        }
    }

    /// The entry if `token` holds its lease at `now`.
    fn held(&mut self, seq: u64, token: u64, now: i64) -> Option<&mut Entry> {
        self.entries.get_mut(&seq).filter(|e| e.token == token && e.visible_at > now)
    }

    /// Removes and returns the entry if `token` holds its lease at `now`.
    fn take_held(&mut self, seq: u64, token: u64, now: i64) -> Option<Entry> {
        let at = self.held(seq, token, now)?.visible_at;
        self.timed.remove(&(at, seq));
        let e = self.entries.remove(&seq)?;
        self.unlink(seq, e.key.as_ref(), now);
        Some(e)
    }

    /// Removes and returns the entry, whatever its state.
    fn take(&mut self, seq: u64, now: i64) -> Option<Entry> {
        let e = self.entries.remove(&seq)?;
        self.timed.remove(&(e.visible_at, seq));
        self.unlink(seq, e.key.as_ref(), now);
        Some(e)
    }

    /// Moves the held lease of `seq` to `at`; `false` when not held.
    fn reschedule(&mut self, seq: u64, token: u64, now: i64, at: i64, update: impl FnOnce(&mut Entry)) -> bool {
        let Some(e) = self.held(seq, token, now) else { return false };
        let old = e.visible_at;
        e.visible_at = at;
        update(e);
        self.timed.remove(&(old, seq));
        self.schedule(at, seq, now);
        true
    }

    /// When the next timed message becomes claimable.
    fn next_due(&self) -> Option<i64> {
        self.timed.first().map(|&(at, _)| at)
    }
}

/// A shard on a cache line of its own, so two cores working on neighbouring shards do
/// not slow each other down.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<State>);

impl Shard {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How many shards a queue has: one per core, at most 8.
static SHARDS: LazyLock<usize> =
    LazyLock::new(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).clamp(1, 8));

thread_local! {
    /// Where this thread's next receive starts: threads start apart, and each moves on
    /// one shard per receive, so every shard is the first choice of every S-th receive
    /// and none is left waiting while another stays busy.
    static START: std::cell::Cell<usize> = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        std::cell::Cell::new(NEXT.fetch_add(1, Ordering::Relaxed))
    };
}

/// The shard the calling thread's receive starts at.
fn start_shard() -> usize {
    START.with(|s| {
        let at = s.get();
        s.set(at.wrapping_add(1));
        at
    })
}

/// One queue: its shards, one sequence for all of them (ids and age order), the dedup
/// keys, and one notification for receivers waiting on any shard.
#[derive(Debug)]
struct Shared {
    shards: Box<[Shard]>,
    seq: AtomicU64,
    next_send: AtomicUsize,
    dedup: Mutex<Dedup>,
    notify: Notify,
}

/// Dedup keys and when each expires. Expired keys are swept when the map has doubled
/// since the last sweep: amortised O(1) per send, where sweeping on every send past a
/// fixed size made a busy queue's sends cost the whole map each.
#[derive(Debug, Default)]
struct Dedup {
    seen: rustc_hash::FxHashMap<String, i64>,
    sweep_at: usize,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            shards: (0..*SHARDS).map(|_| Shard::default()).collect(),
            seq: AtomicU64::new(0),
            next_send: AtomicUsize::new(0),
            dedup: Mutex::default(),
            notify: Notify::new(),
        }
    }
}

impl Shared {
    fn shard(&self, i: usize) -> &Shard {
        &self.shards[i % self.shards.len()]
    }

    /// Appends entries (visible now or later) to the next shard in turn, under one lock,
    /// and wakes waiting receivers. Entries with an order key go to their key's shard,
    /// so that one line holds all of a key's entries.
    fn push_all(&self, entries: impl IntoIterator<Item = Entry>, now: i64) {
        let shard = self.shard(self.next_send.fetch_add(1, Ordering::Relaxed));
        let mut keyed = Vec::new();
        {
            let mut st = shard.lock();
            for e in entries {
                let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
                if e.key.is_some() {
                    keyed.push((seq, e));
                } else {
                    st.push(seq, e, now);
                }
            }
        }
        for (seq, e) in keyed {
            let shard = self.key_shard(e.key.as_deref().unwrap_or_default());
            shard.lock().push(seq, e, now);
        }
        self.notify.notify_waiters();
    }

    /// The shard that holds `key`'s entries.
    fn key_shard(&self, key: &str) -> &Shard {
        use std::hash::BuildHasher as _;
        let h = BuildHasherDefault::<FxHasher>::default().hash_one(key);
        self.shard(usize::try_from(h % self.shards.len() as u64).unwrap_or(0))
    }

    /// The oldest `limit` messages as (sequence, shard), whatever their state.
    fn oldest(&self, limit: usize) -> Vec<(u64, usize)> {
        let mut all: Vec<(u64, usize)> = Vec::new();
        for (i, shard) in self.shards.iter().enumerate() {
            all.extend(shard.lock().entries.keys().map(|&seq| (seq, i)));
        }
        all.sort_unstable();
        all.truncate(limit);
        all
    }
}

static QUEUES: LazyLock<Mutex<HashMap<String, Arc<Shared>>>> = LazyLock::new(Mutex::default);

fn shared(name: &str) -> Arc<Shared> {
    let mut all = QUEUES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = all.get(name) {
        return Arc::clone(s);
    }
    Arc::clone(all.entry(name.to_owned()).or_default())
}

/// What one handle holds: its options and the two queues it uses, looked up once.
#[derive(Debug)]
struct Handle {
    options: QueueOptions,
    queue: Arc<Shared>,
    dlq: Arc<Shared>,
}

/// An in-process queue.
pub struct MemoryQueue {
    inner: Arc<Handle>,
}

impl MemoryQueue {
    /// Opens `memory://NAME?…`.
    pub fn from_url(url: &str) -> Result<QueueHandle<Self>> {
        let mut u = QueueUrl::parse(url)?;
        if !SCHEMES.contains(&u.scheme()) {
            return Err(Error::invalid_input(format!("not a memory url: scheme {:?}", u.scheme())));
        }
        if let Some(host) = u.url().host_str().filter(|_| !u.queue_given()).map(str::to_owned) {
            u.set_queue(&host);
        }
        u.finish("memory")?;
        Self::with_options(u.options)
    }

    /// Opens the in-process queue described by `options`.
    pub fn with_options(options: QueueOptions) -> Result<QueueHandle<Self>> {
        options.validate()?;
        let (queue, dlq) = (shared(&options.queue), shared(&options.dead_letter));
        Ok(QueueHandle::new(Self { inner: Arc::new(Handle { options, queue, dlq }) }))
    }

    /// The options.
    pub fn options(&self) -> &QueueOptions {
        &self.inner.options
    }

    /// Leases up to `max` claimable messages; dead-letters, instead of handing out, those
    /// whose leases ran out on each allowed attempt. Also returns when the next timed
    /// message comes due.
    fn claim(&self, max: usize) -> (Vec<Delivery>, Option<i64>) {
        let h = &self.inner;
        let now = now_ms();
        let vt = h.options.visibility_timeout;
        let until = now + ms(vt);
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        let max_attempts = h.options.max_attempts;
        let mut taken = Vec::with_capacity(max.min(1024));
        let mut exhausted = Vec::new();
        let mut next_due: Option<i64> = None;
        let home = start_shard();
        for i in 0..h.queue.shards.len() {
            if taken.len() >= max {
                break;
            }
            let shard = (home + i) % h.queue.shards.len();
            let mut guard = h.queue.shards[shard].lock();
            let st = &mut *guard;
            st.promote(now);
            while taken.len() < max {
                let Some(seq) = st.ready.pop_front() else { break };
                // `ready` may name a message that was redriven away meanwhile.
                let Some(e) = st.entries.get_mut(&seq) else { continue };
                if e.attempts > 0 && e.first_failure.is_none() {
                    e.first_failure = Some(now);
                }
                if e.attempts >= max_attempts {
                    // Delivered max_attempts times and never settled: its leases ran out.
                    exhausted.extend(st.take(seq, now));
                    continue;
                }
                st.timed.insert((until, seq));
                e.visible_at = until;
                e.token = token;
                e.attempts += 1;
                taken.push((shard, seq, e.body.clone(), e.headers.clone(), e.attempts));
            }
            next_due = match (next_due, st.next_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if !exhausted.is_empty() {
            self.dead_letter_expired(exhausted, now);
        }
        // Deliveries are built outside the locks.
        let deadline = std::time::Instant::now() + vt;
        let lease = Arc::new(Lease { handle: Arc::clone(h), token });
        let deliveries = taken
            .into_iter()
            .map(|(shard, seq, body, headers, attempt)| {
                let acker = MemoryAcker { lease: Arc::clone(&lease), shard, seq, attempt };
                Delivery::leased_until(DeliveryId::number(seq), body, headers, attempt, vt, deadline, Box::new(acker))
            })
            .collect();
        (deliveries, next_due)
    }

    fn dead_letter_expired(&self, exhausted: Vec<Entry>, now: i64) {
        let queue = &self.inner.options.queue;
        let moved = exhausted.into_iter().map(|e| {
            let reason = format!("lease expired on each of {} attempts", e.attempts);
            let headers =
                dead_letter_headers(&e.headers, &reason, queue, e.attempts, e.first_failure.and_then(time_of));
            Entry::fresh(e.body, headers, now)
        });
        self.inner.dlq.push_all(moved, now);
    }
}

impl Debug for MemoryQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryQueue").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

impl Display for MemoryQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memory(process/{})", self.inner.options.queue)
    }
}

#[async_trait]
impl HealthCheck for MemoryQueue {
    fn name(&self) -> String {
        format!("queue:{BACKEND}")
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = std::time::Instant::now();
        drop(self.inner.queue.shard(0).lock());
        Ok(CheckOutcome::new(started.elapsed()).with_version(format!("platform-queue {}", env!("CARGO_PKG_VERSION"))))
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    fn queue_name(&self) -> &str {
        &self.inner.options.queue
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            ordered_per_key: true,
            max_body_bytes: 16 * 1024 * 1024,
            dedup_window: Some(self.inner.options.dedup_window),
            ..Capabilities::default()
        }
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.send_batch(vec![message]).await
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        let now = now_ms();
        let q = &self.inner.queue;
        let mut messages = messages;
        if messages.iter().any(|m| m.dedup_key.is_some()) {
            let dedup_until = now + ms(self.inner.options.dedup_window);
            let mut dedup = q.dedup.lock().unwrap_or_else(|e| e.into_inner());
            if dedup.seen.len() > dedup.sweep_at.max(10_000) {
                dedup.seen.retain(|_, until| *until > now);
                dedup.sweep_at = dedup.seen.len() * 2;
            }
            let seen = &mut dedup.seen;
            messages.retain_mut(|m| match m.dedup_key.take() {
                Some(key) if seen.get(&key).is_some_and(|until| *until > now) => false,
                Some(key) => {
                    seen.insert(key, dedup_until);
                    true
                }
                None => true,
            });
        }
        q.push_all(
            messages.into_iter().map(|m| Entry {
                key: m.order_key.map(Arc::from),
                ..Entry::fresh(m.body, m.headers, now + m.delay.map(ms).unwrap_or(0))
            }),
            now,
        );
        Ok(())
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + options.wait;
        loop {
            // Created before the claim, so a send between the claim and the wait wakes it.
            let notified = self.inner.queue.notify.notified();
            let (got, next_due) = self.claim(options.max);
            if !got.is_empty() {
                return Ok(got);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(got);
            }
            // Wake for a send, for the next delayed or leased message coming due (the
            // earliest over every shard, read under each shard's lock during the claim),
            // or at the deadline.
            let wake = next_due
                .map(|at| now + Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0) + 1))
                .map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let dlq = &self.inner.dlq;
        Ok(dlq
            .oldest(limit)
            .into_iter()
            .filter_map(|(seq, shard)| {
                let st = dlq.shard(shard).lock();
                st.entries.get(&seq).map(|e| DeadLetter::new(seq.to_string(), e.body.clone(), e.headers.clone()))
            })
            .collect())
    }

    async fn redrive(&self, limit: usize) -> Result<usize> {
        let now = now_ms();
        let dlq = &self.inner.dlq;
        let moved: Vec<Entry> =
            dlq.oldest(limit).into_iter().filter_map(|(seq, shard)| dlq.shard(shard).lock().take(seq, now)).collect();
        let n = moved.len();
        self.inner.queue.push_all(moved.into_iter().map(|e| Entry::fresh(e.body, e.headers, now)), now);
        Ok(n)
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Settles one leased message: its sequence number and the token of the receive that
/// leased it.
struct MemoryAcker {
    lease: Arc<Lease>,
    shard: usize,
    seq: u64,
    attempt: u32,
}

/// What the deliveries of one receive share: the handle and the lease token. One
/// reference count per receive, touched by the thread that works the batch, instead of
/// one on the handle that every thread's deliveries would bounce between cores.
struct Lease {
    handle: Arc<Handle>,
    token: u64,
}

impl Debug for MemoryAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryAcker").field("seq", &self.seq).field("attempt", &self.attempt).finish()
    }
}

impl MemoryAcker {
    fn check(&self, held: bool, op: &'static str) -> Result<()> {
        if held {
            return Ok(());
        }
        Err(Error::conflict(format!("lease on message {} was lost (expired or settled elsewhere)", self.seq))
            .with_op(op))
    }

    /// Gives the lease back: visible at `visible_at`; `failed` records a first failure,
    /// `refund` takes back the attempt this delivery counted.
    fn give_back(&self, visible_at: i64, failed: bool, refund: bool, op: &'static str) -> Result<()> {
        let now = now_ms();
        let q = &self.lease.handle.queue;
        let held = self.lock().reschedule(self.seq, self.lease.token, now, visible_at, |e| {
            e.token = 0;
            if failed && e.first_failure.is_none() {
                e.first_failure = Some(now);
            }
            if refund {
                e.attempts = e.attempts.saturating_sub(1);
            }
        });
        if held {
            q.notify.notify_waiters();
        }
        self.check(held, op)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.lease.handle.queue.shard(self.shard).lock()
    }

    /// `other` when it is an acker of the same queue.
    fn peer<'a>(&self, other: &'a dyn Acker) -> Option<&'a Self> {
        other
            .as_any()
            .and_then(|any| any.downcast_ref::<Self>())
            .filter(|p| Arc::ptr_eq(&p.lease.handle.queue, &self.lease.handle.queue))
    }

    fn move_to_dlq(&self, reason: &str, op: &'static str) -> Result<()> {
        let now = now_ms();
        let taken = self.lock().take_held(self.seq, self.lease.token, now);
        let Some(e) = taken else { return self.check(false, op) };
        let first = time_of(e.first_failure.unwrap_or(now));
        let headers = dead_letter_headers(&e.headers, reason, &self.lease.handle.options.queue, self.attempt, first);
        self.lease.handle.dlq.push_all([Entry::fresh(e.body, headers, now)], now);
        Ok(())
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<()> {
        let taken = self.lock().take_held(self.seq, self.lease.token, now_ms());
        self.check(taken.is_some(), "ack")
    }

    async fn nack(&self, delay: Option<Duration>, reason: Option<&str>) -> Result<bool> {
        let max = self.lease.handle.options.max_attempts;
        if self.attempt >= max {
            return self.move_to_dlq(&exhausted_reason(max, reason), "nack").map(|()| true);
        }
        let visible_at = now_ms() + delay.map(ms).unwrap_or(0);
        self.give_back(visible_at, true, false, "nack").map(|()| false)
    }

    async fn dead_letter(&self, reason: &str) -> Result<()> {
        self.move_to_dlq(reason, "dead_letter")
    }

    async fn extend(&self, lease: Duration) -> Result<()> {
        let now = now_ms();
        let held = self.lock().reschedule(self.seq, self.lease.token, now, now + ms(lease), |_| {});
        self.check(held, "extend")
    }

    async fn release(&self) -> Result<()> {
        self.give_back(now_ms(), false, true, "release")
    }

    async fn ack_with(&self, others: &[&dyn Acker]) -> Vec<Result<()>> {
        let peers: Vec<&Self> = others.iter().filter_map(|a| self.peer(*a)).collect();
        if peers.len() != others.len() {
            let all = std::iter::once(self.ack()).chain(others.iter().map(|a| a.ack()));
            return futures::future::join_all(all).await;
        }
        // Every acker of the same queue settles under one lock per shard.
        let group: Vec<&Self> = std::iter::once(self).chain(peers).collect();
        let now = now_ms();
        let mut taken: Vec<Option<Entry>> = Vec::with_capacity(group.len());
        taken.resize_with(group.len(), || None);
        let shards = &self.lease.handle.queue.shards;
        for (i, shard) in shards.iter().enumerate() {
            let mut mine = group.iter().zip(taken.iter_mut()).filter(|(a, _)| a.shard % shards.len() == i).peekable();
            if mine.peek().is_none() {
                continue;
            }
            let mut st = shard.lock();
            for (a, slot) in mine {
                *slot = st.take_held(a.seq, a.lease.token, now);
            }
        }
        // What was taken is freed outside the locks.
        group.iter().zip(taken).map(|(a, e)| a.check(e.is_some(), "ack")).collect()
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::QueueExt;

    fn queue(name: &str) -> QueueHandle<MemoryQueue> {
        MemoryQueue::with_options(QueueOptions::new(name).with_max_attempts(1)).expect("queue")
    }

    /// Batches land on different shards; receivers on two threads still get every
    /// message exactly once, and grouped acks settle across shards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_shard_is_drained_exactly_once() {
        let q = Arc::new(queue("memory-unit-shards"));
        for b in 0..50 {
            q.send_batch((0..20).map(|i| Message::new(format!("{b}-{i}"))).collect()).await.expect("send");
        }
        let receivers: Vec<_> = (0..4)
            .map(|_| {
                let q = Arc::clone(&q);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    loop {
                        let got = q.receive(ReceiveOptions::new(7, Duration::ZERO)).await.expect("receive");
                        if got.is_empty() {
                            return seen;
                        }
                        q.ack_all(&got).await.expect("ack");
                        seen.extend(got.iter().map(|d| d.body().clone()));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for r in receivers {
            all.extend(r.await.expect("receiver"));
        }
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!((all.len(), distinct.len()), (1000, 1000));
        assert!(q.receive(ReceiveOptions::new(10, Duration::ZERO)).await.expect("receive").is_empty());
    }

    /// A busy queue serves every shard: messages already waiting are received within a
    /// few receives even while new ones keep arriving.
    #[tokio::test]
    async fn no_shard_is_starved() {
        let q = queue("memory-unit-fair");
        for i in 0..10 {
            q.send(Message::new(format!("old-{i}"))).await.expect("send");
        }
        let mut old = 0;
        for n in 0..20 {
            // Two new for each one taken: no shard ever runs dry.
            q.send_batch(vec![Message::new(format!("new-{n}"))]).await.expect("send");
            q.send_batch(vec![Message::new(format!("new-{n}"))]).await.expect("send");
            let d = q.receive_one(Duration::ZERO).await.expect("receive").expect("one");
            old += usize::from(d.body().starts_with(b"old-"));
            d.ack().await.expect("ack");
        }
        assert_eq!(old, 10, "every waiting message within 20 receives ({} shards)", *SHARDS);
    }

    /// Dead letters from several shards come back oldest first, and redrive moves the
    /// oldest.
    #[tokio::test]
    async fn dead_letters_are_oldest_first_across_shards() {
        let q = queue("memory-unit-dlq-order");
        for i in 0..6 {
            q.send(Message::new(format!("m{i}"))).await.expect("send");
            let d = q.receive_one(Duration::ZERO).await.expect("receive").expect("one");
            d.dead_letter("no").await.expect("dead letter");
        }
        let bodies = |dls: Vec<DeadLetter>| dls.into_iter().map(|d| d.body).collect::<Vec<_>>();
        let want: Vec<Bytes> = (0..6).map(|i| Bytes::from(format!("m{i}"))).collect();
        assert_eq!(bodies(q.dead_letters(10).await.expect("dlq")), want);
        assert_eq!(bodies(q.dead_letters(2).await.expect("dlq")), want[..2]);
        assert_eq!(q.redrive(2).await.expect("redrive"), 2);
        assert_eq!(bodies(q.dead_letters(10).await.expect("dlq")), want[2..]);
    }
}
