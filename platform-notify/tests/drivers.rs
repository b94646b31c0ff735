//! Each driver against its vendor-faithful double: success with the request checked as
//! the vendor documents it, each disposition the vendor can cause, a rate limit, and
//! oversized text.

use std::time::Duration;

use platform_notify::testkit::{Doubles, Reply};
use platform_notify::{Address, Disposition, Notification, NotifyError, Receipt, open};
use serde_json::json;

async fn send(url: &str, n: &Notification, to: &Address) -> Result<Receipt, NotifyError> {
    open(url).unwrap().send(n, to).await
}

fn disposition(r: Result<Receipt, NotifyError>) -> Disposition {
    r.expect_err("a failure").disposition
}

#[tokio::test]
async fn slack_posts_text_and_maps_its_string_errors() {
    let d = Doubles::start().await;
    let url = format!("slack://T000/B000/XXXX?base_url={}/services", d.url());
    let n = Notification::new("disk at 91%").title("db-1");
    send(&url, &n, &Address::Configured).await.unwrap();
    let got = d.received("slack");
    assert_eq!(got[0].path, "/services/T000/B000/XXXX");
    assert_eq!(got[0].json()["text"], "*db-1*\ndisk at 91%");

    d.script(
        "slack",
        [
            Reply::new(429).header("retry-after", "2"),
            Reply::new(410).body("channel_is_archived"),
            Reply::new(404).body("channel_not_found"),
            Reply::new(403).body("action_prohibited"),
            Reply::new(400).body("invalid_payload"),
            Reply::new(500).body("rollup_error"),
        ],
    );
    let c = &Address::Configured;
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::Retry { after: Some(Duration::from_secs(2)) });
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::RecipientGone);
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::RecipientGone);
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::FixConfig);
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::FixPayload);
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::Retry { after: None });
    send(&url, &n, c).await.unwrap();
    assert_eq!(d.violations(), Vec::<String>::new());
    // The webhook's path is a secret: not in errors.
    d.script("slack", [Reply::new(500)]);
    let e = send(&url, &n, c).await.unwrap_err();
    assert!(!e.to_string().contains("XXXX"), "{e}");
    assert!(!format!("{:?}", open(&url).unwrap()).contains("XXXX"));
}

#[tokio::test]
async fn discord_reports_its_bucket_and_retry_after() {
    let d = Doubles::start().await;
    let url = format!("discord://123456/tok-en?base_url={}", d.url());
    let n = Notification::new("deployed v2").title("ci");
    let r = send(&url, &n, &Address::Configured).await.unwrap();
    assert!(r.vendor_id.is_some());
    assert_eq!(r.pause, None);
    let got = &d.received("discord")[0];
    assert_eq!(got.json()["content"], "deployed v2");
    assert_eq!(got.json()["embeds"][0]["title"], "ci");
    assert_eq!(got.json()["allowed_mentions"], json!({"parse": []}), "no @everyone from a notification");
    assert_eq!(got.query.as_deref(), Some("wait=true"));

    d.discord_bucket_empty_for(0.25);
    let r = send(&url, &n, &Address::Configured).await.unwrap();
    assert_eq!(r.pause, Some(Duration::from_millis(250)));

    let limited = json!({"message": "You are being rate limited.", "retry_after": 0.3, "global": false});
    d.script(
        "discord",
        [
            Reply::new(429).header("retry-after", "1").json(&limited),
            Reply::new(404).json(&json!({"message": "Unknown Webhook", "code": 10015})),
            Reply::new(401).json(&json!({"message": "Invalid Webhook Token", "code": 50027})),
        ],
    );
    let c = &Address::Configured;
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::Retry { after: Some(Duration::from_millis(300)) });
    let gone = send(&url, &n, c).await.unwrap_err();
    assert_eq!((gone.disposition, gone.reason.as_str()), (Disposition::RecipientGone, "10015 Unknown Webhook"));
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::FixConfig);
    // Over 2000 characters: refused before any request (the dispatcher shortens first).
    let before = d.received("discord").len();
    let long = Notification::new("x".repeat(2001));
    assert_eq!(disposition(send(&url, &long, c).await), Disposition::FixPayload);
    assert_eq!(d.received("discord").len(), before);
    // A per-message address on a webhook is a configuration error, not a silent send.
    assert_eq!(disposition(send(&url, &n, &Address::Chat("1".into())).await), Disposition::FixConfig);
    assert_eq!(d.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn teams_posts_an_adaptive_card_to_the_workflow() {
    let d = Doubles::start().await;
    let flow = "prod-01.westus.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke";
    let query = "api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=SeCrEt";
    let url = format!("teams://{flow}?{query}&base_url={}", d.url());
    let n = Notification::new("queue backed up").title("ops");
    send(&url, &n, &Address::Configured).await.unwrap();
    let got = &d.received("teams")[0];
    let card = &got.json()["attachments"][0]["content"];
    assert_eq!(card["body"][0]["text"], "ops");
    assert_eq!(card["body"][1]["text"], "queue backed up");
    assert!(got.query.as_deref().unwrap().contains("sig=SeCrEt"));

    d.script("teams", [Reply::new(429).header("retry-after", "3"), Reply::new(401), Reply::new(404)]);
    let c = &Address::Configured;
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::Retry { after: Some(Duration::from_secs(3)) });
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::FixConfig);
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::RecipientGone);
    assert_eq!(d.violations(), Vec::<String>::new());
    let e = open(&format!("teams://{flow}?api-version=1&base_url={}", d.url())).unwrap_err();
    assert!(e.to_string().contains("sig"), "{e}");
    assert!(open(&format!("teams://{flow}?{query}&colour=blue")).unwrap_err().to_string().contains("colour"));
}

#[tokio::test]
async fn telegram_follows_retry_after_migrations_and_gone_chats() {
    let d = Doubles::start().await;
    let url = format!("tgram://123456:AAH-secret/-100200?base_url={}", d.url());
    let n = Notification::new("build failed").title("ci");
    let r = send(&url, &n, &Address::Configured).await.unwrap();
    assert!(r.vendor_id.is_some());
    let got = &d.received("telegram")[0];
    assert_eq!(got.path, "/bot123456:AAH-secret/sendMessage");
    assert_eq!(got.json()["chat_id"], -100_200);
    assert_eq!(got.json()["text"], "ci\nbuild failed");
    send(&url, &n, &Address::Chat("@ops".into())).await.unwrap();
    assert_eq!(d.received("telegram")[1].json()["chat_id"], "@ops");

    let err = |code: u16, description: &str, parameters: serde_json::Value| {
        Reply::new(code)
            .json(&json!({"ok": false, "error_code": code, "description": description, "parameters": parameters}))
    };
    d.script(
        "telegram",
        [
            err(429, "Too Many Requests: retry after 7", json!({"retry_after": 7})),
            err(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                json!({"migrate_to_chat_id": -1_001_234}),
            ),
            err(403, "Forbidden: bot was blocked by the user", json!({})),
            err(400, "Bad Request: chat not found", json!({})),
            err(403, "Forbidden: bot can't send messages to the user", json!({})),
            err(401, "Unauthorized", json!({})),
        ],
    );
    let c = &Address::Configured;
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::Retry { after: Some(Duration::from_secs(7)) });
    assert_eq!(
        disposition(send(&url, &n, c).await),
        Disposition::RecipientMoved { to: Address::Chat("-1001234".into()) }
    );
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::RecipientGone);
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::RecipientGone);
    assert_eq!(
        disposition(send(&url, &n, c).await),
        Disposition::Retry { after: None },
        "an unknown 403 keeps the chat"
    );
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::FixConfig);
    // Oversized text is refused before any request.
    let before = d.received("telegram").len();
    assert_eq!(disposition(send(&url, &Notification::new("y".repeat(4097)), c).await), Disposition::FixPayload);
    assert_eq!(d.received("telegram").len(), before);
    assert_eq!(d.violations(), Vec::<String>::new());
    let e = open("tgram://not-a-token/1").unwrap_err();
    assert!(e.to_string().contains("token") && !e.to_string().contains("not-a-token"), "{e}");
}

#[tokio::test]
async fn webhooks_are_signed_as_standard_webhooks() {
    let d = Doubles::start().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    d.hook_secret("orders", secret);
    let url = format!("webhook://hooks.example.com/hooks/orders?secret={secret}&base_url={}", d.url());
    let n = Notification::new("order 42 shipped").tag("orders").data("order", "42");
    send(&url, &n, &Address::Configured).await.unwrap();
    let got = &d.received("webhook")[0];
    assert_eq!(got.headers["webhook-id"], n.id.as_str());
    assert_eq!(got.json()["data"]["order"], "42");
    assert_eq!(d.violations(), Vec::<String>::new(), "the signature verified");

    // The same id on a retry, so the receiver deduplicates.
    d.script("webhook", [Reply::new(503).header("retry-after", "1"), Reply::new(410)]);
    let c = &Address::Configured;
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::Retry { after: Some(Duration::from_secs(1)) });
    assert_eq!(disposition(send(&url, &n, c).await), Disposition::RecipientGone);
    assert!(d.received("webhook").iter().all(|r| r.headers["webhook-id"] == n.id.as_str()));

    // A wrong secret fails the double's check, as a receiver would refuse it.
    let wrong = format!("webhook://h/hooks/orders?secret=whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAA&base_url={}", d.url());
    assert_eq!(disposition(send(&wrong, &n, c).await), Disposition::FixConfig);
    assert_eq!(d.violations().len(), 1);
}

#[tokio::test]
async fn unreachable_vendors_retry_and_bad_urls_name_their_part() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("slack://T/B/X?base_url=http://{closed}/services&timeout=2s");
    let e = send(&url, &Notification::new("hi"), &Address::Configured).await.unwrap_err();
    assert_eq!(e.disposition, Disposition::Retry { after: None });
    assert!(open("slack://T/B").unwrap_err().to_string().contains("three tokens"));
    assert!(open("discord://123/tok?wait=false").unwrap_err().to_string().contains("wait"));
    assert!(open("sms://x").unwrap_err().to_string().contains("unknown url scheme"));
    let memory = open("memory://").unwrap();
    memory.send(&Notification::new("kept"), &Address::Email("a@b.c".into())).await.unwrap();
}

/// A valid P-256 private key (RFC 8291's example sender key), as a VAPID key.
const VAPID_KEY: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";

#[tokio::test]
async fn web_push_is_encrypted_for_the_subscriber_and_signed_with_vapid() {
    let d = Doubles::start().await;
    let url = format!("webpush://?vapid_key={VAPID_KEY}&subject=mailto:ops@example.com&ttl=1h");
    let alice = Address::WebPush(d.push_subscription("alice"));
    let n = Notification::new("your order shipped").title("Orders").data("order", "42");
    let r = send(&url, &n, &alice).await.unwrap();
    assert!(r.vendor_id.unwrap().contains("/messages/"), "the Location is the receipt");
    let pushed: serde_json::Value = serde_json::from_slice(&d.pushed("alice")[0]).unwrap();
    assert_eq!((pushed["title"].as_str(), pushed["body"].as_str()), (Some("Orders"), Some("your order shipped")));
    assert_eq!(pushed["data"]["order"], "42");
    let got = &d.received("webpush")[0];
    assert_eq!((got.headers["ttl"].to_str().unwrap(), got.headers["urgency"].to_str().unwrap()), ("3600", "normal"));
    // Two sends of one text differ on the wire: a fresh key and salt each.
    send(&url, &n, &alice).await.unwrap();
    assert_ne!(d.received("webpush")[0].body, d.received("webpush")[1].body);

    d.script("webpush", [Reply::new(429).header("retry-after", "5"), Reply::new(413), Reply::new(403)]);
    assert_eq!(disposition(send(&url, &n, &alice).await), Disposition::Retry { after: Some(Duration::from_secs(5)) });
    assert_eq!(disposition(send(&url, &n, &alice).await), Disposition::FixPayload);
    assert_eq!(disposition(send(&url, &n, &alice).await), Disposition::FixConfig);
    d.unsubscribe("alice");
    assert_eq!(disposition(send(&url, &n, &alice).await), Disposition::RecipientGone);
    let bob = Address::WebPush(d.push_subscription("bob"));
    assert_eq!(disposition(send(&url, &Notification::new("z".repeat(3500)), &bob).await), Disposition::FixPayload);
    assert_eq!(disposition(send(&url, &n, &Address::Configured).await), Disposition::FixConfig);
    assert_eq!(d.violations(), Vec::<String>::new());

    let e = open("webpush://?vapid_key=AAAA&subject=mailto:a@b.c").unwrap_err();
    assert!(e.to_string().contains("vapid_key") && !e.to_string().contains("AAAA"), "{e}");
    assert!(open(&format!("webpush://?vapid_key={VAPID_KEY}")).unwrap_err().to_string().contains("subject"));
}

#[tokio::test]
async fn fcm_exchanges_one_token_and_reads_fcm_error_codes() {
    use platform_notify::testkit::fcm_error;
    let d = Doubles::start().await;
    let dir = platform_core::testkit::server::temp_dir("notify-fcm");
    let account = dir.join("sa.json");
    std::fs::write(&account, d.fcm_service_account()).unwrap();
    let url = format!("fcm://my-project?service_account={}&base_url={}", account.display(), d.url());
    let fcm = open(&url).unwrap();
    let phone = Address::Device("device-token-1".into());
    let n = Notification::new("your order shipped")
        .title("Orders")
        .data("order", "42")
        .severity(platform_notify::Severity::Critical);
    let r = fcm.send(&n, &phone).await.unwrap();
    assert_eq!(r.vendor_id.as_deref(), Some("projects/my-project/messages/1"));
    fcm.send(&n, &phone).await.unwrap();
    assert_eq!(d.fcm_tokens_issued(), 1, "the access token is cached");
    let sent = d.received("fcm")[0].json();
    assert_eq!(sent["message"]["token"], "device-token-1");
    assert_eq!(sent["message"]["notification"]["title"], "Orders");
    assert_eq!(sent["message"]["data"]["order"], "42");
    assert_eq!(sent["message"]["android"]["priority"], "high");

    let unauthenticated =
        Reply::new(401).json(&json!({"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "expired"}}));
    d.script(
        "fcm",
        [
            fcm_error(404, "UNREGISTERED"),
            fcm_error(403, "SENDER_ID_MISMATCH"),
            fcm_error(400, "INVALID_ARGUMENT"),
            fcm_error(429, "QUOTA_EXCEEDED").header("retry-after", "10"),
            fcm_error(401, "THIRD_PARTY_AUTH_ERROR"),
            unauthenticated,
        ],
    );
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(fcm.send(&n, &phone).await.unwrap_err().disposition);
    }
    assert_eq!(
        got,
        [
            Disposition::RecipientGone,
            Disposition::RecipientGone,
            Disposition::FixPayload,
            Disposition::Retry { after: Some(Duration::from_secs(10)) },
            Disposition::FixConfig,
            Disposition::Retry { after: None },
        ]
    );
    fcm.send(&n, &phone).await.unwrap();
    assert_eq!(d.fcm_tokens_issued(), 2, "a 401 drops the token; the next send gets a new one");
    assert_eq!(fcm.send(&n, &Address::Chat("1".into())).await.unwrap_err().disposition, Disposition::FixConfig);
    assert_eq!(d.violations(), Vec::<String>::new());

    // A key the double does not trust: the exchange is refused, a configuration error.
    let other = Doubles::start().await;
    let mut stranger: serde_json::Value = serde_json::from_str(&other.fcm_service_account()).unwrap();
    stranger["token_uri"] = json!(format!("{}/token", d.url()));
    let stranger_path = dir.join("stranger.json");
    std::fs::write(&stranger_path, stranger.to_string()).unwrap();
    let bad =
        open(&format!("fcm://my-project?service_account={}&base_url={}", stranger_path.display(), d.url())).unwrap();
    assert_eq!(bad.send(&n, &phone).await.unwrap_err().disposition, Disposition::FixConfig);
    assert_eq!(d.violations().len(), 1);
    assert!(open("fcm://p").unwrap_err().to_string().contains("service_account"));
    platform_core::testkit::server::remove_dir(&dir);
}

#[tokio::test]
async fn apns_sends_over_one_http2_connection_with_one_provider_token() {
    use platform_notify::testkit::apns_error;
    let d = Doubles::start().await;
    let url = d.apns().await;
    let apns = open(&url).unwrap();
    let device = Address::Device("a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90".into());
    let n = Notification::new("your order shipped").title("Orders").data("order", "42");
    let r = apns.send(&n, &device).await.unwrap();
    assert_eq!(r.vendor_id.as_deref(), Some(n.id.as_str()), "apns-id is the notification's id, echoed");
    for _ in 0..5 {
        apns.send(&Notification::new("again").severity(platform_notify::Severity::Info), &device).await.unwrap();
    }
    assert_eq!(d.violations(), Vec::<String>::new());
    assert_eq!(d.apns_connections(), 1, "one long-lived HTTP/2 connection");
    assert_eq!(d.apns_provider_tokens(), 1, "one provider token, reused");
    let got = d.received("apns");
    assert_eq!(got[0].path, "/3/device/a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90");
    assert_eq!(
        got[0].json(),
        json!({"aps": {"alert": {"title": "Orders", "body": "your order shipped"}}, "order": "42"})
    );
    assert_eq!(got[0].headers["apns-push-type"], "alert");
    assert_eq!(got[0].headers["apns-priority"], "10");
    assert_eq!(got[1].headers["apns-priority"], "5", "info is power-considerate");

    d.script(
        "apns",
        [
            apns_error(410, "Unregistered"),
            apns_error(400, "BadDeviceToken"),
            apns_error(400, "DeviceTokenNotForTopic"),
            apns_error(400, "TopicDisallowed"),
            apns_error(403, "InvalidProviderToken"),
            apns_error(413, "PayloadTooLarge"),
            apns_error(503, "ServiceUnavailable"),
            apns_error(429, "TooManyRequests"),
        ],
    );
    let mut got = Vec::new();
    for _ in 0..8 {
        got.push(apns.send(&n, &device).await.unwrap_err().disposition);
    }
    let retry = Disposition::Retry { after: None };
    let gone = Disposition::RecipientGone;
    let want = [gone.clone(), gone.clone(), gone, Disposition::FixConfig, Disposition::FixConfig];
    assert_eq!(got[..5], want);
    assert_eq!(got[5..], [Disposition::FixPayload, retry.clone(), retry.clone()]);
    // The rate limit passed: the same message goes.
    apns.send(&n, &device).await.unwrap();

    // An expired provider token: retried with a new one, which APNs takes at once.
    d.script("apns", [apns_error(403, "ExpiredProviderToken")]);
    assert_eq!(apns.send(&n, &device).await.unwrap_err().disposition, retry);
    apns.send(&n, &device).await.unwrap();
    assert_eq!(d.apns_provider_tokens(), 2);

    // Oversized: refused before any request, by characters and by payload bytes.
    let before = d.received("apns").len();
    let long = Notification::new("x".repeat(2001));
    assert_eq!(apns.send(&long, &device).await.unwrap_err().disposition, Disposition::FixPayload);
    let heavy = Notification::new("short").data("blob", "y".repeat(4100));
    assert_eq!(apns.send(&heavy, &device).await.unwrap_err().disposition, Disposition::FixPayload);
    assert_eq!(
        apns.send(&n, &Address::Device("not-hex".into())).await.unwrap_err().disposition,
        Disposition::RecipientGone
    );
    assert_eq!(d.received("apns").len(), before);
    assert_eq!(d.violations(), Vec::<String>::new());
    assert_eq!(d.apns_connections(), 1);

    // Bad configuration names its part.
    let e = open("apns://com.example.app?team_id=T&key_id=K").unwrap_err().to_string();
    assert!(e.contains("key_file"), "{e}");
    let e = open(&url.replace("key_file=", "key_file=/nonexistent")).unwrap_err().to_string();
    assert!(e.contains("key_file"), "{e}");
    // A client that does not trust the double's CA cannot connect: a retry, not a send.
    let untrusted = url.split("&ca_file=").next().unwrap().to_owned();
    let e = open(&untrusted).unwrap().send(&n, &device).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
}
