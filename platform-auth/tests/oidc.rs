//! Against a real OpenID provider: oidc-provider (a certified implementation, from npm),
//! run privately by each test (`PLATFORM_TEST_OIDC_PROVIDER_BIN` is its launcher, which
//! `scripts/start-services` installs). Discovery, JWKS, client-credentials tokens,
//! key rotation picked up with one refetch, and introspection of opaque tokens.

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use platform_auth::introspection::Introspection;
use platform_auth::jwt::{HttpKeys, Issuer, JwksCache, Jwt};
use platform_auth::{AuthChain, RequestKind, RequestParts};
use platform_core::testkit::{self, server};
use serde_json::Value;

struct Provider {
    child: Child,
    port: u16,
}

impl Provider {
    async fn start(bin: &std::path::Path, port: u16, kid: &str) -> Self {
        let child = server::spawn(Command::new("node").arg(bin).arg(port.to_string()).arg(kid));
        server::wait_port(port, true).await;
        Self { child, port }
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn token(&self, resource: &str) -> String {
        let form = [("grant_type", "client_credentials"), ("scope", "todos:read"), ("resource", resource)];
        let r = reqwest::Client::new()
            .post(format!("{}/token", self.issuer()))
            .basic_auth("svc", Some("svc-secret-0123456789"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{:?}", r.text().await);
        let body: Value = r.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn restart(&mut self, bin: &std::path::Path, kid: &str) {
        server::kill(&mut self.child);
        server::wait_port(self.port, false).await;
        *self = Self::start(bin, self.port, kid).await;
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        server::kill(&mut self.child);
    }
}

fn bearer(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h
}

async fn through(chain: &AuthChain, token: &str) -> platform_auth::Result<platform_auth::Principal> {
    let (m, uri, h) = (http::Method::GET, "/v1/todos".parse().unwrap(), bearer(token));
    chain.authenticate(&RequestParts::new(&m, &uri, &h, RequestKind::Http)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_tokens_verify_and_a_rotated_key_is_picked_up_in_one_fetch() {
    let Some(bin) = testkit::tool("oidc_provider") else { return };
    let mut provider = Provider::start(&bin, server::free_port(), "k1").await;
    let issuer = provider.issuer();
    let keys = Arc::new(
        JwksCache::new(Arc::new(HttpKeys::discover(&issuer).await.unwrap())).min_refetch_interval(Duration::ZERO),
    );
    keys.refresh().await.unwrap();
    let jwt = Jwt::new().issuer(Issuer::new(&issuer, "urn:todo", Arc::<JwksCache>::clone(&keys)).tenant("acme"));
    let chain = AuthChain::new().with(Arc::new(jwt));

    let token = provider.token("urn:todo").await;
    let who = through(&chain, &token).await.unwrap();
    assert_eq!((who.subject.as_str(), who.method, who.tenant.as_deref()), ("svc", "jwt", Some("acme")));
    assert!(who.scopes.contains("todos:read"));
    assert_eq!(keys.fetches(), 1);

    // Another resource's token is for another audience.
    let e = through(&chain, &provider.token("urn:other").await).await.unwrap_err();
    assert!(e.is_unauthenticated() && e.message().contains("audience"), "{e:?}");

    // The provider rotates to a new key: its tokens verify after exactly one refetch.
    provider.restart(&bin, "k2").await;
    let rotated = provider.token("urn:todo").await;
    through(&chain, &rotated).await.unwrap();
    assert_eq!(keys.fetches(), 2, "one refetch for the new kid");
    through(&chain, &rotated).await.unwrap();
    assert_eq!(keys.fetches(), 2);
    // The old key is gone from the set it published: its token is refused.
    let e = through(&chain, &token).await.unwrap_err();
    assert!(e.is_unauthenticated(), "{e:?}");

    // Discovery checks the issuer it is given.
    let e = HttpKeys::discover(&format!("{issuer}/")).await.unwrap_err();
    assert!(e.is_invalid_input(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_introspected_and_an_outage_is_503() {
    let Some(bin) = testkit::tool("oidc_provider") else { return };
    let mut provider = Provider::start(&bin, server::free_port(), "k1").await;
    let endpoint = format!("{}/token/introspection", provider.issuer());
    let introspection = Introspection::new(&endpoint, "rs", "rs-secret-0123456789").unwrap().audience("urn:opaque");
    let chain = AuthChain::new().with(Arc::new(Jwt::new())).with(Arc::new(introspection));

    let token = provider.token("urn:opaque").await;
    assert!(!token.starts_with("eyJ"), "an opaque token");
    let who = through(&chain, &token).await.unwrap();
    assert_eq!((who.subject.as_str(), who.method), ("svc", "introspection"));
    assert!(who.scopes.contains("todos:read"));
    assert!(who.expires_at.is_some());

    let e = through(&chain, "not-a-token-the-provider-issued").await.unwrap_err();
    assert!(e.is_unauthenticated(), "{e:?}");

    // Wrong client credentials for the endpoint: the service's problem, not the caller's.
    let wrong = Introspection::new(&endpoint, "rs", "wrong-secret").unwrap();
    let e = wrong.introspect(&token).await.unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");

    // A cached answer survives the provider going down; a new token is 503.
    server::kill(&mut provider.child);
    server::wait_port(provider.port, false).await;
    through(&chain, &token).await.unwrap();
    let e = through(&chain, "another-opaque-token").await.unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
}
