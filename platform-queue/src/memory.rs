//! In-process queues: `memory://jobs`. Every handle opened with the same name in one
//! process shares the queue. Nothing survives the process.
//!
//! - [x] leases, attempts, nack with delay, extend, release
//! - [x] dead letters and redrive
//! - [x] delay, dedup, atomic batches
//! - [ ] ~~durable~~ (`capabilities().durable` is false)
//!
//! URL: `memory://NAME` or `memory://?queue=NAME`, plus the common parameters
//! (`visibility_timeout`, `max_attempts`, `dead_letter`, `dedup_window`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use platform_core::{Error, Result};
use rustc_hash::FxHasher;
use tokio::sync::Notify;

use crate::leased::{LeaseStore, LeasedQueue, NewMessage, StoredMessage};
use crate::url::{QueueOptions, QueueUrl};
use crate::{Capabilities, Headers};

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["memory"];

/// An in-process queue.
pub type MemoryQueue = LeasedQueue<MemoryStore>;

#[derive(Debug)]
struct Entry {
    body: Bytes,
    headers: Headers,
    visible_at: i64,
    token: Option<Arc<str>>,
    attempts: u32,
    first_failure: Option<i64>,
}

/// One queue. Every message is in exactly one of two places: `ready` (visible now, in
/// send order) or `timed` (delayed, nacked with a delay, or leased: keyed by the time it
/// becomes claimable). A claim moves what came due from `timed` to `ready`, then takes
/// from the front of `ready`.
#[derive(Debug, Default)]
struct State {
    seq: u64,
    entries: HashMap<u64, Entry, BuildHasherDefault<FxHasher>>,
    ready: VecDeque<u64>,
    timed: BTreeSet<(i64, u64)>,
    dedup: HashMap<String, i64>,
}

impl State {
    fn push(&mut self, entry: Entry, now: i64) {
        self.seq += 1;
        self.schedule(entry.visible_at, self.seq, now);
        self.entries.insert(self.seq, entry);
    }

    /// Files `seq` under the time it becomes claimable.
    fn schedule(&mut self, at: i64, seq: u64, now: i64) {
        if at <= now {
            self.ready.push_back(seq);
        } else {
            self.timed.insert((at, seq));
        }
    }

    /// Takes `seq` out of `timed`, where it was filed under `at`.
    fn unschedule(&mut self, at: i64, seq: u64) {
        self.timed.remove(&(at, seq));
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

    /// Removes the entry if `token` holds its lease at `now`.
    fn remove_held(&mut self, id: &str, token: &str, now: i64) -> bool {
        let Some((seq, e)) = self.held(id, token, now) else { return false };
        let at = e.visible_at;
        self.unschedule(at, seq);
        self.entries.remove(&seq);
        true
    }

    /// The entry if `token` holds its lease at `now`.
    fn held(&mut self, id: &str, token: &str, now: i64) -> Option<(u64, &mut Entry)> {
        let seq: u64 = id.parse().ok()?;
        let e = self.entries.get_mut(&seq)?;
        (e.visible_at > now && e.token.as_deref() == Some(token)).then_some((seq, e))
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    notify: Notify,
}

static QUEUES: LazyLock<Mutex<HashMap<String, Arc<Shared>>>> = LazyLock::new(Mutex::default);

fn shared(name: &str) -> Arc<Shared> {
    let mut all = QUEUES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = all.get(name) {
        return Arc::clone(s);
    }
    Arc::clone(all.entry(name.to_owned()).or_default())
}

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The store behind [`MemoryQueue`]: process-wide queues by name.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    /// The queues this handle uses most (its queue and dead-letter queue), looked up once.
    cached: Vec<(String, Arc<Shared>)>,
}

impl MemoryStore {
    fn queue(&self, name: &str) -> Arc<Shared> {
        match self.cached.iter().find(|(n, _)| n == name) {
            Some((_, q)) => Arc::clone(q),
            None => shared(name),
        }
    }
}

impl MemoryQueue {
    /// Opens `memory://NAME?…`.
    pub fn from_url(url: &str) -> Result<Self> {
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
    pub fn with_options(options: QueueOptions) -> Result<Self> {
        let cached = [&options.queue, &options.dead_letter].map(|n| (n.clone(), shared(n))).to_vec();
        Self::new(MemoryStore { cached }, options)
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { durable: false, max_body_bytes: 16 * 1024 * 1024, ..Capabilities::default() }
    }

    fn location(&self) -> String {
        "process".into()
    }

    async fn insert(&self, queue: &str, messages: Vec<NewMessage>, now_ms: i64, dedup_until_ms: i64) -> Result<()> {
        let q = self.queue(queue);
        {
            let mut st = lock(&q);
            if st.dedup.len() > 10_000 {
                st.dedup.retain(|_, until| *until > now_ms);
            }
            for m in messages {
                if let Some(key) = m.dedup_key {
                    if st.dedup.get(&key).is_some_and(|until| *until > now_ms) {
                        continue;
                    }
                    st.dedup.insert(key, dedup_until_ms);
                }
                let entry = Entry {
                    body: m.body,
                    headers: m.headers,
                    visible_at: m.visible_at_ms,
                    token: None,
                    attempts: 0,
                    first_failure: None,
                };
                st.push(entry, now_ms);
            }
        }
        q.notify.notify_waiters();
        Ok(())
    }

    async fn claim(
        &self,
        queue: &str,
        max: usize,
        now_ms: i64,
        lease_until_ms: i64,
        token: &str,
    ) -> Result<Vec<StoredMessage>> {
        let q = self.queue(queue);
        let token: Arc<str> = Arc::from(token);
        let mut taken = Vec::with_capacity(max.min(1024));
        {
            let mut guard = lock(&q);
            let st = &mut *guard;
            st.promote(now_ms);
            while taken.len() < max {
                let Some(seq) = st.ready.pop_front() else { break };
                // `ready` may name a message that was redriven away meanwhile.
                let Some(e) = st.entries.get_mut(&seq) else { continue };
                st.timed.insert((lease_until_ms, seq));
                e.visible_at = lease_until_ms;
                e.token = Some(Arc::clone(&token));
                if e.attempts > 0 && e.first_failure.is_none() {
                    e.first_failure = Some(now_ms);
                }
                e.attempts += 1;
                taken.push((seq, e.body.clone(), e.headers.clone(), e.attempts, e.first_failure));
            }
        }
        // Ids are made outside the lock.
        Ok(taken
            .into_iter()
            .map(|(seq, body, headers, attempts, first)| {
                StoredMessage::new(seq.to_string(), body, headers, attempts, first)
            })
            .collect())
    }

    async fn ack(&self, queue: &str, id: &str, token: &str, now_ms: i64) -> Result<bool> {
        let q = self.queue(queue);
        let mut st = lock(&q);
        Ok(st.remove_held(id, token, now_ms))
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
        let q = self.queue(queue);
        {
            let mut st = lock(&q);
            let Some((seq, e)) = st.held(id, token, now_ms) else { return Ok(false) };
            let old = e.visible_at;
            e.visible_at = visible_at_ms;
            e.token = None;
            if failed && e.first_failure.is_none() {
                e.first_failure = Some(now_ms);
            }
            if refund {
                e.attempts = e.attempts.saturating_sub(1);
            }
            st.unschedule(old, seq);
            st.schedule(visible_at_ms, seq, now_ms);
        }
        q.notify.notify_waiters();
        Ok(true)
    }

    async fn extend(&self, queue: &str, id: &str, token: &str, now_ms: i64, until_ms: i64) -> Result<bool> {
        let q = self.queue(queue);
        let mut st = lock(&q);
        let Some((seq, e)) = st.held(id, token, now_ms) else { return Ok(false) };
        let old = e.visible_at;
        e.visible_at = until_ms;
        st.unschedule(old, seq);
        st.schedule(until_ms, seq, now_ms);
        Ok(true)
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
        let entry = {
            let q = self.queue(queue);
            let mut st = lock(&q);
            let Some((seq, e)) = st.held(id, token, now_ms) else { return Ok(false) };
            let at = e.visible_at;
            st.unschedule(at, seq);
            st.entries.remove(&seq)
        };
        if let Some(mut e) = entry {
            e.headers = headers.clone();
            e.visible_at = now_ms;
            e.token = None;
            e.attempts = 0;
            e.first_failure = None;
            let t = self.queue(target);
            lock(&t).push(e, now_ms);
            t.notify.notify_waiters();
        }
        Ok(true)
    }

    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<StoredMessage>> {
        let q = self.queue(queue);
        let st = lock(&q);
        let mut seqs: Vec<u64> = st.entries.keys().copied().collect();
        seqs.sort_unstable();
        Ok(seqs
            .into_iter()
            .take(limit)
            .filter_map(|s| {
                let e = st.entries.get(&s)?;
                Some(StoredMessage::new(s.to_string(), e.body.clone(), e.headers.clone(), e.attempts, e.first_failure))
            })
            .collect())
    }

    async fn redrive(&self, from: &str, to: &str, limit: usize, now_ms: i64) -> Result<usize> {
        let moved: Vec<Entry> = {
            let f = self.queue(from);
            let mut st = lock(&f);
            let mut seqs: Vec<u64> = st.entries.keys().copied().collect();
            seqs.sort_unstable();
            seqs.truncate(limit);
            seqs.into_iter()
                .filter_map(|s| {
                    let e = st.entries.remove(&s)?;
                    st.unschedule(e.visible_at, s);
                    Some(e)
                })
                .collect()
        };
        let n = moved.len();
        let t = self.queue(to);
        {
            let mut st = lock(&t);
            for mut e in moved {
                e.visible_at = now_ms;
                e.token = None;
                e.attempts = 0;
                e.first_failure = None;
                st.push(e, now_ms);
            }
        }
        t.notify.notify_waiters();
        Ok(n)
    }

    async fn ping(&self) -> Result<Option<String>> {
        Ok(Some(format!("platform-queue {}", env!("CARGO_PKG_VERSION"))))
    }

    async fn wait_for_work(&self, queue: &str, timeout: Duration) {
        let q = self.queue(queue);
        let _ = tokio::time::timeout(timeout, q.notify.notified()).await;
    }

    fn groups_acks(&self) -> bool {
        false
    }

    async fn ack_many(&self, queue: &str, items: &[(&str, &str)], now_ms: i64) -> Result<Option<Vec<bool>>> {
        let q = self.queue(queue);
        let mut st = lock(&q);
        Ok(Some(items.iter().map(|(id, token)| st.remove_held(id, token, now_ms)).collect()))
    }

    fn max_poll_interval(&self) -> Duration {
        Duration::from_millis(50)
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
