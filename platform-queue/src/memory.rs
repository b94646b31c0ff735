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

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use platform_core::{Error, Result};
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

#[derive(Debug, Default)]
struct State {
    seq: u64,
    entries: HashMap<u64, Entry>,
    index: BTreeSet<(i64, u64)>,
    dedup: HashMap<String, i64>,
}

impl State {
    fn push(&mut self, entry: Entry) {
        self.seq += 1;
        self.index.insert((entry.visible_at, self.seq));
        self.entries.insert(self.seq, entry);
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
                st.push(Entry {
                    body: m.body,
                    headers: m.headers,
                    visible_at: m.visible_at_ms,
                    token: None,
                    attempts: 0,
                    first_failure: None,
                });
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
        let mut st = lock(&q);
        let due: Vec<(i64, u64)> = st.index.iter().take_while(|(at, _)| *at <= now_ms).take(max).copied().collect();
        let token: Arc<str> = Arc::from(token);
        let mut out = Vec::with_capacity(due.len());
        for key in due {
            st.index.remove(&key);
            st.index.insert((lease_until_ms, key.1));
            let Some(e) = st.entries.get_mut(&key.1) else { continue };
            e.visible_at = lease_until_ms;
            e.token = Some(Arc::clone(&token));
            if e.attempts > 0 && e.first_failure.is_none() {
                e.first_failure = Some(now_ms);
            }
            e.attempts += 1;
            out.push(StoredMessage::new(
                key.1.to_string(),
                e.body.clone(),
                e.headers.clone(),
                e.attempts,
                e.first_failure,
            ));
        }
        Ok(out)
    }

    async fn ack(&self, queue: &str, id: &str, token: &str, now_ms: i64) -> Result<bool> {
        let q = self.queue(queue);
        let mut st = lock(&q);
        let Some((seq, e)) = st.held(id, token, now_ms) else { return Ok(false) };
        let at = e.visible_at;
        st.index.remove(&(at, seq));
        st.entries.remove(&seq);
        Ok(true)
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
            st.index.remove(&(old, seq));
            st.index.insert((visible_at_ms, seq));
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
        st.index.remove(&(old, seq));
        st.index.insert((until_ms, seq));
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
            st.index.remove(&(at, seq));
            st.entries.remove(&seq)
        };
        if let Some(mut e) = entry {
            e.headers = headers.clone();
            e.visible_at = now_ms;
            e.token = None;
            e.attempts = 0;
            e.first_failure = None;
            let t = self.queue(target);
            lock(&t).push(e);
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
                    st.index.remove(&(e.visible_at, s));
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
                st.push(e);
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

    async fn ack_many(&self, _queue: &str, _items: &[(String, Arc<str>)], _now_ms: i64) -> Result<Option<Vec<bool>>> {
        Ok(None)
    }

    fn max_poll_interval(&self) -> Duration {
        Duration::from_millis(50)
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
