//! The conformance suite every broadcast backend runs unchanged against its real
//! server. Each behaviour is a public `async fn(&dyn Harness)`;
//! [`conformance_tests!`](crate::conformance_tests) writes one test per behaviour.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use platform_core::testkit::{server_url, unique_ident};
use platform_core::{ErrorKind, HealthCheck as _, Result};

use crate::{Broadcast, Received};

#[doc(hidden)]
pub use platform_core::behaviour_tests;

/// How long a message may take to arrive.
const ARRIVES: Duration = Duration::from_secs(10);

/// Opens handles for the suite. Two handles it opens reach each other's channels.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A fresh handle.
    async fn open(&self) -> Result<Arc<dyn Broadcast>>;

    /// The URL the handles are opened from, when there is one: for the URL checks.
    fn base_url(&self) -> Option<&str> {
        None
    }
}

/// A harness that opens `base_url`.
#[derive(Debug, Clone)]
pub struct UrlHarness {
    base_url: String,
}

impl UrlHarness {
    /// A harness over `base_url` (`memory://conformance`).
    pub fn new(base_url: impl Into<String>) -> Self {
        Self { base_url: base_url.into() }
    }

    /// A harness over `PLATFORM_TEST_<NAME>_URL`; `None` (the test is skipped, or
    /// fails under `PLATFORM_TEST_REQUIRE_ALL=1`) when unset.
    #[track_caller]
    pub fn from_env(name: &str) -> Option<Self> {
        server_url(name).map(Self::new)
    }
}

#[async_trait]
impl Harness for UrlHarness {
    async fn open(&self) -> Result<Arc<dyn Broadcast>> {
        crate::open_broadcast(&self.base_url).await
    }

    fn base_url(&self) -> Option<&str> {
        Some(&self.base_url)
    }
}

/// A channel prefix no other test uses.
fn prefix() -> String {
    unique_ident("bc")
}

/// The next message of `sub` (channel, payload as text); panics on a lag, an end or
/// after [`ARRIVES`].
async fn next(sub: &mut crate::Subscription) -> (String, String) {
    match tokio::time::timeout(ARRIVES, sub.recv()).await {
        Ok(Some(Received::Message(m))) => (m.channel.to_string(), String::from_utf8_lossy(&m.payload).into_owned()),
        Ok(other) => panic!("subscription {}: expected a message, got {other:?}", sub.pattern()),
        Err(_) => panic!("subscription {}: nothing arrived within {ARRIVES:?}", sub.pattern()),
    }
}

/// A publish reaches every subscription whose pattern matches, on another handle too,
/// exactly; one whose pattern does not match never sees it.
pub async fn reaches_every_matching_subscriber(h: &dyn Harness) {
    let (publisher, subscriber) = (h.open().await.expect("open"), h.open().await.expect("open"));
    let p = prefix();
    let mut subs = Vec::new();
    for pattern in [format!("{p}.jobs.1.events"), format!("{p}.jobs.*.events"), format!("{p}.>")] {
        subs.push(subscriber.subscribe(&pattern).await.expect("subscribe"));
    }
    let mut other = subscriber.subscribe(&format!("{p}.other")).await.expect("subscribe");
    let channel = format!("{p}.jobs.1.events");
    let payload = "caf\u{e9} \u{1f600} \0 bytes";
    publisher.publish(&channel, Bytes::from(payload)).await.expect("publish");
    for sub in &mut subs {
        assert_eq!(next(sub).await, (channel.clone(), payload.to_owned()));
    }
    // The non-matching subscription's first message is the one sent to it afterwards.
    publisher.publish(&format!("{p}.other"), Bytes::from_static(b"mine")).await.expect("publish");
    assert_eq!(next(&mut other).await, (format!("{p}.other"), "mine".to_owned()));
}

/// `*` matches exactly one segment and `>` one or more trailing segments.
pub async fn wildcards_match_whole_segments(h: &dyn Harness) {
    let hub = h.open().await.expect("open");
    let p = prefix();
    let mut one = hub.subscribe(&format!("{p}.jobs.*.events")).await.expect("subscribe");
    let mut rest = hub.subscribe(&format!("{p}.jobs.>")).await.expect("subscribe");
    for channel in ["jobs.1.2.events", "jobs", "jobs.7.events", "jobs.end.events"] {
        hub.publish(&format!("{p}.{channel}"), Bytes::from(channel)).await.expect("publish");
    }
    for want in ["jobs.7.events", "jobs.end.events"] {
        assert_eq!(next(&mut one).await.1, want, "`*` is one segment");
    }
    for want in ["jobs.1.2.events", "jobs.7.events", "jobs.end.events"] {
        assert_eq!(next(&mut rest).await.1, want, "`>` is one or more segments");
    }
}

/// Payloads published on one channel by one handle arrive in order.
pub async fn order_is_kept_per_channel(h: &dyn Harness) {
    let (publisher, subscriber) = (h.open().await.expect("open"), h.open().await.expect("open"));
    let channel = format!("{}.seq", prefix());
    let mut sub = subscriber.subscribe(&channel).await.expect("subscribe");
    let n = 200.min(subscriber.capabilities().buffer);
    for i in 0..n {
        publisher.publish(&channel, Bytes::from(i.to_string())).await.expect("publish");
    }
    for i in 0..n {
        assert_eq!(next(&mut sub).await.1, i.to_string(), "message {i} out of order");
    }
}

/// A subscription that falls behind by more than its buffer is told how many it
/// missed, then gets the newest: never a silent skip.
pub async fn lag_is_signalled(h: &dyn Harness) {
    let hub = h.open().await.expect("open");
    let channel = format!("{}.flood", prefix());
    let mut sub = hub.subscribe(&channel).await.expect("subscribe");
    let total = 3 * hub.capabilities().buffer;
    for i in 0..total {
        hub.publish(&channel, Bytes::from(i.to_string())).await.expect("publish");
    }
    let (mut missed, mut seen, mut last) = (0u64, 0usize, None);
    while last != Some(total - 1) {
        match tokio::time::timeout(ARRIVES, sub.recv()).await {
            Ok(Some(Received::Lagged { missed: n })) => {
                assert!(n > 0, "a lag signal counts what was missed");
                missed += n;
            }
            Ok(Some(Received::Message(m))) => {
                let i: usize = String::from_utf8_lossy(&m.payload).parse().expect("a number");
                assert!(last.is_none_or(|l| i > l), "{i} after {last:?}");
                last = Some(i);
                seen += 1;
            }
            other => panic!("expected messages up to {}, got {other:?} after {last:?}", total - 1),
        }
    }
    assert!(missed > 0, "{total} messages into a buffer of {} and no lag signal", hub.capabilities().buffer);
    assert!(seen as u64 + missed >= total as u64, "{seen} seen and {missed} missed of {total}");
}

/// A payload of 256 KiB (or the backend's largest, if smaller) with every byte value
/// arrives whole, beside a small one.
pub async fn large_payload_arrives_whole(h: &dyn Harness) {
    let hub = h.open().await.expect("open");
    let channel = format!("{}.large", prefix());
    let mut sub = hub.subscribe(&channel).await.expect("subscribe");
    let size = (256 << 10).min(hub.capabilities().max_payload);
    let large: Bytes = (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    hub.publish(&channel, Bytes::from_static(b"small")).await.expect("publish small");
    hub.publish(&channel, large.clone()).await.expect("publish large");
    for want in [Bytes::from_static(b"small"), large] {
        match tokio::time::timeout(ARRIVES, sub.recv()).await {
            Ok(Some(Received::Message(m))) => {
                assert!(m.payload == want, "{} bytes arrived as {}", want.len(), m.payload.len())
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Bad channel names, bad patterns and oversized payloads are `InvalidInput` before
/// anything is sent.
pub async fn bad_input_is_rejected_before_sending(h: &dyn Harness) {
    let hub = h.open().await.expect("open");
    for bad in ["", "a..b", "a.*", "a.>", "sp ace", "tail."] {
        let err = hub.publish(bad, Bytes::from_static(b"x")).await.expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "publish to {bad:?}: {err}");
        assert_eq!(err.backend(), hub.backend(), "{err}");
    }
    for bad in ["", "a.>.b", "a..b", "a.*x"] {
        let err = hub.subscribe(bad).await.expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "subscribe to {bad:?}: {err}");
    }
    let max = hub.capabilities().max_payload;
    if max <= 16 << 20 {
        let err = hub.publish(&format!("{}.big", prefix()), Bytes::from(vec![b'x'; max + 1])).await.expect_err("big");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }
}

/// After `close`, calls fail with `Cancelled` and the handle's subscriptions end.
pub async fn close_rejects_later_calls(h: &dyn Harness) {
    let hub = h.open().await.expect("open");
    let channel = format!("{}.closing", prefix());
    let mut sub = hub.subscribe(&channel).await.expect("subscribe");
    hub.close().await.expect("close");
    hub.close().await.expect("a second close is no error");
    assert!(tokio::time::timeout(ARRIVES, sub.recv()).await.expect("ends at once").is_none());
    let err = hub.publish(&channel, Bytes::from_static(b"x")).await.expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    let err = hub.subscribe(&channel).await.expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
}

/// The health check makes a real round trip and names what it reached.
pub async fn health_check_round_trips(h: &dyn Harness) {
    let hub = h.open().await.expect("open");
    let outcome = hub.check().await.expect("health");
    assert!(outcome.version.is_some(), "no version");
    assert!(hub.name().starts_with("broadcast:"), "{}", hub.name());
}

/// An unknown URL parameter or a bad value is `InvalidInput` naming the parameter.
pub async fn url_parameters_are_checked(h: &dyn Harness) {
    let Some(base_url) = h.base_url() else { return };
    let sep = if base_url.contains('?') { '&' } else { '?' };
    let err = crate::open_broadcast(&format!("{base_url}{sep}colour=blue")).await.expect_err("unknown parameter");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.details().iter().any(|d| d.field == "colour"), "{err}");
    let err = crate::open_broadcast(&format!("{base_url}{sep}buffer=lots")).await.expect_err("bad value");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.details().iter().any(|d| d.field == "buffer"), "{err}");
}

/// Runs every behaviour in turn (the macro runs them as separate tests instead).
pub async fn run_all(h: &dyn Harness) {
    use platform_core::run_behaviours;
    crate::broadcast_behaviours!(run_behaviours!(h));
}

/// Writes one `#[tokio::test]` per behaviour in a module named after the backend.
///
/// `$harness` is an expression of type `Option<impl Harness>`; `None` skips.
///
/// ```ignore
/// platform_events::conformance_tests!(memory, Some(platform_events::testkit::UrlHarness::new("memory://c")));
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::broadcast_behaviours!($crate::testkit::behaviour_tests!($backend, $crate::testkit, $harness));
    };
}

/// Every behaviour of the broadcast suite, listed once: [`conformance_tests!`](crate::conformance_tests)
/// writes one test per behaviour from it and [`run_all`] runs them in turn, so a
/// behaviour cannot be written and never run. Calls `$then!(…, behaviour, …)`.
#[doc(hidden)]
#[macro_export]
macro_rules! broadcast_behaviours {
    ($($then:ident)::+ ! ($($args:tt)*)) => {
        $($then)::+! {
            $($args)*,
            reaches_every_matching_subscriber,
            wildcards_match_whole_segments,
            order_is_kept_per_channel,
            large_payload_arrives_whole,
            lag_is_signalled,
            bad_input_is_rejected_before_sending,
            close_rejects_later_calls,
            health_check_round_trips,
            url_parameters_are_checked
        }
    };
}

pub mod bus;
pub mod ws;
