//! The WebSocket hub with real WebSocket clients (tokio-tungstenite) over loopback.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use platform_events::hub::{CLOSE_TOO_SLOW, Hub, HubConfig, SUBPROTOCOL};
use platform_events::open_broadcast;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{Message, http};

const KEY: &str = "s3cret-ws-key-for-tests";
use platform_events::testkit::ws::{WAIT, Ws, next, send};

async fn start(config: HubConfig) -> (Arc<Hub>, String) {
    let name = platform_core::testkit::unique_ident("hub");
    let broadcast = open_broadcast(&format!("memory://{name}?buffer=100000")).await.unwrap();
    let hub = Hub::start(broadcast, config).await.unwrap();
    let app = platform_core::http::Contract::new("hub", "1").apply(hub.routes());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (hub, format!("ws://{addr}/ws"))
}

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(format!("{url}?key={KEY}")).await.expect("connect").0
}

/// The close code the server sent, reading past any frames before it.
async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(Some(f)))) => return f.code.into(),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_ways_in_and_a_wrong_key() {
    let (_hub, url) = start(HubConfig::new(KEY).unwrap()).await;
    let mut ws = tokio_tungstenite::connect_async(format!("{url}?key={KEY}")).await.unwrap().0;
    send(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong");
    for (name, value) in [("x-shared-key", KEY.to_owned()), ("authorization", format!("Bearer {KEY}"))] {
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert(name, value.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        send(&mut ws, json!({"op": "ping"})).await;
        assert_eq!(next(&mut ws).await["type"], "pong", "{name}");
    }
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", format!("{SUBPROTOCOL}, key.{KEY}").parse().unwrap());
    let (mut ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(res.headers()["sec-websocket-protocol"], SUBPROTOCOL, "the marker is echoed, never the key");
    send(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong");

    for bad in [format!("{url}?key=wrong"), url.clone(), format!("{url}?key={KEY}x")] {
        match tokio_tungstenite::connect_async(bad.as_str()).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), http::StatusCode::UNAUTHORIZED, "{bad}");
                assert_eq!(res.headers()["content-type"], "application/problem+json");
                let body = String::from_utf8(res.body().clone().unwrap_or_default()).unwrap();
                assert!(!body.contains(KEY), "{body}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_what_their_patterns_match() {
    let (hub, url) = start(HubConfig::new(KEY).unwrap()).await;
    let (mut jobs, mut all, mut publisher) = (connect(&url).await, connect(&url).await, connect(&url).await);
    send(&mut jobs, json!({"op": "subscribe", "channel": "jobs.*.events"})).await;
    let subscribed = next(&mut jobs).await;
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(subscribed["channel"], "jobs.*.events");
    send(&mut all, json!({"op": "subscribe", "channel": ">"})).await;
    next(&mut all).await;
    send(&mut publisher, json!({"op": "publish", "channel": "jobs.7.events", "data": {"progress": 50}})).await;
    assert_eq!(next(&mut publisher).await, json!({"type": "published", "channel": "jobs.7.events"}));
    hub.publish("system.events", json!({"up": true})).await.unwrap();
    hub.publish("jobs.8.events", json!("done")).await.unwrap();

    let first = next(&mut jobs).await;
    assert_eq!(first["type"], "event");
    assert_eq!(first["channel"], "jobs.7.events");
    assert_eq!(first["data"], json!({"progress": 50}));
    assert_eq!(first["epoch"], subscribed["epoch"]);
    let second = next(&mut jobs).await;
    assert_eq!((second["channel"].as_str(), second["data"].as_str()), (Some("jobs.8.events"), Some("done")));
    assert!(second["offset"].as_u64() > first["offset"].as_u64());
    let channels: Vec<Value> = [next(&mut all).await, next(&mut all).await, next(&mut all).await]
        .iter()
        .map(|e| e["channel"].clone())
        .collect();
    assert_eq!(channels, [json!("jobs.7.events"), json!("system.events"), json!("jobs.8.events")]);

    send(&mut jobs, json!({"op": "unsubscribe", "channel": "jobs.*.events"})).await;
    assert_eq!(next(&mut jobs).await["type"], "unsubscribed");
    hub.publish("jobs.9.events", json!(1)).await.unwrap();
    send(&mut jobs, json!({"op": "ping"})).await;
    assert_eq!(next(&mut jobs).await["type"], "pong", "nothing from jobs.9 after unsubscribing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_gets_exactly_what_it_missed() {
    let (hub, url) = start(HubConfig::new(KEY).unwrap()).await;
    let mut ws = connect(&url).await;
    send(&mut ws, json!({"op": "subscribe", "channel": "jobs.*.events"})).await;
    let epoch = next(&mut ws).await["epoch"].clone();
    for i in 1..=3 {
        hub.publish(&format!("jobs.{i}.events"), json!(i)).await.unwrap();
    }
    let mut last = 0;
    for i in 1..=3 {
        let e = next(&mut ws).await;
        assert_eq!(e["data"], i);
        last = e["offset"].as_u64().unwrap();
    }
    drop(ws); // the connection is cut

    // Meanwhile: three more for the pattern (one on a job created while away), one not.
    for (channel, data) in [("jobs.3.events", 4), ("system.logs", 0), ("jobs.4.events", 5), ("jobs.1.events", 6)] {
        hub.publish(channel, json!(data)).await.unwrap();
    }
    platform_core::testkit::eventually(WAIT, || async { (hub.position().1 >= last + 4).then_some(()) }).await.unwrap();

    let mut ws = connect(&url).await;
    let since = json!({"epoch": epoch, "offset": last});
    send(&mut ws, json!({"op": "subscribe", "channel": "jobs.*.events", "since": since})).await;
    let answer = next(&mut ws).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    let missed: Vec<Value> =
        [next(&mut ws).await, next(&mut ws).await, next(&mut ws).await].iter().map(|e| e["data"].clone()).collect();
    assert_eq!(missed, [json!(4), json!(5), json!(6)], "the missed range, in order");
    hub.publish("jobs.2.events", json!(7)).await.unwrap();
    assert_eq!(next(&mut ws).await["data"], 7, "then live, no duplicate");

    // Honest failures: another epoch, or history trimmed past the offset.
    let mut ws = connect(&url).await;
    send(&mut ws, json!({"op": "subscribe", "channel": "jobs.>", "since": {"epoch": "other", "offset": 1}})).await;
    let answer = next(&mut ws).await;
    assert_eq!(answer["recovered"], false);
    assert!(answer["reason"].as_str().unwrap().contains("epoch"), "{answer}");

    let (small, url) = start(HubConfig::new(KEY).unwrap().with_history(2)).await;
    for i in 0..5 {
        small.publish("jobs.1.events", json!(i)).await.unwrap();
    }
    platform_core::testkit::eventually(WAIT, || async { (small.position().1 >= 5).then_some(()) }).await.unwrap();
    let mut ws = connect(&url).await;
    let since = json!({"epoch": small.position().0, "offset": 1});
    send(&mut ws, json!({"op": "subscribe", "channel": "jobs.>", "since": since})).await;
    let answer = next(&mut ws).await;
    assert_eq!(answer["recovered"], false);
    assert!(answer["reason"].as_str().unwrap().contains("history"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_hold_up_the_others() {
    let (hub, url) = start(HubConfig::new(KEY).unwrap().with_queue(64)).await;
    let mut stalled = connect(&url).await;
    send(&mut stalled, json!({"op": "subscribe", "channel": "feed"})).await;
    let mut fast = Vec::new();
    for _ in 0..5 {
        let mut ws = connect(&url).await;
        send(&mut ws, json!({"op": "subscribe", "channel": "feed"})).await;
        next(&mut ws).await;
        fast.push(ws);
    }
    // Far more than the socket buffers and the stalled client's queue hold, published
    // at the pace the fast clients read (32 ahead at most): the stalled one must not
    // slow them, and they must not be taken for slow.
    let blob = "x".repeat(16 * 1024);
    let total = 2000_u64;
    let read: Arc<Vec<std::sync::atomic::AtomicU64>> = Arc::new((0..5).map(|_| Default::default()).collect());
    let readers: Vec<_> = fast
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            let read = Arc::clone(&read);
            tokio::spawn(async move {
                for n in 0..total {
                    let e = next(&mut ws).await;
                    assert_eq!(e["data"]["n"], n, "in order, none missing");
                    read[i].store(n + 1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        })
        .collect();
    for n in 0..total {
        hub.publish("feed", json!({"n": n, "blob": blob})).await.unwrap();
        let behind = || read.iter().map(|r| r.load(std::sync::atomic::Ordering::SeqCst)).min().unwrap_or(0);
        if n + 1 - behind() > 32 {
            platform_core::testkit::eventually(WAIT, || async { (n + 1 - behind() <= 8).then_some(()) })
                .await
                .expect("the fast clients keep up");
        }
    }
    for r in readers {
        tokio::time::timeout(Duration::from_secs(60), r).await.expect("fast clients kept up").unwrap();
    }
    assert_eq!(close_code(&mut stalled).await, CLOSE_TOO_SLOW);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_answers_or_documented_close_codes() {
    let (_hub, url) = start(HubConfig::new(KEY).unwrap()).await;
    let mut ws = connect(&url).await;
    ws.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(next(&mut ws).await["code"], "bad_frame");
    send(&mut ws, json!({"op": "subscribe", "channel": "a..b"})).await;
    assert_eq!(next(&mut ws).await["code"], "bad_channel");
    send(&mut ws, json!({"op": "publish", "channel": "a.*", "data": 1})).await;
    assert_eq!(next(&mut ws).await["code"], "invalid_input");
    send(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong", "still open after bad frames");

    ws.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1003);

    let mut ws = connect(&url).await;
    for i in 0..100 {
        send(&mut ws, json!({"op": "subscribe", "channel": format!("c.{i}")})).await;
        next(&mut ws).await;
    }
    send(&mut ws, json!({"op": "subscribe", "channel": "c.too-many"})).await;
    assert_eq!(close_code(&mut ws).await, 1008);

    let mut ws = connect(&url).await;
    let huge = json!({"op": "publish", "channel": "big", "data": "x".repeat(100 * 1024)});
    let _ = ws.send(Message::Text(huge.to_string().into())).await;
    let code = match tokio::time::timeout(WAIT, ws.next()).await.expect("closed in time") {
        Some(Ok(Message::Close(Some(f)))) => u16::from(f.code),
        other => panic!("{other:?}"),
    };
    assert_eq!(code, 1009, "frame too large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_and_authorization() {
    use platform_events::hub::Access;
    let config = HubConfig::new(KEY)
        .unwrap()
        .with_authorizer(Arc::new(|_who: &platform_events::hub::Principal, channel: &str, access: Access| {
            !(channel.starts_with("admin.") || (access == Access::Publish && channel == "system.events"))
        }))
        .on_publish(
            "jobs.enqueue",
            Arc::new(|who: &platform_events::hub::Principal, data: Value| {
                let by = who.subject.clone();
                Box::pin(async move { Ok(json!({ "job_id": format!("job-{}", data["n"]), "by": by })) })
            }),
        );
    let (_hub, url) = start(config).await;
    let mut ws = connect(&url).await;
    send(&mut ws, json!({"op": "publish", "channel": "jobs.enqueue", "data": {"n": 7}})).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "published", "channel": "jobs.enqueue", "result": {"job_id": "job-7", "by": "shared-key"}})
    );
    send(&mut ws, json!({"op": "subscribe", "channel": "admin.>"})).await;
    assert_eq!(next(&mut ws).await["code"], "permission_denied");
    send(&mut ws, json!({"op": "publish", "channel": "system.events", "data": 1})).await;
    assert_eq!(next(&mut ws).await["code"], "permission_denied");
    send(&mut ws, json!({"op": "subscribe", "channel": "system.events"})).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed", "reading is allowed");
}

/// An authenticator of the service's own (here: `X-User: alice@acme`), tried after the
/// shared key; the authorizer keeps each user to its tenant's channels.
#[derive(Debug)]
struct HeaderUser;

#[async_trait::async_trait]
impl platform_auth::Authenticator for HeaderUser {
    fn method(&self) -> &'static str {
        "header_user"
    }

    async fn authenticate(
        &self,
        r: &platform_auth::RequestParts<'_>,
    ) -> platform_core::Result<platform_auth::AuthOutcome> {
        use platform_auth::{AuthOutcome, Principal};
        let Some(user) = r.header("x-user") else { return Ok(AuthOutcome::Absent) };
        let (name, tenant) = user
            .split_once('@')
            .ok_or_else(|| platform_core::Error::new(platform_core::ErrorKind::Unauthenticated, "bad user"))?;
        Ok(AuthOutcome::Authenticated(Principal::new(name, "header_user").with_tenant(Some(tenant.to_owned()))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_only_their_tenants_channels() {
    use platform_events::hub::{Access, Principal};
    let config = HubConfig::new(KEY).unwrap().with_authenticator(Arc::new(HeaderUser)).with_authorizer(Arc::new(
        |who: &Principal, channel: &str, _: Access| match &who.tenant {
            Some(t) => channel.strip_prefix("tenants.").is_some_and(|rest| rest.split('.').next() == Some(t.as_str())),
            None => who.subject == "shared-key",
        },
    ));
    let (hub, url) = start(config).await;
    let user = |who: &str| {
        let mut request = url.as_str().into_client_request().unwrap();
        request.headers_mut().insert("x-user", who.parse().unwrap());
        request
    };
    let (mut alice, _) = tokio_tungstenite::connect_async(user("alice@acme")).await.unwrap();
    send(&mut alice, json!({"op": "subscribe", "channel": "tenants.acme.>"})).await;
    assert_eq!(next(&mut alice).await["type"], "subscribed");
    send(&mut alice, json!({"op": "subscribe", "channel": "tenants.globex.>"})).await;
    assert_eq!(next(&mut alice).await["code"], "permission_denied");
    send(&mut alice, json!({"op": "subscribe", "channel": "tenants.>"})).await;
    assert_eq!(next(&mut alice).await["code"], "permission_denied", "a wildcard over other tenants");
    hub.publish("tenants.globex.todos", json!({"secret": true})).await.unwrap();
    hub.publish("tenants.acme.todos", json!({"n": 1})).await.unwrap();
    assert_eq!(next(&mut alice).await["data"], json!({"n": 1}), "only its own tenant's event");
    // No credential at all: 401 before the upgrade.
    let refused = tokio_tungstenite::connect_async(url.split('?').next().unwrap()).await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
    // The shared key still works.
    let mut service = connect(&url).await;
    send(&mut service, json!({"op": "subscribe", "channel": "system.events"})).await;
    assert_eq!(next(&mut service).await["type"], "subscribed");
}

/// Two nodes on one broadcast server: 20 subscribers on each, each node publishing 250
/// events on a channel of its own; every subscriber gets all 500, each channel in
/// order, once.
async fn two_nodes_share_channels(name: &str, broadcast_url: &str) {
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let broadcast = open_broadcast(broadcast_url).await.unwrap();
        let hub = Hub::start(broadcast, HubConfig::new(KEY).unwrap()).await.unwrap();
        let (url, _) = serve(&hub).await;
        nodes.push((hub, url));
    }
    nodes_share_channels(name, nodes).await;
}

/// Serves `hub` on a port of its own: its `/ws` URL, and the server task (abort it to
/// take the node away).
async fn serve(hub: &Arc<Hub>) -> (String, tokio::task::JoinHandle<()>) {
    let app = platform_core::http::Contract::new("hub", "1").apply(hub.routes());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

async fn nodes_share_channels(name: &str, nodes: Vec<(Arc<Hub>, String)>) {
    let prefix = platform_core::testkit::unique_ident("sync");
    let per_node = 250_u64;
    let mut readers = Vec::new();
    for (_, url) in &nodes {
        for _ in 0..20 {
            let mut ws = connect(url).await;
            send(&mut ws, json!({"op": "subscribe", "channel": format!("{prefix}.>")})).await;
            assert_eq!(next(&mut ws).await["type"], "subscribed");
            readers.push(tokio::spawn(async move {
                let mut seen = std::collections::BTreeMap::<String, u64>::new();
                for _ in 0..per_node * 2 {
                    let e = next(&mut ws).await;
                    let channel = e["channel"].as_str().unwrap().to_owned();
                    let n = e["data"].as_u64().unwrap();
                    let expected = seen.entry(channel.clone()).or_default();
                    assert_eq!(n, *expected, "{channel}: in order, once");
                    *expected += 1;
                }
                seen
            }));
        }
    }
    let publishers = nodes.iter().enumerate().map(|(i, (hub, _))| {
        let (hub, channel) = (Arc::clone(hub), format!("{prefix}.node{i}"));
        async move {
            for n in 0..per_node {
                hub.publish(&channel, json!(n)).await.unwrap();
            }
        }
    });
    futures::future::join_all(publishers).await;
    for r in readers {
        let seen = tokio::time::timeout(Duration::from_secs(60), r).await.expect(name).unwrap();
        assert_eq!(seen.values().copied().collect::<Vec<_>>(), [per_node, per_node], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_redis() {
    let Some(url) = platform_core::testkit::server_url("REDIS") else { return };
    two_nodes_share_channels("redis", &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_nats() {
    let Some(url) = platform_core::testkit::server_url("NATS") else { return };
    two_nodes_share_channels("nats", &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgres() {
    let Some(url) = platform_core::testkit::server_url("POSTGRES") else { return };
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}namespace={}", platform_core::testkit::unique_ident("hub"));
    two_nodes_share_channels("postgres", &url).await;
}

/// A node over the shared log `log_url`, served on a port of its own.
async fn shared_node(log_url: &str) -> (Arc<Hub>, String, tokio::task::JoinHandle<()>) {
    let log = platform_events::hub::open_log(log_url).await.unwrap();
    let hub = Hub::start_shared(log, HubConfig::new(KEY).unwrap()).await.unwrap();
    let (url, task) = serve(&hub).await;
    (hub, url, task)
}

/// `url` with a fresh `namespace`.
fn fresh_namespace(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}namespace={}", platform_core::testkit::unique_ident("hub"))
}

/// The next `n` events' data and offsets.
async fn events(ws: &mut Ws, n: usize) -> (Vec<Value>, Vec<u64>) {
    let mut got = (Vec::new(), Vec::new());
    for _ in 0..n {
        let e = next(ws).await;
        assert_eq!(e["type"], "event", "{e}");
        got.0.push(e["data"].clone());
        got.1.push(e["offset"].as_u64().unwrap());
    }
    got
}

/// Over a shared log: a client of a node that goes away resumes on another node,
/// and on a node started after it left (which holds nothing in memory and reads the
/// log), with exactly what it missed and the same offsets everywhere; then live.
async fn a_client_resumes_on_another_node(log_url: &str) {
    let (a, url_a, server_a) = shared_node(log_url).await;
    let (b, url_b, _server_b) = shared_node(log_url).await;
    let mut ws = connect(&url_a).await;
    send(&mut ws, json!({"op": "subscribe", "channel": "jobs.*.events"})).await;
    let epoch = next(&mut ws).await["epoch"].clone();
    for i in 1..=3 {
        b.publish(&format!("jobs.{i}.events"), json!(i)).await.unwrap();
    }
    let (data, offsets) = events(&mut ws, 3).await;
    assert_eq!(data, [json!(1), json!(2), json!(3)], "published on b, delivered by a");
    let last = offsets[2];

    // The node goes: its server stops and its sockets are cut.
    server_a.abort();
    a.disconnect_all();
    drop((a, ws));
    // Meanwhile, on b: three for the pattern (one on a job created while away), one not.
    for (channel, data) in [("jobs.3.events", 4), ("system.logs", 0), ("jobs.4.events", 5), ("jobs.1.events", 6)] {
        b.publish(channel, json!(data)).await.unwrap();
    }
    let (c, url_c, _server_c) = shared_node(log_url).await;
    let mut resumed = Vec::new();
    for url in [&url_b, &url_c] {
        let mut ws = connect(url).await;
        let since = json!({"epoch": epoch, "offset": last});
        send(&mut ws, json!({"op": "subscribe", "channel": "jobs.*.events", "since": since})).await;
        let answer = next(&mut ws).await;
        assert_eq!(answer["recovered"], true, "{url}: {answer}");
        let (data, offsets) = events(&mut ws, 3).await;
        assert_eq!(data, [json!(4), json!(5), json!(6)], "{url}: the missed range, in order");
        resumed.push((ws, offsets));
    }
    assert_eq!(resumed[0].1, resumed[1].1, "one offset per event on every node");
    assert!(resumed[0].1.windows(2).all(|w| w[0] < w[1]));
    c.publish("jobs.2.events", json!(7)).await.unwrap();
    for (ws, offsets) in &mut resumed {
        let e = next(ws).await;
        assert_eq!(e["data"], 7, "then live, no duplicate");
        assert_eq!(e["offset"].as_u64().unwrap(), offsets[2] + 1);
    }
}

/// Over a shared log whose history is lost (flushed, reset), a resume from before is
/// never claimed recovered.
async fn a_lost_log_is_not_recovered(log_url: &str, lose: impl std::future::Future<Output = ()>) {
    let (hub, url, _server) = shared_node(log_url).await;
    let mut ws = connect(&url).await;
    send(&mut ws, json!({"op": "subscribe", "channel": "jobs.>"})).await;
    let epoch = next(&mut ws).await["epoch"].clone();
    hub.publish("jobs.1.events", json!(1)).await.unwrap();
    let (_, offsets) = events(&mut ws, 1).await;
    drop(ws);
    lose.await;
    hub.publish("jobs.1.events", json!(2)).await.unwrap();
    platform_core::testkit::eventually(WAIT, || async { (hub.position().0 != epoch).then_some(()) }).await.unwrap();
    let mut ws = connect(&url).await;
    let since = json!({"epoch": epoch, "offset": offsets[0]});
    send(&mut ws, json!({"op": "subscribe", "channel": "jobs.>", "since": since})).await;
    let answer = next(&mut ws).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    assert!(answer["reason"].as_str().unwrap().contains("epoch"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_node_over_redis() {
    let Some(url) = platform_core::testkit::server_url("REDIS") else { return };
    a_client_resumes_on_another_node(&fresh_namespace(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_node_over_postgres() {
    let Some(url) = platform_core::testkit::server_url("POSTGRES") else { return };
    a_client_resumes_on_another_node(&fresh_namespace(&url)).await;
}

/// Two nodes over one shared log, as [`two_nodes_share_channels`] over a broadcast.
async fn two_nodes_on_a_log(name: &str, server: &str) {
    let url = fresh_namespace(server);
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let (hub, ws_url, _) = shared_node(&url).await;
        nodes.push((hub, ws_url));
    }
    nodes_share_channels(name, nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_node_over_nats() {
    let Some(url) = platform_core::testkit::server_url("NATS") else { return };
    a_client_resumes_on_another_node(&fresh_namespace(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_nats_log() {
    let Some(url) = platform_core::testkit::server_url("NATS") else { return };
    two_nodes_on_a_log("nats log", &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_nats_log_is_not_recovered() {
    let Some(url) = platform_core::testkit::server_url("NATS") else { return };
    let namespace = platform_core::testkit::unique_ident("hub");
    let log_url = format!("{url}?namespace={namespace}");
    let delete = async {
        let client = async_nats::connect(url.as_str()).await.unwrap();
        async_nats::jetstream::new(client).delete_stream(format!("PLATFORM_HUB_{namespace}")).await.unwrap();
    };
    a_lost_log_is_not_recovered(&log_url, delete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_redis_log() {
    let Some(url) = platform_core::testkit::server_url("REDIS") else { return };
    two_nodes_on_a_log("redis log", &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_postgres_log() {
    let Some(url) = platform_core::testkit::server_url("POSTGRES") else { return };
    two_nodes_on_a_log("postgres log", &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_log_is_not_recovered() {
    let Some(url) = platform_core::testkit::server_url("REDIS") else { return };
    let namespace = platform_core::testkit::unique_ident("hub");
    let sep = if url.contains('?') { '&' } else { '?' };
    let log_url = format!("{url}{sep}namespace={namespace}");
    let flush = async {
        // This namespace's keys only: the server is shared with other tests.
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> =
            ["epoch", "seq", "log"].iter().map(|k| format!("platform:hub:{namespace}:{k}")).collect();
        let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
    };
    a_lost_log_is_not_recovered(&log_url, flush).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_postgres_log_is_not_recovered() {
    let Some(url) = platform_core::testkit::server_url("POSTGRES") else { return };
    let namespace = platform_core::testkit::unique_ident("hub");
    let sep = if url.contains('?') { '&' } else { '?' };
    let log_url = format!("{url}{sep}namespace={namespace}");
    let reset = async {
        // As a restore to an older state would: the head goes.
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query("DELETE FROM platform_hub_heads WHERE namespace = $1")
            .bind(&namespace)
            .execute(&pool)
            .await
            .unwrap();
    };
    a_lost_log_is_not_recovered(&log_url, reset).await;
}

/// A 10 s outage of the broadcast server (a private Redis, killed and started again):
/// the node's own clients go on getting its publishes, its health check (readiness)
/// fails until the server is back, then the node hears the other node again, in a new
/// epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_outage_keeps_local_delivery_and_fails_readiness() {
    use platform_core::HealthCheck as _;
    let Some(mut server) = platform_core::testkit::server::PrivateServer::redis_aof().await else {
        return platform_core::testkit::skip("redis-server not found");
    };
    let broadcast_url = format!("redis://127.0.0.1:{}", server.port());
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let hub =
            Hub::start(open_broadcast(&broadcast_url).await.unwrap(), HubConfig::new(KEY).unwrap()).await.unwrap();
        let (url, _) = serve(&hub).await;
        nodes.push((hub, url));
    }
    let (a, b) = (&nodes[0].0, &nodes[1].0);
    let mut ws = connect(&nodes[0].1).await;
    send(&mut ws, json!({"op": "subscribe", "channel": "jobs.>"})).await;
    let epoch = next(&mut ws).await["epoch"].clone();
    b.publish("jobs.1.events", json!("before")).await.unwrap();
    assert_eq!(next(&mut ws).await["data"], "before");
    assert!(a.check().await.is_ok());

    server.kill().await;
    let down = std::time::Instant::now();
    a.publish("jobs.1.events", json!("during")).await.expect("a publish during the outage");
    assert_eq!(next(&mut ws).await["data"], "during", "this node's clients still get it");
    platform_core::testkit::eventually(WAIT, || async { a.check().await.is_err().then_some(()) })
        .await
        .expect("readiness fails during the outage");
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await; // the outage itself
    server.restart().await;

    platform_core::testkit::eventually(Duration::from_secs(30), || async { a.check().await.is_ok().then_some(()) })
        .await
        .expect("readiness back once the server is");
    // b's publishes reach a's client again once both subscribed again.
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    'probe: for n in 0.. {
        assert!(tokio::time::Instant::now() < until, "the node hears the other node again");
        let probe = json!(format!("after-{n}"));
        if b.publish("jobs.1.events", probe.clone()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
            if let Message::Text(t) = msg
                && serde_json::from_str::<Value>(&t).unwrap()["data"] == probe
            {
                break 'probe;
            }
        }
    }
    assert_ne!(json!(a.position().0), epoch, "a new epoch after the broadcast came back");
}

/// A reconnect storm: 5,000 clients that were cut at once come back together (500 at a
/// time in flight), each resuming a wildcard subscription with `since`; every one gets
/// `recovered: true` and exactly the five events it missed, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_of_5000_clients_all_recover() {
    use futures::stream::StreamExt as _;
    let (hub, url) = start(HubConfig::new(KEY).unwrap().with_queue(64)).await;
    hub.publish("jobs.0.events", json!(0)).await.unwrap();
    platform_core::testkit::eventually(WAIT, || async { (hub.position().1 >= 1).then_some(()) }).await.unwrap();
    let (epoch, last) = hub.position();
    // While they were away: five for the pattern, on five jobs.
    for i in 1..=5 {
        hub.publish(&format!("jobs.{i}.events"), json!(i)).await.unwrap();
    }
    platform_core::testkit::eventually(WAIT, || async { (hub.position().1 >= last + 5).then_some(()) }).await.unwrap();
    let started = std::time::Instant::now();
    let clients = 5000;
    let recovered = futures::stream::iter(0..clients)
        .map(|_| {
            let (url, epoch) = (url.clone(), epoch.clone());
            async move {
                let mut ws = connect(&url).await;
                let since = json!({"epoch": epoch, "offset": last});
                send(&mut ws, json!({"op": "subscribe", "channel": "jobs.*.events", "since": since})).await;
                let answer = next(&mut ws).await;
                assert_eq!(answer["recovered"], true, "{answer}");
                let (data, _) = events(&mut ws, 5).await;
                assert_eq!(data, (1..=5).map(|i| json!(i)).collect::<Vec<_>>());
                ws.close(None).await.ok();
            }
        })
        .buffer_unordered(500)
        .count()
        .await;
    assert_eq!(recovered, clients);
    eprintln!("reconnect storm: {clients} clients resumed in {:?}", started.elapsed());
}

/// Presence across two nodes on one Redis: a client that subscribes to a presence
/// channel by name joins it with its info, a watcher on the other node gets the join
/// and the leave as events on `presence.<channel>`, and a `presence` frame on either
/// node lists who is there; a wildcard subscription and a channel without presence
/// join nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_joins_and_leaves_across_nodes() {
    let Some(url) = platform_core::testkit::server_url("REDIS") else { return };
    let room = platform_core::testkit::unique_ident("room");
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let config = HubConfig::new(KEY).unwrap().with_presence(&[&format!("{room}.*")]).unwrap();
        let hub = Hub::start(open_broadcast(&url).await.unwrap(), config).await.unwrap();
        let (ws_url, _) = serve(&hub).await;
        nodes.push((hub, ws_url));
    }
    let mut watcher = connect(&nodes[0].1).await;
    send(&mut watcher, json!({"op": "subscribe", "channel": format!("presence.{room}.1")})).await;
    assert_eq!(next(&mut watcher).await["type"], "subscribed");

    let mut bob = connect(&nodes[1].1).await;
    send(&mut bob, json!({"op": "subscribe", "channel": format!("{room}.>")})).await; // a wildcard: no join
    assert_eq!(next(&mut bob).await["type"], "subscribed");
    let channel = format!("{room}.1");
    send(&mut bob, json!({"op": "subscribe", "channel": channel, "info": {"name": "bob"}})).await;
    assert_eq!(next(&mut bob).await["type"], "subscribed");
    let join = next(&mut watcher).await;
    assert_eq!(join["channel"], format!("presence.{room}.1"), "{join}");
    assert_eq!(join["data"]["event"], "join");
    assert_eq!(join["data"]["info"]["name"], "bob");
    let client = join["data"]["client"].clone();

    for (hub, ws_url) in &nodes {
        platform_core::testkit::eventually(WAIT, || async { (hub.presence(&channel).len() == 1).then_some(()) })
            .await
            .unwrap();
        let mut asker = connect(ws_url).await;
        send(&mut asker, json!({"op": "presence", "channel": channel})).await;
        let answer = next(&mut asker).await;
        assert_eq!(answer["clients"], json!([{"client": client, "info": {"name": "bob"}}]), "{answer}");
        send(&mut asker, json!({"op": "presence", "channel": "elsewhere.1"})).await;
        assert_eq!(next(&mut asker).await["type"], "error", "no presence on that channel");
    }

    drop(bob); // the socket goes: a leave
    let leave = next(&mut watcher).await;
    assert_eq!(leave["data"]["event"], "leave", "{leave}");
    assert_eq!(leave["data"]["client"], client);
    for (hub, _) in &nodes {
        platform_core::testkit::eventually(WAIT, || async { hub.presence(&channel).is_empty().then_some(()) })
            .await
            .unwrap();
    }
}

/// A client enqueues a job by publishing on `jobs.enqueue` (answered with its id), a
/// worker on platform-queue takes it and reports, and the client sees `queued`,
/// `running`, progress and `succeeded` on `jobs.<id>.events`, in order, as does a
/// watcher of `jobs.events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_over_ws_reports_on_its_channel() {
    use platform_events::hub::{JobEvent, job_id};
    let queue: Arc<dyn platform_queue::Queue> = Arc::new(
        platform_queue::memory::MemoryQueue::from_url(&format!(
            "memory://{}",
            platform_core::testkit::unique_ident("jobs")
        ))
        .unwrap(),
    );
    let (hub, url) = start(HubConfig::new(KEY).unwrap().with_jobs(Arc::clone(&queue))).await;
    let mut watcher = connect(&url).await;
    send(&mut watcher, json!({"op": "subscribe", "channel": "jobs.events"})).await;
    assert_eq!(next(&mut watcher).await["type"], "subscribed");
    let mut ws = connect(&url).await;
    send(&mut ws, json!({"op": "subscribe", "channel": "jobs.*.events"})).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    send(&mut ws, json!({"op": "publish", "channel": "jobs.enqueue", "data": {"export": "todos"}})).await;
    let answer = next(&mut ws).await;
    assert_eq!(answer["type"], "published", "{answer}");
    let id = answer["result"]["job_id"].as_str().unwrap().to_owned();

    // The worker.
    let job = queue.receive(platform_queue::ReceiveOptions::new(1, WAIT)).await.unwrap().pop().expect("the job");
    assert_eq!(job_id(&job), Some(id.as_str()));
    assert_eq!(serde_json::from_slice::<Value>(job.body()).unwrap(), json!({"export": "todos"}));
    hub.job_event(&id, JobEvent::Running).await.unwrap();
    hub.job_event(&id, JobEvent::Progress(50)).await.unwrap();
    hub.job_event(&id, JobEvent::Succeeded(json!({"url": "/exports/1"}))).await.unwrap();
    job.ack().await.unwrap();

    for client in [&mut ws, &mut watcher] {
        let mut states = Vec::new();
        for _ in 0..4 {
            let e = next(client).await;
            assert_eq!(e["data"]["job_id"], id.as_str(), "{e}");
            states.push(e["data"]["state"].as_str().unwrap().to_owned());
            if e["data"]["state"] == "succeeded" {
                assert_eq!(e["data"]["result"]["url"], "/exports/1");
            }
        }
        assert_eq!(states, ["queued", "running", "progress", "succeeded"]);
    }
}

/// A client that answers no ping is closed with 4009. It is a raw socket that never
/// writes after the handshake (a WebSocket client library answers pings as it reads),
/// and reads what the server sent until the server lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_no_ping_is_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let config = HubConfig::new(KEY).unwrap().with_heartbeat(Duration::from_millis(200), Duration::from_millis(300));
    let (hub, url) = start(config).await;
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let upgrade = format!(
        "GET /ws?key={KEY} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut got)).await.expect("the server lets go").ok();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a handshake answer") + 4;
    assert!(got.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&got[..head_end]));
    // Server frames: [opcode | FIN, length < 126, payload]; pings (0x89), then a close (0x88).
    let (mut at, mut pings, mut code) = (head_end, 0, None);
    while at + 2 <= got.len() {
        let (op, len) = (got[at], usize::from(got[at + 1]));
        match op {
            0x89 => pings += 1,
            0x88 => code = Some(u16::from_be_bytes([got[at + 2], got[at + 3]])),
            other => panic!("unexpected frame {other:#x}"),
        }
        at += 2 + len;
    }
    assert!(pings >= 1, "pinged first");
    assert_eq!(code, Some(platform_events::hub::CLOSE_NO_PONG));
    assert_eq!(hub.connections(), 0);
    // One that reads answers the pings and stays.
    let mut ws = connect(&url).await;
    send(&mut ws, json!({"op": "subscribe", "channel": "jobs.>"})).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    while let Ok(frame) = tokio::time::timeout_at(until, ws.next()).await {
        assert!(matches!(frame, Some(Ok(Message::Ping(_)))), "{frame:?}");
    }
    assert_eq!(hub.connections(), 1, "a client that answers stays");
}

/// A resume in the middle of a stream of 5,000 events per second: from `since` on,
/// every offset once and in order, across the switch from history to live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_mid_stream_at_5000_events_per_second_has_no_gap() {
    // Room for the whole stream in the client's queue: this is about order and gaps, and
    // a test runner under load must not read as a slow client.
    let config = HubConfig::new(KEY).unwrap().with_queue(20_000).with_byte_bounds(64 << 20, 256 << 20);
    let (hub, url) = start(config).await;
    let total = 10_000_u64;
    let publisher = {
        let hub = Arc::clone(&hub);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for batch in 0..total / 50 {
                tick.tick().await;
                for i in 0..50 {
                    hub.publish("jobs.1.events", json!(batch * 50 + i)).await.unwrap();
                }
            }
        })
    };
    platform_core::testkit::eventually(WAIT, || async { (hub.position().1 >= 2000).then_some(()) }).await.unwrap();
    let (epoch, at) = hub.position();
    let since = at - 1000;
    let mut ws = connect(&url).await;
    send(&mut ws, json!({"op": "subscribe", "channel": "jobs.>", "since": {"epoch": epoch, "offset": since}})).await;
    let answer = next(&mut ws).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    let mut expected = since + 1;
    while expected <= total {
        let e = next(&mut ws).await;
        assert_eq!(e["offset"].as_u64().unwrap(), expected, "every offset once, in order");
        assert_eq!(e["data"].as_u64().unwrap(), expected - 1);
        expected += 1;
    }
    publisher.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_log_urls_are_checked() {
    use platform_events::hub::open_log;
    let wrong = |url: &'static str, part: &'static str| async move {
        let e = open_log(url).await.expect_err(url);
        assert!(e.is_invalid_input(), "{url}: {e}");
        assert!(e.to_string().contains(part), "{url}: {e}");
        assert!(!e.to_string().contains("hunter2"), "{url}: {e}");
    };
    wrong("redis://:hunter2@127.0.0.1:6379?colour=blue", "colour").await;
    wrong("redis://:hunter2@127.0.0.1:6379?history=0", "history").await;
    wrong("postgres://u:hunter2@127.0.0.1/test?namespace=a.b", "namespace").await;
    wrong("kafka://u:hunter2@127.0.0.1:9092", "kafka").await;
    let unset = platform_events::hub::open_log_from_env("HUB_LOG_UNSET_IN_TESTS").await.expect_err("unset");
    assert!(unset.to_string().contains("HUB_LOG_UNSET_IN_TESTS_URL"), "{unset}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frames_are_an_asyncapi_document() {
    let (_hub, url) = start(HubConfig::new(KEY).unwrap()).await;
    let http = url.replacen("ws://", "http://", 1).replace("/ws", "/asyncapi");
    let doc: Value = reqwest::get(&http).await.unwrap().json().await.unwrap();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["channels"]["ws"]["address"], "/ws");
    let all =
        ["subscribe", "unsubscribe", "publish", "ping", "presence_query", "event", "subscribed", "published", "pong"];
    for m in all.iter().chain(&["presence", "error"]) {
        assert!(doc["channels"]["ws"]["messages"][m]["payload"].is_object(), "{m}");
    }
    assert_eq!(doc["operations"]["clientFrames"]["messages"].as_array().unwrap().len(), 5);
}

const PAGE: &str = r#"<!doctype html><html><head><title>hub page</title></head><body>
<h1>hub page</h1><ul id="log"></ul><script>
const url = location.origin.replace("http", "ws") + "/ws";
let last = null;
function log(t) { const li = document.createElement("li"); li.textContent = t; document.getElementById("log").appendChild(li); }
function report(o) { fetch("/report", {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(o)}); }
function connect() {
  const ws = new WebSocket(url, ["platform-ws", "key.KEY"]);
  ws.onopen = () => { log("open " + ws.protocol); ws.send(JSON.stringify({op: "subscribe", channel: "page.>", since: last})); };
  ws.onmessage = (m) => {
    const f = JSON.parse(m.data); log(m.data);
    if (f.type === "subscribed") report({stage: last ? "resubscribed" : "subscribed", recovered: f.recovered ?? null, protocol: ws.protocol});
    if (f.type === "event") { last = {epoch: f.epoch, offset: f.offset}; report({stage: "event", data: f.data}); }
  };
  ws.onclose = (e) => { log("closed " + e.code); report({stage: "closed", code: e.code}); setTimeout(connect, 300); };
}
connect();
</script></body></html>"#;

/// A browser page subscribes with the subprotocol, receives an event, and resumes with
/// what it missed after its socket is cut: headless Chromium, reporting each step back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_page_subscribes_and_resumes() {
    use axum::routing::{get, post};
    let Some(chromium) = platform_core::testkit::tool("CHROMIUM") else { return };
    let broadcast =
        open_broadcast(&format!("memory://{}", platform_core::testkit::unique_ident("page"))).await.unwrap();
    let hub = Hub::start(broadcast, HubConfig::new(KEY).unwrap()).await.unwrap();
    let reports: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let sink = Arc::clone(&reports);
    let app = hub.routes().route("/page", get(|| async { axum::response::Html(PAGE.replace("KEY", KEY)) })).route(
        "/report",
        post(move |axum::Json(v): axum::Json<Value>| async move {
            sink.lock().unwrap().push(v);
        }),
    );
    let app = platform_core::http::Contract::new("page", "1").apply(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let profile = std::env::temp_dir().join(platform_core::testkit::unique_ident("chromium"));
    let mut browser = tokio::process::Command::new(chromium)
        .args(platform_core::testkit::chromium_flags(&profile))
        .arg(format!("{base}/page"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let seen = |stage: &'static str, check: fn(&Value) -> bool| {
        let reports = Arc::clone(&reports);
        async move {
            platform_core::testkit::eventually(Duration::from_secs(30), || {
                let found = reports.lock().unwrap().iter().find(|r| r["stage"] == stage && check(r)).cloned();
                async move { found }
            })
            .await
            .unwrap_or_else(|_| panic!("the page never reported {stage}: {:?}", reports.lock().unwrap()))
        }
    };
    let first = seen("subscribed", |_| true).await;
    assert_eq!(first["protocol"], SUBPROTOCOL, "the page speaks the marker protocol");
    hub.publish("page.news", json!("first")).await.unwrap();
    seen("event", |r| r["data"] == "first").await;
    hub.disconnect_all();
    assert_eq!(seen("closed", |_| true).await["code"], 1012);
    hub.publish("page.news", json!("while away")).await.unwrap();
    let again = seen("resubscribed", |_| true).await;
    assert_eq!(again["recovered"], true, "{again}");
    seen("event", |r| r["data"] == "while away").await;
    browser.kill().await.unwrap();

    // A picture of the page as a person sees it (kept beside the build): a second
    // browser, connected and subscribed.
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| std::path::PathBuf::from("target"), Into::into);
    let png = target.join("artifacts").join("hub-page.png");
    std::fs::create_dir_all(png.parent().unwrap()).unwrap();
    let status = tokio::process::Command::new(platform_core::testkit::tool("CHROMIUM").unwrap())
        .args(platform_core::testkit::chromium_flags(&profile.with_extension("shot")))
        .args(["--virtual-time-budget=3000", "--window-size=1000,600"])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("{base}/page"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success() && png.is_file(), "screenshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_sheds_logs_first_and_the_node_stays_bounded() {
    // 256 KiB per connection; loopback's socket buffers hold some MiB first.
    let config = HubConfig::new(KEY).unwrap().with_byte_bounds(256 * 1024, 64 * 1024 * 1024).with_queue(100_000);
    let (hub, url) = start(config).await;
    let mut stalled = connect(&url).await;
    for channel in ["system.logs", "jobs.>"] {
        send(&mut stalled, json!({"op": "subscribe", "channel": channel})).await;
        assert_eq!(next(&mut stalled).await["type"], "subscribed"); // then it reads no more
    }
    let line = "l".repeat(16 * 1024);
    for n in 0..2000 {
        hub.publish("system.logs", json!({"n": n, "line": line})).await.unwrap();
    }
    platform_core::testkit::eventually(WAIT, || async { (hub.shed() > 0).then_some(()) })
        .await
        .expect("logs were shed for the stalled client");
    assert_eq!(hub.connections(), 1, "shedding logs does not close the connection");
    // Its queue is half full of logs: job events still fit, until they do not.
    for n in 0..2000 {
        hub.publish("jobs.1.events", json!({"n": n, "line": line})).await.unwrap();
    }
    platform_core::testkit::eventually(WAIT, || async { (hub.connections() == 0).then_some(()) })
        .await
        .expect("job events are never shed: the client is closed as too slow");
    assert!(hub.queued_bytes() <= 512 * 1024, "bounded: {}", hub.queued_bytes());
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_bound_drops_the_slowest_client() {
    let config = HubConfig::new(KEY).unwrap().with_byte_bounds(8 * 1024 * 1024, 512 * 1024).with_queue(100_000);
    let (hub, url) = start(config).await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut ws = connect(&url).await;
        send(&mut ws, json!({"op": "subscribe", "channel": "feed"})).await;
        assert_eq!(next(&mut ws).await["type"], "subscribed"); // then it reads no more
        stalled.push(ws);
    }
    let blob = "b".repeat(16 * 1024);
    for n in 0..2000 {
        hub.publish("feed", json!({"n": n, "blob": blob})).await.unwrap();
    }
    platform_core::testkit::eventually(WAIT, || async { (hub.connections() < 2).then_some(()) })
        .await
        .expect("the node's bound dropped a client");
    assert!(hub.queued_bytes() <= 512 * 1024 + 64 * 1024, "bounded: {}", hub.queued_bytes());
}
