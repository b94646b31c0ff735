//! OAuth2 token introspection (RFC 7662, feature `introspection`): opaque bearer tokens
//! asked about at the issuer's introspection endpoint.
//!
//! The service authenticates itself with HTTP Basic (`client_secret_basic`) and posts
//! `token=…&token_type_hint=access_token`. An active token becomes a principal (subject
//! from `sub`, else `client_id`; scopes from `scope`); an inactive one is 401. The answer
//! is cached under the token's SHA-256, never the token, until the token's `exp` and at
//! most [`Introspection::cache_for`] (5 min by default); an inactive answer for 30 s. An
//! endpoint that cannot be reached, times out (5 s) or fails is 503: an outage is not a
//! bad token. Redirects are not followed.
//!
//! Put it last in a chain: it takes every bearer token the methods before it left.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use platform_core::{Error, Result, Secret};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::{AuthOutcome, Authenticator, Principal, RequestParts, unauthenticated};

type Answers = HashMap<[u8; 32], (Instant, Option<Principal>)>;

const MAX_CACHED: usize = 10_000;
const INACTIVE_FOR: Duration = Duration::from_secs(30);

/// The introspection method.
#[derive(Debug)]
pub struct Introspection {
    client: reqwest::Client,
    endpoint: url::Url,
    client_id: String,
    client_secret: Secret<String>,
    audience: Option<String>,
    tenant: Option<String>,
    cache_for: Duration,
    cache: Mutex<Answers>,
}

impl Introspection {
    /// Tokens asked about at `endpoint`, as client `client_id`.
    pub fn new(endpoint: &str, client_id: impl Into<String>, client_secret: impl Into<String>) -> Result<Self> {
        let endpoint = url::Url::parse(endpoint).map_err(|e| {
            Error::invalid_input(format!("the introspection endpoint is not a URL: {e}"))
                .with_detail("endpoint", e.to_string())
        })?;
        let client = crate::http_client()?;
        Ok(Self {
            client,
            endpoint,
            client_id: client_id.into(),
            client_secret: Secret::new(client_secret.into()),
            audience: None,
            tenant: None,
            cache_for: Duration::from_secs(300),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Active tokens must name `audience` in `aud`.
    #[must_use]
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The principals belong to `tenant`.
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Keeps an active answer at most this long (never past the token's `exp`); zero
    /// asks every time.
    #[must_use]
    pub fn cache_for(mut self, ttl: Duration) -> Self {
        self.cache_for = ttl;
        self
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Option<Principal>> {
        let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.get(key).filter(|(until, _)| *until > Instant::now()).map(|(_, p)| p.clone())
    }

    fn remember(&self, key: [u8; 32], until: Instant, answer: Option<Principal>) {
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (until, answer));
    }

    /// The principal of `token`.
    pub async fn introspect(&self, token: &str) -> Result<Principal> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let inactive = || unauthenticated("the token is not active");
        if let Some(answer) = self.cached(&key) {
            return answer.ok_or_else(inactive);
        }
        let down = |e: &dyn std::fmt::Display| Error::unavailable(format!("token introspection failed: {e}"));
        let form = [("token", token), ("token_type_hint", "access_token")];
        let response = self
            .client
            .post(self.endpoint.clone())
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .header("accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| down(&e))?;
        if !response.status().is_success() {
            return Err(down(&format!("the endpoint answered {}", response.status())));
        }
        let text = response.text().await.map_err(|e| down(&e))?;
        let body: Value = serde_json::from_str(&text).map_err(|e| down(&format!("not JSON: {e}")))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let exp = body.get("exp").and_then(Value::as_u64);
        let active = body.get("active").and_then(Value::as_bool) == Some(true) && exp.is_none_or(|exp| exp > now);
        if !active {
            self.remember(key, Instant::now() + INACTIVE_FOR, None);
            return Err(inactive());
        }
        if let Some(want) = &self.audience {
            let named = match body.get("aud") {
                Some(Value::String(a)) => a == want.as_str(),
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
                _ => false,
            };
            if !named {
                return Err(unauthenticated("the token is for another audience (aud)"));
            }
        }
        let Value::Object(claims) = body else { return Err(down(&"the answer is not a JSON object")) };
        let principal = Principal::from_claims("introspection", claims, self.tenant.clone())?;
        let left = exp.map_or(self.cache_for, |exp| Duration::from_secs(exp.saturating_sub(now)));
        let keep = left.min(self.cache_for);
        if !keep.is_zero() {
            self.remember(key, Instant::now() + keep, Some(principal.clone()));
        }
        Ok(principal)
    }
}

#[async_trait]
impl Authenticator for Introspection {
    fn method(&self) -> &'static str {
        "introspection"
    }

    async fn authenticate(&self, request: &RequestParts<'_>) -> Result<AuthOutcome> {
        match request.bearer_token() {
            Some(token) => self.introspect(&token).await.map(AuthOutcome::Authenticated),
            None => Ok(AuthOutcome::Absent),
        }
    }
}
