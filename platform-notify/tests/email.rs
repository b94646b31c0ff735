//! Email on a real SMTP server (`PLATFORM_TEST_SMTP_URL`, STARTTLS and AUTH required, and
//! `PLATFORM_TEST_SMTPS_URL`, TLS from the first byte;
//! `PLATFORM_TEST_SMTP_API_URL` tells what arrived): delivery, the recipient gone, a
//! temporary refusal followed by success, a message too large, bad credentials, an
//! untrusted certificate, implicit TLS.

use platform_notify::{Address, Disposition, Notification, Severity, open};

fn unique(local: &str) -> String {
    format!("{local}-{}@platform.test", uuid::Uuid::now_v7().simple())
}

async fn arrived(api: &str, to: &str) -> Vec<serde_json::Value> {
    let url = format!("{api}/messages?to={to}");
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn email_is_delivered_over_starttls_with_a_stable_message_id() {
    let Some(url) = platform_core::testkit::server_url("SMTP") else { return };
    let Some(api) = platform_core::testkit::server_url("SMTP_API") else { return };
    let (ops, oncall) = (unique("ops"), unique("oncall"));
    let mail = open(&format!("{url}&to={ops},{oncall}")).unwrap();
    let n = Notification::new("disk at 91%\non db-1").title("db-1 disk").severity(Severity::Critical);
    let r = mail.send(&n, &Address::Configured).await.unwrap();
    assert_eq!(r.vendor_id, Some(format!("<{}@platform-notify>", n.id)));
    let got = arrived(&api, &ops).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["mail_from"], "alerts@platform.test");
    assert_eq!(got[0]["rcpt_tos"].as_array().unwrap().len(), 2);
    let data = got[0]["data"].as_str().unwrap();
    assert!(data.contains("Subject: db-1 disk\r\n"), "{data}");
    assert!(data.contains(&format!("Message-ID: <{}@platform-notify>", n.id)), "{data}");
    assert!(data.contains("Importance: high\r\n"), "{data}");
    assert!(data.contains("disk at 91%\r\non db-1"), "{data}");

    // One address, UTF-8 text, a subject from the first line.
    let one = unique("dev");
    mail.send(&Notification::new("Größe überschritten ✓\nmore"), &Address::Email(one.clone())).await.unwrap();
    let data = arrived(&api, &one).await[0]["data"].as_str().unwrap().to_owned();
    assert!(data.contains("Subject: =?utf-8?"), "an encoded subject: {data}");
}

#[tokio::test]
async fn email_failures_are_dispositions() {
    let Some(url) = platform_core::testkit::server_url("SMTP") else { return };
    let Some(api) = platform_core::testkit::server_url("SMTP_API") else { return };
    let mail = open(&url).unwrap();
    let n = Notification::new("hello");

    let e = mail.send(&n, &Address::Email(unique("gone"))).await.unwrap_err();
    assert_eq!((e.disposition.clone(), e.status), (Disposition::RecipientGone, Some(550)), "{e}");
    assert!(e.reason.contains("5.1.1"), "{e}");

    // A temporary refusal, then the same message goes.
    let later = unique("tempfail");
    let e = mail.send(&n, &Address::Email(later.clone())).await.unwrap_err();
    assert_eq!((e.disposition.clone(), e.status), (Disposition::Retry { after: None }, Some(451)), "{e}");
    mail.send(&n, &Address::Email(later.clone())).await.unwrap();
    assert_eq!(arrived(&api, &later).await.len(), 1);

    // Over the server's size limit: the payload.
    let big = Notification::new("x".repeat(300 * 1024));
    let e = mail.send(&big, &Address::Email(unique("big"))).await.unwrap_err();
    assert_eq!(e.disposition, Disposition::FixPayload, "{e}");

    // Not an address: gone. No configured to=: configuration.
    assert_eq!(
        mail.send(&n, &Address::Email("nobody".into())).await.unwrap_err().disposition,
        Disposition::RecipientGone
    );
    assert_eq!(mail.send(&n, &Address::Configured).await.unwrap_err().disposition, Disposition::FixConfig);

    // Wrong password: configuration, and the password is in no error.
    let wrong = url.replacen("notify:secret@", "notify:hunter2@", 1);
    let e = open(&wrong).unwrap().send(&n, &Address::Email(unique("ops"))).await.unwrap_err();
    assert_eq!(e.disposition, Disposition::FixConfig, "{e}");
    assert!(!e.to_string().contains("hunter2"));
    // A certificate the client does not trust: configuration, never plaintext.
    let untrusted = url.split("&ca_file=").next().unwrap().to_owned();
    let e = open(&untrusted).unwrap().send(&n, &Address::Email(unique("ops"))).await.unwrap_err();
    assert_eq!(e.disposition, Disposition::FixConfig, "{e}");
    // Nobody listening: retry.
    let e = open("smtp://127.0.0.1:1?from=a@b.test&tls=none&timeout=2s")
        .unwrap()
        .send(&n, &Address::Email(unique("ops")))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    // Bad URLs name their part, the password masked.
    let e = open("smtp://u:hunter2@127.0.0.1?from=nope").unwrap_err().to_string();
    assert!(e.contains("from") && !e.contains("hunter2"), "{e}");
    let e = open("smtp://127.0.0.1?from=a@b.test&tls=maybe").unwrap_err().to_string();
    assert!(e.contains("tls"), "{e}");
}

#[tokio::test]
async fn email_over_implicit_tls() {
    let Some(implicit) = platform_core::testkit::server_url("SMTPS") else { return };
    let Some(api) = platform_core::testkit::server_url("SMTP_API") else { return };
    let to = unique("ops");
    open(&implicit).unwrap().send(&Notification::new("over TLS"), &Address::Email(to.clone())).await.unwrap();
    assert_eq!(arrived(&api, &to).await.len(), 1);
}
