//! Hostile tokens for tests (feature `testing`).
//!
//! A [`Forge`] holds an RSA key and an Ed25519 key of one issuer, publishes them as a
//! JWKS, and signs tokens by hand, so a test can make any header and any claims: a good
//! access token, and each of the attacks a verifier must refuse (`alg: none`, HS256
//! keyed with the RSA public key, an unknown `kid`, keys offered in `jku`/`jwk`, a
//! missing `aud`, an ID token, an expired token, one not valid yet, another issuer's).
//!
//! ```rust,ignore
//! let forge = Forge::new("https://id.test", "todo-api")?;
//! let jwt = Jwt::new().issuer(Issuer::new(forge.issuer(), "todo-api", Arc::new(StaticKeys(forge.key_set()))));
//! assert!(jwt.verify(&forge.token(), None).await.is_ok());
//! assert!(jwt.verify(&forge.alg_none(), None).await.unwrap_err().is_unauthenticated());
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac as _;
use platform_core::{Error, Result};
use serde_json::{Map, Value, json};

use crate::jwt::{Algorithm, KeySet, SigningKey};

/// The `kid` of a forge's RSA key.
pub const RSA_KID: &str = "forge-rsa";

/// An issuer whose tokens a test makes by hand.
pub struct Forge {
    issuer: String,
    audience: String,
    rsa: RsaKeyPair,
    ed: SigningKey,
}

impl std::fmt::Debug for Forge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forge").field("issuer", &self.issuer).field("audience", &self.audience).finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

impl Forge {
    /// An issuer with fresh keys (RSA 2048 and Ed25519), for tokens naming `audience`.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Result<Self> {
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| Error::internal("RSA key generation failed"))?;
        Ok(Self { issuer: issuer.into(), audience: audience.into(), rsa, ed: SigningKey::generate(Algorithm::EdDSA)? })
    }

    /// Its `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `kid` of its Ed25519 key.
    pub fn ed_kid(&self) -> &str {
        self.ed.kid()
    }

    /// The RSA public key as a JWK.
    fn rsa_jwk(&self) -> Value {
        let public = self.rsa.public_key();
        json!({
            "kty": "RSA", "kid": RSA_KID, "use": "sig", "alg": "RS256",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        })
    }

    /// Its public keys as a JWKS document.
    pub fn jwks_json(&self) -> String {
        let ed = serde_json::to_value(self.ed.public_jwk()).unwrap_or_default();
        json!({ "keys": [self.rsa_jwk(), ed] }).to_string()
    }

    /// Its public keys.
    pub fn key_set(&self) -> KeySet {
        KeySet::parse(&self.jwks_json()).unwrap_or_default()
    }

    /// The claims of a good access token: its issuer and audience, subject `user-1`,
    /// scope `todos:read`, issued now, good for 5 minutes.
    pub fn claims(&self) -> Map<String, Value> {
        let now = now();
        object(json!({
            "iss": self.issuer, "aud": self.audience, "sub": "user-1", "client_id": "app",
            "iat": now, "nbf": now, "exp": now + 300, "jti": b64(&now.to_be_bytes()), "scope": "todos:read",
        }))
    }

    /// The header of a good RS256 access token.
    pub fn header(&self) -> Map<String, Value> {
        object(json!({ "alg": "RS256", "typ": "at+jwt", "kid": RSA_KID }))
    }

    fn signing_input(header: &Map<String, Value>, claims: &Map<String, Value>) -> String {
        let h = b64(Value::Object(header.clone()).to_string().as_bytes());
        let c = b64(Value::Object(claims.clone()).to_string().as_bytes());
        format!("{h}.{c}")
    }

    /// `header` and `claims` signed with the RSA key (RS256), whatever the header says.
    pub fn sign_rs256(&self, header: &Map<String, Value>, claims: &Map<String, Value>) -> String {
        let input = Self::signing_input(header, claims);
        let mut signature = vec![0; self.rsa.public_modulus_len()];
        // Signing with a key just generated does not fail.
        let _ = self.rsa.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut signature);
        format!("{input}.{}", b64(&signature))
    }

    /// A good RS256 access token.
    pub fn token(&self) -> String {
        self.sign_rs256(&self.header(), &self.claims())
    }

    /// A good RS256 access token with `changes` made to its claims (`null` removes one).
    pub fn token_with(&self, changes: Value) -> String {
        let mut claims = self.claims();
        for (k, v) in object(changes) {
            if v.is_null() {
                claims.remove(&k);
            } else {
                claims.insert(k, v);
            }
        }
        self.sign_rs256(&self.header(), &claims)
    }

    /// A good EdDSA access token.
    pub fn token_eddsa(&self) -> String {
        self.ed.sign("at+jwt", &self.claims()).unwrap_or_default()
    }

    /// `alg: none` and no signature.
    pub fn alg_none(&self) -> String {
        let header = object(json!({ "alg": "none", "typ": "at+jwt", "kid": RSA_KID }));
        format!("{}.", Self::signing_input(&header, &self.claims()))
    }

    /// HS256 keyed with the RSA public key's bytes (its SubjectPublicKeyInfo DER), under
    /// the RSA key's `kid`: the algorithm-confusion attack.
    pub fn hs256_with_public_key(&self) -> String {
        let spki = self.rsa.public_key().as_der().map(|d| d.as_ref().to_vec()).unwrap_or_default();
        self.hs256_keyed(&spki)
    }

    /// HS256 keyed with `secret`, under the RSA key's `kid`.
    pub fn hs256_keyed(&self, secret: &[u8]) -> String {
        let header = object(json!({ "alg": "HS256", "typ": "at+jwt", "kid": RSA_KID }));
        let input = Self::signing_input(&header, &self.claims());
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else { return input };
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    }

    /// Signed by the RSA key but naming a `kid` the issuer never had.
    pub fn unknown_kid(&self, kid: &str) -> String {
        let mut header = self.header();
        header.insert("kid".into(), kid.into());
        self.sign_rs256(&header, &self.claims())
    }

    /// Signed by `attacker`'s key, whose JWKS is offered in `jku` and whose public key
    /// is embedded in `jwk`, under the attacker's `kid`.
    pub fn offering_keys(&self, attacker: &Self, jku: &str) -> String {
        let mut header = attacker.header();
        header.insert("kid".into(), "attacker".into());
        header.insert("jku".into(), jku.into());
        header.insert("x5u".into(), jku.into());
        header.insert("jwk".into(), attacker.rsa_jwk());
        attacker.sign_rs256(&header, &self.claims())
    }

    /// An ID token (`typ: JWT`) of the same issuer, otherwise good.
    pub fn id_token(&self) -> String {
        let mut header = self.header();
        header.insert("typ".into(), "JWT".into());
        self.sign_rs256(&header, &self.claims())
    }

    /// Good but without `aud`.
    pub fn without_audience(&self) -> String {
        self.token_with(json!({ "aud": null }))
    }

    /// Good but for another audience.
    pub fn other_audience(&self) -> String {
        self.token_with(json!({ "aud": "another-api" }))
    }

    /// Expired `seconds_ago`.
    pub fn expired(&self, seconds_ago: u64) -> String {
        self.token_with(json!({ "exp": now() - seconds_ago, "iat": now() - seconds_ago - 300 }))
    }

    /// Not valid for `seconds` yet (`nbf`).
    pub fn not_yet_valid(&self, seconds: u64) -> String {
        self.token_with(json!({ "nbf": now() + seconds }))
    }

    /// Issued `seconds` in the future (`iat`).
    pub fn issued_in_future(&self, seconds: u64) -> String {
        self.token_with(json!({ "iat": now() + seconds }))
    }

    /// Without `exp`.
    pub fn without_expiry(&self) -> String {
        self.token_with(json!({ "exp": null }))
    }

    /// Claiming issuer `iss`, signed with this forge's key.
    pub fn claiming_issuer(&self, iss: &str) -> String {
        self.token_with(json!({ "iss": iss }))
    }
}

/// What the fuzz targets check, callable from tests too: `input` as a bearer token
/// (and as a JWKS document) never panics the verifier and is never accepted, since no
/// input can carry a signature of `forge`'s keys unless it is one of its tokens.
pub async fn token_parsing(jwt: &crate::jwt::Jwt, forge: &Forge, input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let _ = KeySet::parse(&text);
    let _ = crate::jwt::looks_like_jwt(&text);
    if let Ok(p) = jwt.verify(&text, None).await {
        // Only possible for a token the forge signed: its claims say so.
        assert_eq!(p.claims.get("iss").and_then(Value::as_str), Some(forge.issuer()), "accepted {text:?}");
    }
}

/// What the fuzz targets check for Standard Webhooks headers: `input`, split at NUL
/// bytes into id, timestamp, signature header and body, never panics the verifier and
/// never passes without the endpoint's secret.
pub async fn signature_parsing(ingest: &crate::ingest::SignedIngest, input: &[u8]) {
    let mut parts = input.splitn(4, |b| *b == 0);
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (id, timestamp, signature) = (next(), next(), next());
    let body = input.splitn(4, |b| *b == 0).nth(3).unwrap_or_default();
    let now = timestamp.trim().parse::<i64>().unwrap_or(0);
    let verdict = ingest.verify("fuzz", &id, &timestamp, &signature, body, now).await;
    assert!(verdict.is_err(), "a forged delivery passed: {input:?}");
}
