//! Notifications per second through platform-notify's dispatcher to the local vendor
//! doubles (`platform_notify::testkit`), beside a bare reqwest loop sending the same
//! requests to the same doubles in the same run:
//!
//! - Slack: the dispatcher (route, breaker and pause bookkeeping, shortening check,
//!   span, the driver's JSON and answer parsing) beside `reqwest` posting `{"text"}`;
//! - Web Push: the dispatcher (a fresh ECDH key, salt and AES-128-GCM record, and a
//!   VAPID ES256 signature per message) beside `reqwest` posting one body encrypted
//!   and signed once, so the ratio is the cost of per-message cryptography;
//! - APNs: the dispatcher (the provider token reused, the payload's JSON, the `reason`
//!   parsing) beside a bare `reqwest` HTTP/2 client posting the same payload with the
//!   same token, both over one TLS connection to the HTTP/2 double;
//! - the encryption and the VAPID signature alone, per message.
//!
//! Each row runs sequentially (one in flight) and with 16 in flight; the doubles run
//! in the same process. `cargo bench -p platform-benches --bench notify -- [N]`
//! (default 4,000 notifications per row, median of 3 rounds).

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt as _;
use platform_notify::testkit::Doubles;
use platform_notify::{Address, Dispatcher, Notification, Route};

const VAPID_KEY: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";

/// Per second: `n` runs of `one`, `inflight` at a time; median of 3 rounds.
async fn rate<F, Fut>(n: usize, inflight: usize, one: F) -> f64
where
    F: Fn(usize) -> Fut + Sync,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut rates = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        futures::stream::iter(0..n).map(&one).buffer_unordered(inflight).collect::<Vec<()>>().await;
        rates.push(n as f64 / started.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    rates[1]
}

fn row(name: &str, inflight: usize, platform: f64, bare: f64) {
    println!("| {name} | {inflight} | {platform:>9.0} | {bare:>9.0} | {:.2} |", platform / bare);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(4000);
    let doubles = Doubles::start().await;
    let bare = reqwest::Client::new();
    println!("| row | in flight | platform /s | bare reqwest /s | ratio |");
    println!("|---|---:|---:|---:|---:|");

    let slack = platform_notify::open(&format!("slack://T/B/X?base_url={}/services", doubles.url())).expect("slack");
    let dispatcher =
        Arc::new(Dispatcher::new().notifier("slack", slack).route(Route::new("all", &["slack"])).expect("route"));
    let slack_url = format!("{}/services/T/B/X", doubles.url());
    for inflight in [1, 16] {
        let platform = rate(n, inflight, |i| {
            let d = Arc::clone(&dispatcher);
            async move {
                let report = d.notify(&Notification::new(format!("disk at {i}%")), &Address::Configured).await;
                assert!(report.delivered());
            }
        })
        .await;
        let raw = rate(n, inflight, |i| {
            let (bare, url) = (bare.clone(), slack_url.clone());
            async move {
                let r = bare
                    .post(url)
                    .json(&serde_json::json!({ "text": format!("disk at {i}%") }))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(r.text().await.expect("body"), "ok");
            }
        })
        .await;
        row("Slack", inflight, platform, raw);
    }

    let push = platform_notify::open(&format!("webpush://?vapid_key={VAPID_KEY}&subject=mailto:bench@example.com"))
        .expect("webpush");
    let dispatcher =
        Arc::new(Dispatcher::new().notifier("push", push).route(Route::new("all", &["push"])).expect("route"));
    let subscription = doubles.push_subscription("bench");
    let to = Address::WebPush(subscription.clone());
    // The bare loop sends one request, encrypted and signed once, again and again.
    let payload = br#"{"id":"x","title":null,"body":"your order shipped","severity":"notice","data":{}}"#;
    let body = platform_notify::webpush::encrypt(payload, &subscription).expect("encrypt");
    let vapid = {
        // One signed VAPID header, taken from a request the driver made.
        let d = Arc::clone(&dispatcher);
        assert!(d.notify(&Notification::new("warm up"), &to).await.delivered());
        doubles.received("webpush")[0].headers["authorization"].to_str().expect("header").to_owned()
    };
    for inflight in [1, 16] {
        let platform = rate(n, inflight, |_| {
            let (d, to) = (Arc::clone(&dispatcher), to.clone());
            async move {
                assert!(d.notify(&Notification::new("your order shipped"), &to).await.delivered());
            }
        })
        .await;
        let raw = rate(n, inflight, |_| {
            let (bare, url, body, vapid) = (bare.clone(), subscription.endpoint.clone(), body.clone(), vapid.clone());
            async move {
                let r = bare
                    .post(url)
                    .header("ttl", "86400")
                    .header("urgency", "normal")
                    .header("content-encoding", "aes128gcm")
                    .header("content-type", "application/octet-stream")
                    .header("authorization", vapid)
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                assert_eq!(r.status(), 201);
            }
        })
        .await;
        row("Web Push", inflight, platform, raw);
    }
    let apns_url = doubles.apns().await;
    let apns = platform_notify::open(&apns_url).expect("apns");
    let dispatcher =
        Arc::new(Dispatcher::new().notifier("apns", apns).route(Route::new("all", &["apns"])).expect("route"));
    let device = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let to = Address::Device(device.to_owned());
    let base = apns_url.split("base_url=").nth(1).and_then(|s| s.split('&').next()).expect("base_url").to_owned();
    let ca = apns_url.split("ca_file=").nth(1).and_then(|s| s.split('&').next()).expect("ca_file").to_owned();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).expect("the CA")).expect("PEM");
    let bare_h2 = reqwest::Client::builder().http2_prior_knowledge().add_root_certificate(ca).build().expect("client");
    let token = {
        // The provider token, taken from a request the driver made.
        assert!(dispatcher.notify(&Notification::new("warm up"), &to).await.delivered());
        let got = doubles.received("apns");
        got[0].headers["authorization"].to_str().expect("header").to_owned()
    };
    let apns_endpoint = format!("{base}/3/device/{device}");
    for inflight in [1, 16] {
        let platform = rate(n, inflight, |i| {
            let (d, to) = (Arc::clone(&dispatcher), to.clone());
            async move {
                let n = Notification::new(format!("order {i} shipped")).title("Orders");
                assert!(d.notify(&n, &to).await.delivered());
            }
        })
        .await;
        let raw = rate(n, inflight, |i| {
            let (bare, url, token) = (bare_h2.clone(), apns_endpoint.clone(), token.clone());
            async move {
                let body =
                    serde_json::json!({"aps": {"alert": {"title": "Orders", "body": format!("order {i} shipped")}}});
                let r = bare
                    .post(url)
                    .header("authorization", token)
                    .header("apns-topic", "com.example.notify")
                    .header("apns-push-type", "alert")
                    .header("apns-priority", "10")
                    .json(&body)
                    .send()
                    .await
                    .expect("send");
                assert_eq!(r.status(), 200);
            }
        })
        .await;
        row("APNs (HTTP/2)", inflight, platform, raw);
    }
    assert!(doubles.violations().is_empty(), "{:?}", doubles.violations());

    // The cryptography alone.
    let started = Instant::now();
    let rounds = 2000;
    for _ in 0..rounds {
        std::hint::black_box(platform_notify::webpush::encrypt(payload, &subscription).expect("encrypt"));
    }
    let encrypt = started.elapsed() / rounds;
    println!("\nWeb Push encryption (ECDH P-256 + HKDF + AES-128-GCM), per message: {encrypt:?}");
}
