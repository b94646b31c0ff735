//! The conformance suite every event bus backend runs unchanged against its real
//! server. Each behaviour is a public `async fn(&BusHarness)`;
//! [`bus_conformance_tests!`](crate::bus_conformance_tests) writes one test per behaviour.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use platform_core::testkit::{server_url, unique_ident};
use platform_core::{Envelope, ErrorKind, HealthCheck as _};
use serde_json::json;

use crate::driver::{TOPIC_HEADER, TRACEPARENT_HEADER, TYPE_HEADER};
use crate::{EventBus, EventDelivery, Group};

/// How long an event may take to arrive.
const ARRIVES: Duration = Duration::from_secs(10);

/// Where the suite opens buses: every URL it makes has a namespace of its own, so
/// tests run in parallel on one server.
#[derive(Debug, Clone)]
pub struct BusHarness {
    base_url: String,
}

impl BusHarness {
    /// A harness over `base_url` (`memory://`, `sqlite:///tmp/bus.db`, `postgres://…`).
    pub fn new(base_url: impl Into<String>) -> Self {
        Self { base_url: base_url.into() }
    }

    /// A harness over `PLATFORM_TEST_<NAME>_URL`; `None` (the test is skipped, or
    /// fails under `PLATFORM_TEST_REQUIRE_ALL=1`) when unset.
    #[track_caller]
    pub fn from_env(name: &str) -> Option<Self> {
        server_url(name).map(Self::new)
    }

    /// A URL in a fresh namespace, with `extra` query parameters.
    pub fn fresh_url(&self, extra: &str) -> String {
        let sep = if self.base_url.contains('?') { '&' } else { '?' };
        let extra = if extra.is_empty() { String::new() } else { format!("&{extra}") };
        format!("{}{sep}namespace={}{extra}", self.base_url, unique_ident("ns"))
    }
}

async fn open(url: &str) -> Arc<dyn EventBus> {
    crate::open_bus(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"))
}

fn event(n: usize) -> Envelope {
    Envelope::raw("order.placed", "1", json!({ "n": n }))
}

fn numbers(got: &[EventDelivery]) -> Vec<u64> {
    got.iter().map(|d| d.envelope().payload["n"].as_u64().expect("n")).collect()
}

/// Receives from `group` until `n` events came (acking each when `ack`), or panics after
/// [`ARRIVES`]; then checks nothing more is waiting.
async fn drain(group: &Group, n: usize, ack: bool) -> Vec<EventDelivery> {
    let deadline = tokio::time::Instant::now() + ARRIVES;
    let mut got = Vec::new();
    while got.len() < n {
        assert!(tokio::time::Instant::now() < deadline, "group {}: {} of {n} events arrived", group.name(), got.len());
        for d in group.receive(n - got.len(), Duration::from_millis(500)).await.expect("receive") {
            if ack {
                d.ack().await.expect("ack");
            }
            got.push(d);
        }
    }
    let more = group.receive(10, Duration::from_millis(200)).await.expect("receive");
    assert!(more.is_empty(), "group {}: {} events beyond the {n} expected", group.name(), more.len());
    got
}

/// Each of three groups gets every event published after it was created, exactly once;
/// a group created later gets only what came after it.
pub async fn fan_out_to_every_group(h: &BusHarness) {
    let bus = open(&h.fresh_url("")).await;
    let mut groups = Vec::new();
    for name in ["billing", "shipping", "audit"] {
        groups.push(bus.subscribe("orders.*", name).await.expect("subscribe"));
    }
    bus.publish("orders.placed", (0..20).map(event).collect()).await.expect("publish");
    let late = bus.subscribe("orders.*", "late").await.expect("subscribe");
    bus.publish("orders.placed", vec![event(20)]).await.expect("publish");
    for g in &groups {
        let mut got = numbers(&drain(g, 21, true).await);
        got.sort_unstable();
        assert_eq!(got, (0..21).collect::<Vec<_>>(), "group {}", g.name());
    }
    assert_eq!(numbers(&drain(&late, 1, true).await), [20], "a group sees only what came after it");
    bus.close().await.expect("close");
}

/// A group created through another handle (another process) is reached by every
/// publish that starts after its `subscribe` returned, even from a publisher that read
/// the groups just before.
pub async fn a_group_made_elsewhere_is_reached(h: &BusHarness) {
    let url = h.fresh_url("");
    let (publisher, other) = (open(&url).await, open(&url).await);
    let first = publisher.subscribe("news.*", "first").await.unwrap();
    publisher.publish("news.a", vec![event(1)]).await.unwrap();
    let second = other.subscribe("news.*", "second").await.unwrap();
    publisher.publish("news.b", vec![event(2)]).await.unwrap();
    assert_eq!(numbers(&drain(&first, 2, true).await).len(), 2);
    assert_eq!(numbers(&drain(&second, 1, true).await), [2], "the new group got the later event");
}

/// Consumers of one group, on handles of their own, share its events: together they
/// get each once.
pub async fn competing_consumers_share_a_group(h: &BusHarness) {
    let url = h.fresh_url("");
    let (a, b) = (open(&url).await, open(&url).await);
    let (ga, gb) = (a.subscribe("jobs.>", "workers").await.unwrap(), b.subscribe("jobs.>", "workers").await.unwrap());
    a.publish("jobs.resize.small", (0..60).map(event).collect()).await.expect("publish");
    // Both take until the 60 arrived (or ARRIVES passed), then a little longer, so a
    // second copy would show.
    let taken = &std::sync::atomic::AtomicUsize::new(0);
    let take = |g: Group| async move {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + ARRIVES;
        let mut done_at = None;
        while tokio::time::Instant::now() < deadline && done_at.is_none_or(|t| tokio::time::Instant::now() < t) {
            if done_at.is_none() && taken.load(std::sync::atomic::Ordering::SeqCst) >= 60 {
                done_at = Some(tokio::time::Instant::now() + Duration::from_millis(500));
            }
            let batch = g.receive(5, Duration::from_millis(200)).await.expect("receive");
            for d in batch {
                d.ack().await.expect("ack");
                got.push(d.envelope().payload["n"].as_u64().unwrap());
                taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        got
    };
    let (x, y) = tokio::join!(take(ga), take(gb));
    let all: Vec<u64> = x.iter().chain(&y).copied().collect();
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), 60, "each event once: {} deliveries", all.len());
    assert_eq!(unique.len(), 60);
}

/// Where the backend declares order per key, the events of one key (the envelope's
/// `partitionkey`) reach two competing consumers of a group one at a time in the order
/// published, a nacked one again before the next; other keys pass them by. Elsewhere
/// keyed events still arrive, each once, their key in the headers.
pub async fn order_per_key_where_declared(h: &BusHarness) {
    let url = h.fresh_url("");
    let (a, b) = (open(&url).await, open(&url).await);
    let (ga, gb) = (a.subscribe("carts.>", "ordered").await.unwrap(), b.subscribe("carts.>", "ordered").await.unwrap());
    let keyed = |key: &str, n: usize| {
        let mut e = Envelope::raw("cart.changed", "1", json!({ "n": n, "key": key }));
        e.extensions.insert(crate::driver::KEY_EXTENSION.to_owned(), json!(key));
        e
    };
    let per_key = 5;
    let events = (0..per_key).flat_map(|n| ["x", "y", "z"].map(|k| keyed(k, n))).collect();
    a.publish("carts.changed", events).await.expect("publish");
    let ordered = a.capabilities().ordered_per_key;
    let log = &std::sync::Mutex::new(Vec::<(String, u64)>::new());
    let nacked = &std::sync::atomic::AtomicBool::new(false);
    let take = |g: Group| async move {
        let deadline = tokio::time::Instant::now() + ARRIVES * 2;
        while log.lock().expect("log").len() < 3 * per_key && tokio::time::Instant::now() < deadline {
            for d in g.receive(4, Duration::from_millis(200)).await.expect("receive") {
                let p = &d.envelope().payload;
                let (key, n) = (p["key"].as_str().expect("key").to_owned(), p["n"].as_u64().expect("n"));
                assert_eq!(d.delivery().header(crate::driver::KEY_HEADER), Some(key.as_str()));
                if key == "x" && n == 0 && !nacked.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    d.nack(None).await.expect("nack");
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(n % 3 * 5)).await;
                log.lock().expect("log").push((key, n));
                d.ack().await.expect("ack");
            }
        }
    };
    tokio::join!(take(ga), take(gb));
    let log = log.lock().expect("log").clone();
    for key in ["x", "y", "z"] {
        let mut seen: Vec<u64> = log.iter().filter(|(k, _)| k == key).map(|(_, n)| *n).collect();
        if !ordered {
            // At least once: a copy may come twice where nothing holds the key back.
            seen.sort_unstable();
            seen.dedup();
        }
        assert_eq!(seen, (0..per_key as u64).collect::<Vec<_>>(), "key {key} in {log:?}");
    }
}

/// Patterns match by segment: a group gets the topics its pattern matches and no other.
pub async fn groups_get_only_matching_topics(h: &BusHarness) {
    let bus = open(&h.fresh_url("")).await;
    let one = bus.subscribe("user.*", "one-segment").await.unwrap();
    let tail = bus.subscribe("user.>", "tail").await.unwrap();
    let exact = bus.subscribe("user.created", "exact").await.unwrap();
    for (topic, n) in [("user.created", 1), ("user.profile.updated", 2), ("users.created", 3), ("user", 4)] {
        bus.publish(topic, vec![event(n)]).await.expect("publish");
    }
    let topics = |got: Vec<EventDelivery>| got.iter().map(|d| d.topic().to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(topics(drain(&one, 1, true).await), BTreeSet::from(["user.created".to_owned()]));
    let want = BTreeSet::from(["user.created".to_owned(), "user.profile.updated".to_owned()]);
    assert_eq!(topics(drain(&tail, 2, true).await), want);
    assert_eq!(topics(drain(&exact, 1, true).await), BTreeSet::from(["user.created".to_owned()]));
}

/// A group keeps its events across a restart of its consumer: a new handle resumes
/// with what the old one had not acked.
pub async fn durable_group_resumes_after_restart(h: &BusHarness) {
    let url = h.fresh_url("");
    let first = open(&url).await;
    let group = first.subscribe("ledger.*", "books").await.unwrap();
    first.publish("ledger.posted", (0..10).map(event).collect()).await.unwrap();
    let mut acked = Vec::new();
    while acked.len() < 4 {
        for d in group.receive(4 - acked.len(), ARRIVES).await.unwrap() {
            d.ack().await.unwrap();
            acked.push(d.envelope().payload["n"].as_u64().unwrap());
        }
    }
    first.close().await.unwrap();
    drop((group, first));
    let second = open(&url).await;
    let group = second.subscribe("ledger.*", "books").await.unwrap();
    let rest = numbers(&drain(&group, 6, true).await);
    let all: BTreeSet<u64> = acked.iter().chain(&rest).copied().collect();
    assert_eq!(all, (0..10).collect(), "acked {acked:?}, then {rest:?}");
}

/// A nacked event comes back with its attempt counted; after the group's
/// `max_attempts` it is in the group's dead letters with its history.
pub async fn failures_retry_then_dead_letter(h: &BusHarness) {
    let bus = open(&h.fresh_url("max_attempts=2")).await;
    let group = bus.subscribe("mail.*", "sender").await.unwrap();
    bus.publish("mail.queued", vec![event(1)]).await.unwrap();
    let first = drain(&group, 1, false).await;
    assert_eq!(first[0].attempt(), 1);
    first[0].nack(None).await.unwrap();
    let second = drain(&group, 1, false).await;
    assert_eq!(second[0].attempt(), 2);
    assert_eq!(second[0].envelope().event_id, first[0].envelope().event_id);
    second[0].nack(None).await.unwrap();
    let dead = platform_core::testkit::eventually(ARRIVES, || async {
        let dead = group.queue().dead_letters(10).await.unwrap();
        (!dead.is_empty()).then_some(dead)
    })
    .await
    .expect("dead-lettered");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts(), Some(2), "{:?}", dead[0].reason());
    assert!(group.receive(1, Duration::from_millis(200)).await.unwrap().is_empty());
    assert_eq!(group.queue().redrive(10).await.unwrap(), 1, "dead letters can be redriven");
    assert_eq!(drain(&group, 1, true).await[0].envelope().event_id, first[0].envelope().event_id);
}

/// A message in a group's queue that is not an event envelope is dead-lettered with
/// the reason, never handed to the consumer.
pub async fn undecodable_messages_are_dead_lettered(h: &BusHarness) {
    let bus = open(&h.fresh_url("")).await;
    let group = bus.subscribe("raw.*", "strict").await.unwrap();
    platform_queue::QueueExt::send_bytes(&**group.queue(), "{not json").await.unwrap();
    bus.publish("raw.ok", vec![event(7)]).await.unwrap();
    assert_eq!(numbers(&drain(&group, 1, true).await), [7]);
    let dead = group.queue().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason().is_some_and(|r| r.contains("not an event envelope")), "{:?}", dead[0].reason());
}

/// An event arrives whole: its envelope, and the topic, type and trace context as
/// headers of the delivery.
pub async fn envelope_and_headers_arrive_whole(h: &BusHarness) {
    let bus = open(&h.fresh_url("")).await;
    let group = bus.subscribe("todo.>", "view").await.unwrap();
    let mut sent = Envelope::raw("todo.created", "2", json!({"title": "write tests", "tags": ["a", "b"], "n": 1}))
        .with_tenant("acme")
        .with_source("/todo");
    sent.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    sent.extensions.insert("partitionkey".into(), json!("todo-42"));
    bus.publish("todo.items.created", vec![sent.clone()]).await.unwrap();
    let got = drain(&group, 1, true).await;
    let d = &got[0];
    assert_eq!(d.envelope(), &sent);
    assert_eq!(d.topic(), "todo.items.created");
    assert_eq!(d.delivery().header(TOPIC_HEADER), Some("todo.items.created"));
    assert_eq!(d.delivery().header(TYPE_HEADER), Some("todo.created.v2"));
    assert_eq!(d.delivery().header(TRACEPARENT_HEADER), sent.traceparent.as_deref());
}

#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct OrderPlaced {
    n: u64,
}

impl platform_core::Event for OrderPlaced {
    const TYPE: &'static str = "order.placed";
    const VERSION: u32 = 1;
}

/// With the consumer's registry, an event of a type it does not know (or a version
/// newer than it knows) goes to the group's dead letters with the reason; the rest
/// arrive.
pub async fn unknown_types_are_dead_lettered(h: &BusHarness) {
    let bus = open(&h.fresh_url("")).await;
    let group = bus.subscribe("shop.>", "known").await.unwrap();
    let mut registry = crate::EventRegistry::new("suite", "1");
    registry.register::<OrderPlaced>("shop.orders").unwrap();
    let unknown = Envelope::raw("order.refunded", "1", json!({ "n": 2 }));
    let newer = Envelope::raw("order.placed", "2", json!({ "n": 3 }));
    bus.publish("shop.orders", vec![event(1), unknown, newer, event(4)]).await.unwrap();
    let deadline = tokio::time::Instant::now() + ARRIVES;
    let mut got = Vec::new();
    while got.len() < 2 && tokio::time::Instant::now() < deadline {
        for d in group.receive_known(&registry, 10, Duration::from_millis(300)).await.unwrap() {
            d.ack().await.unwrap();
            got.push(registry.decode::<OrderPlaced>(d.envelope().clone()).unwrap().payload.n);
        }
    }
    got.sort_unstable();
    assert_eq!(got, [1, 4]);
    let dead = platform_core::testkit::eventually(ARRIVES, || async {
        let dead = group.queue().dead_letters(10).await.unwrap();
        (dead.len() == 2).then_some(dead)
    })
    .await
    .expect("two dead letters");
    let reasons: Vec<&str> = dead.iter().filter_map(|d| d.reason()).collect();
    assert!(reasons.iter().any(|r| r.contains("order.refunded") && r.contains("not a registered")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("newer")), "{reasons:?}");
}

/// A consumer that dies holding deliveries (dropped unsettled, its handle gone) does
/// not lose them: once the lease runs out another consumer of the group gets them,
/// their attempt counted (2, or 3 where the broker also counts the redelivery to the
/// dead consumer's prefetch window).
pub async fn a_crashed_consumers_events_come_back(h: &BusHarness) {
    let url = h.fresh_url("visibility_timeout=1s");
    let crashed = open(&url).await;
    let group = crashed.subscribe("crash.*", "survivors").await.unwrap();
    crashed.publish("crash.now", (0..5).map(event).collect()).await.unwrap();
    let held = drain(&group, 5, false).await;
    drop((held, group, crashed)); // no ack, no nack: as if the process died
    let other = open(&url).await;
    let group = other.subscribe("crash.*", "survivors").await.unwrap();
    let again = drain(&group, 5, true).await;
    let mut got = numbers(&again);
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2, 3, 4]);
    // At least the second attempt: a broker that counts deliveries itself (RabbitMQ's
    // quorum queues) also counts one made to the dying consumer's prefetch window.
    let attempts: Vec<u32> = again.iter().map(EventDelivery::attempt).collect();
    assert!(attempts.iter().all(|a| (2..=3).contains(a)), "redelivered: attempt 2, not {attempts:?}");
}

/// Publishing the same events again (a retry after an error) does not hand a group
/// that already has them a second copy, where the backend declares `deduplicates`;
/// elsewhere each copy arrives whole, with its `event_id`, for the consumer to dedupe.
pub async fn republished_events_are_not_duplicated(h: &BusHarness) {
    let bus = open(&h.fresh_url("")).await;
    let group = bus.subscribe("pay.*", "ledger").await.unwrap();
    let events: Vec<Envelope> = (0..5).map(event).collect();
    bus.publish("pay.settled", events.clone()).await.unwrap();
    bus.publish("pay.settled", events.clone()).await.unwrap();
    if bus.capabilities().deduplicates {
        assert_eq!(drain(&group, 5, true).await.len(), 5);
        return;
    }
    let got = drain(&group, 10, true).await;
    let mut ids = BTreeMap::<_, usize>::new();
    for d in &got {
        *ids.entry(d.envelope().event_id).or_default() += 1;
    }
    let sent: BTreeMap<_, usize> = events.iter().map(|e| (e.event_id, 2)).collect();
    assert_eq!(ids, sent, "each event twice, under its own event_id");
}

/// Bad topics, patterns, group names and oversized events are `InvalidInput` and store
/// nothing; a group named again with another pattern is `Conflict`.
pub async fn bad_input_is_rejected_before_sending(h: &BusHarness) {
    let bus = open(&h.fresh_url("")).await;
    let group = bus.subscribe("in.>", "all").await.unwrap();
    for topic in ["", "in..x", "in.*", "in.>", "in x"] {
        let err = bus.publish(topic, vec![event(0)]).await.expect_err(topic);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{topic:?}: {err}");
    }
    for pattern in ["", "in..x", "in.>.x"] {
        let err = bus.subscribe(pattern, "g").await.expect_err(pattern);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{pattern:?}: {err}");
    }
    for name in ["", "a b", "a.b", &"x".repeat(101)] {
        let err = bus.subscribe("in.>", name).await.expect_err(name);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name:?}: {err}");
    }
    let max = bus.capabilities().max_event_bytes;
    let huge = Envelope::raw("in.big", "1", json!({ "blob": "x".repeat(max) }));
    let err = bus.publish("in.big", vec![event(1), huge]).await.expect_err("oversized");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = bus.subscribe("other.*", "all").await.expect_err("another pattern");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(group.receive(10, Duration::from_millis(300)).await.unwrap().is_empty(), "nothing was stored");
}

/// After `close`, calls fail with `Cancelled`; closing twice is fine.
pub async fn close_rejects_later_calls(h: &BusHarness) {
    let bus = open(&h.fresh_url("")).await;
    bus.close().await.unwrap();
    bus.close().await.unwrap();
    let err = bus.publish("a.b", vec![event(0)]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    let err = bus.subscribe("a.*", "g").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
}

/// The health check makes a round trip and names the backend.
pub async fn health_check_round_trips(h: &BusHarness) {
    let bus = open(&h.fresh_url("")).await;
    bus.check().await.expect("health");
    assert!(bus.name().starts_with("events:"), "{}", bus.name());
    assert!(bus.to_string().starts_with("EventBus("), "{bus}");
}

/// Unknown parameters, and `queue` or `dead_letter` (the bus names a group's queues),
/// are errors naming them; the queue's own parameters are checked too.
pub async fn url_parameters_are_checked(h: &BusHarness) {
    let cases = BTreeMap::from([
        ("bogus_param=1", "bogus_param"),
        ("queue=q", "queue"),
        ("dead_letter=d", "dead_letter"),
        ("max_attempts=lots", "max_attempts"),
        ("namespace=a.b", "namespace"),
    ]);
    for (extra, field) in cases {
        // The last `namespace` given counts.
        let url = format!("{}&{extra}", h.fresh_url(""));
        let err = crate::open_bus(&url).await.expect_err(extra);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{extra}: {err}");
        assert!(err.to_string().contains(field), "{extra}: {err}");
    }
}

/// Runs every behaviour in turn (the macro runs them as separate tests instead).
pub async fn run_all(h: &BusHarness) {
    use platform_core::run_behaviours;
    crate::bus_behaviours!(run_behaviours!(h));
}

/// Writes one `#[tokio::test]` per bus behaviour in a module named after the backend.
///
/// `$harness` is an expression of type `Option<BusHarness>`; `None` skips.
#[macro_export]
macro_rules! bus_conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::bus_behaviours!($crate::testkit::behaviour_tests!($backend, $crate::testkit::bus, $harness));
    };
}

/// Every behaviour of the event bus suite, listed once. Calls `$then!(…, behaviour, …)`.
#[doc(hidden)]
#[macro_export]
macro_rules! bus_behaviours {
    ($($then:ident)::+ ! ($($args:tt)*)) => {
        $($then)::+! {
            $($args)*,
            fan_out_to_every_group,
            a_group_made_elsewhere_is_reached,
            competing_consumers_share_a_group,
            order_per_key_where_declared,
            groups_get_only_matching_topics,
            durable_group_resumes_after_restart,
            failures_retry_then_dead_letter,
            undecodable_messages_are_dead_lettered,
            unknown_types_are_dead_lettered,
            a_crashed_consumers_events_come_back,
            envelope_and_headers_arrive_whole,
            republished_events_are_not_duplicated,
            bad_input_is_rejected_before_sending,
            close_rejects_later_calls,
            health_check_round_trips,
            url_parameters_are_checked
        }
    };
}
