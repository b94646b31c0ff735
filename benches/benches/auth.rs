//! platform-auth's verifications beside the raw crate call doing the same check, same run:
//!
//! - JWT with a cached key (RS256, ES256, EdDSA): `Jwt::verify` (issuer lookup, key by
//!   kid, `typ`, `aud`, `iss`, `exp`, `nbf`, `iat`, the principal built) beside
//!   `jsonwebtoken::decode` with the same key and a `Validation` of the same claims;
//! - API key: `ApiKeys::verify` (offline checksum, store lookup, SHA-256, constant-time
//!   compare) beside a map lookup + `sha2` + `subtle`;
//! - signed ingest: `SignedIngest::verify` (timestamp window, HMAC-SHA256 over id,
//!   timestamp and body, replay id remembered) beside `hmac`'s `verify_slice`, a 1 KiB
//!   body;
//! - the shared key: `SharedKey` through `RequestParts` (header read, digests compared)
//!   beside `subtle`'s compare of the two keys;
//! - Argon2id at OWASP's minimum, on its own: `Passwords::verify` beside `argon2`.
//!
//! `cargo bench -p platform-benches --bench auth -- [MILLISECONDS]` (default 1,000 ms
//! per row, median of 5 rounds) prints verifications per second and the ratio.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::Mac as _;
use jsonwebtoken::{DecodingKey, Validation};
use platform_auth::api_key::{ApiKeyStore as _, ApiKeys, MemoryApiKeys};
use platform_auth::ingest::{MemoryReplayGuard, MemorySecrets, SignedIngest, decode_secret, sign};
use platform_auth::jwt::{Algorithm, Issuer, Jwt, SigningKey, StaticKeys, TokenMinter};
use platform_auth::password::Passwords;
use platform_auth::shared_key::SharedKey;
use platform_auth::testing::Forge;
use platform_auth::{Authenticator as _, RequestKind, RequestParts};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

const AUD: &str = "todo-api";

/// Verifications per second of `platform` and `raw`: rounds of about `budget` each,
/// alternating between the two (so a busy moment of the machine costs both alike); the
/// median of 5 rounds each.
fn rates(budget: Duration, mut platform: impl FnMut(usize), mut raw: impl FnMut(usize)) -> (f64, f64) {
    let size = |batch: &mut dyn FnMut(usize)| {
        let started = Instant::now();
        batch(10);
        let one = started.elapsed().as_secs_f64() / 10.0;
        ((budget.as_secs_f64() / one) as usize).clamp(10, 5_000_000)
    };
    let (np, nr) = (size(&mut platform), size(&mut raw));
    let (mut p, mut r) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        platform(np);
        p.push(np as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        raw(nr);
        r.push(nr as f64 / t.elapsed().as_secs_f64());
    }
    p.sort_by(f64::total_cmp);
    r.sort_by(f64::total_cmp);
    (p[2], r[2])
}

/// A guard that remembers nothing: only to show what remembering ids costs.
#[derive(Debug)]
struct Forgetful;

#[async_trait::async_trait]
impl platform_auth::ingest::ReplayGuard for Forgetful {
    async fn first_seen(&self, _: &str, _: &str, _: Duration) -> platform_auth::Result<bool> {
        Ok(true)
    }
}

fn row(name: &str, platform: f64, raw: f64) {
    println!("| {name} | {platform:>12.0} | {raw:>12.0} | {:.2} |", platform / raw);
}

fn raw_jwt(token: &str, key: &DecodingKey, alg: Algorithm, issuer: &str) -> bool {
    let mut v = Validation::new(alg);
    v.validate_nbf = true;
    v.set_audience(&[AUD]);
    v.set_issuer(&[issuer]);
    v.set_required_spec_claims(&["exp", "aud", "iss"]);
    jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, &v).is_ok()
}

fn main() {
    let budget = Duration::from_millis(std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    println!("| verification | platform /s | raw /s | ratio |");
    println!("|---|---:|---:|---:|");

    // JWTs with a cached key.
    let forge = Forge::new("https://id.test/acme", AUD).expect("forge");
    let es = TokenMinter::new("https://id.test/m2m", SigningKey::generate(Algorithm::ES256).expect("key"));
    let jwt = Jwt::new()
        .issuer(Issuer::new(forge.issuer(), AUD, Arc::new(StaticKeys(forge.key_set()))))
        .issuer(Issuer::new(es.issuer(), AUD, Arc::new(StaticKeys(es.key_set()))));
    let jwks: serde_json::Value = serde_json::from_str(&forge.jwks_json()).expect("jwks");
    let key_of = |kid: &str, set: &serde_json::Value| {
        let jwk = set["keys"].as_array().expect("keys").iter().find(|k| k["kid"] == kid).expect("kid").clone();
        DecodingKey::from_jwk(&serde_json::from_value(jwk).expect("jwk")).expect("key")
    };
    let es_jwks = serde_json::to_value(es.jwks()).expect("jwks");
    let es_token = es.mint("billing", AUD, &["todos:read"]).expect("mint");
    let es_kid = jsonwebtoken::decode_header(&es_token).expect("header").kid.expect("kid");
    let cases = [
        ("JWT RS256", forge.token(), key_of("forge-rsa", &jwks), Algorithm::RS256, forge.issuer().to_owned()),
        ("JWT ES256", es_token, key_of(&es_kid, &es_jwks), Algorithm::ES256, es.issuer().to_owned()),
        ("JWT EdDSA", forge.token_eddsa(), key_of(forge.ed_kid(), &jwks), Algorithm::EdDSA, forge.issuer().to_owned()),
    ];
    for (name, token, key, alg, issuer) in &cases {
        assert!(raw_jwt(token, key, *alg, issuer), "{name}: the raw check passes");
        rt.block_on(jwt.verify(token, None)).expect("platform check passes");
        let platform = |n: usize| {
            rt.block_on(async {
                for _ in 0..n {
                    black_box(jwt.verify(black_box(token), None).await.is_ok());
                }
            });
        };
        let raw = |n: usize| {
            for _ in 0..n {
                black_box(raw_jwt(black_box(token), key, *alg, issuer));
            }
        };
        let (platform, raw) = rates(budget, platform, raw);
        row(name, platform, raw);
    }

    // API keys.
    let store = Arc::new(MemoryApiKeys::default());
    let keys = ApiKeys::new("pk", Arc::clone(&store) as _).expect("keys");
    let (record, key) = rt.block_on(keys.issue("bench", Some("acme"), &["todos:read"])).expect("issue");
    let stored: HashMap<String, [u8; 32]> = HashMap::from([(record.id.clone(), record.hash)]);
    let key = key.expose().to_owned();
    rt.block_on(store.get(&record.id)).expect("stored");
    let platform = |n: usize| {
        rt.block_on(async {
            for _ in 0..n {
                black_box(keys.verify(black_box(&key)).await.is_ok());
            }
        });
    };
    let id_at = 3..13;
    let raw = |n: usize| {
        for _ in 0..n {
            let k = black_box(&key);
            let hash: [u8; 32] = Sha256::digest(k.as_bytes()).into();
            black_box(stored.get(&k[id_at.clone()]).is_some_and(|h| bool::from(h.ct_eq(&hash))));
        }
    };
    let (platform, raw) = rates(budget, platform, raw);
    row("API key", platform, raw);

    // Signed ingest, 1 KiB bodies, a fresh id each (the replay guard remembers them).
    let secret_text = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let secrets = Arc::new(MemorySecrets::default());
    secrets.set("ep_1", &[secret_text]).expect("secret");
    let ingest = SignedIngest::new(secrets, Arc::new(MemoryReplayGuard::default()));
    let secret = decode_secret(secret_text).expect("secret");
    let body = vec![b'x'; 1024];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let stamp = now.to_string();
    let deliveries: Vec<(String, String)> = (0..200_000)
        .map(|i| {
            let id = format!("msg_{i}");
            let sig = sign(&secret, &id, now, &body);
            (id, sig)
        })
        .collect();
    let mut next = 0;
    let platform = |n: usize| {
        rt.block_on(async {
            for _ in 0..n {
                let (id, sig) = &deliveries[next % deliveries.len()];
                next += 1;
                black_box(ingest.verify("ep_1", id, &stamp, sig, &body, now).await.is_ok());
            }
        });
    };
    let (id, sig) = &deliveries[0];
    let expected = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &sig[3..]).expect("b64");
    let raw = |n: usize| {
        for _ in 0..n {
            let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.expose()).expect("mac");
            mac.update(format!("{id}.{now}.").as_bytes());
            mac.update(black_box(&body));
            black_box(mac.verify_slice(&expected).is_ok());
        }
    };
    let (platform, raw) = rates(budget, platform, raw);
    row("HMAC ingest (1 KiB)", platform, raw);
    let secrets = Arc::new(MemorySecrets::default());
    secrets.set("ep_1", &[secret_text]).expect("secret");
    let forgetful = SignedIngest::new(secrets, Arc::new(Forgetful));
    let (id, sig) = &deliveries[0];
    let platform = |n: usize| {
        rt.block_on(async {
            for _ in 0..n {
                black_box(forgetful.verify("ep_1", id, &stamp, sig, &body, now).await.is_ok());
            }
        });
    };
    let (platform, _) = rates(budget, platform, |_| {});
    row("HMAC ingest (1 KiB), ids not remembered", platform, raw);

    // The shared key.
    let shared = "a-shared-key-of-some-length-0123";
    let method = SharedKey::new(shared).expect("key");
    let mut headers = http::HeaderMap::new();
    headers.insert("x-shared-key", shared.parse().expect("header"));
    let (m, uri) = (http::Method::GET, "/ws".parse::<http::Uri>().expect("uri"));
    let request = RequestParts::new(&m, &uri, &headers, RequestKind::WebSocketUpgrade);
    let platform = |n: usize| {
        rt.block_on(async {
            for _ in 0..n {
                black_box(method.authenticate(black_box(&request)).await.is_ok());
            }
        });
    };
    // The same check done by hand: digests of both sides compared in constant time (a
    // plain compare of the keys would show their length).
    let given = shared.to_owned();
    let raw = |n: usize| {
        for _ in 0..n {
            let (a, b) = (Sha256::digest(black_box(given.as_bytes())), Sha256::digest(shared.as_bytes()));
            black_box(bool::from(a.ct_eq(&b)));
        }
    };
    let (platform, raw) = rates(budget, platform, raw);
    row("shared key", platform, raw);

    // Argon2id, on its own.
    let passwords = Passwords::new().expect("params");
    let hash = passwords.hash("correct horse battery").expect("hash");
    let short = budget.min(Duration::from_millis(500));
    let platform = |n: usize| {
        for _ in 0..n {
            black_box(passwords.verify("correct horse battery", &hash).is_ok());
        }
    };
    let parsed = argon2::PasswordHash::new(&hash).expect("phc");
    let raw = |n: usize| {
        use argon2::PasswordVerifier as _;
        for _ in 0..n {
            black_box(argon2::Argon2::default().verify_password(b"correct horse battery", &parsed).is_ok());
        }
    };
    let (platform, raw) = rates(short, platform, raw);
    row("Argon2id (m=19 MiB, t=2, p=1)", platform, raw);
}
