//! The dispatcher over the vendor doubles: routing, retries after the vendor's delay,
//! pacing by learned limits, fallback, the breaker, recipient hooks, shortening, dry run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use platform_notify::dispatch::{Breaker, Delivery};
use platform_notify::testkit::{Doubles, Reply};
use platform_notify::{
    Address, Dispatcher, Disposition, Notification, NotifyError, RecipientHook, RetryPolicy, Route, Severity, open,
};
use serde_json::json;

fn slack(d: &Doubles) -> Arc<dyn platform_notify::Notifier> {
    open(&format!("slack://T/B/X?base_url={}/services", d.url())).unwrap()
}

fn telegram(d: &Doubles) -> Arc<dyn platform_notify::Notifier> {
    open(&format!("tgram://1:abc/42?base_url={}", d.url())).unwrap()
}

fn fast() -> RetryPolicy {
    RetryPolicy::new(3, Duration::from_millis(10), Duration::from_secs(5))
}

#[derive(Debug, Default)]
struct Hook {
    events: Mutex<Vec<String>>,
}

#[async_trait]
impl RecipientHook for Hook {
    async fn gone(&self, notifier: &str, address: &Address, error: &NotifyError) {
        self.events.lock().unwrap().push(format!("gone {notifier} {address} {}", error.reason));
    }

    async fn moved(&self, notifier: &str, from: &Address, to: &Address) {
        self.events.lock().unwrap().push(format!("moved {notifier} {from} -> {to}"));
    }
}

#[tokio::test]
async fn routes_pick_by_tag_and_severity_and_nothing_goes_unreported() {
    let d = Doubles::start().await;
    let dispatcher = Dispatcher::new()
        .notifier("slack", slack(&d))
        .notifier("telegram", telegram(&d))
        .route(Route::new("ops", &["slack"]).tag("ops"))
        .unwrap()
        .route(Route::new("pager", &["telegram"]).min_severity(Severity::Critical))
        .unwrap();
    let report = dispatcher.notify(&Notification::new("a").tag("ops"), &Address::Configured).await;
    assert!(report.delivered());
    assert_eq!(report.deliveries.len(), 1);
    let critical = Notification::new("b").tag("ops").severity(Severity::Critical);
    assert_eq!(dispatcher.notify(&critical, &Address::Configured).await.deliveries.len(), 2);
    let stray = dispatcher.notify(&Notification::new("c").tag("billing"), &Address::Configured).await;
    assert!(stray.unrouted() && !stray.delivered());
    assert_eq!(dispatcher.stats().unrouted, 1);
    assert_eq!(dispatcher.stats().sent, 3);
    let e = Dispatcher::new().route(Route::new("x", &["nobody"])).unwrap_err();
    assert!(e.is_invalid_input());
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_then_delivered() {
    let d = Doubles::start().await;
    d.script("slack", [Reply::new(429).header("retry-after", "0.4")]);
    let dispatcher =
        Dispatcher::new().notifier("slack", slack(&d)).retry(fast()).route(Route::new("all", &["slack"])).unwrap();
    let report = dispatcher.notify(&Notification::new("hi"), &Address::Configured).await;
    let Delivery::Sent { attempts, .. } = &report.deliveries[0] else { panic!("{report:?}") };
    assert_eq!(*attempts, 2);
    let got = d.received("slack");
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(400), "waited {gap:?}, the vendor asked 400 ms");
}

#[tokio::test]
async fn a_learned_limit_paces_the_next_sends_instead_of_earning_429s() {
    let d = Doubles::start().await;
    d.discord_bucket_empty_for(0.3);
    let discord = open(&format!("discord://1/t?base_url={}", d.url())).unwrap();
    let dispatcher = Dispatcher::new().notifier("discord", discord).route(Route::new("all", &["discord"])).unwrap();
    for i in 0..3 {
        assert!(dispatcher.notify(&Notification::new(format!("m{i}")), &Address::Configured).await.delivered());
    }
    let got = d.received("discord");
    for pair in got.windows(2) {
        assert!(pair[1].at - pair[0].at >= Duration::from_millis(300), "sent inside the announced reset");
    }
}

#[tokio::test]
async fn a_failed_notifier_falls_back_and_its_breaker_opens_and_closes() {
    let d = Doubles::start().await;
    let dispatcher = Dispatcher::new()
        .notifier("slack", slack(&d))
        .notifier("teams", {
            let q = "api-version=1&sig=s";
            open(&format!("teams://h/workflows/w/triggers/manual/paths/invoke?{q}&base_url={}", d.url())).unwrap()
        })
        .retry(RetryPolicy::new(2, Duration::from_millis(5), Duration::from_secs(1)))
        .breaker(Breaker::new(4, Duration::from_millis(500)))
        .route(Route::new("ops", &["slack", "teams"]))
        .unwrap();
    d.script("slack", (0..4).map(|_| Reply::new(503)));
    // Two sends fail on Slack (2 attempts each) and go to Teams; the fourth failure
    // opens Slack's breaker.
    for _ in 0..2 {
        let report = dispatcher.notify(&Notification::new("x"), &Address::Configured).await;
        let Delivery::Sent { notifier, attempts, .. } = &report.deliveries[0] else { panic!("{report:?}") };
        assert_eq!((notifier.as_str(), *attempts), ("teams", 3));
    }
    assert!(dispatcher.is_open("slack"));
    let slack_calls = d.received("slack").len();
    let report = dispatcher.notify(&Notification::new("y"), &Address::Configured).await;
    let Delivery::Sent { notifier, attempts, .. } = &report.deliveries[0] else { panic!("{report:?}") };
    assert_eq!((notifier.as_str(), *attempts), ("teams", 1), "an open breaker is skipped");
    assert_eq!(d.received("slack").len(), slack_calls);
    // After the open time, one send goes through; Slack is healthy again and closes it.
    let opened = Instant::now();
    while dispatcher.is_open("slack") {
        assert!(opened.elapsed() < Duration::from_secs(5), "the breaker never half-opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = dispatcher.notify(&Notification::new("z"), &Address::Configured).await;
    let Delivery::Sent { notifier, .. } = &report.deliveries[0] else { panic!("{report:?}") };
    assert_eq!(notifier, "slack");
    assert!(!dispatcher.is_open("slack"));

    // Everything down: the report names each notifier's last error.
    d.script("slack", [Reply::new(410).body("channel_is_archived")]);
    d.script("teams", [Reply::new(401)]);
    let report = dispatcher.notify(&Notification::new("w"), &Address::Configured).await;
    let Delivery::Failed { errors, .. } = &report.deliveries[0] else { panic!("{report:?}") };
    let got: Vec<_> = errors.iter().map(|(n, e)| (n.as_str(), e.disposition.clone())).collect();
    assert_eq!(got, [("slack", Disposition::RecipientGone), ("teams", Disposition::FixConfig)]);
    assert!(!report.delivered());
    assert_eq!(d.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn moved_and_gone_recipients_reach_the_hook() {
    let d = Doubles::start().await;
    let hook = Arc::new(Hook::default());
    let dispatcher = Dispatcher::new()
        .notifier("telegram", telegram(&d))
        .hook(Arc::clone(&hook) as _)
        .route(Route::new("chat", &["telegram"]))
        .unwrap();
    let moved = json!({"ok": false, "error_code": 400, "description": "Bad Request: group chat was upgraded to a supergroup chat", "parameters": {"migrate_to_chat_id": -1_009}});
    d.script("telegram", [Reply::new(400).json(&moved)]);
    let report = dispatcher.notify(&Notification::new("hello"), &Address::Chat("-9".into())).await;
    assert!(report.delivered(), "{report:?}");
    assert_eq!(d.received("telegram")[1].json()["chat_id"], -1_009, "sent again to the new chat");
    let blocked = json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"});
    d.script("telegram", [Reply::new(403).json(&blocked)]);
    let report = dispatcher.notify(&Notification::new("hello"), &Address::Chat("77".into())).await;
    assert!(!report.delivered());
    assert_eq!(
        *hook.events.lock().unwrap(),
        ["moved telegram chat -9 -> chat -1009", "gone telegram chat 77 Forbidden: bot was blocked by the user"]
    );
}

#[tokio::test]
async fn long_text_is_shortened_by_the_rule_and_dry_runs_send_nothing() {
    let d = Doubles::start().await;
    let discord = open(&format!("discord://1/t?base_url={}", d.url())).unwrap();
    let dispatcher = Dispatcher::new().notifier("discord", discord).route(Route::new("all", &["discord"])).unwrap();
    let n = Notification::new("z".repeat(5000)).title("big");
    assert!(dispatcher.notify(&n, &Address::Configured).await.delivered());
    let sent = d.received("discord")[0].json();
    let content = sent["content"].as_str().unwrap();
    assert_eq!(sent["embeds"][0]["title"], "big");
    assert!(content.ends_with('…'));
    assert_eq!(content.chars().count() + "big\n".len(), 2000, "title and body within Discord's limit");
    assert_eq!(d.violations(), Vec::<String>::new());

    let dry =
        Dispatcher::new().notifier("slack", slack(&d)).dry_run(true).route(Route::new("all", &["slack"])).unwrap();
    let report = dry.notify(&Notification::new("not sent"), &Address::Configured).await;
    assert!(matches!(&report.deliveries[0], Delivery::DryRun { notifier, .. } if notifier == "slack"));
    assert!(d.received("slack").is_empty());
}
