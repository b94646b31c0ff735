//! The methods through a chain, as a service uses them; each pitfall they guard
//! against is a named test.

use std::sync::Arc;

use platform_auth::api_key::{ApiKeys, MemoryApiKeys};
use platform_auth::ingest::{MemoryReplayGuard, MemorySecrets, SignedIngest, decode_secret, sign};
use platform_auth::password::{BasicAuth, MemoryPasswords, PasswordCheck, PasswordUser, Passwords};
use platform_auth::shared_key::SharedKey;
use platform_auth::{AuthChain, AuthOutcome, Authenticator, ErrorKind, RequestKind, RequestParts};

const SHARED: &str = "a-shared-key-of-some-length";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEXT_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1vZi1lbm91Z2gtYnl0ZXM=";

fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
    pairs.iter().map(|(k, v)| (http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap())).collect()
}

async fn check(
    method: &dyn Authenticator,
    uri: &str,
    pairs: &[(&str, &str)],
    kind: RequestKind,
) -> platform_auth::Result<AuthOutcome> {
    let (m, uri, h) = (http::Method::GET, uri.parse::<http::Uri>().unwrap(), headers(pairs));
    method.authenticate(&RequestParts::new(&m, &uri, &h, kind)).await
}

fn keys() -> ApiKeys {
    ApiKeys::new("pk", Arc::new(MemoryApiKeys::default())).unwrap()
}

#[tokio::test]
async fn an_api_key_authenticates_with_its_tenant_and_scopes() {
    let keys = keys();
    let (record, key) = keys.issue("importer", Some("acme"), &["todos:write"]).await.unwrap();
    assert!(key.expose().starts_with("pk_"));
    assert_eq!(keys.key_id(key.expose()), Some(record.id.as_str()));
    assert!(!format!("{record:?}{key:?}").contains(key.expose()), "the key is never shown by Debug");
    for pair in [("x-api-key", key.expose().to_owned()), ("authorization", format!("Bearer {}", key.expose()))] {
        let AuthOutcome::Authenticated(p) =
            check(&keys, "/v1/todos", &[(pair.0, &pair.1)], RequestKind::Http).await.unwrap()
        else {
            panic!("authenticated")
        };
        assert_eq!(
            (p.subject.as_str(), p.tenant.as_deref(), p.method),
            (format!("api-key:{}", record.id).as_str(), Some("acme"), "api_key")
        );
        p.require_scopes(&["todos:write"]).unwrap();
        assert_eq!(p.require_scopes(&["admin"]).unwrap_err().kind(), ErrorKind::PermissionDenied);
    }
}

#[tokio::test]
async fn a_mistyped_revoked_or_rotated_api_key_is_refused() {
    let keys = keys();
    let (record, key) = keys.issue("importer", Some("acme"), &[]).await.unwrap();
    // One character off: the checksum fails before any lookup.
    let mut typo = key.expose().clone().into_bytes();
    typo[5] = if typo[5] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    assert_eq!(keys.key_id(&typo), None);
    let err = check(&keys, "/", &[("x-api-key", &typo)], RequestKind::Http).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    // Rotated: the old key is revoked, the new one works.
    let (new_record, new_key) = keys.rotate(&record.id).await.unwrap();
    assert_eq!((new_record.name.as_str(), new_record.tenant.as_deref()), ("importer", Some("acme")));
    let err = check(&keys, "/", &[("x-api-key", key.expose())], RequestKind::Http).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    assert!(matches!(
        check(&keys, "/", &[("x-api-key", new_key.expose())], RequestKind::Http).await,
        Ok(AuthOutcome::Authenticated(_))
    ));
    keys.revoke(&new_record.id).await.unwrap();
    let err = check(&keys, "/", &[("x-api-key", new_key.expose())], RequestKind::Http).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        check(&keys, "/", &[("x-api-key", &typo)], RequestKind::Http).await.unwrap_err().to_string(),
        "one message for every refusal"
    );
    let listed = keys.list(Some("acme")).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|r| r.revoked));
    assert_eq!(keys.revoke("nope").await.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn presented_but_invalid_never_falls_through() {
    let keys = keys();
    let chain = AuthChain::new().with(Arc::new(keys)).with(Arc::new(SharedKey::new(SHARED).unwrap()));
    let (m, uri) = (http::Method::GET, "/v1/todos".parse::<http::Uri>().unwrap());
    // A bad API key does not reach the shared key, even a right one beside it.
    let h = headers(&[("x-api-key", "pk_0000000000000000000000000000000000000000000000"), ("x-shared-key", SHARED)]);
    let err = chain.authenticate(&RequestParts::new(&m, &uri, &h, RequestKind::Http)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    // Absent falls through to the next method.
    let h = headers(&[("x-shared-key", SHARED)]);
    assert_eq!(
        chain.authenticate(&RequestParts::new(&m, &uri, &h, RequestKind::Http)).await.unwrap().method,
        "shared_key"
    );
    // Nothing at all: 401, not anonymous.
    let h = headers(&[]);
    let err = chain.authenticate(&RequestParts::new(&m, &uri, &h, RequestKind::Http)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    assert!(err.to_string().contains("api_key, shared_key"), "{err}");
}

#[tokio::test]
async fn the_shared_key_four_ways_and_the_query_only_on_the_upgrade() {
    let key = SharedKey::new(SHARED).unwrap();
    let ws = RequestKind::WebSocketUpgrade;
    let bearer = format!("Bearer {SHARED}");
    let protocols = format!("platform-ws, key.{SHARED}");
    let query = format!("/ws?key={SHARED}");
    for (uri, pairs) in [
        ("/ws", vec![("x-shared-key", SHARED)]),
        ("/ws", vec![("authorization", bearer.as_str())]),
        (query.as_str(), vec![]),
        ("/ws", vec![("sec-websocket-protocol", protocols.as_str())]),
    ] {
        assert!(matches!(check(&key, uri, &pairs, ws).await, Ok(AuthOutcome::Authenticated(_))), "{uri} {pairs:?}");
    }
    // The query outside the upgrade: refused, right key or not.
    let err = check(&key, &query, &[], RequestKind::Http).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    // The subprotocol outside the upgrade, or without the marker: no credential.
    let protocol = [("sec-websocket-protocol", protocols.as_str())];
    assert_eq!(check(&key, "/", &protocol, RequestKind::Http).await.unwrap(), AuthOutcome::Absent);
    let bare = format!("key.{SHARED}");
    assert_eq!(
        check(&key, "/ws", &[("sec-websocket-protocol", bare.as_str())], ws).await.unwrap(),
        AuthOutcome::Absent
    );
    // Wrong key in its own places: refused, never shown.
    for (uri, pairs) in [("/ws", vec![("x-shared-key", "wrong-key-of-enough-length")]), ("/ws?key=wrong", vec![])] {
        let err = check(&key, uri, &pairs, ws).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
        assert!(!err.to_string().contains(SHARED) && !err.to_string().contains("wrong"), "{err}");
    }
    // A bearer token that is not the key may be another method's.
    assert_eq!(
        check(&key, "/", &[("authorization", "Bearer eyJ.other")], RequestKind::Http).await.unwrap(),
        AuthOutcome::Absent
    );
    assert!(SharedKey::new("short").is_err(), "a short key is refused at start");
}

fn ingest() -> (SignedIngest, Arc<MemorySecrets>) {
    let secrets = Arc::new(MemorySecrets::default());
    secrets.set("ep_1", &[SECRET]).unwrap();
    (SignedIngest::new(Arc::clone(&secrets) as _, Arc::new(MemoryReplayGuard::default())), secrets)
}

fn now() -> i64 {
    platform_core::clock::now_ms() / 1000
}

#[tokio::test]
async fn a_signed_ingest_with_a_binary_body_is_taken_once() {
    let (ingest, _) = ingest();
    let body = [0xff_u8, 0x00, 0xfe, b'{'];
    let t = now();
    let signature = sign(&decode_secret(SECRET).unwrap(), "msg_1", t, &body);
    let headers =
        headers(&[("webhook-id", "msg_1"), ("webhook-timestamp", &t.to_string()), ("webhook-signature", &signature)]);
    let (m, uri) = (http::Method::POST, "/v1/ingest/ep_1".parse::<http::Uri>().unwrap());
    let request = RequestParts::new(&m, &uri, &headers, RequestKind::Http).with_body(&body);
    let AuthOutcome::Authenticated(p) = ingest.authenticate(&request).await.unwrap() else { panic!("authenticated") };
    assert_eq!((p.subject.as_str(), p.method), ("ingest:ep_1", "hmac"));
    // The same delivery again: a replay.
    let err = ingest.authenticate(&request).await.unwrap_err();
    assert!(err.to_string().contains("replay"), "{err}");
    // Another endpoint's secrets do not sign for this one.
    let other: http::Uri = "/v1/ingest/ep_2".parse().unwrap();
    let request = RequestParts::new(&m, &other, &headers, RequestKind::Http).with_body(&body);
    assert_eq!(ingest.authenticate(&request).await.unwrap_err().kind(), ErrorKind::Unauthenticated);
}

#[tokio::test]
async fn a_stale_early_tampered_or_partial_ingest_is_refused() {
    let (ingest, _) = ingest();
    let key = decode_secret(SECRET).unwrap();
    let body = b"{\"todo\":1}";
    for (id, t, why) in [("a", now() - 301, "5 minutes"), ("b", now() + 301, "5 minutes")] {
        let err = ingest.verify("ep_1", id, &t.to_string(), &sign(&key, id, t, body), body, now()).await.unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
    let t = now();
    let err = ingest
        .verify("ep_1", "c", &t.to_string(), &sign(&key, "c", t, body), b"{\"todo\":2}", now())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no signature matches"), "{err}");
    let err = ingest.verify("ep_1", "d", &t.to_string(), "v1,bm90IGEgc2lnbmF0dXJl", body, now()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    // Some of the headers but not all: judged, refused; none: another method's turn.
    let err = check(&ingest, "/v1/ingest/ep_1", &[("webhook-id", "e")], RequestKind::Http).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    assert_eq!(check(&ingest, "/v1/ingest/ep_1", &[], RequestKind::Http).await.unwrap(), AuthOutcome::Absent);
}

#[tokio::test]
async fn ingest_secrets_rotate_with_both_active() {
    let (ingest, secrets) = ingest();
    let (old, new) = (decode_secret(SECRET).unwrap(), decode_secret(NEXT_SECRET).unwrap());
    let body = b"rotation";
    secrets.set("ep_1", &[SECRET, NEXT_SECRET]).unwrap();
    let t = now();
    // A sender mid-rotation signs with both; one signed with either passes.
    let both = format!("{} {}", sign(&old, "r1", t, body), sign(&new, "r1", t, body));
    ingest.verify("ep_1", "r1", &t.to_string(), &both, body, now()).await.unwrap();
    ingest.verify("ep_1", "r2", &t.to_string(), &sign(&new, "r2", t, body), body, now()).await.unwrap();
    ingest.verify("ep_1", "r3", &t.to_string(), &sign(&old, "r3", t, body), body, now()).await.unwrap();
    // The old one retired.
    secrets.set("ep_1", &[NEXT_SECRET]).unwrap();
    let err = ingest.verify("ep_1", "r4", &t.to_string(), &sign(&old, "r4", t, body), body, now()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    assert!(decode_secret("whsec_c2hvcnQ=").is_err(), "a short secret is refused");
}

#[tokio::test]
async fn passwords_are_argon2id_and_rehash_when_parameters_rise() {
    let today = Passwords::new().unwrap();
    let stored = today.hash("correct horse").unwrap();
    assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");
    assert_ne!(stored, today.hash("correct horse").unwrap(), "a fresh salt each time");
    assert_eq!(today.verify("correct horse", &stored).unwrap(), PasswordCheck::Right);
    assert_eq!(today.verify("wrong horse", &stored).unwrap(), PasswordCheck::Wrong);
    assert_eq!(today.verify("correct horse", "not a hash").unwrap(), PasswordCheck::Wrong);
    let raised = Passwords::with_params(19 * 1024, 3, 1).unwrap();
    let PasswordCheck::RightRehash(new) = raised.verify("correct horse", &stored).unwrap() else {
        panic!("a hash at lower parameters is due for a new one")
    };
    assert!(new.contains("m=19456,t=3,p=1"), "{new}");
    assert_eq!(raised.verify("correct horse", &new).unwrap(), PasswordCheck::Right);
    assert_eq!(raised.verify_unknown("anything"), PasswordCheck::Wrong);
    assert!(Passwords::with_params(4096, 3, 1).is_err(), "below OWASP's minimum memory");
    assert!(Passwords::with_params(19 * 1024, 1, 1).is_err(), "below OWASP's minimum passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_logs_in_rehashes_and_answers_unknown_names_alike() {
    let old = Passwords::new().unwrap();
    let store = Arc::new(MemoryPasswords::default());
    store
        .insert("alice", PasswordUser::new("user-1", Some("acme"), &["todos:write"], old.hash("s3cret pass").unwrap()));
    let basic = BasicAuth::new(Arc::clone(&store) as _, Arc::new(Passwords::with_params(19 * 1024, 3, 1).unwrap()));
    let header = |user: &str, pass: &str| {
        use base64::Engine as _;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
    };
    let good = header("alice", "s3cret pass");
    let AuthOutcome::Authenticated(p) =
        check(&basic, "/login", &[("authorization", &good)], RequestKind::Http).await.unwrap()
    else {
        panic!("authenticated")
    };
    assert_eq!((p.subject.as_str(), p.tenant.as_deref(), p.method), ("user-1", Some("acme"), "password"));
    use platform_auth::password::PasswordStore as _;
    let rehashed = store.user("alice").await.unwrap().unwrap().hash;
    assert!(rehashed.contains("t=3"), "the raised parameters were stored at login: {rehashed}");
    let wrong =
        check(&basic, "/login", &[("authorization", &header("alice", "nope"))], RequestKind::Http).await.unwrap_err();
    let unknown =
        check(&basic, "/login", &[("authorization", &header("mallory", "nope"))], RequestKind::Http).await.unwrap_err();
    assert_eq!(wrong.kind(), ErrorKind::Unauthenticated);
    assert_eq!(wrong.to_string(), unknown.to_string(), "an unknown name reads like a wrong password");
    let err = check(&basic, "/login", &[("authorization", "Basic !!!")], RequestKind::Http).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    assert_eq!(
        check(&basic, "/", &[("authorization", "Bearer x")], RequestKind::Http).await.unwrap(),
        AuthOutcome::Absent
    );
}

#[test]
fn a_totp_code_is_taken_once_and_wrong_codes_are_limited() {
    use platform_auth::totp::{STEP, Totp};
    let totp = Totp::new("Todo");
    let enrolment = totp.enrol("alice@example.com").unwrap();
    assert_eq!(enrolment.secret.expose().len(), 20, "160 bits");
    let uri = enrolment.uri.expose();
    assert!(uri.starts_with("otpauth://totp/Todo:alice%40example.com?secret="), "{uri}");
    assert!(uri.contains("issuer=Todo"), "{uri}");
    let secret = &enrolment.secret;
    let t = 1_900_000_020_u64;
    let code = totp.code(secret, t).unwrap();
    totp.check("alice", secret, &code, t).unwrap();
    // The same code again, in its step or the next: refused.
    assert_eq!(totp.check("alice", secret, &code, t + 1).unwrap_err().kind(), ErrorKind::Unauthenticated);
    assert_eq!(totp.check("alice", secret, &code, t + STEP).unwrap_err().kind(), ErrorKind::Unauthenticated);
    // The next step's code, a little early (clock skew): taken.
    totp.check("alice", secret, &totp.code(secret, t + STEP).unwrap(), t + 5).unwrap();
    // Five wrong codes, then even a right one waits.
    let later = t + 10 * STEP;
    let valid: Vec<String> =
        [later - STEP, later, later + STEP].iter().map(|at| totp.code(secret, *at).unwrap()).collect();
    let wrong = (0..).map(|n| format!("{n:06}")).find(|c| !valid.contains(c)).unwrap();
    for _ in 0..5 {
        let err = totp.check("alice", secret, &wrong, later).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    }
    let err = totp.check("alice", secret, &totp.code(secret, later).unwrap(), later).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert!(err.retry_after().is_some());
    // Once the window passed: taken.
    let after = later + 301;
    totp.check("alice", secret, &totp.code(secret, after).unwrap(), after).unwrap();
    // Another user's state is their own.
    let bob = totp.enrol("bob").unwrap();
    totp.check("bob", &bob.secret, &totp.code(&bob.secret, later).unwrap(), later).unwrap();
}
