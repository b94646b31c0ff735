//! Rate limits per route and key: one algorithm (GCRA) in the process or on Redis, 429
//! as problem+json with `Retry-After` and the IETF `RateLimit` / `RateLimit-Policy`
//! fields (draft-ietf-httpapi-ratelimit-headers).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::http::HeaderValue;
use async_trait::async_trait;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{Error, ErrorKind, Result};

/// A limit: at most `limit` requests per `window` for each key, spread evenly (a burst
/// of `limit` is allowed when the key was idle for a window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    name: String,
    limit: u32,
    window: Duration,
}

impl Policy {
    /// `limit` requests per `window`, named `name` in the response fields (a token:
    /// letters, digits, `_`, `-`).
    pub fn new(name: impl Into<String>, limit: u32, window: Duration) -> Result<Self> {
        let name = name.into();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(Error::invalid_input(format!("rate limit name {name:?} must be letters, digits, _ or -")));
        }
        if limit == 0 || window.is_zero() {
            return Err(Error::invalid_input("a rate limit needs a limit and a window above zero"));
        }
        if u128::from(limit) > window.as_micros() {
            return Err(Error::invalid_input("a rate limit counts at most one request per microsecond of its window"));
        }
        Ok(Self { name, limit, window })
    }

    /// The time one request takes of the window.
    fn interval(&self) -> Duration {
        self.window / self.limit
    }
}

/// What a limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Requests left now.
    pub remaining: u32,
    /// Until the key's quota is whole again.
    pub reset: Duration,
    /// When refused, how long until one request would be allowed.
    pub retry_after: Option<Duration>,
}

/// Keeps the state of rate limits: in the process ([`LocalLimiter`]) or shared by every
/// instance of a service ([`RedisLimiter`](crate::http::RedisLimiter), feature `redis`).
///
/// # Contract
/// - `acquire` counts one request for `key` under `policy` and says whether it may go
///   on; a refused request does not count.
/// - Every limiter runs the same algorithm (GCRA): the same requests get the same
///   decisions on every backend.
/// - A limiter that cannot reach its store is an `Err` (the layer lets the request
///   through and logs it: a broken limiter does not take the service down).
#[async_trait]
pub trait RateLimiter: fmt::Debug + Send + Sync {
    /// Counts one request for `key`.
    async fn acquire(&self, policy: &Policy, key: &str) -> Result<Decision>;
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The decision for a key whose theoretical arrival time is `tat` (µs), at `now` (µs):
/// the new `tat` when allowed.
pub(crate) fn gcra(policy: &Policy, tat: u64, now: u64) -> (Decision, Option<u64>) {
    let interval = micros(policy.interval()).max(1);
    let window = micros(policy.window);
    let tat = tat.max(now);
    let next = tat + interval;
    if next - now > window {
        let wait = next - now - window;
        let decision = Decision {
            allowed: false,
            remaining: 0,
            reset: Duration::from_micros(tat - now),
            retry_after: Some(Duration::from_micros(wait)),
        };
        return (decision, None);
    }
    let used = next - now;
    let remaining = u32::try_from((window - used) / interval).unwrap_or(u32::MAX);
    let decision = Decision { allowed: true, remaining, reset: Duration::from_micros(used), retry_after: None };
    (decision, Some(next))
}

/// Rate limits kept in this process: each instance of a service counts alone.
#[derive(Debug)]
pub struct LocalLimiter {
    started: Instant,
    /// Per policy, per key: the theoretical arrival time (µs since `started`).
    keys: Mutex<HashMap<String, HashMap<String, u64>>>,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self { started: Instant::now(), keys: Mutex::default() }
    }
}

#[async_trait]
impl RateLimiter for LocalLimiter {
    async fn acquire(&self, policy: &Policy, key: &str) -> Result<Decision> {
        let now = micros(self.started.elapsed());
        let mut policies = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if !policies.contains_key(&policy.name) {
            policies.insert(policy.name.clone(), HashMap::new());
        }
        let Some(keys) = policies.get_mut(&policy.name) else { unreachable!("inserted above") };
        // Keys whose quota is whole again hold nothing worth keeping.
        if keys.len() > 100_000 {
            keys.retain(|_, tat| *tat > now);
        }
        let (decision, next) = gcra(policy, keys.get(key).copied().unwrap_or(0), now);
        if let Some(next) = next {
            match keys.get_mut(key) {
                Some(tat) => *tat = next,
                None => {
                    keys.insert(key.to_owned(), next);
                }
            }
        }
        Ok(decision)
    }
}

/// A function that picks a request's rate-limit key.
pub type KeyFn = Arc<dyn Fn(&Request) -> Option<String> + Send + Sync>;

/// What a request is counted by.
#[derive(Clone)]
#[non_exhaustive]
pub enum KeyBy {
    /// The peer's IP address (needs `into_make_service_with_connect_info::<SocketAddr>()`;
    /// forwarded headers are not trusted).
    ClientIp,
    /// A request header's value (an API key id, a tenant); requests without it are
    /// counted together.
    Header(&'static str),
    /// Every request together.
    Global,
    /// A function of the request (the authenticated principal, the tenant).
    With(KeyFn),
}

impl fmt::Debug for KeyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientIp => f.write_str("ClientIp"),
            Self::Header(h) => write!(f, "Header({h})"),
            Self::Global => f.write_str("Global"),
            Self::With(_) => f.write_str("With(..)"),
        }
    }
}

/// A rate limit for the routes it is layered on, through [`rate_limit`]:
/// `.route_layer(axum::middleware::from_fn_with_state(limit, rate_limit))`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    limiter: Arc<dyn RateLimiter>,
    policy: Arc<Policy>,
    key: KeyBy,
}

impl RateLimit {
    /// Limits by `key` under `policy`, counting with `limiter`.
    pub fn new(limiter: Arc<dyn RateLimiter>, policy: Policy, key: KeyBy) -> Self {
        Self { limiter, policy: Arc::new(policy), key }
    }

    fn key_of(&self, request: &Request) -> String {
        match &self.key {
            KeyBy::ClientIp => request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string()),
            KeyBy::Header(name) => request.headers().get(*name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned(),
            KeyBy::Global => String::new(),
            KeyBy::With(f) => f(request).unwrap_or_default(),
        }
    }
}

/// The middleware of a [`RateLimit`]: counts the request, answers 429 (problem+json,
/// `Retry-After`) when over, and sets `RateLimit-Policy` and `RateLimit` on every
/// response. Layer it with `axum::middleware::from_fn_with_state(limit, rate_limit)`.
pub async fn rate_limit(State(rl): State<RateLimit>, request: Request, next: Next) -> Response {
    let key = rl.key_of(&request);
    let policy = &rl.policy;
    let decision = match rl.limiter.acquire(policy, &key).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(target: "platform::http", error = %e, policy = %policy.name, "rate limiter unavailable; request let through");
            return next.run(request).await;
        }
    };
    let mut response = if decision.allowed {
        next.run(request).await
    } else {
        let wait = decision.retry_after.unwrap_or(Duration::from_secs(1));
        Error::new(
            ErrorKind::RateLimited,
            format!("rate limit {:?} reached: {} per {:?}", policy.name, policy.limit, policy.window),
        )
        .with_retry_after(wait)
        .into_response()
    };
    let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let fields = [
        ("ratelimit-policy", format!("\"{}\";q={};w={}", policy.name, policy.limit, secs(policy.window))),
        ("ratelimit", format!("\"{}\";r={};t={}", policy.name, decision.remaining, secs(decision.reset))),
    ];
    for (name, value) in fields {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

/// The GCRA step on Redis, atomic, on the server's clock (so every instance agrees):
/// the same arithmetic as [`gcra`], in microseconds.
#[cfg(feature = "redis")]
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local nxt = tat + interval
if nxt - now > window then
  return {0, 0, tat - now, nxt - now - window}
end
redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.ceil((nxt - now) / 1000))
return {1, math.floor((window - (nxt - now)) / interval), nxt - now, 0}
";

/// Rate limits on Redis or Valkey, shared by every instance of a service that points
/// at the same server and prefix: `redis://host:6379?prefix=myservice` (the prefix,
/// default `platform:ratelimit`, scopes the keys).
#[cfg(feature = "redis")]
pub struct RedisLimiter {
    conn: ::redis::aio::ConnectionManager,
    prefix: String,
    script: ::redis::Script,
}

#[cfg(feature = "redis")]
impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

#[cfg(feature = "redis")]
impl RedisLimiter {
    /// Connects to `redis://…` (or `valkey://…`); `prefix` is the only parameter.
    pub async fn from_url(url: &str) -> Result<Self> {
        let mut parsed = url::Url::parse(url)
            .map_err(|e| crate::config::url_error("redis", "url", &format!("{e} in {}", crate::mask_url(url))))?;
        let mut prefix = String::from("platform:ratelimit");
        for (k, v) in parsed.query_pairs() {
            match &*k {
                "prefix" => prefix = v.into_owned(),
                other => {
                    return Err(crate::config::url_error("redis", other, "is not a parameter of the rate limiter"));
                }
            }
        }
        parsed.set_query(None);
        if parsed.scheme() == "valkey" {
            let _ = parsed.set_scheme("redis");
        }
        let client = ::redis::Client::open(parsed.as_str()).map_err(crate::redis::map_error)?;
        let conn = ::redis::aio::ConnectionManager::new(client).await.map_err(crate::redis::map_error)?;
        Ok(Self { conn, prefix, script: ::redis::Script::new(GCRA_LUA) })
    }
}

#[cfg(feature = "redis")]
#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn acquire(&self, policy: &Policy, key: &str) -> Result<Decision> {
        let (interval, window) = (micros(policy.interval()).max(1), micros(policy.window));
        let mut conn = self.conn.clone();
        let got: Vec<u64> = self
            .script
            .key(format!("{}:{}:{key}", self.prefix, policy.name))
            .arg(interval)
            .arg(window)
            .invoke_async(&mut conn)
            .await
            .map_err(crate::redis::map_error)?;
        let [allowed, remaining, reset, wait] = got[..] else {
            return Err(Error::internal("the rate limit script answered in an unknown shape"));
        };
        Ok(Decision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset: Duration::from_micros(reset),
            retry_after: (allowed == 0).then(|| Duration::from_micros(wait)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_limit_then_spaces_requests() {
        let p = Policy::new("writes", 5, Duration::from_secs(10)).unwrap();
        let mut tat = 0;
        for left in (0..5).rev() {
            let (d, next) = gcra(&p, tat, 1_000_000);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
            tat = next.unwrap();
        }
        let (d, next) = gcra(&p, tat, 1_000_000);
        assert!(!d.allowed && next.is_none());
        assert_eq!(d.retry_after, Some(Duration::from_secs(2)), "one interval (10 s / 5)");
        let (d, _) = gcra(&p, tat, 3_000_000);
        assert!(d.allowed, "one more after one interval");
    }

    #[tokio::test]
    async fn local_limiter_counts_per_key_and_policy() {
        let l = LocalLimiter::new();
        let p = Policy::new("p", 2, Duration::from_secs(60)).unwrap();
        assert!(l.acquire(&p, "a").await.unwrap().allowed);
        assert!(l.acquire(&p, "a").await.unwrap().allowed);
        assert!(!l.acquire(&p, "a").await.unwrap().allowed);
        assert!(l.acquire(&p, "b").await.unwrap().allowed);
        let q = Policy::new("q", 1, Duration::from_secs(60)).unwrap();
        assert!(l.acquire(&q, "a").await.unwrap().allowed);
        assert!(Policy::new("bad name", 1, Duration::from_secs(1)).is_err());
        assert!(Policy::new("p", 0, Duration::from_secs(1)).is_err());
        // Many per second: spaced by microseconds, not rounded to milliseconds.
        let fast = Policy::new("fast", 100_000, Duration::from_secs(1)).unwrap();
        let allowed = futures::future::join_all((0..5000).map(|_| l.acquire(&fast, "k"))).await;
        assert!(allowed.iter().all(|d| d.as_ref().unwrap().allowed));
    }
}
