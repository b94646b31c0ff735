//! Web Push (RFC 8030) with message encryption (RFC 8291, `aes128gcm`) and VAPID
//! (RFC 8292): `webpush://?vapid_key=<base64url P-256 private key>&subject=mailto:ops@example.com`.
//!
//! The recipient is the browser's subscription ([`Address::WebPush`]); the request
//! goes to the subscription's own endpoint (that is the push service: there is no
//! vendor base URL to override), with `TTL` (`ttl=`, 1 day by default), `Urgency` from
//! the severity, `Content-Encoding: aes128gcm` and `Authorization: vapid t=<ES256 JWT>,
//! k=<public key>`, whose `aud` is the endpoint's origin and `exp` 12 hours ahead (one
//! token per push service, signed again when it has less than an hour left). The
//! payload is the notification as JSON (`id`, `title`, `body`, `severity`, `data`),
//! at most 3993 bytes, encrypted with a fresh key and salt per message.
//!
//! `201` is delivered (the `Location` is the receipt); `404` and `410` are the
//! subscription gone; `429` and 5xx retry after `Retry-After`; `413` and `400` are the
//! payload; `401` and `403` the VAPID key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_lc_rs::agreement::{self, ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use aws_lc_rs::{aead, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform_core::config::UrlParams;
use platform_core::{Error, Result};
use serde_json::json;

use crate::driver::{Answer, by_status, exchange};
use crate::{
    Address, Capabilities, Disposition, Notification, Notifier, NotifyError, PushSubscription, Receipt, Severity,
};

const DRIVER: &str = "webpush";
/// The largest plaintext one `aes128gcm` record of 4096 bytes carries.
pub const MAX_PAYLOAD: usize = 3993;
const RECORD_SIZE: u32 = 4096;

/// The Web Push driver.
pub struct WebPush {
    client: reqwest::Client,
    vapid: EcdsaKeyPair,
    vapid_public: String,
    subject: String,
    ttl: Duration,
    /// Signed `Authorization` values by endpoint origin, with their `exp`: a VAPID token
    /// is good for 12 hours, so it is signed once per push service, not per message.
    signed: std::sync::Mutex<std::collections::HashMap<String, (String, u64)>>,
}

impl std::fmt::Debug for WebPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPush").field("vapid_public", &self.vapid_public).field("subject", &self.subject).finish()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

impl WebPush {
    /// From `webpush://?vapid_key=…&subject=…[&ttl=…&timeout=…]`.
    pub fn from_url(params: &mut UrlParams) -> Result<Self> {
        let key = params.take("vapid_key").ok_or_else(|| params.error("vapid_key", "is missing"))?;
        let scalar = unb64(&key)
            .filter(|k| k.len() == 32)
            .ok_or_else(|| params.error("vapid_key", "must be a P-256 private key: 32 bytes, base64url"))?;
        let subject = params.take("subject").ok_or_else(|| params.error("subject", "is missing"))?;
        if !(subject.starts_with("mailto:") || subject.starts_with("https:")) {
            return Err(params.error("subject", "must be a mailto: or https: contact"));
        }
        let ttl = params.take_duration("ttl")?.unwrap_or(Duration::from_secs(86_400));
        let timeout = params.take_duration("timeout")?.unwrap_or(Duration::from_secs(10));
        params.finish(DRIVER)?;
        let not_a_key = || params.error("vapid_key", "is not a P-256 private key");
        let private = agreement::PrivateKey::from_private_key(&ECDH_P256, &scalar).map_err(|_| not_a_key())?;
        let public = private.compute_public_key().map_err(|_| not_a_key())?;
        let vapid =
            EcdsaKeyPair::from_private_key_and_public_key(&ECDSA_P256_SHA256_FIXED_SIGNING, &scalar, public.as_ref())
                .map_err(|_| not_a_key())?;
        let vapid_public = b64(vapid.public_key().as_ref());
        Ok(Self {
            client: crate::driver::client(timeout)?,
            vapid,
            vapid_public,
            subject,
            ttl,
            signed: std::sync::Mutex::default(),
        })
    }

    /// The VAPID public key (base64url), for the browser's `applicationServerKey`.
    pub fn public_key(&self) -> &str {
        &self.vapid_public
    }

    /// `vapid t=<JWT>, k=<key>` for `endpoint`'s origin: signed anew when none is held
    /// for it or the one held has less than an hour left.
    fn authorization(&self, endpoint: &url::Url) -> std::result::Result<String, NotifyError> {
        let origin = endpoint.origin().ascii_serialization();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut signed = self.signed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((value, exp)) = signed.get(&origin)
            && *exp > now + 3600
        {
            return Ok(value.clone());
        }
        let value = self.sign(&origin, now + 12 * 3600)?;
        if signed.len() >= 1024 {
            signed.clear();
        }
        signed.insert(origin, (value.clone(), now + 12 * 3600));
        Ok(value)
    }

    fn sign(&self, origin: &str, exp: u64) -> std::result::Result<String, NotifyError> {
        let header = b64(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = b64(json!({ "aud": origin, "exp": exp, "sub": self.subject }).to_string().as_bytes());
        let input = format!("{header}.{claims}");
        let signature = self
            .vapid
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| NotifyError::new(DRIVER, Disposition::FixConfig, "VAPID signing failed"))?;
        Ok(format!("vapid t={input}.{}, k={}", b64(signature.as_ref()), self.vapid_public))
    }
}

/// The content key and nonce of RFC 8291 §3.4, from the ECDH secret (the same on both
/// sides), the subscription's auth secret, both public keys and the salt.
pub fn derive(ecdh: &[u8], auth: &[u8], ua_public: &[u8], as_public: &[u8], salt: &[u8]) -> ([u8; 16], [u8; 12]) {
    let mac = |key: &[u8], parts: &[&[u8]]| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        let mut ctx = hmac::Context::with_key(&key);
        parts.iter().for_each(|p| ctx.update(p));
        ctx.sign()
    };
    let prk_key = mac(auth, &[ecdh]);
    let ikm = mac(prk_key.as_ref(), &[b"WebPush: info\0", ua_public, as_public, &[1]]);
    let prk = mac(salt, &[ikm.as_ref()]);
    let cek = mac(prk.as_ref(), &[b"Content-Encoding: aes128gcm\0", &[1]]);
    let nonce = mac(prk.as_ref(), &[b"Content-Encoding: nonce\0", &[1]]);
    let mut out = ([0_u8; 16], [0_u8; 12]);
    out.0.copy_from_slice(&cek.as_ref()[..16]);
    out.1.copy_from_slice(&nonce.as_ref()[..12]);
    (out.0, out.1)
}

/// `plaintext` as one `aes128gcm` record for the subscriber `ua_public`/`auth`, from
/// the sender key `as_private` (its public half `as_public`) and `salt`.
pub(crate) fn encrypt_with(
    plaintext: &[u8],
    ua_public: &[u8],
    auth: &[u8],
    ecdh: &[u8],
    as_public: &[u8],
    salt: &[u8; 16],
) -> Option<Vec<u8>> {
    let (cek, nonce) = derive(ecdh, auth, ua_public, as_public, salt);
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, &cek).ok()?);
    let mut record = plaintext.to_vec();
    record.push(2); // the last record's delimiter
    key.seal_in_place_append_tag(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::empty(), &mut record).ok()?;
    let mut body = Vec::with_capacity(16 + 4 + 1 + as_public.len() + record.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(u8::try_from(as_public.len()).ok()?);
    body.extend_from_slice(as_public);
    body.extend_from_slice(&record);
    Some(body)
}

/// `plaintext` encrypted for `subscription` with a fresh sender key and salt.
pub fn encrypt(plaintext: &[u8], subscription: &PushSubscription) -> Result<Vec<u8>> {
    let bad = |what: &str| Error::invalid_input(format!("the subscription's {what} is not valid"));
    let ua_public = unb64(&subscription.keys.p256dh).filter(|k| k.len() == 65).ok_or_else(|| bad("p256dh"))?;
    let auth = unb64(&subscription.keys.auth).filter(|k| k.len() == 16).ok_or_else(|| bad("auth"))?;
    let rng = SystemRandom::new();
    let mut salt = [0_u8; 16];
    rng.fill(&mut salt).map_err(|_| Error::internal("the system's random source failed"))?;
    let sender =
        EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| Error::internal("key generation failed"))?;
    let as_public = sender.compute_public_key().map_err(|_| Error::internal("key generation failed"))?;
    let ecdh =
        agreement::agree_ephemeral(sender, UnparsedPublicKey::new(&ECDH_P256, &ua_public), (), |s| Ok(s.to_vec()))
            .map_err(|()| bad("p256dh"))?;
    encrypt_with(plaintext, &ua_public, &auth, &ecdh, as_public.as_ref(), &salt).ok_or_else(|| bad("key"))
}

fn urgency(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "low",
        Severity::Notice | Severity::Warning => "normal",
        Severity::Critical => "high",
    }
}

#[async_trait]
impl Notifier for WebPush {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> Capabilities {
        // The payload is JSON around the text; the exact size is checked when sending.
        Capabilities { max_text: 3000, title: true, addresses: true }
    }

    async fn send(&self, n: &Notification, to: &Address) -> std::result::Result<Receipt, NotifyError> {
        let Address::WebPush(subscription) = to else {
            return Err(NotifyError::new(DRIVER, Disposition::FixConfig, format!("cannot send to {to}")));
        };
        let endpoint = url::Url::parse(&subscription.endpoint).map_err(|_| {
            NotifyError::new(DRIVER, Disposition::RecipientGone, "the subscription's endpoint is not a URL")
        })?;
        let payload = json!({ "id": n.id, "title": n.title, "body": n.body, "severity": n.severity, "data": n.data });
        let payload = payload.to_string();
        if payload.len() > MAX_PAYLOAD {
            let why = format!("payload of {} bytes, over {MAX_PAYLOAD}", payload.len());
            return Err(NotifyError::new(DRIVER, Disposition::FixPayload, why));
        }
        let body = encrypt(payload.as_bytes(), subscription)
            .map_err(|e| NotifyError::new(DRIVER, Disposition::RecipientGone, e.message()))?;
        let request = self
            .client
            .post(endpoint.clone())
            .header("ttl", self.ttl.as_secs().to_string())
            .header("urgency", urgency(n.severity))
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("authorization", self.authorization(&endpoint)?)
            .body(body);
        let answer: Answer = exchange(DRIVER, request).await?;
        if answer.status == 201 || answer.status == 200 || answer.status == 202 {
            let location = answer.headers.get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
            return Ok(Receipt { vendor_id: location, pause: None });
        }
        let reason: String = answer.body.chars().take(100).collect();
        Err(by_status(DRIVER, &answer, &reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8291 Section 5 and Appendix A: fixed keys and salt give the published body.
    #[test]
    fn the_rfc_8291_example_encrypts_byte_for_byte() {
        let d = |s: &str| unb64(s).unwrap();
        let as_private =
            agreement::PrivateKey::from_private_key(&ECDH_P256, &d("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"))
                .unwrap();
        let as_public = as_private.compute_public_key().unwrap();
        assert_eq!(
            b64(as_public.as_ref()),
            "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
        );
        let ua_public = d("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4");
        let ecdh =
            agreement::agree(&as_private, UnparsedPublicKey::new(&ECDH_P256, &ua_public), (), |s| Ok(s.to_vec()))
                .unwrap();
        let salt: [u8; 16] = d("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let auth = d("BTBZMqHH6r4Tts7J_aSIgg");
        let body = encrypt_with(
            b"When I grow up, I want to be a watermelon",
            &ua_public,
            &auth,
            &ecdh,
            as_public.as_ref(),
            &salt,
        )
        .unwrap();
        assert_eq!(
            b64(&body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }
}
