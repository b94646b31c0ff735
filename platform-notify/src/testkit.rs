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
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/services/{t}/{b}/{x}", post(slack))
            .route("/api/webhooks/{id}/{token}", post(discord))
            .route("/workflows/{id}/triggers/manual/paths/invoke", post(teams))
            .route("/{bot}/sendMessage", post(telegram))
            .route("/hooks/{name}", post(webhook))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a port for the doubles");
        let url = format!("http://{}", listener.local_addr().expect("address"));
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
