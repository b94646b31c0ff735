//! The queue semantics written once over a store of leased rows.
//!
//! Backends without native leases (SQL databases, Redis) implement
//! [`LeaseStore`], a handful of atomic operations on messages that carry a
//! `visible_at` time, a lease token and an attempt count; [`LeasedQueue`] turns that
//! into the full [`Queue`] contract: leases, attempts, dead letters, delay, dedup,
//! waiting receives.

use std::fmt::{self, Debug, Display};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
pub use platform_core::clock::now_ms;
pub(crate) use platform_core::clock::{duration_ms as ms, from_ms as time_of};
use platform_core::{CheckOutcome, Error, HealthCheck, Result};

use crate::message::{Acker, dead_letter_headers, exhausted_reason};
use crate::options::QueueOptions;
use crate::{Capabilities, DeadLetter, Delivery, Headers, Message, Queue, ReceiveOptions};

/// A message as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredMessage {
    /// The store's id.
    pub id: String,
    /// The body.
    pub body: Bytes,
    /// The headers.
    pub headers: Headers,
    /// Deliveries so far (after a claim: this one included).
    pub attempts: u32,
    /// When it first failed, in ms since the epoch.
    pub first_failure_ms: Option<i64>,
}

impl StoredMessage {
    /// Built by stores.
    pub fn new(id: String, body: Bytes, headers: Headers, attempts: u32, first_failure_ms: Option<i64>) -> Self {
        Self { id, body, headers, attempts, first_failure_ms }
    }
}

/// A message to insert.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NewMessage {
    /// The body.
    pub body: Bytes,
    /// The headers.
    pub headers: Headers,
    /// Not claimable before this time (ms since the epoch).
    pub visible_at_ms: i64,
    /// Dedup key, when given.
    pub dedup_key: Option<String>,
    /// Order key, when given: a store that says [`Capabilities::ordered_per_key`]
    /// claims a message with one only when no earlier message with it is left in the
    /// queue (leased, waiting or delayed).
    pub order_key: Option<String>,
}

/// What a claim took, and whether claimable messages were left behind it.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Claimed {
    /// The claimed messages, attempts updated.
    pub messages: Vec<StoredMessage>,
    /// Whether claimable messages were left beyond them; `true` when the store cannot
    /// tell (see [`LeaseStore::claim`]).
    pub more: bool,
}

impl Claimed {
    /// What a claim took, and whether more is claimable.
    pub fn new(messages: Vec<StoredMessage>, more: bool) -> Self {
        Self { messages, more }
    }
}

/// A lease as its holder names it: message `id` of `queue`, held by `token`, at
/// `now_ms` (a lease is held while the message's token is `token` and its `visible_at`
/// is after `now_ms`).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Lease<'a> {
    /// The queue.
    pub queue: &'a str,
    /// The store's id of the message.
    pub id: &'a str,
    /// The holder's token.
    pub token: &'a str,
    /// Now, in ms since the epoch.
    pub now_ms: i64,
}

impl<'a> Lease<'a> {
    /// Names a lease.
    pub fn new(queue: &'a str, id: &'a str, token: &'a str, now_ms: i64) -> Self {
        Self { queue, id, token, now_ms }
    }
}

/// How the holder of a lease gives it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Release {
    /// It failed the message (a nack): the attempt counts, and the message's first
    /// failure is recorded when none was.
    Failed,
    /// It never started the message (a worker shutting down): the attempt this
    /// delivery counted is taken back, and no failure is recorded.
    Unstarted,
}

impl Release {
    /// Whether the first failure is recorded.
    pub fn records_failure(self) -> bool {
        self == Self::Failed
    }

    /// How many attempts are taken back: 1 for an unstarted message.
    pub fn refund(self) -> i32 {
        i32::from(self == Self::Unstarted)
    }
}

/// Atomic operations on leased messages. Every method is one atomic step on the
/// server (a transaction, a Lua script, a mutex), so that concurrent receivers in
/// many processes never get the same message while a lease holds.
///
/// A message is *claimable* when `visible_at <= now`. A lease is *held* by `token`
/// while the message's token is `token` and `visible_at > now`.
#[async_trait]
pub trait LeaseStore: Debug + Send + Sync + 'static {
    /// The backend's name.
    fn backend(&self) -> &'static str;

    /// The backend's limits (delay, dedup and the rest are provided by `LeasedQueue`):
    /// the defaults unless the store says otherwise.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Where it lives, for `Display` (`127.0.0.1:6379`, a file name).
    fn location(&self) -> String;

    /// Inserts all messages or none. A message whose dedup key was seen in `queue`
    /// with an expiry after `now_ms` is skipped; otherwise the key is remembered until
    /// `dedup_until_ms`.
    async fn insert(&self, queue: &str, messages: Vec<NewMessage>, now_ms: i64, dedup_until_ms: i64) -> Result<()>;

    /// Claims up to `max` claimable messages: sets their token, `visible_at =
    /// lease_until_ms`, adds one to their attempts, and sets first failure to `now_ms`
    /// when it is a redelivery and none was set. Returns them, attempts updated, and
    /// whether claimable messages were left beyond them ([`Claimed::more`], `true` when
    /// the store cannot tell). Told that the queue was emptied, the next receive waits for a wake-up (or
    /// its first poll) before claiming, as after a claim that found nothing; so a store
    /// says `false` only while its wake-ups reach waiting receives.
    async fn claim(&self, queue: &str, max: usize, now_ms: i64, lease_until_ms: i64, token: &str) -> Result<Claimed>;

    /// Deletes the message if the lease is held; `false` otherwise.
    async fn ack(&self, lease: Lease<'_>) -> Result<bool>;

    /// Acks several messages in one round trip: for each `(id, token)`, whether its
    /// lease was held and it is gone. Stores without a batch form return `None`, and
    /// acks then go one by one.
    async fn ack_many(&self, queue: &str, items: &[(&str, &str)], now_ms: i64) -> Result<Option<Vec<bool>>>;

    /// If the lease is held: clears it, sets `visible_at`, and, as `how` says, records
    /// the first failure (at the lease's `now_ms`, when none was) or takes back the
    /// attempt this delivery counted. `false` when the lease was lost.
    async fn release(&self, lease: Lease<'_>, visible_at_ms: i64, how: Release) -> Result<bool>;

    /// Moves the lease on to `until_ms` if it is held.
    async fn extend(&self, lease: Lease<'_>, until_ms: i64) -> Result<bool>;

    /// If the lease is held: moves the message to queue `target`, visible now, with
    /// `headers`, attempts 0 and no first failure.
    async fn move_to(&self, lease: Lease<'_>, target: &str, headers: &Headers) -> Result<bool>;

    /// Up to `limit` messages of `queue`, oldest first, without claiming them.
    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<StoredMessage>>;

    /// Moves up to `limit` messages from `from` to `to`, visible now, attempts 0.
    async fn redrive(&self, from: &str, to: &str, limit: usize, now_ms: i64) -> Result<usize>;

    /// A real round trip; the server version when known.
    async fn ping(&self) -> Result<Option<String>>;

    /// Waits until work may have arrived in `queue` or `timeout` passed. Stores with
    /// notifications wake early; others just sleep.
    async fn wait_for_work(&self, queue: &str, timeout: Duration);

    /// The longest pause between two polls of an idle queue.
    fn max_poll_interval(&self) -> Duration;

    /// Whether concurrent acks should be gathered into `ack_many` calls (stores
    /// behind a network round trip, the default); in-process stores ack directly.
    fn groups_acks(&self) -> bool {
        true
    }

    /// Releases connections.
    async fn close(&self) -> Result<()>;
}

/// A fresh lease token, unique across processes: a random base drawn once per process
/// plus a counter, so a receive costs no call into the OS's random source.
fn lease_token() -> Arc<str> {
    static BASE: std::sync::LazyLock<u128> = std::sync::LazyLock::new(|| uuid::Uuid::new_v4().as_u128());
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Arc::from(format!("{:032x}", BASE.wrapping_add(u128::from(n))))
}

struct Inner<S> {
    /// Shared by the queues made with [`LeasedQueue::sibling`].
    store: Arc<S>,
    options: QueueOptions,
    /// This handle's last claim found nothing, or left nothing claimable behind.
    idle: AtomicBool,
    acks: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<PendingAck>>,
}

type PendingAck = (String, Arc<str>, tokio::sync::oneshot::Sender<Result<bool>>);

impl<S: LeaseStore> Inner<S> {
    /// Acks through one flusher task per queue handle, which sends every ack waiting
    /// at that moment in one `ack_many`: concurrent acks share a round trip.
    async fn ack(self: &Arc<Self>, id: &str, token: &Arc<str>) -> Result<bool> {
        let tx = self.acks.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(flush_acks(Arc::downgrade(self), rx));
            tx
        });
        let (done, wait) = tokio::sync::oneshot::channel();
        if tx.send((id.to_owned(), Arc::clone(token), done)).is_err() {
            return self.store.ack(Lease::new(&self.options.queue, id, token, now_ms())).await;
        }
        match wait.await {
            Ok(result) => result,
            Err(_) => Err(Error::unavailable("ack flusher stopped")),
        }
    }
}

/// Grouped ack round trips a handle keeps in flight at once.
const ACK_BATCHES: usize = 4;

async fn flush_acks<S: LeaseStore>(
    inner: std::sync::Weak<Inner<S>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<PendingAck>,
) {
    // Batches overlap instead of queueing behind one another, up to ACK_BATCHES in
    // flight: past that, acks gather in the channel and the next batch takes them all.
    // Unbounded, acks that trickle in one by one (a worker's jobs finishing) each went
    // out alone, one round trip and one commit per message.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(ACK_BATCHES));
    loop {
        let permit = Arc::clone(&in_flight).acquire_owned().await.expect("never closed");
        let mut batch = Vec::new();
        if rx.recv_many(&mut batch, 1000).await == 0 {
            return;
        }
        let Some(inner) = inner.upgrade() else { return };
        tokio::spawn(async move {
            ack_batch(&inner, batch).await;
            drop(permit);
        });
    }
}

async fn ack_batch<S: LeaseStore>(inner: &Inner<S>, mut batch: Vec<PendingAck>) {
    let queue = inner.options.queue.as_str();
    let now = now_ms();
    let items: Vec<(&str, &str)> = batch.iter().map(|(id, t, _)| (id.as_str(), &**t)).collect();
    let grouped = if items.len() > 1 { inner.store.ack_many(queue, &items, now).await } else { Ok(None) };
    match grouped {
        Ok(Some(held)) => {
            for ((_, _, done), ok) in batch.drain(..).zip(held) {
                let _ = done.send(Ok(ok));
            }
        }
        Ok(None) => {
            let results = futures::future::join_all(
                batch.iter().map(|(id, t, _)| inner.store.ack(Lease::new(queue, id, t, now))),
            )
            .await;
            for ((_, _, done), r) in batch.drain(..).zip(results) {
                let _ = done.send(r);
            }
        }
        Err(e) => {
            for (_, _, done) in batch.drain(..) {
                let _ = done.send(Err(Error::new(e.kind(), e.to_string())));
            }
        }
    }
}

/// A [`Queue`] over a [`LeaseStore`]: the semantics every store-backed backend shares.
pub struct LeasedQueue<S: LeaseStore> {
    inner: Arc<Inner<S>>,
}

impl<S: LeaseStore> LeasedQueue<S> {
    /// A queue over `store` with `options`.
    pub fn new(store: S, options: QueueOptions) -> Result<Self> {
        Self::on(Arc::new(store), options)
    }

    fn on(store: Arc<S>, options: QueueOptions) -> Result<Self> {
        options.validate()?;
        let inner = Inner { store, options, idle: AtomicBool::new(false), acks: std::sync::OnceLock::new() };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Another queue on the same store (the same connections), described by
    /// `options`: a family of queues opened once. Closing one of them releases the
    /// connections only when it is the last of its family.
    pub fn sibling(&self, options: QueueOptions) -> Result<Self> {
        Self::on(Arc::clone(&self.inner.store), options)
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The options.
    pub fn options(&self) -> &QueueOptions {
        &self.inner.options
    }

    fn to_new(&self, m: Message, now: i64) -> NewMessage {
        NewMessage {
            body: m.body,
            headers: m.headers,
            visible_at_ms: now + m.delay.map(ms).unwrap_or(0),
            dedup_key: m.dedup_key,
            order_key: m.order_key,
        }
    }
}

impl<S: LeaseStore> Debug for LeasedQueue<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeasedQueue").field("store", &self.inner.store).field("options", &self.inner.options).finish()
    }
}

impl<S: LeaseStore> Display for LeasedQueue<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = self.inner.store.backend();
        write!(f, "{backend}({}/{})", self.inner.store.location(), self.inner.options.queue)
    }
}

#[async_trait]
impl<S: LeaseStore> HealthCheck for LeasedQueue<S> {
    fn name(&self) -> String {
        format!("queue:{}", self.inner.store.backend())
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = std::time::Instant::now();
        let version = self.inner.store.ping().await?;
        let outcome = CheckOutcome::new(started.elapsed());
        Ok(match version {
            Some(v) => outcome.with_version(v),
            None => outcome,
        })
    }
}

#[async_trait]
impl<S: LeaseStore> Queue for LeasedQueue<S> {
    fn queue_name(&self) -> &str {
        &self.inner.options.queue
    }

    fn backend(&self) -> &'static str {
        self.inner.store.backend()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { dedup_window: Some(self.inner.options.dedup_window), ..self.inner.store.capabilities() }
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.send_batch(vec![message]).await
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        let now = now_ms();
        let rows = messages.into_iter().map(|m| self.to_new(m, now)).collect();
        let until = now + ms(self.inner.options.dedup_window);
        self.inner.store.insert(&self.inner.options.queue, rows, now, until).await
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Delivery>> {
        let inner = &self.inner;
        let queue = inner.options.queue.as_str();
        let deadline = tokio::time::Instant::now() + options.wait;
        let mut pause = Duration::from_millis(5);
        if !options.wait.is_zero() && inner.idle.load(Ordering::Relaxed) {
            // The last claim found nothing: wait for a send's wake-up (or the first poll)
            // before asking again, as a receive that kept waiting would have.
            inner.store.wait_for_work(queue, pause.min(options.wait)).await;
            pause *= 2;
        }
        loop {
            let now = now_ms();
            let vt = inner.options.visibility_timeout;
            let token = lease_token();
            let Claimed { messages: claimed, more } =
                inner.store.claim(queue, options.max, now, now + ms(vt), &token).await?;
            inner.idle.store(claimed.is_empty() || !more, Ordering::Relaxed);
            let mut out = Vec::with_capacity(claimed.len());
            for m in claimed {
                if m.attempts > inner.options.max_attempts {
                    // Delivered max_attempts times and never settled: its leases ran out.
                    let reason = format!("lease expired on each of {} attempts", m.attempts - 1);
                    let headers = dead_letter_headers(
                        &m.headers,
                        &reason,
                        queue,
                        m.attempts - 1,
                        m.first_failure_ms.and_then(time_of),
                    );
                    let lease = Lease::new(queue, &m.id, &token, now);
                    inner.store.move_to(lease, &inner.options.dead_letter, &headers).await?;
                    continue;
                }
                let acker = LeaseAcker {
                    inner: Arc::clone(inner),
                    id: m.id.clone(),
                    token: Arc::clone(&token),
                    attempts: m.attempts,
                    first_failure_ms: m.first_failure_ms,
                    headers: m.headers.clone(),
                };
                out.push(Delivery::new(m.id, m.body, m.headers, m.attempts, vt, Box::new(acker)));
            }
            if !out.is_empty() {
                return Ok(out);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            let nap = pause.min(deadline - now);
            inner.store.wait_for_work(queue, nap).await;
            pause = (pause * 2).min(inner.store.max_poll_interval());
        }
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let rows = self.inner.store.peek(&self.inner.options.dead_letter, limit).await?;
        Ok(rows.into_iter().map(|m| DeadLetter::new(m.id, m.body, m.headers)).collect())
    }

    async fn redrive(&self, limit: usize) -> Result<usize> {
        let o = &self.inner.options;
        self.inner.store.redrive(&o.dead_letter, &o.queue, limit, now_ms()).await
    }

    async fn close(&self) -> Result<()> {
        if Arc::strong_count(&self.inner.store) > 1 {
            return Ok(()); // a sibling still uses the connections
        }
        self.inner.store.close().await
    }
}

struct LeaseAcker<S> {
    inner: Arc<Inner<S>>,
    id: String,
    token: Arc<str>,
    attempts: u32,
    first_failure_ms: Option<i64>,
    headers: Headers,
}

impl<S: LeaseStore> Debug for LeaseAcker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseAcker").field("backend", &self.inner.store.backend()).field("id", &self.id).finish()
    }
}

impl<S: LeaseStore> LeaseAcker<S> {
    fn lost(&self, op: &'static str) -> Error {
        Error::conflict(format!("lease on message {} was lost (expired or settled elsewhere)", self.id)).with_op(op)
    }

    fn check(&self, held: bool, op: &'static str) -> Result<()> {
        if held { Ok(()) } else { Err(self.lost(op)) }
    }

    /// This delivery's lease, at `now_ms`.
    fn lease(&self, now_ms: i64) -> Lease<'_> {
        Lease::new(&self.inner.options.queue, &self.id, &self.token, now_ms)
    }

    async fn move_to_dlq(&self, reason: &str, op: &'static str) -> Result<()> {
        let o = &self.inner.options;
        let now = now_ms();
        let first = self.first_failure_ms.unwrap_or(now);
        let headers = dead_letter_headers(&self.headers, reason, &o.queue, self.attempts, time_of(first));
        let held = self.inner.store.move_to(self.lease(now), &o.dead_letter, &headers).await?;
        self.check(held, op)
    }
}

#[async_trait]
impl<S: LeaseStore> Acker for LeaseAcker<S> {
    async fn ack(&self) -> Result<()> {
        let held = if self.inner.store.groups_acks() {
            self.inner.ack(&self.id, &self.token).await?
        } else {
            self.inner.store.ack(self.lease(now_ms())).await?
        };
        self.check(held, "ack")
    }

    async fn nack(&self, delay: Option<Duration>, reason: Option<&str>) -> Result<bool> {
        let max = self.inner.options.max_attempts;
        if self.attempts >= max {
            let why = exhausted_reason(max, reason);
            return self.move_to_dlq(&why, "nack").await.map(|()| true);
        }
        let now = now_ms();
        let visible = now + delay.map(ms).unwrap_or(0);
        let held = self.inner.store.release(self.lease(now), visible, Release::Failed).await?;
        self.check(held, "nack").map(|()| false)
    }

    async fn dead_letter(&self, reason: &str) -> Result<()> {
        self.move_to_dlq(reason, "dead_letter").await
    }

    async fn extend(&self, lease: Duration) -> Result<()> {
        let now = now_ms();
        let held = self.inner.store.extend(self.lease(now), now + ms(lease)).await?;
        self.check(held, "extend")
    }

    async fn release(&self) -> Result<()> {
        let now = now_ms();
        let held = self.inner.store.release(self.lease(now), now, Release::Unstarted).await?;
        self.check(held, "release")
    }

    async fn ack_with(&self, others: &[&dyn Acker]) -> Vec<Result<()>> {
        if others.is_empty() {
            return vec![self.ack().await];
        }
        // Ackers of this same queue handle go to the store in one `ack_many`.
        let same = |a: &&dyn Acker| {
            a.as_any()
                .and_then(|any| any.downcast_ref::<Self>())
                .filter(|peer| Arc::ptr_eq(&peer.inner, &self.inner))
                .is_some()
        };
        if !others.iter().all(same) {
            let all = std::iter::once(self.ack()).chain(others.iter().map(|a| a.ack()));
            return futures::future::join_all(all).await;
        }
        let peers = others.iter().filter_map(|a| a.as_any().and_then(|any| any.downcast_ref::<Self>()));
        let group: Vec<&Self> = std::iter::once(self).chain(peers).collect();
        let items: Vec<(&str, &str)> = group.iter().map(|a| (a.id.as_str(), &*a.token)).collect();
        match self.inner.store.ack_many(&self.inner.options.queue, &items, now_ms()).await {
            Ok(Some(held)) if held.len() == group.len() => {
                group.iter().zip(held).map(|(a, held)| a.check(held, "ack")).collect()
            }
            Ok(_) => futures::future::join_all(group.iter().map(|a| a.ack())).await,
            Err(e) => group.iter().map(|_| Err(Error::new(e.kind(), e.to_string()).with_op("ack"))).collect(),
        }
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}
