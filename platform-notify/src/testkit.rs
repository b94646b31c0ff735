//! Local doubles of the vendors (feature `testkit`), on one HTTP server: each checks
//! requests as its vendor documents them, answers as the vendor does, records what it
//! got, and plays scripted failures.
//!
//! | vendor | path | checks | success |
//! |---|---|---|---|
//! | Slack | `POST /services/{T}/{B}/{X}` | JSON with `text` or `blocks` | `200 ok` (text) |
//! | Discord | `POST /api/webhooks/{id}/{token}` | JSON `content` ≤ 2000 characters or `embeds` | `200` message JSON with `wait=true`, else `204` |
//! | Teams | `POST /workflows/{id}/triggers/manual/paths/invoke` | `api-version`, `sig`; one attachment of type `application/vnd.microsoft.card.adaptive` | `202` |
//! | Telegram | `POST /bot{token}/sendMessage` | token `digits:secret`, `chat_id`, `text` 1..=4096 characters | `200 {"ok":true,"result":{…}}` |
//! | webhook | `POST /hooks/{name}` | Standard Webhooks headers and signature with the secret set for `name` | `204` |
//! | Web Push | `POST /push/{id}` | `TTL`, `aes128gcm` decrypted with the subscriber's keys, the VAPID JWT | `201` + `Location` |
//! | FCM | `POST /token`, `POST /v1/projects/{p}/messages:send` | the RS256 assertion; a bearer it issued; one target | `200 {"name"}` |
//! | APNs ([`Doubles::apns`], its own port) | `POST /3/device/{hex}` over HTTP/2 and TLS | the ES256 provider token (signature, `kid`, `iss`, age, reuse), `apns-topic`, `apns-push-type`, `apns-priority`, `apns-id`, `aps`, 4096 bytes | `200` + `apns-id` |
//!
//! A request the vendor would refuse is answered as the vendor would (400 with its
//! error) and recorded as a violation: a test asserts [`Doubles::violations`] is empty.
//!
//! ```rust,ignore
//! let doubles = Doubles::start().await;
//! doubles.script("slack", [Reply::new(429).header("retry-after", "1"), Reply::new(410).body("channel_is_archived")]);
//! let slack = platform_notify::open(&format!("slack://T1/B2/X3?base_url={}/services", doubles.url()))?;
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// A scripted answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    /// An answer with `status` and no body.
    pub fn new(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: String::new() }
    }

    /// With a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// With a body.
    #[must_use]
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    /// With a JSON body.
    #[must_use]
    pub fn json(self, body: &Value) -> Self {
        self.header("content-type", "application/json").body(body.to_string())
    }

    fn respond(&self) -> Response {
        let mut response =
            (StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK), self.body.clone()).into_response();
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (k.parse::<axum::http::HeaderName>(), v.parse()) {
                response.headers_mut().insert(k, v);
            }
        }
        response
    }
}

/// A request a double received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The path.
    pub path: String,
    /// The query, undecoded.
    pub query: Option<String>,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Debug, Default)]
struct Inner {
    scripts: HashMap<&'static str, VecDeque<Reply>>,
    received: HashMap<&'static str, Vec<Received>>,
    violations: Vec<String>,
    hook_secrets: HashMap<String, String>,
    /// Discord: answers carry `X-RateLimit-Remaining: 0` and this reset (seconds).
    discord_reset_after: Option<f64>,
    /// The doubles' origin (`http://127.0.0.1:port`), the VAPID `aud` expected.
    #[cfg(any(feature = "webpush", feature = "fcm"))]
    origin: String,
    #[cfg(feature = "webpush")]
    push: HashMap<String, push::Subscriber>,
    #[cfg(feature = "fcm")]
    fcm: Option<fcm::Account>,
    #[cfg(feature = "apns")]
    apns: Option<apns::Server>,
}

/// The doubles, serving on a port of their own.
#[derive(Debug, Clone)]
pub struct Doubles {
    url: String,
    inner: Arc<Mutex<Inner>>,
}

impl Doubles {
    /// Starts them on a free port on 127.0.0.1.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a port for the doubles");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let inner = Arc::new(Mutex::new(Inner::default()));
        #[cfg(any(feature = "webpush", feature = "fcm"))]
        {
            inner.lock().unwrap_or_else(PoisonError::into_inner).origin.clone_from(&url);
        }
        let app = Router::new()
            .route("/services/{t}/{b}/{x}", post(slack))
            .route("/api/webhooks/{id}/{token}", post(discord))
            .route("/workflows/{id}/triggers/manual/paths/invoke", post(teams))
            .route("/{bot}/sendMessage", post(telegram))
            .route("/hooks/{name}", post(webhook));
        #[cfg(feature = "webpush")]
        let app = app.route("/push/{id}", post(push::receive));
        #[cfg(feature = "fcm")]
        let app = app.route("/token", post(fcm::token)).route("/v1/projects/{project}/messages:send", post(fcm::send));
        let app = app.with_state(Arc::clone(&inner));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, inner }
    }

    /// Their base URL (`http://127.0.0.1:port`).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next answers of `vendor` (`slack`, `discord`, `teams`, `telegram`,
    /// `webhook`), in order, before it answers normally again. A scripted answer is
    /// given only to a request the vendor would take.
    pub fn script(&self, vendor: &str, replies: impl IntoIterator<Item = Reply>) {
        let key = vendor_key(vendor);
        self.lock().scripts.entry(key).or_default().extend(replies);
    }

    /// The requests `vendor` received, oldest first.
    pub fn received(&self, vendor: &str) -> Vec<Received> {
        self.lock().received.get(vendor_key(vendor)).cloned().unwrap_or_default()
    }

    /// Requests a vendor would have refused, described.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// The secret (`whsec_…`) the webhook double checks signatures of `name` with.
    pub fn hook_secret(&self, name: &str, secret: &str) {
        self.lock().hook_secrets.insert(name.to_owned(), secret.to_owned());
    }

    /// A new browser subscription on the push double: its keys are made here, and what
    /// is pushed to it is decrypted with them ([`Doubles::pushed`]).
    #[cfg(feature = "webpush")]
    pub fn push_subscription(&self, id: &str) -> crate::PushSubscription {
        let subscriber = push::Subscriber::new();
        let subscription = subscriber.subscription(&format!("{}/push/{id}", self.url));
        self.lock().push.insert(id.to_owned(), subscriber);
        subscription
    }

    /// The payloads pushed to subscription `id`, decrypted, oldest first.
    #[cfg(feature = "webpush")]
    pub fn pushed(&self, id: &str) -> Vec<Vec<u8>> {
        self.lock().push.get(id).map(|s| s.received.clone()).unwrap_or_default()
    }

    /// Ends subscription `id`: the push double answers `410 Gone` for it.
    #[cfg(feature = "webpush")]
    pub fn unsubscribe(&self, id: &str) {
        self.lock().push.remove(id);
    }

    /// A service account the FCM double trusts (a fresh RSA key), as its JSON, with
    /// `token_uri` pointing at the double.
    #[cfg(feature = "fcm")]
    pub fn fcm_service_account(&self) -> String {
        let (account, json) = fcm::Account::new(&format!("{}/token", self.url));
        self.lock().fcm = Some(account);
        json
    }

    /// How many access tokens the FCM double issued.
    #[cfg(feature = "fcm")]
    pub fn fcm_tokens_issued(&self) -> usize {
        self.lock().fcm.as_ref().map_or(0, |a| a.issued.len())
    }

    /// Starts the APNs double (once; HTTP/2 over TLS on a port of its own) and gives the
    /// `apns://` URL that sends to it: its CA and the provider key it trusts are files it
    /// wrote, named in the URL.
    #[cfg(feature = "apns")]
    pub async fn apns(&self) -> String {
        if let Some(server) = self.lock().apns.as_ref() {
            return server.url.clone();
        }
        let url = apns::start(Arc::clone(&self.inner)).await;
        if let Some(server) = self.lock().apns.as_mut() {
            server.url.clone_from(&url);
        }
        url
    }

    /// How many TLS connections the APNs double accepted.
    #[cfg(feature = "apns")]
    pub fn apns_connections(&self) -> usize {
        self.lock().apns.as_ref().map_or(0, |s| s.connections)
    }

    /// How many different provider tokens the APNs double took.
    #[cfg(feature = "apns")]
    pub fn apns_provider_tokens(&self) -> usize {
        self.lock().apns.as_ref().map_or(0, |s| s.tokens.len())
    }

    /// Discord's answers say the bucket is empty until `seconds` from now.
    pub fn discord_bucket_empty_for(&self, seconds: f64) {
        self.lock().discord_reset_after = Some(seconds);
    }
}

fn vendor_key(vendor: &str) -> &'static str {
    match vendor {
        "slack" => "slack",
        "discord" => "discord",
        "teams" => "teams",
        "telegram" => "telegram",
        "webhook" => "webhook",
        "webpush" => "webpush",
        "fcm" => "fcm",
        "fcm-token" => "fcm-token",
        "apns" => "apns",
        other => panic!("no double for {other:?}"),
    }
}

type Shared = Arc<Mutex<Inner>>;

/// A request the vendor would refuse: why, and the vendor's answer.
type Check = Result<(), Box<(String, Response)>>;

/// Records the request, then: a violation (the vendor's refusal), else the next
/// scripted answer, else `normal`.
fn answer(
    inner: &Shared,
    vendor: &'static str,
    received: Received,
    check: Check,
    normal: impl FnOnce(&mut Inner) -> Response,
) -> Response {
    let mut inner = inner.lock().unwrap_or_else(PoisonError::into_inner);
    inner.received.entry(vendor).or_default().push(received);
    if let Err(refused) = check {
        let (why, refusal) = *refused;
        inner.violations.push(format!("{vendor}: {why}"));
        return refusal;
    }
    if let Some(reply) = inner.scripts.get_mut(vendor).and_then(VecDeque::pop_front) {
        return reply.respond();
    }
    normal(&mut inner)
}

fn received(path: String, query: Option<String>, headers: HeaderMap, body: Bytes) -> Received {
    Received { path, query, headers, body, at: Instant::now() }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"))
}

async fn slack(
    State(inner): State<Shared>,
    Path((t, b, x)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let check = if !is_json(&headers) || !json.is_object() {
        Err(Box::new(("not a JSON object".to_owned(), (StatusCode::BAD_REQUEST, "invalid_payload").into_response())))
    } else if json.get("text").and_then(Value::as_str).is_none_or(str::is_empty) && json.get("blocks").is_none() {
        Err(Box::new(("no text and no blocks".to_owned(), (StatusCode::BAD_REQUEST, "no_text").into_response())))
    } else {
        Ok(())
    };
    let r = received(format!("/services/{t}/{b}/{x}"), None, headers, body);
    answer(&inner, "slack", r, check, |_| (StatusCode::OK, "ok").into_response())
}

async fn discord(
    State(inner): State<Shared>,
    Path((id, token)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let content = json.get("content").and_then(Value::as_str).unwrap_or_default();
    let refuse = |why: &str| {
        let body = json!({"message": "Invalid Form Body", "code": 50035, "errors": {"content": why}});
        Err(Box::new((why.to_owned(), (StatusCode::BAD_REQUEST, axum::Json(body)).into_response())))
    };
    let check = if !is_json(&headers) || !json.is_object() {
        refuse("not a JSON object")
    } else if content.is_empty() && json.get("embeds").is_none() {
        refuse("no content and no embeds")
    } else if content.chars().count() > 2000 {
        refuse("content longer than 2000 characters")
    } else if !id.bytes().all(|b| b.is_ascii_digit()) {
        let body = json!({"message": "Unknown Webhook", "code": 10015});
        Err(Box::new(("unknown webhook".to_owned(), (StatusCode::NOT_FOUND, axum::Json(body)).into_response())))
    } else {
        Ok(())
    };
    let wait = query.as_deref().is_some_and(|q| q.split('&').any(|p| p == "wait=true"));
    let r = received(format!("/api/webhooks/{id}/{token}"), query.clone(), headers, body);
    answer(&inner, "discord", r, check, |inner| {
        let n = inner.received.get("discord").map_or(0, Vec::len);
        let mut response = if wait {
            (StatusCode::OK, axum::Json(json!({"id": format!("{}", 1_000_000 + n), "content": content})))
                .into_response()
        } else {
            StatusCode::NO_CONTENT.into_response()
        };
        let (remaining, reset_after) = match inner.discord_reset_after {
            Some(after) => ("0".to_owned(), after),
            None => ("4".to_owned(), 0.0),
        };
        let h = response.headers_mut();
        for (k, v) in [
            ("x-ratelimit-limit", "5".to_owned()),
            ("x-ratelimit-remaining", remaining),
            ("x-ratelimit-reset-after", format!("{reset_after:.3}")),
            ("x-ratelimit-bucket", "double".to_owned()),
        ] {
            h.insert(k, v.parse().expect("header"));
        }
        response
    })
}

async fn teams(
    State(inner): State<Shared>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let q = query.clone().unwrap_or_default();
    let has = |k: &str| url::form_urlencoded::parse(q.as_bytes()).any(|(key, v)| key == k && !v.is_empty());
    let attachments = json.get("attachments").and_then(Value::as_array);
    let refuse = |why: &str, status: StatusCode| {
        let body = json!({"error": {"code": "InvalidRequestContent", "message": why}});
        Err(Box::new((why.to_owned(), (status, axum::Json(body)).into_response())))
    };
    let check = if !has("sig") || !has("api-version") {
        refuse("no sig or api-version", StatusCode::UNAUTHORIZED)
    } else if !is_json(&headers) || json.get("type").and_then(Value::as_str) != Some("message") {
        refuse("not a message", StatusCode::BAD_REQUEST)
    } else if attachments.is_none_or(|a| a.len() != 1)
        || attachments.and_then(|a| a[0].get("contentType")).and_then(Value::as_str)
            != Some("application/vnd.microsoft.card.adaptive")
        || attachments.and_then(|a| a[0].pointer("/content/type")).and_then(Value::as_str) != Some("AdaptiveCard")
    {
        refuse("not one Adaptive Card attachment", StatusCode::BAD_REQUEST)
    } else {
        Ok(())
    };
    let r = received(format!("/workflows/{id}/triggers/manual/paths/invoke"), query, headers, body);
    answer(&inner, "teams", r, check, |_| StatusCode::ACCEPTED.into_response())
}

async fn telegram(State(inner): State<Shared>, Path(bot): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = json.get("text").and_then(Value::as_str).unwrap_or_default();
    let refuse = |code: u16, description: &str| {
        let body = json!({"ok": false, "error_code": code, "description": description});
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
        Err(Box::new((description.to_owned(), (status, axum::Json(body)).into_response())))
    };
    let token_ok = bot
        .strip_prefix("bot")
        .and_then(|t| t.split_once(':'))
        .is_some_and(|(id, secret)| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && !secret.is_empty());
    let chat = json.get("chat_id");
    let check = if !token_ok {
        refuse(401, "Unauthorized")
    } else if !is_json(&headers) || chat.is_none_or(|c| !(c.is_i64() || c.as_str().is_some_and(|s| s.starts_with('@'))))
    {
        refuse(400, "Bad Request: chat_id is empty")
    } else if text.is_empty() {
        refuse(400, "Bad Request: message text is empty")
    } else if text.chars().count() > 4096 {
        refuse(400, "Bad Request: message is too long")
    } else {
        Ok(())
    };
    let r = received(format!("/{bot}/sendMessage"), None, headers, body);
    answer(&inner, "telegram", r, check, |inner| {
        let n = inner.received.get("telegram").map_or(0, Vec::len);
        let result = json!({"message_id": n, "chat": {"id": chat}, "text": text});
        axum::Json(json!({"ok": true, "result": result})).into_response()
    })
}

async fn webhook(State(inner): State<Shared>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let secret = inner.lock().unwrap_or_else(PoisonError::into_inner).hook_secrets.get(&name).cloned();
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let check = match secret {
        None => Err(Box::new((format!("no secret set for hook {name}"), StatusCode::NOT_FOUND.into_response()))),
        Some(secret) => {
            let secrets = Arc::new(platform_auth::ingest::MemorySecrets::default());
            let verdict = match secrets.set(&name, &[&secret]) {
                Ok(()) => {
                    let guard = Arc::new(platform_auth::ingest::MemoryReplayGuard::default());
                    let ingest = platform_auth::ingest::SignedIngest::new(secrets, guard);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
                    let (id, ts, sig) =
                        (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
                    ingest
                        .verify(&name, &id, &ts, &sig, &body, now)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.message().to_owned())
                }
                Err(e) => Err(e.message().to_owned()),
            };
            verdict.map_err(|why| Box::new((why, StatusCode::UNAUTHORIZED.into_response())))
        }
    };
    let r = received(format!("/hooks/{name}"), None, headers, body);
    answer(&inner, "webhook", r, check, |_| StatusCode::NO_CONTENT.into_response())
}

/// The push service double: VAPID checked, the payload decrypted with the subscriber's
/// keys.
#[cfg(feature = "webpush")]
mod push {
    use aws_lc_rs::agreement::{self, ECDH_P256, UnparsedPublicKey};
    use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey as SignatureKey};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::{Bytes, HeaderMap, IntoResponse, Path, Response, Shared, State, StatusCode, Value, answer, received};

    /// A browser's side of a subscription.
    #[derive(Debug)]
    pub(super) struct Subscriber {
        private: agreement::PrivateKey,
        public: Vec<u8>,
        auth: [u8; 16],
        pub(super) received: Vec<Vec<u8>>,
    }

    impl Subscriber {
        pub(super) fn new() -> Self {
            let private = agreement::PrivateKey::generate(&ECDH_P256).expect("a P-256 key");
            let public = private.compute_public_key().expect("its public key").as_ref().to_vec();
            let mut auth = [0_u8; 16];
            SystemRandom::new().fill(&mut auth).expect("random bytes");
            Self { private, public, auth, received: Vec::new() }
        }

        pub(super) fn subscription(&self, endpoint: &str) -> crate::PushSubscription {
            crate::PushSubscription {
                endpoint: endpoint.to_owned(),
                keys: crate::PushKeys {
                    p256dh: URL_SAFE_NO_PAD.encode(&self.public),
                    auth: URL_SAFE_NO_PAD.encode(self.auth),
                },
            }
        }

        /// RFC 8188 / RFC 8291 decryption of one record, as a browser does it.
        fn decrypt(&self, body: &[u8]) -> Result<Vec<u8>, String> {
            if body.len() < 21 {
                return Err("body shorter than the aes128gcm header".into());
            }
            let salt = &body[..16];
            let rs = u32::from_be_bytes([body[16], body[17], body[18], body[19]]);
            let idlen = usize::from(body[20]);
            if rs < 18 || idlen != 65 || body.len() < 21 + idlen + 17 {
                return Err(format!("bad header: rs {rs}, idlen {idlen}"));
            }
            let as_public = &body[21..21 + idlen];
            let ecdh =
                agreement::agree(&self.private, UnparsedPublicKey::new(&ECDH_P256, as_public), (), |s| Ok(s.to_vec()))
                    .map_err(|()| "the keyid is not a P-256 public key".to_owned())?;
            let (cek, nonce) = crate::webpush::derive(&ecdh, &self.auth, &self.public, as_public, salt);
            let key = aws_lc_rs::aead::LessSafeKey::new(
                aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_128_GCM, &cek).map_err(|_| "key".to_owned())?,
            );
            let mut record = body[21 + idlen..].to_vec();
            let plain = key
                .open_in_place(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                    aws_lc_rs::aead::Aad::empty(),
                    &mut record,
                )
                .map_err(|_| "the record does not decrypt".to_owned())?;
            let end = plain.iter().rposition(|b| *b != 0).ok_or("no delimiter")?;
            if plain[end] != 2 {
                return Err("the last record's delimiter is not 0x02".into());
            }
            Ok(plain[..end].to_vec())
        }
    }

    /// Checks `Authorization: vapid t=…, k=…` as a push service does.
    fn check_vapid(headers: &HeaderMap, origin: &str) -> Result<(), String> {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).ok_or("no Authorization")?;
        let rest = auth.strip_prefix("vapid ").ok_or("not the vapid scheme")?;
        let mut t = None;
        let mut k = None;
        for part in rest.split(',') {
            let (name, value) = part.trim().split_once('=').ok_or("a malformed parameter")?;
            match name {
                "t" => t = Some(value),
                "k" => k = Some(value),
                _ => {}
            }
        }
        let (t, k) = (t.ok_or("no t")?, k.ok_or("no k")?);
        let key = URL_SAFE_NO_PAD.decode(k).map_err(|_| "k is not base64url")?;
        let (input, signature) = t.rsplit_once('.').ok_or("t is not a JWT")?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| "the signature is not base64url")?;
        SignatureKey::new(&ECDSA_P256_SHA256_FIXED, &key)
            .verify(input.as_bytes(), &signature)
            .map_err(|_| "the JWT's ES256 signature does not verify with k")?;
        let (header, claims) = input.split_once('.').ok_or("t is not a JWT")?;
        let json = |part: &str| -> Result<Value, String> {
            let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| "a JWT part is not base64url")?;
            serde_json::from_slice(&bytes).map_err(|_| "a JWT part is not JSON".to_owned())
        };
        let (header, claims) = (json(header)?, json(claims)?);
        if header["alg"] != "ES256" {
            return Err("alg is not ES256".into());
        }
        if claims["aud"].as_str() != Some(origin) {
            return Err(format!("aud {} is not the push service's origin {origin}", claims["aud"]));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let exp = claims["exp"].as_u64().ok_or("no exp")?;
        if exp <= now || exp > now + 24 * 3600 {
            return Err("exp is not within the next 24 hours".into());
        }
        let sub = claims["sub"].as_str().unwrap_or_default();
        if !(sub.starts_with("mailto:") || sub.starts_with("https:")) {
            return Err("sub is not a mailto: or https: contact".into());
        }
        Ok(())
    }

    pub(super) async fn receive(
        State(inner): State<Shared>,
        Path(id): Path<String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let (origin, known) = {
            let inner = inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (inner.origin.clone(), inner.push.contains_key(&id))
        };
        if !known {
            return StatusCode::GONE.into_response();
        }
        let refuse = |why: String, status: StatusCode| Err(Box::new((why, status.into_response())));
        let mut plaintext = None;
        let check = if header("ttl").parse::<u64>().is_err() {
            refuse("no TTL".into(), StatusCode::BAD_REQUEST)
        } else if header("content-encoding") != "aes128gcm" {
            refuse("Content-Encoding is not aes128gcm".into(), StatusCode::UNSUPPORTED_MEDIA_TYPE)
        } else if body.len() > 4096 {
            refuse(format!("body of {} bytes", body.len()), StatusCode::PAYLOAD_TOO_LARGE)
        } else if let Err(why) = check_vapid(&headers, &origin) {
            refuse(format!("VAPID: {why}"), StatusCode::UNAUTHORIZED)
        } else {
            let decrypted = {
                let inner = inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                inner.push.get(&id).map(|s| s.decrypt(&body))
            };
            match decrypted {
                Some(Ok(p)) => {
                    plaintext = Some(p);
                    Ok(())
                }
                Some(Err(why)) => refuse(why, StatusCode::BAD_REQUEST),
                None => refuse("unsubscribed meanwhile".into(), StatusCode::GONE),
            }
        };
        let r = received(format!("/push/{id}"), None, headers, body);
        answer(&inner, "webpush", r, check, |inner| {
            let n = inner.received.get("webpush").map_or(0, Vec::len);
            if let (Some(s), Some(p)) = (inner.push.get_mut(&id), plaintext) {
                s.received.push(p);
            }
            let location = format!("{}/messages/{n}", inner.origin);
            (StatusCode::CREATED, [("location", location)]).into_response()
        })
    }
}

/// An FCM error as FCM sends it: a google.rpc status with an `FcmError` detail.
#[cfg(feature = "fcm")]
pub fn fcm_error(status: u16, error_code: &str) -> Reply {
    let rpc = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    Reply::new(status).json(&json!({"error": {
        "code": status, "message": error_code, "status": rpc,
        "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}],
    }}))
}

/// The FCM double: the OAuth2 token exchange (the RS256 assertion verified with the
/// service account's public key) and `messages:send` (the bearer one it issued).
#[cfg(feature = "fcm")]
mod fcm {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::{
        Bytes, HeaderMap, IntoResponse, Path, Response, Shared, State, StatusCode, Value, answer, json, received,
    };

    #[derive(Debug)]
    pub(super) struct Account {
        public: Vec<u8>,
        token_uri: String,
        pub(super) issued: Vec<String>,
    }

    const EMAIL: &str = "notify@double.iam.gserviceaccount.com";

    impl Account {
        pub(super) fn new(token_uri: &str) -> (Self, String) {
            let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("an RSA key");
            let der = key.as_der().expect("PKCS#8");
            let pem = crate::driver::pem("PRIVATE KEY", der.as_ref());
            let json = json!({
                "type": "service_account", "project_id": "double", "private_key_id": "k1", "private_key": pem,
                "client_email": EMAIL, "token_uri": token_uri,
            });
            let account = Self {
                public: key.public_key().as_ref().to_vec(),
                token_uri: token_uri.to_owned(),
                issued: Vec::new(),
            };
            (account, json.to_string())
        }

        fn check(&self, assertion: &str) -> Result<(), String> {
            let (input, signature) = assertion.rsplit_once('.').ok_or("not a JWT")?;
            let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| "signature not base64url")?;
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.public)
                .verify(input.as_bytes(), &signature)
                .map_err(|_| "the RS256 signature does not verify")?;
            let (header, claims) = input.split_once('.').ok_or("not a JWT")?;
            let part = |p: &str| -> Result<Value, String> {
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).map_err(|_| "not base64url")?)
                    .map_err(|_| "not JSON".into())
            };
            let (header, claims) = (part(header)?, part(claims)?);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let (iat, exp) = (claims["iat"].as_u64().unwrap_or(0), claims["exp"].as_u64().unwrap_or(0));
            if header["alg"] != "RS256" {
                Err("alg is not RS256".into())
            } else if claims["iss"] != EMAIL {
                Err("iss is not the client email".into())
            } else if claims["scope"] != crate::fcm::SCOPE {
                Err("scope is not firebase.messaging".into())
            } else if claims["aud"].as_str() != Some(self.token_uri.as_str()) {
                Err("aud is not the token URI".into())
            } else if exp <= now || iat > now + 60 || exp.saturating_sub(iat) > 3600 {
                Err("iat/exp are not a valid hour".into())
            } else {
                Ok(())
            }
        }
    }

    pub(super) async fn token(State(inner): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
        let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        let verdict = {
            let inner = inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match (&inner.fcm, form.get("grant_type").map(String::as_str), form.get("assertion")) {
                (None, ..) => Err("no service account set".to_owned()),
                (_, g, _) if g != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => Err("wrong grant_type".into()),
                (Some(account), _, Some(assertion)) => account.check(assertion),
                (Some(_), _, None) => Err("no assertion".into()),
            }
        };
        let check = verdict.map_err(|why| {
            let body = json!({"error": "invalid_grant", "error_description": why});
            Box::new((why, (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()))
        });
        let r = received("/token".into(), None, headers, body);
        answer(&inner, "fcm-token", r, check, |inner| {
            let Some(account) = inner.fcm.as_mut() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
            let token = format!("ya29.double-{}", account.issued.len() + 1);
            account.issued.push(token.clone());
            axum::Json(json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})).into_response()
        })
    }

    pub(super) async fn send(
        State(inner): State<Shared>,
        Path(project): Path<String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let known = {
            let inner = inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            bearer.is_some_and(|b| inner.fcm.as_ref().is_some_and(|a| a.issued.iter().any(|t| t == b)))
        };
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let message = &json["message"];
        let targets = ["token", "topic", "condition"].iter().filter(|k| message.get(**k).is_some()).count();
        let data_ok =
            message.get("data").is_none_or(|d| d.as_object().is_some_and(|m| m.values().all(Value::is_string)));
        let refuse = |why: &str| {
            let reply = super::fcm_error(400, "INVALID_ARGUMENT").respond();
            Err(Box::new((why.to_owned(), reply)))
        };
        let check = if !known {
            let body = json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}});
            Err(Box::new((
                "not a token the double issued".to_owned(),
                (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response(),
            )))
        } else if !message.is_object() || targets != 1 {
            refuse("not a message with exactly one of token, topic, condition")
        } else if message["token"].as_str().is_some_and(str::is_empty) {
            refuse("an empty token")
        } else if !data_ok {
            refuse("data values that are not strings")
        } else if body.len() > 4096 + 64 {
            refuse("a message over 4096 bytes")
        } else {
            Ok(())
        };
        let r = received(format!("/v1/projects/{project}/messages:send"), None, headers, body);
        answer(&inner, "fcm", r, check, |inner| {
            let n = inner.received.get("fcm").map_or(0, Vec::len);
            axum::Json(json!({"name": format!("projects/{project}/messages/{n}")})).into_response()
        })
    }
}

/// An APNs error as APNs sends it: the status and `{"reason": …}` (with a `timestamp`
/// on 410).
#[cfg(feature = "apns")]
pub fn apns_error(status: u16, reason: &str) -> Reply {
    let mut body = json!({ "reason": reason });
    if status == 410 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        body["timestamp"] = json!(now.as_millis() as u64);
    }
    Reply::new(status).json(&body)
}

/// The APNs double: HTTP/2 only over TLS (its own CA, written beside the provider key it
/// trusts), the provider token's ES256 signature, `kid`, `iss` and age checked, its
/// reuse enforced as Apple does (`TooManyProviderTokenUpdates` for a new token within 20
/// minutes of the last), then the headers and payload.
#[cfg(feature = "apns")]
mod apns {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey,
    };
    use axum::Router;
    use axum::http::Version;
    use axum::routing::post;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

    use super::{Bytes, HeaderMap, IntoResponse, Path, Response, Shared, State, StatusCode, Value, answer, received};

    pub(super) const TEAM: &str = "TEAM123456";
    pub(super) const KEY_ID: &str = "KEY1234567";
    pub(super) const TOPIC: &str = "com.example.notify";

    #[derive(Debug)]
    pub(super) struct Server {
        pub(super) url: String,
        public: Vec<u8>,
        /// Provider tokens seen, each with when it was first seen.
        pub(super) tokens: Vec<(String, Instant)>,
        /// A token answered `ExpiredProviderToken`: the next may be new at once.
        expired: bool,
        pub(super) connections: usize,
    }

    /// Starts the double: (its `apns://` URL, the state).
    pub(super) async fn start(inner: Shared) -> String {
        let dir = std::env::temp_dir().join(format!("platform-notify-apns-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("a directory for the APNs double's files");
        // The provider key, as Apple hands it out (AuthKey_{key id}.p8).
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("a P-256 key");
        let der = key.to_pkcs8v1().expect("PKCS#8");
        let key_file = dir.join(format!("AuthKey_{KEY_ID}.p8"));
        std::fs::write(&key_file, crate::driver::pem("PRIVATE KEY", der.as_ref())).expect("write the .p8");
        // A CA of its own and a certificate for 127.0.0.1 and localhost.
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "APNs double CA");
        let ca_key = KeyPair::generate().expect("a CA key");
        let ca_pem = ca.self_signed(&ca_key).expect("the CA certificate").pem();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
        leaf.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        let leaf_key = KeyPair::generate().expect("a leaf key");
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("the leaf certificate");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca_pem).expect("write the CA");

        let chain = vec![CertificateDer::from(leaf_cert.der().to_vec())];
        let private = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).expect("the leaf key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .expect("the server certificate");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a port for APNs");
        let base = format!("https://localhost:{}", listener.local_addr().expect("address").port());
        {
            let mut state = inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            state.apns = Some(Server {
                url: base.clone(),
                public: key.public_key().as_ref().to_vec(),
                tokens: Vec::new(),
                expired: false,
                connections: 0,
            });
        }
        let app = Router::new().route("/3/device/{token}", post(send)).with_state(Arc::clone(&inner));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if let Some(server) = inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).apns.as_mut() {
                    server.connections += 1;
                }
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let server = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                    let _ = server.http2_only().serve_connection(io, service).await;
                });
            }
        });
        format!(
            "apns://{TOPIC}?team_id={TEAM}&key_id={KEY_ID}&key_file={}&base_url={base}&ca_file={}",
            key_file.display(),
            ca_file.display()
        )
    }

    /// The provider token: signed by the key, `kid`, `iss`, an `iat` within the hour.
    fn check_token(server: &Server, token: &str) -> Result<(), (&'static str, String)> {
        let invalid = |why: &str| ("InvalidProviderToken", why.to_owned());
        let (input, signature) = token.rsplit_once('.').ok_or_else(|| invalid("not a JWT"))?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| invalid("signature not base64url"))?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &server.public)
            .verify(input.as_bytes(), &signature)
            .map_err(|_| invalid("the ES256 signature does not verify"))?;
        let (header, claims) = input.split_once('.').ok_or_else(|| invalid("not a JWT"))?;
        let part = |p: &str| -> Value {
            URL_SAFE_NO_PAD.decode(p).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null)
        };
        let (header, claims) = (part(header), part(claims));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let iat = claims["iat"].as_u64().unwrap_or(0);
        if header["alg"] != "ES256" || header["kid"] != KEY_ID {
            Err(invalid("alg is not ES256 or kid is not the key id"))
        } else if claims["iss"] != TEAM {
            Err(invalid("iss is not the team id"))
        } else if iat > now + 60 {
            Err(invalid("iat is in the future"))
        } else if now.saturating_sub(iat) > 3600 {
            Err(("ExpiredProviderToken", "older than an hour".to_owned()))
        } else {
            Ok(())
        }
    }

    async fn send(
        State(inner): State<Shared>,
        Path(device): Path<String>,
        version: Version,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let refuse = |status: u16, reason: &str, why: String| {
            Err(Box::new((format!("{reason}: {why}"), super::apns_error(status, reason).respond())))
        };
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let bearer = header("authorization").and_then(|v| v.strip_prefix("bearer ").map(str::to_owned));
        let check = {
            let mut state = inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(server) = state.apns.as_mut() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
            let last = server.tokens.last().map(|(t, at)| (t.clone(), *at));
            if version != Version::HTTP_2 {
                refuse(400, "BadRequest", format!("{version:?}, not HTTP/2"))
            } else if bearer.is_none() {
                refuse(403, "MissingProviderToken", "no bearer provider token".into())
            } else if let Err((reason, why)) = check_token(server, bearer.as_deref().unwrap_or_default()) {
                refuse(403, reason, why)
            } else if let Some((_, at)) = last.as_ref().filter(|(t, _)| Some(t) != bearer.as_ref())
                && at.elapsed() < Duration::from_secs(20 * 60)
                && !server.expired
            {
                refuse(429, "TooManyProviderTokenUpdates", "a new provider token within 20 minutes".into())
            } else if header("apns-topic").as_deref() != Some(TOPIC) {
                refuse(400, "TopicDisallowed", format!("apns-topic {:?}", header("apns-topic")))
            } else if !matches!(
                header("apns-push-type").as_deref(),
                Some("alert" | "background" | "location" | "voip" | "complication" | "fileprovider" | "mdm")
            ) {
                refuse(400, "InvalidPushType", format!("apns-push-type {:?}", header("apns-push-type")))
            } else if !matches!(header("apns-priority").as_deref(), None | Some("10" | "5" | "1")) {
                refuse(400, "BadPriority", format!("apns-priority {:?}", header("apns-priority")))
            } else if header("apns-id").is_some_and(|id| uuid::Uuid::parse_str(&id).is_err()) {
                refuse(400, "BadMessageId", "apns-id is not a UUID".into())
            } else if device.is_empty() || device.len() % 2 == 1 || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
                refuse(400, "BadDeviceToken", "not a hex device token".into())
            } else if body.len() > crate::apns::MAX_PAYLOAD {
                refuse(413, "PayloadTooLarge", format!("{} bytes", body.len()))
            } else if !json["aps"].is_object() {
                refuse(400, "PayloadEmpty", "no aps dictionary".into())
            } else {
                let token = bearer.clone().unwrap_or_default();
                if last.is_none_or(|(t, _)| t != token) {
                    server.tokens.push((token, Instant::now()));
                    server.expired = false;
                }
                Ok(())
            }
        };
        let id = header("apns-id").unwrap_or_else(|| uuid::Uuid::new_v4().to_string().to_uppercase());
        let r = received(format!("/3/device/{device}"), None, headers, body);
        let response =
            answer(&inner, "apns", r, check, |_| (StatusCode::OK, [("apns-id", id.clone())]).into_response());
        // After a 403 (a scripted ExpiredProviderToken) the next token may be new at once.
        if response.status() == StatusCode::FORBIDDEN
            && let Some(server) = inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).apns.as_mut()
        {
            server.expired = true;
        }
        // APNs echoes the message's id on every answer.
        let mut response = response;
        if !response.headers().contains_key("apns-id")
            && let Ok(v) = id.parse()
        {
            response.headers_mut().insert("apns-id", v);
        }
        response
    }
}
