//! The conformance suite every backend passes, public so other backends can run it.
//!
//! Not semver-stable beyond the crate's major version. Every behaviour creates its own
//! uniquely named queues, so behaviours run in parallel; what they leave behind is
//! acked, drained or expires.
//!
//! - [`Harness`] opens a queue by options (a fresh name each time, or the same name
//!   again for a second consumer); [`UrlHarness`] does it from a base URL.
//! - One `pub async fn` per behaviour, gated by capabilities and asserting error
//!   kinds, not messages.
//! - [`conformance_tests!`](crate::conformance_tests) writes one `#[tokio::test]` per
//!   behaviour for a backend, so failures read `redis::nack_with_delay_waits`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use platform_core::testkit::{eventually, server_url, unique_name};
use platform_core::{ErrorKind, Result, RetryPolicy};
use tokio_util::sync::CancellationToken;

use crate::{Delivery, Message, Queue, QueueExt, QueueOptions, ReceiveOptions, Worker, WorkerConfig};

#[doc(hidden)]
pub use platform_core::behaviour_tests;

/// Opens queues for the suite.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Opens the queue `options` describe (creating it where that is needed).
    async fn open(&self, options: &QueueOptions) -> Result<Arc<dyn Queue>>;

    /// The URL the harness opens queues from, for the URL behaviours; `None` skips them.
    fn base_url(&self) -> Option<&str> {
        None
    }
}

/// A harness that opens `base_url` with the options as query parameters.
#[derive(Debug, Clone)]
pub struct UrlHarness {
    base_url: String,
}

impl UrlHarness {
    /// A harness over `base_url` (`redis://127.0.0.1:6379`).
    pub fn new(base_url: impl Into<String>) -> Self {
        Self { base_url: base_url.into() }
    }

    /// A harness over `PLATFORM_TEST_<NAME>_URL`; `None` (the test is skipped, or
    /// fails under `PLATFORM_TEST_REQUIRE_ALL=1`) when unset.
    #[track_caller]
    pub fn from_env(name: &str) -> Option<Self> {
        server_url(name).map(Self::new)
    }

    /// The URL for `options`.
    pub fn url(&self, options: &QueueOptions) -> String {
        let sep = if self.base_url.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}queue={}&visibility_timeout={}ms&max_attempts={}&dead_letter={}&dedup_window={}ms",
            self.base_url,
            options.queue,
            options.visibility_timeout.as_millis(),
            options.max_attempts,
            options.dead_letter,
            options.dedup_window.as_millis()
        )
    }
}

#[async_trait]
impl Harness for UrlHarness {
    async fn open(&self, options: &QueueOptions) -> Result<Arc<dyn Queue>> {
        crate::open(&self.url(options)).await
    }

    fn base_url(&self) -> Option<&str> {
        Some(&self.base_url)
    }
}

/// Options for a fresh queue: unique name, 30 s lease, 5 attempts.
pub fn fresh() -> QueueOptions {
    QueueOptions::new(unique_name("conf"))
}

const LONG: Duration = Duration::from_secs(10);

async fn one(q: &dyn Queue, wait: Duration) -> Option<Delivery> {
    q.receive(ReceiveOptions::new(1, wait)).await.expect("receive").pop()
}

async fn must_get(q: &dyn Queue) -> Delivery {
    one(q, LONG).await.expect("a message within 10s")
}

/// Receives until `n` distinct bodies arrived (or 10 s passed), acking each batch at
/// once. A redelivered duplicate (at least once allows it) is acked and left out, so
/// it can neither stand in for a lost message nor count twice.
async fn drain(q: &dyn Queue, n: usize) -> Vec<(Bytes, BTreeMap<String, String>)> {
    drain_within(q, n, LONG).await
}

/// Like [`drain`], waiting up to `within`.
async fn drain_within(q: &dyn Queue, n: usize, within: Duration) -> Vec<(Bytes, BTreeMap<String, String>)> {
    let mut out: Vec<(Bytes, BTreeMap<String, String>)> = Vec::new();
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < n && tokio::time::Instant::now() < deadline {
        let got = q.receive(ReceiveOptions::new(n - out.len(), Duration::from_millis(500))).await.expect("receive");
        // Acked together, well inside the lease even on a slow server.
        q.ack_all(&got).await.expect("ack");
        for d in &got {
            if seen.insert(d.body().clone()) {
                out.push((d.body().clone(), d.headers().clone()));
            }
        }
    }
    out
}

/// Bodies (empty, non-UTF-8, the largest allowed) and headers (unicode, quotes,
/// spaces) arrive exactly as sent.
pub async fn round_trip_is_exact(h: &dyn Harness) {
    let q = h.open(&fresh()).await.expect("open");
    let caps = q.capabilities();
    let bodies: Vec<Bytes> = vec![
        Bytes::new(),
        Bytes::from_static(b"hello"),
        Bytes::from_static(&[0, 159, 146, 150, 255, 0xc3, 0x28]),
        Bytes::from(vec![b'x'; caps.max_body_bytes]),
    ];
    let headers = [
        ("x-correlation-id", "c-1"),
        ("weird", "üñíçødé \"quoted\" 'single' ; = , :"),
        ("with.dots_and-dashes", " leading and trailing spaces "),
        ("empty", ""),
    ];
    for body in &bodies {
        let mut m = Message::new(body.clone());
        for (k, v) in headers {
            m = m.with_header(k, v);
        }
        q.send(m).await.expect("send");
        let d = must_get(&*q).await;
        assert_eq!(d.body().len(), body.len());
        assert!(d.body() == body, "body differs");
        for (k, v) in headers {
            assert_eq!(d.header(k), Some(v), "header {k}");
        }
        assert_eq!(d.attempt(), 1);
        d.ack().await.expect("ack");
    }
}

/// Oversized bodies, bad header names, too large batches and a bad message inside a
/// batch fail with `InvalidInput` before anything is sent.
pub async fn bad_input_is_rejected_before_sending(h: &dyn Harness) {
    let q = h.open(&fresh()).await.expect("open");
    let caps = q.capabilities();
    let kind = |r: Result<()>| r.expect_err("should fail").kind();
    assert_eq!(kind(q.send(Message::new(vec![0u8; caps.max_body_bytes + 1])).await), ErrorKind::InvalidInput);
    assert_eq!(kind(q.send(Message::new("x").with_header("bad name", "v")).await), ErrorKind::InvalidInput);
    assert_eq!(kind(q.send(Message::new("x").with_header("k", "line\nbreak")).await), ErrorKind::InvalidInput);
    let batch = vec![Message::new("ok"), Message::new(vec![0u8; caps.max_body_bytes + 1])];
    assert_eq!(kind(q.send_batch(batch).await), ErrorKind::InvalidInput);
    let batch: Vec<Message> = (0..=caps.max_batch).map(|i| Message::new(i.to_string())).collect();
    assert_eq!(kind(q.send_batch(batch).await), ErrorKind::InvalidInput);
    let zero = q.receive(ReceiveOptions::new(0, Duration::ZERO)).await;
    assert_eq!(zero.expect_err("max 0").kind(), ErrorKind::InvalidInput);
    assert!(one(&*q, Duration::from_millis(300)).await.is_none(), "a rejected batch sent something");
}

/// Ack removes; a second ack or nack is `Conflict`, not a panic.
pub async fn ack_removes_and_second_settle_conflicts(h: &dyn Harness) {
    let q = h.open(&fresh().with_visibility_timeout(Duration::from_secs(1))).await.expect("open");
    q.send_bytes("a").await.expect("send");
    let d = must_get(&*q).await;
    d.ack().await.expect("ack");
    assert!(d.is_settled());
    assert_eq!(d.ack().await.expect_err("second ack").kind(), ErrorKind::Conflict);
    assert_eq!(d.nack(None).await.expect_err("nack after ack").kind(), ErrorKind::Conflict);
    assert_eq!(d.extend(Duration::from_secs(1)).await.expect_err("extend after ack").kind(), ErrorKind::Conflict);
    // Past the lease, nothing comes back.
    assert!(one(&*q, Duration::from_millis(1500)).await.is_none(), "an acked message came back");
}

/// An ack after the lease ran out (and someone else got the message) is `Conflict`.
pub async fn ack_after_lease_lost_conflicts(h: &dyn Harness) {
    // Long enough that the current holder's ack lands inside its lease on a loaded
    // machine (at 500 ms it once did not), short enough to keep the test quick.
    let q = h.open(&fresh().with_visibility_timeout(Duration::from_millis(1500))).await.expect("open");
    q.send_bytes("a").await.expect("send");
    let first = must_get(&*q).await;
    let second = must_get(&*q).await;
    assert_eq!(second.attempt(), 2);
    assert_eq!(first.ack().await.expect_err("stale ack").kind(), ErrorKind::Conflict);
    second.ack().await.expect("current holder acks");
    // In a group of acks, a stale one fails alone; the others go through.
    q.send_batch(vec![Message::new("b"), Message::new("c")]).await.expect("send");
    let stale = must_get(&*q).await;
    let mut group = vec![must_get(&*q).await];
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let fresh = eventually(LONG, || async { one(&*q, Duration::from_millis(200)).await }).await.expect("redelivered");
    assert_eq!(fresh.attempt(), 2);
    group.push(fresh);
    let err = q.ack_all(&group).await.expect_err("one lease in the group was lost");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(group[1].is_settled(), "the current holder's ack went through");
    drop(stale);
}

/// Nack makes the message visible again at once, attempt one higher.
pub async fn nack_redelivers(h: &dyn Harness) {
    let q = h.open(&fresh()).await.expect("open");
    q.send_bytes("a").await.expect("send");
    let d = must_get(&*q).await;
    d.nack(None).await.expect("nack");
    let again = one(&*q, Duration::from_secs(3)).await.expect("redelivered soon after nack");
    assert_eq!(again.body().as_ref(), b"a");
    assert_eq!(again.attempt(), 2);
    again.ack().await.expect("ack");
}

/// `nack(Some(d))` does not redeliver before `d`.
pub async fn nack_with_delay_waits(h: &dyn Harness) {
    let q = h.open(&fresh()).await.expect("open");
    if !q.capabilities().nack_delay {
        q.send_bytes("a").await.expect("send");
        let d = must_get(&*q).await;
        let err = d.nack(Some(Duration::from_secs(1))).await.expect_err("nack delay unsupported");
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        return;
    }
    q.send_bytes("a").await.expect("send");
    let d = must_get(&*q).await;
    let started = std::time::Instant::now();
    d.nack(Some(Duration::from_millis(1500))).await.expect("nack");
    assert!(one(&*q, Duration::from_millis(1000)).await.is_none(), "redelivered before its delay");
    let again = must_get(&*q).await;
    assert!(started.elapsed() >= Duration::from_millis(1400), "{:?}", started.elapsed());
    again.ack().await.expect("ack");
}

/// The attempt counter starts at 1 and counts every redelivery, nack or lease expiry.
pub async fn attempts_count_every_delivery(h: &dyn Harness) {
    let q =
        h.open(&fresh().with_visibility_timeout(Duration::from_millis(500)).with_max_attempts(10)).await.expect("open");
    q.send_bytes("a").await.expect("send");
    for expected in 1..=3 {
        let d = must_get(&*q).await;
        assert_eq!(d.attempt(), expected);
        d.nack(None).await.expect("nack");
    }
    let d = must_get(&*q).await;
    assert_eq!(d.attempt(), 4);
    drop(d); // lease expiry counts too
    let d = must_get(&*q).await;
    assert_eq!(d.attempt(), 5);
    d.ack().await.expect("ack");
}

/// After `max_attempts` failures the message is in the dead-letter queue with its
/// history; redrive puts it back with a fresh count.
pub async fn dead_letter_after_max_attempts_and_redrive(h: &dyn Harness) {
    let options = fresh().with_max_attempts(2);
    let q = h.open(&options).await.expect("open");
    q.send(Message::new("poison").with_header("k", "v")).await.expect("send");
    let d = must_get(&*q).await;
    d.nack_with_reason(None, "boom 1").await.expect("nack 1");
    let d = must_get(&*q).await;
    assert_eq!(d.attempt(), 2);
    assert!(d.nack_with_reason(None, "boom 2").await.expect("nack 2"), "the last nack dead-letters");
    assert!(one(&*q, Duration::from_millis(300)).await.is_none(), "dead letter still in the queue");
    let dead = eventually(LONG, || async { q.dead_letters(10).await.ok().filter(|d| !d.is_empty()) })
        .await
        .expect("a dead letter");
    assert_eq!(dead.len(), 1);
    let dl = &dead[0];
    assert_eq!(dl.body.as_ref(), b"poison");
    assert_eq!(dl.headers.get("k").map(String::as_str), Some("v"));
    assert!(dl.reason().expect("reason").contains("boom 2"), "{:?}", dl.reason());
    assert_eq!(dl.original_queue(), Some(options.queue.as_str()));
    assert_eq!(dl.attempts(), Some(2));
    assert!(dl.first_failure().is_some());
    assert_eq!(q.redrive(10).await.expect("redrive"), 1);
    let back = must_get(&*q).await;
    assert_eq!(back.body().as_ref(), b"poison");
    assert_eq!(back.attempt(), 1);
    back.ack().await.expect("ack");
    assert!(q.dead_letters(10).await.expect("dead letters").is_empty());
}

/// `dead_letter(reason)` moves a message at once.
pub async fn explicit_dead_letter(h: &dyn Harness) {
    let q = h.open(&fresh()).await.expect("open");
    q.send_bytes("bad").await.expect("send");
    let d = must_get(&*q).await;
    d.dead_letter("cannot parse").await.expect("dead letter");
    let dead = eventually(LONG, || async { q.dead_letters(10).await.ok().filter(|d| !d.is_empty()) })
        .await
        .expect("a dead letter");
    assert_eq!(dead[0].reason(), Some("cannot parse"));
    assert_eq!(dead[0].attempts(), Some(1));
}

/// A message whose lease ran out is delivered again; one whose holder extends the
/// lease is not, even though it outlives the first lease.
pub async fn lease_expiry_and_extend(h: &dyn Harness) {
    let vt = Duration::from_millis(800);
    let q = h.open(&fresh().with_visibility_timeout(vt)).await.expect("open");
    q.send_bytes("slow").await.expect("send");
    let held = must_get(&*q).await;
    if !q.capabilities().extend {
        let err = held.extend(vt).await.expect_err("extend unsupported");
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        return;
    }
    for _ in 0..3 {
        tokio::time::sleep(vt / 2).await;
        held.extend(vt).await.expect("extend");
    }
    assert!(one(&*q, Duration::ZERO).await.is_none(), "delivered again while its lease was extended");
    drop(held);
    let again = one(&*q, Duration::from_secs(5)).await.expect("redelivered after the lease ran out");
    assert_eq!(again.attempt(), 2);
    again.ack().await.expect("ack");
}

/// A consumer that dies mid-job (its task aborted, deliveries dropped) loses nothing.
pub async fn crashed_consumer_loses_nothing(h: &dyn Harness) {
    let options = fresh().with_visibility_timeout(Duration::from_millis(800));
    let q = h.open(&options).await.expect("open");
    let batch: Vec<Message> = (0..10).map(|i| Message::new(format!("m{i}"))).collect();
    q.send_batch(batch).await.expect("send batch");
    let consumer = h.open(&options).await.expect("open consumer");
    let (holding, held) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        // It takes what it can get (a receive may return part of what is there) and
        // says so; nobody else receives meanwhile. A probe that received and dropped
        // would cycle a message through deliveries where a dropped one comes back at
        // once, until its attempts ran out and it went to the dead letters.
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + LONG;
        while got.len() < 10 && tokio::time::Instant::now() < deadline {
            let wait = Duration::from_millis(500);
            got.extend(consumer.receive(ReceiveOptions::new(10 - got.len(), wait)).await.expect("receive"));
        }
        let _ = holding.send(got.len());
        std::future::pending::<()>().await;
        drop(got);
    });
    let held = tokio::time::timeout(2 * LONG, held).await.expect("the consumer received").expect("consumer alive");
    assert!(held > 0, "the consumer received nothing");
    task.abort();
    // A broker gives a crashed consumer's messages back when its connection closes or
    // its leases run out; on a loaded machine (the whole suite at once) that has
    // taken longer than `LONG`.
    let got = drain_within(&*q, 10, 3 * LONG).await;
    let bodies: HashSet<Bytes> = got.into_iter().map(|(b, _)| b).collect();
    assert_eq!(bodies.len(), 10, "lost messages after a crash");
}

/// After `close`, calls fail with `Cancelled`, and so does a receive waiting when the
/// queue closes (it ends at once, not when its wait runs out).
pub async fn close_rejects_later_calls(h: &dyn Harness) {
    let q = h.open(&fresh()).await.expect("open");
    let waiting = {
        let q = Arc::clone(&q);
        tokio::spawn(async move { q.receive(ReceiveOptions::new(1, Duration::from_secs(60))).await })
    };
    // Most likely waiting by now; were it not, it meets the closed queue: either way
    // the outcome below holds.
    tokio::time::sleep(Duration::from_millis(100)).await;
    q.close().await.expect("close");
    let ended = tokio::time::timeout(LONG, waiting).await.expect("a waiting receive ends at close").expect("join");
    assert_eq!(ended.expect_err("receive waiting at close").kind(), ErrorKind::Cancelled);
    assert_eq!(q.send_bytes("x").await.expect_err("send after close").kind(), ErrorKind::Cancelled);
    assert_eq!(
        q.receive(ReceiveOptions::default()).await.expect_err("receive after close").kind(),
        ErrorKind::Cancelled
    );
    q.close().await.expect("close twice is fine");
}

/// Four consumers on one queue: each of 200 messages handled once, none lost.
pub async fn competing_consumers_share_the_work(h: &dyn Harness) {
    let options = fresh();
    let q = h.open(&options).await.expect("open");
    let total = 200;
    for chunk in (0..total).collect::<Vec<_>>().chunks(50) {
        q.send_batch(chunk.iter().map(|i| Message::new(i.to_string())).collect()).await.expect("send");
    }
    // Each consumer holds its first batch until all four have one, so the work is
    // shared however fast the backend is.
    let first_batches = Arc::new(tokio::sync::Barrier::new(4));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = h.open(&options).await.expect("open consumer");
        let first_batches = Arc::clone(&first_batches);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut idle = 0;
            let mut waited = false;
            while idle < 3 {
                let got = c.receive(ReceiveOptions::new(10, Duration::from_millis(300))).await.expect("receive");
                if got.is_empty() {
                    idle += 1;
                } else if !waited {
                    waited = true;
                    first_batches.wait().await;
                }
                // Acked together: backends that group concurrent acks do it here.
                c.ack_all(&got).await.expect("ack all");
                seen.extend(got.iter().map(|d| String::from_utf8_lossy(d.body()).into_owned()));
            }
            seen
        }));
    }
    let mut all = Vec::new();
    let mut busy = 0;
    for t in tasks {
        let seen = t.await.expect("consumer");
        busy += usize::from(!seen.is_empty());
        all.extend(seen);
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), total, "every message handled");
    assert_eq!(all.len(), total, "no message handled twice");
    assert_eq!(busy, 4, "work was not shared");
}

/// A delayed message is invisible before its time and visible soon after; a backend
/// that cannot delay says `Unsupported`.
pub async fn delayed_message_waits(h: &dyn Harness) {
    let q = h.open(&fresh()).await.expect("open");
    let delayed = Message::new("later").with_delay(Duration::from_millis(1500));
    if !q.capabilities().delay {
        assert_eq!(q.send(delayed).await.expect_err("delay unsupported").kind(), ErrorKind::Unsupported);
        return;
    }
    // Empty; and a backend whose first receive joins a consumer group has joined.
    assert!(one(&*q, Duration::ZERO).await.is_none());
    let started = std::time::Instant::now();
    q.send(delayed).await.expect("send");
    q.send_bytes("now").await.expect("send");
    let first = must_get(&*q).await;
    assert_eq!(first.body().as_ref(), b"now");
    first.ack().await.expect("ack");
    assert!(one(&*q, Duration::from_millis(900)).await.is_none(), "delayed message visible early");
    let later = must_get(&*q).await;
    let waited = started.elapsed();
    assert_eq!(later.body().as_ref(), b"later");
    assert!(waited >= Duration::from_millis(1400), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "visible only after {waited:?}");
    later.ack().await.expect("ack");
}

/// A second send with the same dedup key inside the window is dropped, also when both
/// are in one batch (the first is kept); messages without a key in the batch are kept.
pub async fn dedup_drops_repeats(h: &dyn Harness) {
    let q = h.open(&fresh()).await.expect("open");
    if !q.capabilities().dedup {
        let m = Message::new("x").with_dedup_key("k");
        assert_eq!(q.send(m).await.expect_err("dedup unsupported").kind(), ErrorKind::Unsupported);
        return;
    }
    q.send(Message::new("first").with_dedup_key("order-1")).await.expect("send");
    q.send(Message::new("second").with_dedup_key("order-1")).await.expect("send duplicate");
    q.send_batch(vec![
        Message::new("third").with_dedup_key("order-1"),
        Message::new("other").with_dedup_key("order-2"),
        Message::new("plain"),
        Message::new("repeat-1").with_dedup_key("order-3"),
        Message::new("repeat-2").with_dedup_key("order-3"),
    ])
    .await
    .expect("send batch");
    let got = drain(&*q, 5).await;
    let mut bodies: Vec<String> = got.iter().map(|(b, _)| String::from_utf8_lossy(b).into_owned()).collect();
    bodies.sort();
    assert_eq!(bodies, vec!["first", "other", "plain", "repeat-1"], "a key repeated within a batch keeps its first");
}

/// Messages with one order key are handed out one at a time, in the order sent, to
/// competing consumers, also when one is nacked; other keys and messages without a key
/// pass them by. A backend that cannot keep order says `Unsupported`.
pub async fn order_per_key_is_kept(h: &dyn Harness) {
    let options = fresh();
    let q = h.open(&options).await.expect("open");
    let keyed = |key: &str, n: usize| Message::new(format!("{key}{n}")).with_header("k", key).with_order_key(key);
    if !q.capabilities().ordered_per_key {
        assert_eq!(q.send(keyed("a", 0)).await.expect_err("order unsupported").kind(), ErrorKind::Unsupported);
        return;
    }
    let per_key = 6;
    q.send_batch((0..per_key).map(|n| keyed("a", n)).chain((0..3).map(|n| Message::new(format!("free{n}")))).collect())
        .await
        .expect("send");
    // One receive takes the first of `a` and passes the rest of `a` by.
    let first = q.receive(ReceiveOptions::new(10, LONG)).await.expect("receive");
    let of_a: Vec<_> = first.iter().filter(|d| d.header("k") == Some("a")).collect();
    assert_eq!(of_a.len(), 1, "one message of a key at a time");
    assert_eq!(of_a[0].body().as_ref(), b"a0");
    // Not acked yet: `a1` waits behind it even for another consumer.
    let other = h.open(&options).await.expect("open consumer");
    let more = other.receive(ReceiveOptions::new(10, Duration::from_millis(300))).await.expect("receive");
    assert!(more.iter().all(|d| d.header("k") != Some("a")), "a1 handed out while a0 was held");
    other.ack_all(&more).await.expect("ack");
    // Failed: it comes back before the next of its key.
    for d in &first {
        if d.header("k") == Some("a") {
            d.nack(None).await.expect("nack");
        } else {
            d.ack().await.expect("ack");
        }
    }
    for n in 0..per_key {
        for key in ["b", "c"] {
            q.send(keyed(key, n)).await.expect("send");
        }
    }
    // Three competing consumers log each message as they ack it: per key the log
    // must read 0, 1, 2, … with a0 first.
    let log = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let c = if i == 0 { Arc::clone(&q) } else { h.open(&options).await.expect("open consumer") };
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + LONG * 2;
            while log.lock().expect("log").len() < 3 * per_key && tokio::time::Instant::now() < deadline {
                let got = c.receive(ReceiveOptions::new(5, Duration::from_millis(200))).await.expect("receive");
                for d in got {
                    tokio::time::sleep(Duration::from_millis(u64::from(d.body()[1] % 3) * 5)).await;
                    log.lock().expect("log").push(String::from_utf8_lossy(d.body()).into_owned());
                    d.ack().await.expect("ack");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("consumer");
    }
    let log = log.lock().expect("log").clone();
    for key in ["a", "b", "c"] {
        let seen: Vec<&String> = log.iter().filter(|b| b.starts_with(key)).collect();
        let want: Vec<String> = (0..per_key).map(|n| format!("{key}{n}")).collect();
        assert_eq!(seen, want.iter().collect::<Vec<_>>(), "order of key {key} in {log:?}");
    }
}

/// A receive cancelled while it waits loses nothing; a batch arrives whole.
pub async fn cancelled_receive_loses_nothing(h: &dyn Harness) {
    let options = fresh();
    let q = h.open(&options).await.expect("open");
    let waiting = tokio::time::timeout(Duration::from_millis(200), q.receive(ReceiveOptions::new(5, LONG))).await;
    assert!(waiting.is_err(), "the receive should still be waiting");
    q.send_batch((0..5).map(|i| Message::new(format!("b{i}"))).collect()).await.expect("send batch");
    assert_eq!(drain(&*q, 5).await.len(), 5);
}

/// A queue never used before is empty, not an error, and displays its name.
pub async fn fresh_queue_is_empty(h: &dyn Harness) {
    let q = h.open(&fresh()).await.expect("open");
    assert!(one(&*q, Duration::ZERO).await.is_none());
    assert!(q.dead_letters(10).await.expect("dead letters").is_empty());
    assert_eq!(q.redrive(10).await.expect("redrive"), 0);
    assert!(q.to_string().contains(q.queue_name()), "{q}");
}

/// The health check makes a real round trip and names the server version.
pub async fn health_check_round_trips(h: &dyn Harness) {
    let q = h.open(&fresh()).await.expect("open");
    let outcome = q.check().await.expect("health");
    assert!(outcome.version.is_some(), "no version");
    assert!(q.name().starts_with("queue:"));
}

/// The `Worker` retries a failing job with backoff, dead-letters a poison one (a
/// panicking handler too), acks the rest, and on shutdown gives prefetched
/// messages back without counting an attempt.
pub async fn worker_retries_dead_letters_and_drains(h: &dyn Harness) {
    let options = fresh().with_max_attempts(3);
    let q = h.open(&options).await.expect("open");
    q.send_batch(vec![Message::new("ok"), Message::new("flaky"), Message::new("panic"), Message::new("poison")])
        .await
        .expect("send");
    let handler = |d: Arc<Delivery>| async move {
        match d.body().as_ref() {
            b"flaky" if d.attempt() < 2 => Err(platform_core::Error::unavailable("not yet")),
            b"panic" => panic!("handler bug"),
            b"poison" => Err(platform_core::Error::invalid_input("cannot decode")),
            _ => Ok(()),
        }
    };
    let config = WorkerConfig::default()
        .with_concurrency(2)
        .with_prefetch(2)
        .with_poll_wait(Duration::from_millis(200))
        .with_retry(RetryPolicy::default().with_initial_delay(Duration::from_millis(50)).with_jitter(false));
    let worker = Worker::new(Arc::clone(&q), handler).with_config(config);
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    eventually(Duration::from_secs(20), || async { (stats.finished() >= 4).then_some(()) })
        .await
        .expect("worker finished every job");
    stop.cancel();
    running.await.expect("join").expect("run");
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.succeeded.load(Relaxed), 2);
    assert_eq!(stats.dead_lettered.load(Relaxed), 2);
    assert!(stats.panicked.load(Relaxed) >= 1);
    let dead = q.dead_letters(10).await.expect("dead letters");
    let mut bodies: Vec<&[u8]> = dead.iter().map(|d| d.body.as_ref()).collect();
    bodies.sort();
    assert_eq!(bodies, vec![b"panic".as_ref(), b"poison".as_ref()]);
    assert!(dead.iter().any(|d| d.reason().is_some_and(|r| r.contains("handler panicked"))));

    // Shutdown with work buffered: nothing is dead-lettered, nothing lost, no attempt counted.
    let q2 = h.open(&fresh().with_max_attempts(1)).await.expect("open");
    q2.send_batch((0..6).map(|i| Message::new(i.to_string())).collect()).await.expect("send");
    let gate = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handler = {
        let (gate, started) = (Arc::clone(&gate), Arc::clone(&started));
        move |_d: Arc<Delivery>| {
            let (gate, started) = (Arc::clone(&gate), Arc::clone(&started));
            async move {
                started.fetch_add(1, Relaxed);
                gate.notified().await;
                Ok(())
            }
        }
    };
    let config =
        WorkerConfig::default().with_concurrency(1).with_prefetch(5).with_shutdown_timeout(Duration::from_secs(5));
    let worker = Worker::new(Arc::clone(&q2), handler).with_config(config);
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    eventually(LONG, || async { (started.load(Relaxed) == 1).then_some(()) }).await.expect("one job started");
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.notify_waiters();
    running.await.expect("join").expect("run");
    assert_eq!(stats.succeeded.load(Relaxed), 1, "the running job finished");
    assert_eq!(stats.dead_lettered.load(Relaxed), 0, "shutdown dead-lettered something");
    let rest = drain(&*q2, 5).await;
    assert_eq!(rest.len(), 5, "prefetched messages were lost");
    assert!(q2.dead_letters(10).await.expect("dead letters").is_empty());
}

/// An unknown URL parameter is `InvalidInput` naming it; so is a bad common one.
pub async fn url_parameters_are_checked(h: &dyn Harness) {
    let Some(base_url) = h.base_url() else { return };
    let sep = if base_url.contains('?') { '&' } else { '?' };
    let err = crate::open(&format!("{base_url}{sep}queue=x&colour=blue")).await.expect_err("unknown parameter");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.details().iter().any(|d| d.field == "colour"), "{err}");
    let err = crate::open(&format!("{base_url}{sep}queue=x&max_attempts=zero")).await.expect_err("bad value");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.details().iter().any(|d| d.field == "max_attempts"), "{err}");
}

/// The `Worker` keeps leases alive: a handler that runs longer than the visibility
/// timeout is not redelivered (its lease is extended while it runs), and a message
/// that waited in the prefetch buffer longer than the lease gets a fresh lease when it
/// is handed out, so nothing is handled twice.
pub async fn worker_keeps_leases_alive(h: &dyn Harness) {
    use std::sync::Mutex;
    let vt = Duration::from_millis(1000);
    let q = h.open(&fresh().with_visibility_timeout(vt)).await.expect("open");
    if !q.capabilities().extend {
        return;
    }
    q.send_batch((0..3).map(|i| Message::new(i.to_string())).collect()).await.expect("send");
    let seen: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let handler = {
        let seen = Arc::clone(&seen);
        move |d: Arc<Delivery>| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().expect("lock").push((String::from_utf8_lossy(d.body()).into_owned(), d.attempt()));
                tokio::time::sleep(Duration::from_millis(1300)).await;
                Ok(())
            }
        }
    };
    let config =
        WorkerConfig::default().with_concurrency(1).with_prefetch(2).with_poll_wait(Duration::from_millis(200));
    let worker = Worker::new(Arc::clone(&q), handler).with_config(config);
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    eventually(Duration::from_secs(30), || async { (stats.finished() >= 3).then_some(()) })
        .await
        .expect("three jobs finished");
    // Nothing may come back after its lease would have run out.
    tokio::time::sleep(vt + Duration::from_millis(500)).await;
    stop.cancel();
    running.await.expect("join").expect("run");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3, "a job was handled twice: {seen:?}");
    assert!(seen.iter().all(|(_, attempt)| *attempt == 1), "a job was redelivered: {seen:?}");
    assert!(stats.extended.load(std::sync::atomic::Ordering::Relaxed) >= 1, "no lease was extended");
}

/// Four handles on one queue, each running a `Worker`, dead-letter concurrently: every
/// message the workers reported dead-lettered is listed by `dead_letters` (on every
/// handle), and every other message succeeded; nothing is dead-lettered that did not
/// fail.
pub async fn concurrent_dead_letters_are_all_listed(h: &dyn Harness) {
    use std::sync::Mutex;
    use std::sync::atomic::Ordering::Relaxed;
    const N: usize = 200;
    let options = fresh().with_max_attempts(3);
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(h.open(&options).await.expect("open"));
    }
    let max_batch = handles[0].capabilities().max_batch.max(1);
    let all: Vec<Message> = (0..N).map(|i| Message::new(i.to_string())).collect();
    for chunk in all.chunks(max_batch) {
        handles[0].send_batch(chunk.to_vec()).await.expect("send");
    }
    let poison: HashSet<String> = (0..N).filter(|i| i % 10 == 0).map(|i| i.to_string()).collect();
    let succeeded: Arc<Mutex<HashSet<String>>> = Arc::default();
    let failed_last: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = CancellationToken::new();
    let mut stats = Vec::new();
    let mut running = Vec::new();
    for q in &handles {
        let handler = {
            let (succeeded, failed_last) = (Arc::clone(&succeeded), Arc::clone(&failed_last));
            move |d: Arc<Delivery>| {
                let (succeeded, failed_last) = (Arc::clone(&succeeded), Arc::clone(&failed_last));
                async move {
                    let body = String::from_utf8_lossy(d.body()).into_owned();
                    if body.parse::<usize>().is_ok_and(|i| i % 10 == 0) {
                        if d.attempt() >= 3 {
                            failed_last.lock().expect("lock").insert(body);
                        }
                        return Err(platform_core::Error::unavailable("always fails"));
                    }
                    succeeded.lock().expect("lock").insert(body);
                    Ok(())
                }
            }
        };
        let config = WorkerConfig::default()
            .with_concurrency(4)
            .with_poll_wait(Duration::from_millis(200))
            .with_retry(RetryPolicy::default().with_initial_delay(Duration::from_millis(20)).with_jitter(false));
        let worker = Worker::new(Arc::clone(q), handler).with_config(config);
        stats.push(worker.stats());
        running.push(tokio::spawn(worker.run(stop.clone())));
    }
    let dead_lettered = || stats.iter().map(|s| s.dead_lettered.load(Relaxed)).sum::<u64>();
    eventually(Duration::from_secs(90), || async {
        let done = succeeded.lock().expect("lock").len() == N - poison.len()
            && *failed_last.lock().expect("lock") == poison
            && dead_lettered() >= poison.len() as u64;
        done.then_some(())
    })
    .await
    .expect("every message succeeded or was dead-lettered");
    stop.cancel();
    for r in running {
        r.await.expect("join").expect("run");
    }
    for (i, q) in handles.iter().enumerate() {
        let listed = || async {
            let dead = q.dead_letters(10 * N).await.expect("dead letters");
            dead.iter().map(|d| String::from_utf8_lossy(&d.body).into_owned()).collect::<HashSet<String>>()
        };
        if eventually(LONG, || async { (listed().await == poison).then_some(()) }).await.is_err() {
            let bodies = listed().await;
            let missing: Vec<&String> = poison.difference(&bodies).collect();
            let extra: Vec<&String> = bodies.difference(&poison).collect();
            panic!("handle {i}: dead letters not listed: {missing:?}; listed but never failed: {extra:?}");
        }
    }
}

/// Runs every behaviour in turn (the macro runs them as separate tests instead).
pub async fn run_all(h: &dyn Harness) {
    use platform_core::run_behaviours;
    crate::queue_behaviours!(run_behaviours!(h));
}

/// Writes one `#[tokio::test]` per behaviour in a module named after the backend.
///
/// `$harness` is an expression of type `Option<impl Harness>`; `None` skips.
///
/// ```ignore
/// platform_queue::conformance_tests!(redis, platform_queue::testkit::UrlHarness::from_env("REDIS"));
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::queue_behaviours!($crate::testkit::behaviour_tests!($backend, $crate::testkit, $harness));
    };
}

/// Every behaviour of the suite, listed once: [`conformance_tests!`](crate::conformance_tests)
/// writes one test per behaviour from it and [`run_all`] runs them in turn, so a
/// behaviour cannot be written and never run. Calls `$then!(…, behaviour, …)`.
#[doc(hidden)]
#[macro_export]
macro_rules! queue_behaviours {
    ($($then:ident)::+ ! ($($args:tt)*)) => {
        $($then)::+! {
            $($args)*,
            round_trip_is_exact,
            bad_input_is_rejected_before_sending,
            ack_removes_and_second_settle_conflicts,
            ack_after_lease_lost_conflicts,
            nack_redelivers,
            nack_with_delay_waits,
            attempts_count_every_delivery,
            dead_letter_after_max_attempts_and_redrive,
            explicit_dead_letter,
            lease_expiry_and_extend,
            crashed_consumer_loses_nothing,
            close_rejects_later_calls,
            competing_consumers_share_the_work,
            delayed_message_waits,
            dedup_drops_repeats,
            order_per_key_is_kept,
            cancelled_receive_loses_nothing,
            fresh_queue_is_empty,
            health_check_round_trips,
            worker_retries_dead_letters_and_drains,
            worker_keeps_leases_alive,
            concurrent_dead_letters_are_all_listed,
            url_parameters_are_checked
        }
    };
}
