//! JWT access tokens checked against each issuer's keys (feature `jwt`).
//!
//! ```rust,ignore
//! let jwt = Jwt::new()
//!     .issuer(Issuer::new("https://id.example.com/t/acme", "todo-api", Arc::new(keys)).tenant("acme"))
//!     .tenant_from(|r| r.header("x-tenant").map(str::to_owned));
//! let chain = AuthChain::new().with(Arc::new(jwt));
//! ```
//!
//! What a token must be, and what is never trusted:
//! - Its issuer (`iss`, read before anything is fetched) is one of the configured
//!   issuers, and, when the request names a tenant, that tenant's issuer. Keys are
//!   held per issuer, so a `kid` of one tenant never verifies another's token.
//! - The key is found by `kid` in that issuer's key set only. `jku`, `x5u`, `jwk` and
//!   `x5c` headers are ignored. A key set holds public keys only (an `oct` secret in it
//!   is skipped), and a key verifies only the algorithms of its own type, or the one
//!   its `alg` names: the header's `alg` picks nothing (so `none` and HS256 signed with
//!   an RSA public key are refused).
//! - `exp`, `aud` and `iss` are required; `aud` must name one of the issuer's
//!   audiences; `nbf` and `iat` must not be in the future; leeway is at most 60 s.
//! - `typ` is `at+jwt` (RFC 9068), so an ID token of the same issuer is not an access
//!   token, unless [`Jwt::any_token_type`] says otherwise.
//! - Longer than [`MAX_TOKEN_LEN`] is refused before parsing.
//!
//! A bearer token that is not shaped as a JWT (three base64url parts, a JSON header) is
//! [`AuthOutcome::Absent`]: it may be an API key or an opaque token for introspection
//! later in the chain. One that is shaped as a JWT and fails is 401, and a key set that
//! cannot be fetched is 503.
//!
//! [`JwksCache`] keeps an issuer's keys: fresh for the source's `Cache-Control:
//! max-age` (clamped to 1 min..24 h, 5 min when it says nothing); an unknown `kid`
//! refetches at most once per interval (30 s by default) with one fetch in flight, then
//! is 401; a fetch that fails keeps the last good set. [`HttpKeys`] (feature `jwks`)
//! fetches over HTTP, from a JWKS URL or an issuer's discovery document.
//!
//! [`TokenMinter`] mints short-lived access tokens for service-to-service calls and
//! publishes its public keys as a JWKS.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, PublicKeyUse};
pub use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use platform_core::{Error, Result};
use serde_json::{Map, Value};

use crate::{AuthOutcome, Authenticator, Principal, RequestParts, unauthenticated};

/// The longest token read: a longer one is refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// The most clock skew [`Jwt::leeway`] takes.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);
/// The access-token type of RFC 9068.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

const MIN_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(86_400);

const RSA: &[Algorithm] =
    &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];

/// A public key that verifies tokens, bound to the algorithms of its type.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: String,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey").field("kid", &self.kid).field("algorithms", &self.algorithms).finish()
    }
}

fn bad_key(kid: &str, why: &str) -> Error {
    Error::invalid_input(format!("JWK `{kid}` {why}")).with_detail("jwk", why.to_owned())
}

impl VerifyingKey {
    /// The key of a public JWK: RSA, EC P-256/P-384 or Ed25519, with a `kid`. A
    /// shared secret (`oct`), an encryption key, or an `alg` that is not of the key's
    /// type is `InvalidInput`.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self> {
        let kid = jwk.common.key_id.clone().filter(|k| !k.is_empty()).ok_or_else(|| bad_key("?", "has no kid"))?;
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err(bad_key(&kid, "is an encryption key (use: enc)"));
        }
        let family: &[Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => RSA,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => &[Algorithm::ES256],
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => &[Algorithm::ES384],
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            AlgorithmParameters::EllipticCurve(_) | AlgorithmParameters::OctetKeyPair(_) => {
                return Err(bad_key(&kid, "is on a curve that is not supported"));
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err(bad_key(&kid, "is a shared secret (oct), never a verification key"));
            }
        };
        let algorithms = match &jwk.common.key_algorithm {
            None => family.to_vec(),
            Some(named) => {
                let alg: Algorithm = named
                    .to_string()
                    .parse()
                    .map_err(|_| bad_key(&kid, "names an algorithm that is not for signing"))?;
                if !family.contains(&alg) {
                    return Err(bad_key(&kid, "names an algorithm of another key type"));
                }
                vec![alg]
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad_key(&kid, &format!("is malformed: {e}")))?;
        Ok(Self { kid, key, algorithms })
    }

    /// Its `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithms it verifies.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }
}

/// The usable keys of a JWKS, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, Arc<VerifyingKey>>,
}

impl KeySet {
    /// The usable keys of `jwks` (a JSON JWKS). Keys this crate will not verify with
    /// (secrets, encryption keys, unknown types) are skipped, so one odd key does not
    /// cost the others; a document that is not a JWKS is `InvalidInput`.
    pub fn parse(jwks: &str) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<Value>,
        }
        let doc: Doc = serde_json::from_str(jwks)
            .map_err(|e| Error::invalid_input(format!("not a JWK set: {e}")).with_detail("jwks", "not a JWK set"))?;
        let mut set = Self::default();
        for raw in doc.keys {
            let key = serde_json::from_value::<Jwk>(raw)
                .map_err(|e| Error::invalid_input(e.to_string()))
                .and_then(|jwk| VerifyingKey::from_jwk(&jwk));
            match key {
                Ok(key) => set.insert(key),
                Err(e) => tracing::debug!(error = %e, "a JWK is skipped"),
            }
        }
        Ok(set)
    }

    /// The usable keys of `jwks`.
    pub fn from_jwks(jwks: &JwkSet) -> Self {
        let mut set = Self::default();
        for key in jwks.keys.iter().filter_map(|jwk| VerifyingKey::from_jwk(jwk).ok()) {
            set.insert(key);
        }
        set
    }

    /// Adds `key`, replacing one of the same `kid`.
    pub fn insert(&mut self, key: VerifyingKey) {
        self.keys.insert(key.kid.clone(), Arc::new(key));
    }

    /// The key `kid`.
    pub fn get(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        self.keys.get(kid).cloned()
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Where one issuer's verification keys come from.
///
/// # Contract
/// - `key(kid)` is the key of that `kid`, or `Unauthenticated` when the issuer has no
///   such key (after at most one refetch per interval), or `Unavailable` when the keys
///   cannot be fetched and the `kid` is not among those last fetched.
/// - A `kid` is an opaque map key: never a path, a URL or a query.
#[async_trait]
pub trait KeySource: fmt::Debug + Send + Sync {
    /// The key `kid`.
    async fn key(&self, kid: &str) -> Result<Arc<VerifyingKey>>;
}

/// A fixed key set (keys from configuration, or a [`TokenMinter`] in the same process).
#[derive(Debug, Clone, Default)]
pub struct StaticKeys(pub KeySet);

#[async_trait]
impl KeySource for StaticKeys {
    async fn key(&self, kid: &str) -> Result<Arc<VerifyingKey>> {
        self.0.get(kid).ok_or_else(|| unauthenticated("the token's key (kid) is not one of the issuer's"))
    }
}

/// How a [`JwksCache`] gets its keys (over HTTP: [`HttpKeys`], feature `jwks`).
#[async_trait]
pub trait FetchKeys: fmt::Debug + Send + Sync {
    /// The issuer's current keys, and how long they may be kept when the source says
    /// (`Cache-Control: max-age`). An unreachable or failing source is `Unavailable`.
    async fn fetch(&self) -> Result<(KeySet, Option<Duration>)>;
}

#[derive(Debug)]
struct Cached {
    keys: Option<KeySet>,
    fresh_until: Instant,
}

#[derive(Debug, Default)]
struct Attempt {
    at: Option<Instant>,
    failed: bool,
}

/// One issuer's keys, fetched when needed and kept (see the [module](self) docs).
#[derive(Debug)]
pub struct JwksCache {
    source: Arc<dyn FetchKeys>,
    cached: RwLock<Cached>,
    attempt: tokio::sync::Mutex<Attempt>,
    min_refetch: Duration,
    default_ttl: Duration,
    fetches: AtomicU64,
}

impl JwksCache {
    /// Keys from `source`, fetched on first use.
    pub fn new(source: Arc<dyn FetchKeys>) -> Self {
        Self {
            source,
            cached: RwLock::new(Cached { keys: None, fresh_until: Instant::now() }),
            attempt: tokio::sync::Mutex::new(Attempt::default()),
            min_refetch: Duration::from_secs(30),
            default_ttl: Duration::from_secs(300),
            fetches: AtomicU64::new(0),
        }
    }

    /// At most one fetch per `interval` (30 s by default), however many unknown
    /// `kid`s arrive: an unknown `kid` cannot make the service hammer its issuer.
    #[must_use]
    pub fn min_refetch_interval(mut self, interval: Duration) -> Self {
        self.min_refetch = interval;
        self
    }

    /// How long keys are fresh when the source does not say (5 min by default).
    #[must_use]
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// How many fetches were made.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Fetches now (at startup, so that the first request does not wait and a
    /// misconfigured issuer shows at once); the interval applies to this fetch too.
    pub async fn refresh(&self) -> Result<()> {
        let mut attempt = self.attempt.lock().await;
        self.fetch_now(&mut attempt).await
    }

    fn lookup(&self, kid: &str, fresh_only: bool) -> Option<Arc<VerifyingKey>> {
        let cached = self.cached.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if fresh_only && cached.fresh_until <= Instant::now() {
            return None;
        }
        cached.keys.as_ref()?.get(kid)
    }

    async fn fetch_now(&self, attempt: &mut Attempt) -> Result<()> {
        attempt.at = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.source.fetch().await {
            Ok((keys, max_age)) => {
                let ttl = max_age.map_or(self.default_ttl, |age| age.clamp(MIN_TTL, MAX_TTL));
                let mut cached = self.cached.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                *cached = Cached { keys: Some(keys), fresh_until: Instant::now() + ttl };
                attempt.failed = false;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "the issuer's keys could not be fetched; the last good set is kept");
                attempt.failed = true;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl KeySource for JwksCache {
    async fn key(&self, kid: &str) -> Result<Arc<VerifyingKey>> {
        if let Some(key) = self.lookup(kid, true) {
            return Ok(key);
        }
        let mut attempt = self.attempt.lock().await;
        // One fetch in flight: whoever waited here finds what it fetched.
        if let Some(key) = self.lookup(kid, true) {
            return Ok(key);
        }
        let due = attempt.at.is_none_or(|at| at.elapsed() >= self.min_refetch);
        let fetched = if due { Some(self.fetch_now(&mut attempt).await) } else { None };
        let failed = attempt.failed;
        drop(attempt);
        // Stale keys serve while the source is down or the interval has not passed.
        if let Some(key) = self.lookup(kid, false) {
            return Ok(key);
        }
        match fetched {
            Some(Err(e)) => Err(Error::unavailable("the issuer's keys could not be fetched").with_source(e)),
            _ if failed => Err(Error::unavailable("the issuer's keys could not be fetched lately")),
            _ => Err(unauthenticated("the token's key (kid) is not one of the issuer's")),
        }
    }
}

/// Keys fetched over HTTP (feature `jwks`): redirects are not followed, a fetch
/// times out after 5 s, and `Cache-Control: max-age` sets how long they are kept.
#[cfg(feature = "jwks")]
#[derive(Debug, Clone)]
pub struct HttpKeys {
    client: reqwest::Client,
    url: url::Url,
}

#[cfg(feature = "jwks")]
impl HttpKeys {
    /// Keys at `jwks_url`.
    pub fn new(jwks_url: &str) -> Result<Self> {
        let url = url::Url::parse(jwks_url).map_err(|e| {
            Error::invalid_input(format!("the JWKS URL is not a URL: {e}")).with_detail("jwks_url", e.to_string())
        })?;
        Ok(Self { client: crate::http_client()?, url })
    }

    /// Keys at the `jwks_uri` of `issuer`'s OpenID discovery document
    /// (`{issuer}/.well-known/openid-configuration`), whose `issuer` must be `issuer`.
    pub async fn discover(issuer: &str) -> Result<Self> {
        let client = crate::http_client()?;
        let at = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let doc: Value = get_json(&client, &at).await?.0;
        if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
            let why = "the discovery document names another issuer";
            return Err(Error::invalid_input(format!("{why} than {issuer}")).with_detail("issuer", why));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid_input(format!("the discovery document of {issuer} has no jwks_uri")))?;
        let mut keys = Self::new(jwks_uri)?;
        keys.client = client;
        Ok(keys)
    }
}

#[cfg(feature = "jwks")]
async fn get_json(client: &reqwest::Client, url: &str) -> Result<(Value, Option<Duration>)> {
    let down = |e: &dyn fmt::Display| Error::unavailable(format!("GET {url}: {e}"));
    let response = client.get(url).header("accept", "application/json").send().await.map_err(|e| down(&e))?;
    if !response.status().is_success() {
        return Err(down(&response.status()));
    }
    let max_age = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<u64>().ok()))
        .map(Duration::from_secs);
    let body = response.text().await.map_err(|e| down(&e))?;
    let json = serde_json::from_str(&body).map_err(|e| down(&format!("not JSON: {e}")))?;
    Ok((json, max_age))
}

#[cfg(feature = "jwks")]
#[async_trait]
impl FetchKeys for HttpKeys {
    async fn fetch(&self) -> Result<(KeySet, Option<Duration>)> {
        let (doc, max_age) = get_json(&self.client, self.url.as_str()).await?;
        let keys = KeySet::parse(&doc.to_string())
            .map_err(|e| Error::unavailable(format!("GET {}: {}", self.url, e.message())))?;
        Ok((keys, max_age))
    }
}

/// One trusted issuer: its `iss`, the audiences a token must name one of, where its keys
/// come from, and the tenant its tokens belong to.
#[derive(Debug, Clone)]
pub struct Issuer {
    issuer: String,
    audiences: Vec<String>,
    keys: Arc<dyn KeySource>,
    tenant: Option<String>,
}

impl Issuer {
    /// `issuer`, whose tokens must name `audience`, with keys from `keys`.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, keys: Arc<dyn KeySource>) -> Self {
        Self { issuer: issuer.into(), audiences: vec![audience.into()], keys, tenant: None }
    }

    /// Tokens naming `audience` are taken too.
    #[must_use]
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Its tokens belong to `tenant` (the principal's tenant, and the tenant a request
    /// must be for when [`Jwt::tenant_from`] names one).
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// `issuer` with keys found by OpenID discovery and kept in a [`JwksCache`]
    /// (feature `jwks`); the first fetch happens here, so a wrong issuer fails startup.
    #[cfg(feature = "jwks")]
    pub async fn discover(issuer: &str, audience: impl Into<String>) -> Result<Self> {
        let cache = JwksCache::new(Arc::new(HttpKeys::discover(issuer).await?));
        cache.refresh().await?;
        Ok(Self::new(issuer, audience, Arc::new(cache)))
    }
}

/// Finds the tenant a request is for (from its host, path or a header).
pub type TenantOf = Arc<dyn Fn(&RequestParts<'_>) -> Option<String> + Send + Sync>;

/// The JWT method: bearer tokens verified against the configured issuers.
#[derive(Clone)]
pub struct Jwt {
    issuers: HashMap<String, Issuer>,
    tenant_of: Option<TenantOf>,
    leeway: u64,
    token_type: Option<&'static str>,
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwt")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .field("leeway", &self.leeway)
            .field("token_type", &self.token_type)
            .finish_non_exhaustive()
    }
}

impl Default for Jwt {
    fn default() -> Self {
        Self::new()
    }
}

impl Jwt {
    /// No issuers yet; leeway 30 s; access tokens (`typ: at+jwt`) only.
    pub fn new() -> Self {
        Self { issuers: HashMap::new(), tenant_of: None, leeway: 30, token_type: Some(ACCESS_TOKEN_TYPE) }
    }

    /// Trusts `issuer`.
    #[must_use]
    pub fn issuer(mut self, issuer: Issuer) -> Self {
        self.issuers.insert(issuer.issuer.clone(), issuer);
        self
    }

    /// Clock skew allowed on `exp`, `nbf` and `iat`; more than [`MAX_LEEWAY`] is
    /// `InvalidInput`.
    pub fn leeway(mut self, leeway: Duration) -> Result<Self> {
        if leeway > MAX_LEEWAY {
            let why = "must be at most 60 s";
            return Err(Error::invalid_input(format!("the JWT leeway {why}")).with_detail("leeway", why));
        }
        self.leeway = leeway.as_secs();
        Ok(self)
    }

    /// Takes tokens of any `typ` (ID tokens too): for issuers that do not mint RFC 9068
    /// access tokens. Prefer the default.
    #[must_use]
    pub fn any_token_type(mut self) -> Self {
        self.token_type = None;
        self
    }

    /// How the tenant of a request is found; a token from another tenant's issuer is
    /// then 401.
    #[must_use]
    pub fn tenant_from(
        mut self,
        tenant_of: impl Fn(&RequestParts<'_>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.tenant_of = Some(Arc::new(tenant_of));
        self
    }

    /// The principal of `token`, for a request of `tenant` (when it names one).
    pub async fn verify(&self, token: &str, tenant: Option<&str>) -> Result<Principal> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(unauthenticated("the token is longer than 8 KiB"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| refused("its header", &e))?;
        let kid =
            header.kid.as_deref().filter(|k| !k.is_empty()).ok_or_else(|| unauthenticated("the token has no kid"))?;
        if let Some(want) = self.token_type {
            let typ = header.typ.as_deref().unwrap_or_default().to_ascii_lowercase();
            if typ.strip_prefix("application/").unwrap_or(&typ) != want {
                return Err(unauthenticated("the token is not an access token (typ at+jwt, RFC 9068)"));
            }
        }
        let iss = unverified_issuer(token).ok_or_else(|| unauthenticated("the token has no issuer (iss)"))?;
        let issuer = self.issuers.get(&iss).ok_or_else(|| unauthenticated("the token's issuer is not trusted"))?;
        if let Some(tenant) = tenant
            && issuer.tenant.as_deref() != Some(tenant)
        {
            return Err(unauthenticated("the token's issuer is not this tenant's"));
        }
        let key = issuer.keys.key(kid).await?;
        if !key.algorithms.contains(&header.alg) {
            return Err(unauthenticated("the token's algorithm is not its key's"));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = key.algorithms.clone();
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_audience(&issuer.audiences);
        validation.set_issuer(&[&issuer.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| refused("it", &e))?;
        let claims = data.claims;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if claims.get("iat").and_then(Value::as_u64).is_some_and(|iat| iat > now + self.leeway) {
            return Err(unauthenticated("the token was issued in the future (iat)"));
        }
        Principal::from_claims("jwt", claims, issuer.tenant.clone())
    }
}

/// A 401 saying what was wrong with a token, never the token.
fn refused(what: &str, e: &jsonwebtoken::errors::Error) -> Error {
    let why = match e.kind() {
        JwtErrorKind::ExpiredSignature => "the token has expired (exp)".to_owned(),
        JwtErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        JwtErrorKind::InvalidAudience => "the token is for another audience (aud)".to_owned(),
        JwtErrorKind::InvalidIssuer => "the token's issuer is not trusted".to_owned(),
        JwtErrorKind::InvalidSignature => "the token's signature does not verify".to_owned(),
        JwtErrorKind::InvalidAlgorithm => "the token's algorithm is not its key's".to_owned(),
        JwtErrorKind::MissingRequiredClaim(c) => format!("the token has no {c}"),
        _ => format!("the token is malformed ({what} does not parse)"),
    };
    unauthenticated(&why)
}

/// The `iss` of a token, read before it is verified, only to pick the issuer's keys.
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: String,
    }
    serde_json::from_slice::<Iss>(&bytes).ok().map(|c| c.iss)
}

/// Signs and verifies one token with a fresh key, so a crypto backend that is missing
/// or misconfigured fails at startup, not on the first request.
pub fn check_crypto() -> Result<()> {
    let minter = TokenMinter::new("urn:platform:self-check", SigningKey::generate(Algorithm::EdDSA)?);
    let token = minter.mint("self-check", "self-check", &[])?;
    let header = jsonwebtoken::decode_header(&token).map_err(|e| Error::internal(format!("self-check: {e}")))?;
    let kid = header.kid.unwrap_or_default();
    let keys = minter.key_set();
    let key = keys.get(&kid).ok_or_else(|| Error::internal("self-check: the minted key is not in its set"))?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["self-check"]);
    jsonwebtoken::decode::<Map<String, Value>>(&token, &key.key, &validation)
        .map(|_| ())
        .map_err(|e| Error::internal(format!("the JWT crypto backend does not verify: {e}")))
}

/// Whether a bearer token is shaped as a JWT: three parts, the first a JSON object.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    // `{"` in base64url
    head.starts_with("eyJ")
}

#[async_trait]
impl Authenticator for Jwt {
    fn method(&self) -> &'static str {
        "jwt"
    }

    async fn authenticate(&self, request: &RequestParts<'_>) -> Result<AuthOutcome> {
        let Some(token) = request.bearer_token() else {
            return Ok(AuthOutcome::Absent);
        };
        if !looks_like_jwt(&token) {
            return Ok(AuthOutcome::Absent);
        }
        let tenant = self.tenant_of.as_ref().and_then(|f| f(request));
        self.verify(&token, tenant.as_deref()).await.map(AuthOutcome::Authenticated)
    }
}

/// A private key that signs tokens, with its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    public: Jwk,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new key for `alg` (`EdDSA` or `ES256`) from the system's random source; its
    /// `kid` is its RFC 7638 thumbprint.
    pub fn generate(alg: Algorithm) -> Result<Self> {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
        let rng = SystemRandom::new();
        let failed = |_| Error::internal("a signing key could not be generated");
        let pkcs8 = match alg {
            Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng).map_err(failed)?,
            Algorithm::ES256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(failed)?,
            other => {
                return Err(Error::invalid_input(format!("{other:?} keys are not generated here: EdDSA or ES256")));
            }
        };
        Self::from_pkcs8_der(pkcs8.as_ref(), alg)
    }

    /// The key in `der` (PKCS#8), for `EdDSA` or `ES256`.
    pub fn from_pkcs8_der(der: &[u8], alg: Algorithm) -> Result<Self> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
        let bad = |_| Error::invalid_input(format!("not a PKCS#8 {alg:?} private key"));
        let (key, algorithm) = match alg {
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8(der).map_err(bad)?;
                let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
                let params = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x});
                (
                    EncodingKey::from_ed_der(der),
                    serde_json::from_value(params).map_err(|e| Error::internal(e.to_string()))?,
                )
            }
            Algorithm::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(bad)?;
                let point = pair.public_key().as_ref();
                let (x, y) = (URL_SAFE_NO_PAD.encode(&point[1..33]), URL_SAFE_NO_PAD.encode(&point[33..65]));
                let params = serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
                (
                    EncodingKey::from_ec_der(der),
                    serde_json::from_value(params).map_err(|e| Error::internal(e.to_string()))?,
                )
            }
            other => return Err(Error::invalid_input(format!("{other:?} keys are not taken here: EdDSA or ES256"))),
        };
        let mut public = Jwk { common: Default::default(), algorithm };
        let kid = public.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256);
        public.common.key_id = Some(kid.clone());
        public.common.public_key_use = Some(PublicKeyUse::Signature);
        public.common.key_algorithm = Some(format!("{alg:?}").parse().map_err(|_| Error::internal("alg"))?);
        Ok(Self { kid, alg, key, public })
    }

    /// Its `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Its public half, as published.
    pub fn public_jwk(&self) -> &Jwk {
        &self.public
    }

    /// Signs `claims` with header `typ` and this key's `alg` and `kid`.
    pub fn sign(&self, typ: &str, claims: &Map<String, Value>) -> Result<String> {
        let mut header = Header::new(self.alg);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| Error::internal(format!("signing failed: {e}")))
    }
}

/// Mints short-lived RFC 9068 access tokens for service-to-service calls, and publishes
/// the keys that verify them.
///
/// A rotation keeps the previous key in the published set, so tokens it signed verify
/// until they expire; publish [`TokenMinter::jwks_json`] at the issuer's JWKS URL.
#[derive(Debug)]
pub struct TokenMinter {
    issuer: String,
    ttl: Duration,
    keys: RwLock<(SigningKey, Option<SigningKey>)>,
}

impl TokenMinter {
    /// Tokens of `issuer` signed with `key`, good for 5 minutes.
    pub fn new(issuer: impl Into<String>, key: SigningKey) -> Self {
        Self { issuer: issuer.into(), ttl: Duration::from_secs(300), keys: RwLock::new((key, None)) }
    }

    /// How long a token is good for: 1 s to 1 h.
    pub fn ttl(mut self, ttl: Duration) -> Result<Self> {
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(3600) {
            let why = "must be between 1 s and 1 h";
            return Err(Error::invalid_input(format!("an M2M token's lifetime {why}")).with_detail("ttl", why));
        }
        self.ttl = ttl;
        Ok(self)
    }

    /// The issuer it mints for.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs with `next` from now on; the current key stays published (the one before
    /// it is dropped).
    pub fn rotate(&self, next: SigningKey) {
        let mut keys = self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = std::mem::replace(&mut keys.0, next);
        keys.1 = Some(current);
    }

    /// A token for `client_id`, calling `audience`, with `scopes`.
    pub fn mint(&self, client_id: &str, audience: &str, scopes: &[&str]) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let jti = URL_SAFE_NO_PAD.encode(crate::random_bytes::<16>()?);
        let claims = serde_json::json!({
            "iss": self.issuer, "sub": client_id, "client_id": client_id, "aud": audience,
            "iat": now, "nbf": now, "exp": now + self.ttl.as_secs(), "jti": jti, "scope": scopes.join(" "),
        });
        let Value::Object(claims) = claims else { unreachable!("a JSON object") };
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.0.sign(ACCESS_TOKEN_TYPE, &claims)
    }

    /// The published keys.
    pub fn jwks(&self) -> JwkSet {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        JwkSet { keys: std::iter::once(&keys.0).chain(keys.1.as_ref()).map(|k| k.public.clone()).collect() }
    }

    /// The published keys as JSON, for `GET /.well-known/jwks.json`.
    pub fn jwks_json(&self) -> String {
        serde_json::to_string(&self.jwks()).unwrap_or_else(|_| r#"{"keys":[]}"#.to_owned())
    }

    /// The published keys as a key set, to verify in the same process.
    pub fn key_set(&self) -> KeySet {
        KeySet::from_jwks(&self.jwks())
    }
}
