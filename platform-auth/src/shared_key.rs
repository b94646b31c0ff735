//! The shared key (`SHARED_WS_KEY`): one secret the service and its trusted clients
//! hold, for `/ws`.
//!
//! Where it may travel: the `X-Shared-Key` header and `Authorization: Bearer` on any
//! request; the query (`?key=`) and the browser subprotocols (`["platform-ws",
//! "key.<key>"]`, answered with the marker `platform-ws` alone) only on the WebSocket
//! upgrade, where a browser cannot set headers. A key in the query of a plain request is
//! refused (401), whatever its value. Compared in constant time; never in an error.
//!
//! A Bearer token that is not the shared key is [`AuthOutcome::Absent`], not an error:
//! bearer tokens are shared by several methods (API keys, JWTs), so a later method of
//! the chain may own it. In its own places (`X-Shared-Key`, `key=`, the subprotocol) a
//! wrong key is `Unauthenticated`.

use async_trait::async_trait;
use platform_core::{Result, Secret};

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::{AuthOutcome, Authenticator, Principal, RequestKind, RequestParts, unauthenticated};

/// The subprotocol a browser offers beside `key.<key>`; the server answers with it.
pub const SUBPROTOCOL: &str = "platform-ws";

/// The shared-key method.
#[derive(Debug)]
pub struct SharedKey {
    /// The key's SHA-256: a given key is hashed and the digests compared in constant
    /// time, so neither its bytes nor its length show in the timing.
    digest: Secret<[u8; 32]>,
}

impl SharedKey {
    /// The method for `key` (at least 16 characters: a shorter one is guessable).
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        if key.len() < 16 {
            let why = "must be at least 16 characters";
            return Err(platform_core::Error::invalid_input(format!("the shared key {why}")).with_detail("key", why));
        }
        Ok(Self { digest: Secret::new(Sha256::digest(key.as_bytes()).into()) })
    }

    fn matches(&self, given: &str) -> bool {
        Sha256::digest(given.as_bytes()).ct_eq(self.digest.expose()).into()
    }

    /// The method for `{PREFIX}_KEY` (`from_env("SHARED_WS")` reads `SHARED_WS_KEY`).
    pub fn from_env(prefix: &str) -> Result<Self> {
        let key: String = platform_core::config::Env::new(prefix).require("KEY")?;
        Self::new(key)
    }
}

/// The key a browser offers as a subprotocol, when it offers the marker too.
fn from_subprotocols(request: &RequestParts<'_>) -> Option<String> {
    let offered: Vec<&str> = request.header("sec-websocket-protocol")?.split(',').map(str::trim).collect();
    offered.contains(&SUBPROTOCOL).then(|| offered.iter().find_map(|p| p.strip_prefix("key.")).map(str::to_owned))?
}

#[async_trait]
impl Authenticator for SharedKey {
    fn method(&self) -> &'static str {
        "shared_key"
    }

    async fn authenticate(&self, request: &RequestParts<'_>) -> Result<AuthOutcome> {
        let upgrade = request.kind == RequestKind::WebSocketUpgrade;
        let own = match (request.header("x-shared-key"), request.query("key")) {
            (Some(k), _) => Some(k.to_owned()),
            (None, Some(_)) if !upgrade => {
                return Err(unauthenticated("a key in the query string is taken only on the WebSocket upgrade"));
            }
            (None, Some(k)) => Some(k),
            (None, None) if upgrade => from_subprotocols(request),
            (None, None) => None,
        };
        let good = Principal::new("shared-key", "shared_key");
        if let Some(given) = own {
            if self.matches(&given) {
                return Ok(AuthOutcome::Authenticated(good));
            }
            return Err(unauthenticated("the shared key does not match"));
        }
        match request.bearer_token() {
            Some(token) if self.matches(&token) => Ok(AuthOutcome::Authenticated(good)),
            _ => Ok(AuthOutcome::Absent),
        }
    }
}
