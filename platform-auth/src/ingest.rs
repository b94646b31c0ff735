//! Signed ingest (`POST /v1/ingest/{endpoint_id}`): Standard Webhooks signatures.
//!
//! A request carries `webhook-id`, `webhook-timestamp` (seconds since the epoch) and
//! `webhook-signature` (`v1,<base64 HMAC-SHA256>`, several separated by spaces while a
//! sender rotates). The signed content is `{id}.{timestamp}.{body}` over the raw body
//! bytes (not UTF-8 is fine). Each endpoint has one or more secrets (`whsec_<base64>`):
//! several are active while one replaces another. A timestamp more than 5 minutes from
//! now (either way) is refused, and so is an id seen before within 10 minutes (the
//! [`ReplayGuard`]), so a captured request cannot be sent again.
//!
//! The endpoint is the request path's last segment. A request with none of the three
//! headers is [`AuthOutcome::Absent`]; one with some of them is judged, and refused
//! unless everything holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use platform_core::{Error, Result, Secret};
use sha2::Sha256;

use crate::{AuthOutcome, Authenticator, Principal, RequestParts, unauthenticated};

/// How far a timestamp may be from now, either way.
pub const TOLERANCE: Duration = Duration::from_secs(300);

/// An endpoint's secrets. Errors reaching the store are `Unavailable`.
#[async_trait]
pub trait IngestSecrets: std::fmt::Debug + Send + Sync {
    /// The active secrets of `endpoint` (raw key bytes); none when it is unknown.
    async fn secrets(&self, endpoint: &str) -> Result<Vec<Secret<Vec<u8>>>>;
}

/// Remembers message ids, so each is taken once.
#[async_trait]
pub trait ReplayGuard: std::fmt::Debug + Send + Sync {
    /// `true` the first time `id` is seen in `scope` within `ttl`, `false` after.
    async fn first_seen(&self, scope: &str, id: &str, ttl: Duration) -> Result<bool>;
}

/// Endpoint secrets in process.
#[derive(Debug, Default)]
pub struct MemorySecrets {
    by_endpoint: Mutex<HashMap<String, Vec<Secret<Vec<u8>>>>>,
}

impl MemorySecrets {
    /// Sets the active secrets of `endpoint` (`whsec_<base64>`, the Standard Webhooks
    /// form, or the raw base64).
    pub fn set(&self, endpoint: &str, secrets: &[&str]) -> Result<()> {
        let decoded = secrets.iter().map(|s| decode_secret(s)).collect::<Result<Vec<_>>>()?;
        self.by_endpoint.lock().unwrap_or_else(PoisonError::into_inner).insert(endpoint.to_owned(), decoded);
        Ok(())
    }
}

#[async_trait]
impl IngestSecrets for MemorySecrets {
    async fn secrets(&self, endpoint: &str) -> Result<Vec<Secret<Vec<u8>>>> {
        let all = self.by_endpoint.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(all.get(endpoint).map(|s| s.iter().map(|k| Secret::new(k.expose().clone())).collect()).unwrap_or_default())
    }
}

/// A secret's key bytes from `whsec_<base64>` (or bare base64).
pub fn decode_secret(secret: &str) -> Result<Secret<Vec<u8>>> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .filter(|k| k.len() >= 16)
        .map(Secret::new)
        .ok_or_else(|| Error::invalid_input("an ingest secret must be whsec_ and base64 of at least 16 bytes"))
}

/// The most ids a [`MemoryReplayGuard`] holds inside their windows; past it a new id is
/// refused with `Unavailable` rather than an unexpired one forgotten (which would let
/// its replay through).
pub const MEMORY_REPLAY_CAP: usize = 1_000_000;

/// Message ids in process, forgotten after their time.
#[derive(Debug, Default)]
pub struct MemoryReplayGuard {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    until: HashMap<(String, String), i64>,
    next_sweep: i64,
}

#[async_trait]
impl ReplayGuard for MemoryReplayGuard {
    async fn first_seen(&self, scope: &str, id: &str, ttl: Duration) -> Result<bool> {
        let now = platform_core::clock::now_ms();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        // Expired ids go at most once a second: a sweep per check would cost the whole
        // map every time under load.
        if now >= seen.next_sweep || seen.until.len() >= MEMORY_REPLAY_CAP {
            seen.until.retain(|_, until| *until > now);
            seen.next_sweep = now + 1000;
        }
        let until = now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let key = (scope.to_owned(), id.to_owned());
        let full = seen.until.len() >= MEMORY_REPLAY_CAP;
        match seen.until.get_mut(&key) {
            Some(held) if *held > now => Ok(false),
            Some(held) => {
                *held = until;
                Ok(true)
            }
            None if full => Err(Error::unavailable("the in-process replay store is full; use Redis or SQL")),
            None => {
                seen.until.insert(key, until);
                Ok(true)
            }
        }
    }
}

/// Message ids on Redis or Valkey, shared by every instance of a service: one `SET NX
/// PX` per check, so two instances given one delivery take it once between them.
#[cfg(feature = "redis")]
pub struct RedisReplayGuard {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

#[cfg(feature = "redis")]
impl RedisReplayGuard {
    /// Keeps ids under `platform:auth:replay:{namespace}:` on the server at `url`.
    pub async fn open(url: &str, namespace: &str) -> Result<Self> {
        let client = redis::Client::open(url).map_err(platform_core::redis::map_error)?;
        let conn = client.get_connection_manager().await.map_err(platform_core::redis::map_error)?;
        Ok(Self { conn, prefix: format!("platform:auth:replay:{namespace}:") })
    }
}

#[cfg(feature = "redis")]
impl std::fmt::Debug for RedisReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReplayGuard").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

#[cfg(feature = "redis")]
#[async_trait]
impl ReplayGuard for RedisReplayGuard {
    async fn first_seen(&self, scope: &str, id: &str, ttl: Duration) -> Result<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}{scope}:{id}", self.prefix))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(platform_core::redis::map_error)?;
        Ok(set.is_some())
    }
}

/// The signed-ingest method.
#[derive(Debug, Clone)]
pub struct SignedIngest {
    secrets: Arc<dyn IngestSecrets>,
    replay: Arc<dyn ReplayGuard>,
}

impl SignedIngest {
    /// The method over `secrets`, remembering ids in `replay`.
    pub fn new(secrets: Arc<dyn IngestSecrets>, replay: Arc<dyn ReplayGuard>) -> Self {
        Self { secrets, replay }
    }

    /// Checks a delivery to `endpoint`: `id`, `timestamp` and `signatures` as their
    /// headers carry them, `body` raw; `now` in seconds since the epoch.
    pub async fn verify(
        &self,
        endpoint: &str,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Principal> {
        let refused = |why: &str| unauthenticated(&format!("ingest signature refused: {why}"));
        let sent: i64 = timestamp.trim().parse().map_err(|_| refused("webhook-timestamp is not a number"))?;
        let tolerance = i64::try_from(TOLERANCE.as_secs()).unwrap_or(300);
        if (now - sent).abs() > tolerance {
            return Err(refused("webhook-timestamp is more than 5 minutes from now"));
        }
        let secrets = self.secrets.secrets(endpoint).await?;
        let signed_prefix = format!("{id}.{sent}.");
        let given: Vec<Vec<u8>> = signatures
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .collect();
        let matches = secrets.iter().any(|secret| {
            given.iter().any(|signature| {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose()) else { return false };
                mac.update(signed_prefix.as_bytes());
                mac.update(body);
                // Constant time.
                mac.verify_slice(signature).is_ok()
            })
        });
        if !matches {
            return Err(refused("no signature matches"));
        }
        if !self.replay.first_seen(endpoint, id, TOLERANCE * 2).await? {
            return Err(refused("webhook-id was seen before (a replay)"));
        }
        Ok(Principal::new(format!("ingest:{endpoint}"), "hmac"))
    }
}

/// The `v1,` signature of a delivery, as a sender makes it (for senders and tests).
pub fn sign(secret: &Secret<Vec<u8>>, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose()).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

#[async_trait]
impl Authenticator for SignedIngest {
    fn method(&self) -> &'static str {
        "hmac"
    }

    async fn authenticate(&self, request: &RequestParts<'_>) -> Result<AuthOutcome> {
        let headers =
            [request.header("webhook-id"), request.header("webhook-timestamp"), request.header("webhook-signature")];
        let (Some(id), Some(timestamp), Some(signatures)) = (headers[0], headers[1], headers[2]) else {
            if headers.iter().all(Option::is_none) {
                return Ok(AuthOutcome::Absent);
            }
            return Err(unauthenticated(
                "ingest signature refused: webhook-id, webhook-timestamp and webhook-signature go together",
            ));
        };
        let endpoint = request.uri.path().rsplit('/').next().unwrap_or_default();
        let body = request.body.ok_or_else(|| Error::internal("signed ingest needs the request body"))?;
        let now = platform_core::clock::now_ms() / 1000;
        self.verify(endpoint, id, timestamp, signatures, body, now).await.map(AuthOutcome::Authenticated)
    }
}
