//! One named test per pitfall of the reference list (JWT attacks, replay, timing,
//! credential placement, fall-through, outage vs bad credential, crypto at startup,
//! rotation), with hostile tokens from `platform_auth::testing` and key sets served
//! over real HTTP.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use platform_auth::api_key::{ApiKeys, MemoryApiKeys};
use platform_auth::ingest::{MemoryReplayGuard, MemorySecrets, SignedIngest, sign};
use platform_auth::jwt::{self, HttpKeys, Issuer, JwksCache, Jwt, KeySet, SigningKey, StaticKeys, TokenMinter};
use platform_auth::password::{BasicAuth, MemoryPasswords, PasswordUser, Passwords};
use platform_auth::shared_key::SharedKey;
use platform_auth::testing::Forge;
use platform_auth::{AuthChain, CredentialPolicy, Principal, RequestKind, RequestParts};
use serde_json::json;

const AUD: &str = "todo-api";

fn jwt_for(forge: &Forge) -> Jwt {
    Jwt::new().issuer(Issuer::new(forge.issuer(), AUD, Arc::new(StaticKeys(forge.key_set()))))
}

async fn verify(jwt: &Jwt, token: &str) -> platform_auth::Result<Principal> {
    jwt.verify(token, None).await
}

#[track_caller]
fn refused(result: platform_auth::Result<Principal>, says: &str) {
    match result {
        Ok(p) => panic!("accepted as {p:?}; wanted a refusal saying {says:?}"),
        Err(e) => {
            assert!(e.is_unauthenticated(), "{e:?}");
            assert!(e.message().contains(says), "{:?} does not say {says:?}", e.message());
        }
    }
}

/// A JWKS served over HTTP, counting fetches, that can be made to fail.
#[derive(Clone, Default)]
struct KeyServer {
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

async fn serve_keys(State(s): State<KeyServer>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let body = s.body.lock().unwrap().clone();
    ([("content-type", "application/json")], body).into_response()
}

impl KeyServer {
    async fn start(jwks: String) -> (Self, String) {
        let server = Self::default();
        *server.body.lock().unwrap() = jwks;
        let app = Router::new().route("/jwks", get(serve_keys)).with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (server, url)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn good_tokens_of_each_key_type_verify() {
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    let jwt = jwt_for(&forge);
    let p = verify(&jwt, &forge.token()).await.unwrap();
    assert_eq!((p.subject.as_str(), p.method), ("user-1", "jwt"));
    assert!(p.scopes.contains("todos:read"));
    assert!(p.expires_at.is_some());
    assert_eq!(p.claims["client_id"], "app");
    verify(&jwt, &forge.token_eddsa()).await.unwrap();

    let es = SigningKey::generate(jwt::Algorithm::ES256).unwrap();
    let minter = TokenMinter::new("https://id.test/m2m", es);
    let jwt = Jwt::new().issuer(Issuer::new("https://id.test/m2m", AUD, Arc::new(StaticKeys(minter.key_set()))));
    let p = verify(&jwt, &minter.mint("billing", AUD, &["todos:read", "todos:write"]).unwrap()).await.unwrap();
    assert_eq!(p.subject, "billing");
    assert_eq!(p.scopes.len(), 2);
}

#[tokio::test]
async fn pitfall_01_alg_none_is_refused() {
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    refused(verify(&jwt_for(&forge), &forge.alg_none()).await, "malformed");
}

#[tokio::test]
async fn pitfall_02_hs256_keyed_with_the_rsa_public_key_is_refused() {
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    let jwt = jwt_for(&forge);
    refused(verify(&jwt, &forge.hs256_with_public_key()).await, "algorithm");
    // A shared secret offered in a key set is never a verification key.
    let with_oct = json!({"keys": [{"kty": "oct", "kid": "forge-rsa", "k": "c2VjcmV0", "alg": "HS256"}]});
    let keys = KeySet::parse(&with_oct.to_string()).unwrap();
    assert!(keys.is_empty());
    let jwt = Jwt::new().issuer(Issuer::new(forge.issuer(), AUD, Arc::new(StaticKeys(keys))));
    refused(verify(&jwt, &forge.hs256_keyed(b"secret")).await, "kid");
}

#[tokio::test]
async fn pitfall_03_an_unknown_kid_refetches_once_per_interval_then_is_401() {
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    let (server, url) = KeyServer::start(forge.jwks_json()).await;
    let interval = Duration::from_millis(500);
    let cache = Arc::new(JwksCache::new(Arc::new(HttpKeys::new(&url).unwrap())).min_refetch_interval(interval));
    let jwt = Arc::new(Jwt::new().issuer(Issuer::new(forge.issuer(), AUD, Arc::<JwksCache>::clone(&cache))));
    verify(&jwt, &forge.token()).await.unwrap();
    let fetched = Instant::now();
    assert_eq!(server.hits(), 1);

    // Floods of unknown kids, some shaped as paths, queries and URLs: inside the
    // interval after a fetch, no fetch; after it, one fetch for the whole flood.
    let hostile = ["nope", "../../etc/passwd", "' OR 1=1 --", "http://evil.test/k", "%00"];
    let flood = |round: usize| {
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let kid = format!("{}{round}-{i}", hostile[i % hostile.len()]);
                let (jwt, token) = (Arc::clone(&jwt), forge.unknown_kid(&kid));
                tokio::spawn(async move { jwt.verify(&token, None).await })
            })
            .collect();
        async move {
            for task in tasks {
                refused(task.await.unwrap(), "kid");
            }
        }
    };
    flood(1).await;
    if fetched.elapsed() < interval {
        assert_eq!(server.hits(), 1, "no refetch inside the interval");
    }
    tokio::time::sleep_until((fetched + interval).into()).await;
    flood(2).await;
    assert_eq!(server.hits(), 2, "one refetch for fifty unknown kids");
    assert_eq!(cache.fetches(), 2);
    // The good kid still verifies without a fetch.
    verify(&jwt, &forge.token()).await.unwrap();
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn pitfall_03_a_failed_refetch_keeps_the_last_good_keys() {
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    let (server, url) = KeyServer::start(forge.jwks_json()).await;
    // Always stale and no interval: every check refetches, so the failures are real.
    let cache = JwksCache::new(Arc::new(HttpKeys::new(&url).unwrap()))
        .default_ttl(Duration::ZERO)
        .min_refetch_interval(Duration::ZERO);
    let jwt = Jwt::new().issuer(Issuer::new(forge.issuer(), AUD, Arc::new(cache)));
    verify(&jwt, &forge.token()).await.unwrap();
    server.down.store(true, Ordering::SeqCst);
    verify(&jwt, &forge.token()).await.unwrap();
    assert!(server.hits() >= 2, "the failed refetch happened");
    // An unknown kid while the source is down is an outage, not a bad token.
    let e = verify(&jwt, &forge.unknown_kid("rotated-in")).await.unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
}

#[tokio::test]
async fn pitfall_04_keys_offered_in_the_token_header_are_ignored() {
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    let attacker = Forge::new("https://id.test/acme", AUD).unwrap();
    let (attacker_keys, attacker_url) = KeyServer::start(attacker.jwks_json()).await;
    let token = forge.offering_keys(&attacker, &attacker_url);
    refused(verify(&jwt_for(&forge), &token).await, "kid");
    assert_eq!(attacker_keys.hits(), 0, "jku/x5u are never fetched");
}

#[tokio::test]
async fn pitfall_05_a_token_of_another_tenants_issuer_is_refused() {
    let acme = Forge::new("https://id.test/acme", AUD).unwrap();
    let globex = Forge::new("https://id.test/globex", AUD).unwrap();
    let jwt = Jwt::new()
        .issuer(Issuer::new(acme.issuer(), AUD, Arc::new(StaticKeys(acme.key_set()))).tenant("acme"))
        .issuer(Issuer::new(globex.issuer(), AUD, Arc::new(StaticKeys(globex.key_set()))).tenant("globex"));
    assert_eq!(jwt.verify(&acme.token(), Some("acme")).await.unwrap().tenant.as_deref(), Some("acme"));
    refused(jwt.verify(&globex.token(), Some("acme")).await, "not this tenant's");
    // Globex's key claiming acme's issuer, under a kid both issuers use: acme's key
    // is the one tried, and it does not verify.
    refused(jwt.verify(&globex.claiming_issuer(acme.issuer()), Some("acme")).await, "signature");
    refused(jwt.verify(&acme.claiming_issuer("https://id.test/unknown"), None).await, "not trusted");

    // Through the chain, the tenant comes from the request.
    let chain = AuthChain::new().with(Arc::new(jwt.tenant_from(|r| r.header("x-tenant").map(str::to_owned))));
    let (m, uri) = (http::Method::GET, "/v1/todos".parse().unwrap());
    let mut h = http::HeaderMap::new();
    h.insert("authorization", format!("Bearer {}", globex.token()).parse().unwrap());
    h.insert("x-tenant", "acme".parse().unwrap());
    refused(chain.authenticate(&RequestParts::new(&m, &uri, &h, RequestKind::Http)).await, "not this tenant's");
}

#[tokio::test]
async fn pitfall_06_exp_nbf_and_iat_are_checked_with_at_most_a_minute_of_leeway() {
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    let jwt = jwt_for(&forge);
    refused(verify(&jwt, &forge.expired(120)).await, "expired");
    verify(&jwt, &forge.expired(10)).await.unwrap(); // within the default 30 s
    refused(verify(&jwt, &forge.not_yet_valid(120)).await, "not valid yet");
    refused(verify(&jwt, &forge.issued_in_future(120)).await, "future");
    refused(verify(&jwt, &forge.without_expiry()).await, "exp");
    let strict = jwt_for(&forge).leeway(Duration::ZERO).unwrap();
    refused(verify(&strict, &forge.expired(10)).await, "expired");
    let e = jwt_for(&forge).leeway(Duration::from_secs(61)).unwrap_err();
    assert!(e.is_invalid_input(), "{e:?}");
}

#[tokio::test]
async fn pitfall_07_the_audience_is_required_and_matched() {
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    let jwt = jwt_for(&forge);
    refused(verify(&jwt, &forge.without_audience()).await, "aud");
    refused(verify(&jwt, &forge.other_audience()).await, "audience");
    let both = Jwt::new()
        .issuer(Issuer::new(forge.issuer(), "another-api", Arc::new(StaticKeys(forge.key_set()))).audience(AUD));
    verify(&both, &forge.other_audience()).await.unwrap();
}

#[tokio::test]
async fn pitfall_08_an_id_token_is_not_an_access_token() {
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    refused(verify(&jwt_for(&forge), &forge.id_token()).await, "at+jwt");
    verify(&jwt_for(&forge).any_token_type(), &forge.id_token()).await.unwrap();
}

#[tokio::test]
async fn pitfall_09_a_replayed_delivery_is_refused() {
    let secrets = Arc::new(MemorySecrets::default());
    secrets.set("ep_1", &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).unwrap();
    let ingest = SignedIngest::new(secrets, Arc::new(MemoryReplayGuard::default()));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let secret = platform_auth::ingest::decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let signature = sign(&secret, "msg_1", now, b"{}");
    let chain = AuthChain::new().with(Arc::new(ingest));
    let (m, uri) = (http::Method::POST, "/v1/ingest/ep_1".parse().unwrap());
    let mut h = http::HeaderMap::new();
    h.insert("webhook-id", "msg_1".parse().unwrap());
    h.insert("webhook-timestamp", now.to_string().parse().unwrap());
    h.insert("webhook-signature", signature.parse().unwrap());
    let request = RequestParts::new(&m, &uri, &h, RequestKind::Http).with_body(b"{}");
    chain.authenticate(&request).await.unwrap();
    refused(chain.authenticate(&request).await, "replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitfall_10_an_unknown_user_costs_what_a_wrong_password_costs() {
    let passwords = Arc::new(Passwords::new().unwrap());
    let store = Arc::new(MemoryPasswords::default());
    store.insert("ada", PasswordUser::new("user-1", None, &[], passwords.hash("correct horse battery").unwrap()));
    let chain = AuthChain::new().with(Arc::new(BasicAuth::new(store, passwords)));
    let attempt = |user: &'static str| {
        let chain = chain.clone();
        async move {
            let (m, uri) = (http::Method::GET, "/".parse::<http::Uri>().unwrap());
            let mut h = http::HeaderMap::new();
            let cred = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:wrong"));
            h.insert("authorization", format!("Basic {cred}").parse().unwrap());
            let started = Instant::now();
            let e = chain.authenticate(&RequestParts::new(&m, &uri, &h, RequestKind::Http)).await.unwrap_err();
            (started.elapsed(), e.message().to_owned())
        }
    };
    let (mut known, mut unknown) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        let (k, known_says) = attempt("ada").await;
        let (u, unknown_says) = attempt("nobody").await;
        assert_eq!(known_says, unknown_says, "one message for both");
        (known, unknown) = (known.min(k), unknown.min(u));
    }
    // Both paths run one Argon2id verification; without the dummy, an unknown name
    // would answer in microseconds.
    assert!(unknown * 3 > known && known * 3 > unknown, "known {known:?}, unknown {unknown:?}");
    // Secrets compare by digest, so a prefix or a different length does not show.
    assert!(!platform_auth::same_secret(b"abc", b"abcd"));
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|_socket| async {})
}

async fn rest(who: Principal) -> String {
    who.method.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitfall_11_a_bearer_in_the_query_is_taken_only_on_the_websocket_upgrade() {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    let chain = AuthChain::new()
        .with(Arc::new(jwt_for(&forge)))
        .with(Arc::new(SharedKey::new("a-shared-key-of-some-length").unwrap()));
    let strict = chain.clone().with_policy(CredentialPolicy::new().no_query());
    let layer = |c: AuthChain| axum::middleware::from_fn_with_state(Arc::new(c), platform_auth::layer::authenticate);
    let app = Router::new()
        .route("/v1/todos", get(rest))
        .route("/ws", get(ws))
        .layer(layer(chain))
        .merge(Router::new().route("/ws-strict", get(ws)).layer(layer(strict)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let token = forge.token();
    let http = reqwest::Client::new();

    let r = http.get(format!("http://{addr}/v1/todos?access_token={token}")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("query string"));
    let r = http.get(format!("http://{addr}/v1/todos")).bearer_auth(&token).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap().as_str()), (200, "jwt"));

    // A real WebSocket client: the token and the shared key in the query, on the upgrade.
    let (_, response) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?access_token={token}")).await.unwrap();
    assert_eq!(response.status(), 101);
    let (_, response) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?key=a-shared-key-of-some-length")).await.unwrap();
    assert_eq!(response.status(), 101);
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws-strict?access_token={token}")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("the strict route took a token in its query: {other:?}"),
    }
}

#[tokio::test]
async fn pitfall_12_a_presented_but_invalid_token_never_falls_through() {
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    let keys = ApiKeys::new("pk", Arc::new(MemoryApiKeys::default())).unwrap();
    let (_, api_key) = keys.issue("importer", Some("acme"), &[]).await.unwrap();
    let shared = "a-shared-key-of-some-length";
    let chain = AuthChain::new()
        .with(Arc::new(jwt_for(&forge)))
        .with(Arc::new(keys))
        .with(Arc::new(SharedKey::new(shared).unwrap()));
    let (m, uri) = (http::Method::GET, "/v1/todos".parse().unwrap());
    let mut h = http::HeaderMap::new();
    h.insert("authorization", format!("Bearer {}", forge.expired(600)).parse().unwrap());
    h.insert("x-shared-key", shared.parse().unwrap());
    refused(chain.authenticate(&RequestParts::new(&m, &uri, &h, RequestKind::Http)).await, "expired");
    // A bearer that is not a JWT is another method's: the API key after the JWT.
    h.insert("authorization", format!("Bearer {}", api_key.expose()).parse().unwrap());
    let p = chain.authenticate(&RequestParts::new(&m, &uri, &h, RequestKind::Http)).await.unwrap();
    assert_eq!(p.method, "api_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitfall_13_an_unreachable_key_source_is_503_a_bad_token_401_a_missing_scope_403() {
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let down = JwksCache::new(Arc::new(HttpKeys::new(&format!("http://{closed}/jwks")).unwrap()));
    let down = Jwt::new().issuer(Issuer::new(forge.issuer(), AUD, Arc::new(down)));
    let up = jwt_for(&forge);
    async fn admin(who: Principal) -> Result<&'static str, platform_core::Error> {
        who.require_scopes(&["admin"])?;
        Ok("ok")
    }
    let layer = |j: Jwt| {
        axum::middleware::from_fn_with_state(
            Arc::new(AuthChain::new().with(Arc::new(j))),
            platform_auth::layer::authenticate,
        )
    };
    let app = Router::new()
        .route("/down/admin", get(admin))
        .layer(layer(down))
        .merge(Router::new().route("/up/admin", get(admin)).layer(layer(up)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let status = |path: &'static str, token: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http.get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap();
            let status = r.status().as_u16();
            let kind = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
            (status, kind)
        }
    };
    let problem = Some("application/problem+json".to_owned());
    assert_eq!(status("/down/admin", forge.token()).await, (503, problem.clone()));
    assert_eq!(status("/up/admin", forge.expired(600)).await, (401, problem.clone()));
    assert_eq!(status("/up/admin", forge.token()).await, (403, problem));
}

#[test]
fn pitfall_14_the_crypto_backend_is_checked_at_startup() {
    jwt::check_crypto().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitfall_15_rotation_keeps_old_tokens_good_and_picks_up_the_new_kid_in_one_fetch() {
    let minter =
        Arc::new(TokenMinter::new("https://id.test/m2m", SigningKey::generate(jwt::Algorithm::EdDSA).unwrap()));
    let served = Arc::clone(&minter);
    // The minter's JWKS, served as a service would serve it.
    let app = Router::new().route("/.well-known/jwks.json", get(move || async move { served.jwks_json() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cache = Arc::new(JwksCache::new(Arc::new(HttpKeys::new(&url).unwrap())).min_refetch_interval(Duration::ZERO));
    let jwt = Jwt::new().issuer(Issuer::new(minter.issuer(), AUD, Arc::<JwksCache>::clone(&cache)));

    let old = minter.mint("billing", AUD, &["todos:read"]).unwrap();
    verify(&jwt, &old).await.unwrap();
    assert_eq!(cache.fetches(), 1);
    minter.rotate(SigningKey::generate(jwt::Algorithm::ES256).unwrap());
    let new = minter.mint("billing", AUD, &["todos:read"]).unwrap();
    verify(&jwt, &new).await.unwrap();
    assert_eq!(cache.fetches(), 2, "the new kid was picked up with one fetch");
    verify(&jwt, &old).await.unwrap();
    assert_eq!(minter.jwks().keys.len(), 2, "the previous key stays published");
}

#[tokio::test]
async fn a_route_policy_narrows_the_methods() {
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    let chain =
        AuthChain::new().with(Arc::new(jwt_for(&forge))).with_policy(CredentialPolicy::new().methods(&["hmac"]));
    let (m, uri) = (http::Method::POST, "/v1/ingest/ep_1".parse().unwrap());
    let mut h = http::HeaderMap::new();
    h.insert("authorization", format!("Bearer {}", forge.token()).parse().unwrap());
    refused(chain.authenticate(&RequestParts::new(&m, &uri, &h, RequestKind::Http)).await, "no credential");
}

#[tokio::test]
async fn an_oversized_or_odd_key_set_is_handled() {
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    refused(verify(&jwt_for(&forge), &"eyJ".repeat(3000)).await, "8 KiB");
    // A key set with an unknown key type keeps its good keys.
    let mut doc: serde_json::Value = serde_json::from_str(&forge.jwks_json()).unwrap();
    doc["keys"].as_array_mut().unwrap().push(json!({"kty": "PQ", "kid": "x"}));
    assert_eq!(KeySet::parse(&doc.to_string()).unwrap().len(), 2);
    assert!(KeySet::parse("[]").unwrap_err().is_invalid_input());
}

/// The fuzz targets' checks (`platform-auth/fuzz`) over mutations of real tokens and
/// deliveries, so every test run covers them without `cargo fuzz`.
#[tokio::test]
async fn mutated_tokens_and_signature_headers_never_panic_or_pass() {
    use platform_auth::testing::{signature_parsing, token_parsing};
    let forge = Forge::new("https://id.test/acme", AUD).unwrap();
    let jwt = jwt_for(&forge);
    let secrets = Arc::new(MemorySecrets::default());
    secrets.set("fuzz", &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).unwrap();
    let ingest = SignedIngest::new(secrets, Arc::new(MemoryReplayGuard::default()));
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let seeds =
        [forge.token(), forge.token_eddsa(), forge.alg_none(), forge.hs256_with_public_key(), forge.jwks_json()];
    for round in 0..3000 {
        let mut input = seeds[round % seeds.len()].clone().into_bytes();
        for _ in 0..=(next() % 4) {
            let at = (next() as usize) % input.len().max(1);
            match next() % 4 {
                0 if !input.is_empty() => input[at] ^= 1 << (next() % 8),
                1 => input.truncate(at),
                2 => input.insert(at.min(input.len()), (next() % 256) as u8),
                _ => input.insert(at.min(input.len()), b'.'),
            };
        }
        token_parsing(&jwt, &forge, &input).await;
        let mut delivery = format!("msg_{round}\0{}\0v1,", 1_700_000_000 + round).into_bytes();
        delivery.extend_from_slice(&input);
        signature_parsing(&ingest, &delivery).await;
    }
}
