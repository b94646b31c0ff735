#![doc = include_str!("../README.md")]

pub mod api_key;
pub mod ingest;
#[cfg(feature = "introspection")]
pub mod introspection;
#[cfg(feature = "jwt")]
pub mod jwt;
#[cfg(feature = "axum")]
pub mod layer;
#[cfg(feature = "mtls")]
pub mod mtls;
pub mod password;
pub mod shared_key;
#[cfg(feature = "sql")]
pub mod sql;
#[cfg(feature = "testing")]
pub mod testing;
pub mod totp;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
pub use platform_core::{Error, ErrorKind, Result, Secret};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The query parameter a bearer token may travel in, on a WebSocket upgrade only.
pub const ACCESS_TOKEN_PARAM: &str = "access_token";

/// How a request reached the service: some credentials may travel only on a WebSocket
/// upgrade (the query string, the subprotocol), where a browser cannot set headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestKind {
    /// A plain HTTP request.
    Http,
    /// The HTTP request that upgrades to a WebSocket.
    WebSocketUpgrade,
}

/// What an authenticator sees of a request.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestParts<'a> {
    /// The method.
    pub method: &'a http::Method,
    /// The URI, with its query.
    pub uri: &'a http::Uri,
    /// The headers.
    pub headers: &'a http::HeaderMap,
    /// The raw body, for methods that sign it (signed ingest).
    pub body: Option<&'a [u8]>,
    /// Plain request or WebSocket upgrade.
    pub kind: RequestKind,
    /// The certificates the client proved in the TLS handshake (DER, leaf first), when
    /// the server checks client certificates.
    pub peer_certs: Option<&'a [Vec<u8>]>,
}

/// The certificates a client presented on its TLS connection (DER, leaf first), as a
/// TLS server that checked them puts them in each request's extensions.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificates(pub Arc<Vec<Vec<u8>>>);

impl<'a> RequestParts<'a> {
    /// A request without its body.
    pub fn new(method: &'a http::Method, uri: &'a http::Uri, headers: &'a http::HeaderMap, kind: RequestKind) -> Self {
        Self { method, uri, headers, body: None, kind, peer_certs: None }
    }

    /// The same request with the certificates its client proved.
    #[must_use]
    pub fn with_peer_certs(mut self, certs: &'a [Vec<u8>]) -> Self {
        self.peer_certs = Some(certs);
        self
    }

    /// The same request with its raw body.
    #[must_use]
    pub fn with_body(mut self, body: &'a [u8]) -> Self {
        self.body = Some(body);
        self
    }

    /// A header as text, when it is there and is text.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Authorization: Bearer` token, when there is one.
    pub fn bearer(&self) -> Option<&'a str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
    }

    /// The bearer token wherever this request may carry one: `Authorization: Bearer`,
    /// and on a WebSocket upgrade also `?access_token=` (RFC 6750 §2.3), where a
    /// browser cannot set headers. [`AuthChain`] refuses `access_token` in the query of
    /// a plain request before any method runs.
    pub fn bearer_token(&self) -> Option<std::borrow::Cow<'a, str>> {
        if let Some(token) = self.bearer() {
            return Some(token.into());
        }
        if self.kind == RequestKind::WebSocketUpgrade {
            return self.query(ACCESS_TOKEN_PARAM).filter(|t| !t.is_empty()).map(Into::into);
        }
        None
    }

    /// A query parameter, decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.uri.query()?;
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }
}

/// Who made a request, as an authenticator established it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Principal {
    /// Who: a user id, `api-key:<id>`, `ingest:<endpoint>`, `shared-key`.
    pub subject: String,
    /// The tenant the credential belongs to, when it belongs to one (for
    /// `platform_db`'s tenant scope).
    pub tenant: Option<String>,
    /// What the credential allows.
    pub scopes: BTreeSet<String>,
    /// The method that established it (`api_key`, `hmac`, `shared_key`, `jwt`, …).
    pub method: &'static str,
    /// When the credential stops being good, when it says (a token's `exp`).
    pub expires_at: Option<std::time::SystemTime>,
    /// The verified claims of a token (empty for methods without claims).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Principal {
    /// A principal without tenant or scopes.
    pub fn new(subject: impl Into<String>, method: &'static str) -> Self {
        Self {
            subject: subject.into(),
            tenant: None,
            scopes: BTreeSet::new(),
            method,
            expires_at: None,
            claims: serde_json::Map::new(),
        }
    }

    /// With its tenant.
    #[must_use]
    pub fn with_tenant(mut self, tenant: Option<String>) -> Self {
        self.tenant = tenant;
        self
    }

    /// With its scopes.
    #[must_use]
    pub fn with_scopes(mut self, scopes: impl IntoIterator<Item = String>) -> Self {
        self.scopes = scopes.into_iter().collect();
        self
    }

    /// The principal of a verified token's claims (a JWT's, an introspection answer):
    /// the subject from `sub`, else `client_id`; scopes from `scope` (space-separated)
    /// or `scp`; `expires_at` from `exp`; the claims kept. No subject is 401.
    pub fn from_claims(
        method: &'static str,
        claims: serde_json::Map<String, serde_json::Value>,
        tenant: Option<String>,
    ) -> Result<Self> {
        use serde_json::Value;
        let subject = ["sub", "client_id"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(Value::as_str))
            .ok_or_else(|| unauthenticated("the token has no subject (sub)"))?
            .to_owned();
        let scopes: Vec<String> = match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(s)), _) | (_, Some(Value::String(s))) => {
                s.split_whitespace().map(str::to_owned).collect()
            }
            (_, Some(Value::Array(list))) => list.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let mut p = Self::new(subject, method).with_tenant(tenant).with_scopes(scopes);
        p.expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        p.claims = claims;
        Ok(p)
    }

    /// `PermissionDenied` (403) naming the scopes it lacks, unless it has them all.
    pub fn require_scopes(&self, needed: &[&str]) -> Result<()> {
        let missing: Vec<&str> = needed.iter().copied().filter(|s| !self.scopes.contains(*s)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let why = format!("missing scope {}", missing.join(", "));
        Err(Error::new(ErrorKind::PermissionDenied, why.clone()).with_detail("scope", why))
    }
}

/// What an authenticator made of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthOutcome {
    /// Its credential is good.
    Authenticated(Principal),
    /// It carries no credential of this method: the chain asks the next one.
    Absent,
}

/// One way of proving who made a request.
///
/// # Contract
/// - A request without a credential of this method is [`AuthOutcome::Absent`], and only
///   then: a credential of this method that is malformed, wrong, revoked, expired or
///   replayed is `Unauthenticated` (401), so a chain never falls through to a weaker
///   method (or to anonymous) past a bad credential.
/// - A store or key source that cannot be reached is `Unavailable` (503), never
///   `Unauthenticated`: an outage is not a bad credential.
/// - Secrets are compared in constant time and never appear in errors or logs.
#[async_trait]
pub trait Authenticator: Debug + Send + Sync {
    /// The method's name, as [`Principal::method`] says it.
    fn method(&self) -> &'static str;

    /// Establishes who made `request`.
    async fn authenticate(&self, request: &RequestParts<'_>) -> Result<AuthOutcome>;
}

/// Where a route takes credentials from, beyond the headers every method reads.
///
/// The default is what a REST route wants: the query and the subprotocol count only on
/// a WebSocket upgrade (bearer tokens in `?access_token=`, the shared key in `?key=`),
/// and a bearer token in the query of a plain request is refused (401), never ignored.
/// [`CredentialPolicy::methods`] narrows a route to some methods (an ingest route that
/// takes signatures only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialPolicy {
    methods: Option<Vec<&'static str>>,
    no_query: bool,
}

impl CredentialPolicy {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only these methods (by [`Authenticator::method`]) may authenticate on the route;
    /// the others are not asked.
    #[must_use]
    pub fn methods(mut self, methods: &[&'static str]) -> Self {
        self.methods = Some(methods.to_vec());
        self
    }

    /// No credential in the query, not even on a WebSocket upgrade: a token in
    /// `?access_token=` or `?key=` is refused (401).
    #[must_use]
    pub fn no_query(mut self) -> Self {
        self.no_query = true;
        self
    }

    fn allows(&self, method: &str) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(&method))
    }

    /// A credential the request carries where this policy does not take it.
    fn misplaced(&self, request: &RequestParts<'_>) -> Option<String> {
        let query = request.uri.query().unwrap_or_default();
        if query.is_empty() {
            return None;
        }
        let in_query = |name: &str| request.query(name).is_some();
        let upgrade = request.kind == RequestKind::WebSocketUpgrade;
        if in_query(ACCESS_TOKEN_PARAM) && (!upgrade || self.no_query) {
            let why = if upgrade { "this route" } else { "a plain request (only on the WebSocket upgrade)" };
            return Some(format!("a bearer token in the query string is not taken on {why}"));
        }
        if self.no_query && in_query("key") {
            return Some("a key in the query string is not taken on this route".into());
        }
        None
    }
}

/// Authenticators tried in order: the first that finds its credential decides.
#[derive(Debug, Clone, Default)]
pub struct AuthChain {
    methods: Vec<Arc<dyn Authenticator>>,
    policy: CredentialPolicy,
}

impl AuthChain {
    /// An empty chain (it authenticates nobody).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `method` after the others.
    #[must_use]
    pub fn with(mut self, method: Arc<dyn Authenticator>) -> Self {
        self.methods.push(method);
        self
    }

    /// The same methods under `policy` (for one route: the chain is cheap to clone).
    #[must_use]
    pub fn with_policy(mut self, policy: CredentialPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The principal of the first method whose credential the request carries; that
    /// method's error when the credential is bad; `Unauthenticated` when the request
    /// carries none, or carries one where the policy does not take it.
    pub async fn authenticate(&self, request: &RequestParts<'_>) -> Result<Principal> {
        if let Some(why) = self.policy.misplaced(request) {
            return Err(unauthenticated(&why));
        }
        for method in self.methods.iter().filter(|m| self.policy.allows(m.method())) {
            match method.authenticate(request).await? {
                AuthOutcome::Authenticated(p) => return Ok(p),
                AuthOutcome::Absent => {}
            }
        }
        let tried: Vec<&str> = self.methods.iter().map(|m| m.method()).filter(|m| self.policy.allows(m)).collect();
        Err(unauthenticated(&format!("no credential for any of: {}", tried.join(", "))))
    }
}

/// A 401 with `why`.
pub(crate) fn unauthenticated(why: &str) -> Error {
    Error::new(ErrorKind::Unauthenticated, why.to_owned())
}

/// Whether two secrets are equal, in time that depends on neither: their SHA-256
/// digests are compared in constant time, so lengths do not show either.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.ct_eq(&b).into()
}

/// The HTTP client of the methods that fetch (key sets, introspection): no redirects
/// followed (a redirect could carry credentials elsewhere), 5 s per request.
#[cfg(any(feature = "jwks", feature = "introspection"))]
pub(crate) fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| Error::internal(format!("the HTTP client could not be built: {e}")))
}

/// Random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0_u8; N];
    getrandom::fill(&mut out).map_err(|e| Error::internal(format!("the system's random source failed: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode() {
        let uri: http::Uri = "/ws?key=a%2Bb+c&x=%zz&empty=".parse().unwrap();
        let (m, h) = (http::Method::GET, http::HeaderMap::new());
        let r = RequestParts::new(&m, &uri, &h, RequestKind::Http);
        assert_eq!(r.query("key").as_deref(), Some("a+b c"));
        assert_eq!(r.query("x").as_deref(), Some("%zz"));
        assert_eq!(r.query("empty").as_deref(), Some(""));
        assert_eq!(r.query("none"), None);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }
}
