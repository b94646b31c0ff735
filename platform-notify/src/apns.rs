//! Apple Push Notification service, token-based:
//! `apns://{bundle_id}?team_id=…&key_id=…&key_file=/path/AuthKey_KEYID.p8` sends to
//! [`Address::Device`] tokens (hex) at `https://api.push.apple.com/3/device/{token}`
//! (`sandbox=true` for `api.sandbox.push.apple.com`, `base_url=` for another server,
//! `ca_file=` to trust another CA as well).
//!
//! HTTP/2 only, over one long-lived connection (a connection per request is what Apple
//! treats as abuse). The provider token is an ES256 JWT (`kid` the key id, `iss` the
//! team, `iat`) signed with the `.p8` key; one token is reused for 50 minutes, then
//! signed again: Apple refuses tokens older than an hour and answers
//! `TooManyProviderTokenUpdates` to tokens renewed more often than every 20 minutes.
//! `403 ExpiredProviderToken` drops the token and retries.
//!
//! The payload is `{"aps":{"alert":{"title","body"}}}` plus the notification's data as
//! top-level keys, at most 4096 bytes (refused before sending). `apns-id` is the
//! notification's id when that is a UUID, so a retry is the same message; the receipt is
//! the `apns-id` APNs answers. `info` notifications go with priority 5, the rest 10.
//!
//! Errors are read from the `reason` APNs gives, never from text: `Unregistered`,
//! `ExpiredToken`, `BadDeviceToken` and `DeviceTokenNotForTopic` are the device gone;
//! `BadTopic`, `TopicDisallowed`, `InvalidProviderToken`, `BadCertificate` and the
//! like the configuration; `PayloadTooLarge`, `PayloadEmpty` and the other `Bad…` the
//! payload; `TooManyRequests`, `InternalServerError`, `ServiceUnavailable` and
//! `Shutdown` retry.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform_core::config::UrlParams;
use platform_core::{Error, Result};
use serde_json::{Value, json};

use crate::driver::{exchange, retry_after};
use crate::{Address, Capabilities, Disposition, Notification, Notifier, NotifyError, Receipt, Severity};

const DRIVER: &str = "apns";
/// The largest payload APNs takes for an alert, in bytes.
pub const MAX_PAYLOAD: usize = 4096;
/// How long one provider token is used before it is signed again.
pub const TOKEN_REFRESH: Duration = Duration::from_secs(50 * 60);

/// The APNs driver.
pub struct Apns {
    client: reqwest::Client,
    base: url::Url,
    topic: String,
    team_id: String,
    key_id: String,
    key: EcdsaKeyPair,
    token: std::sync::Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns")
            .field("base", &self.base.as_str())
            .field("topic", &self.topic)
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Apns {
    /// From `apns://{bundle_id}?team_id=…&key_id=…&key_file=…`.
    pub fn from_url(url: &url::Url, params: &mut UrlParams) -> Result<Self> {
        let sandbox = params.take_bool("sandbox")?.unwrap_or(false);
        let default = if sandbox { "https://api.sandbox.push.apple.com" } else { "https://api.push.apple.com" };
        let base = params.take("base_url").unwrap_or_else(|| default.to_owned());
        let base = url::Url::parse(&base).map_err(|e| params.error("base_url", &format!("is not a URL: {e}")))?;
        let timeout = params.take_duration("timeout")?.unwrap_or(Duration::from_secs(10));
        let ca = match params.take("ca_file") {
            Some(path) => {
                let pem = std::fs::read(&path).map_err(|e| params.error("ca_file", &format!("cannot be read: {e}")))?;
                Some(
                    reqwest::Certificate::from_pem(&pem)
                        .map_err(|_| params.error("ca_file", "is not a PEM certificate"))?,
                )
            }
            None => None,
        };
        let required =
            |params: &mut UrlParams, name: &str| params.take(name).ok_or_else(|| params.error(name, "is missing"));
        let team_id = required(params, "team_id")?;
        let key_id = required(params, "key_id")?;
        let key_file = required(params, "key_file")?;
        params.finish(DRIVER)?;
        let topic = url.host_str().unwrap_or_default().to_owned();
        if topic.is_empty() {
            return Err(params.error("bundle_id", "is missing: apns://{bundle_id}?team_id=…&key_id=…&key_file=…"));
        }
        let pem = std::fs::read_to_string(&key_file)
            .map_err(|e| params.error("key_file", &format!("cannot be read: {e}")))?;
        let key = crate::driver::pem_der(&pem)
            .and_then(|der| EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).ok())
            .ok_or_else(|| params.error("key_file", "is not a P-256 key in PKCS#8 PEM (an AuthKey .p8 file)"))?;
        let mut builder = reqwest::Client::builder()
            .http2_prior_knowledge()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .http2_keep_alive_interval(Duration::from_secs(60))
            .pool_idle_timeout(None);
        if let Some(ca) = ca {
            builder = builder.add_root_certificate(ca);
        }
        let client =
            builder.build().map_err(|e| Error::internal(format!("the HTTP/2 client could not be built: {e}")))?;
        Ok(Self { client, base, topic, team_id, key_id, key, token: std::sync::Mutex::new(None) })
    }

    /// The provider token at `now`: the one held while younger than [`TOKEN_REFRESH`],
    /// else a new one.
    fn provider_token(&self, now: Instant) -> std::result::Result<String, NotifyError> {
        let mut held = self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((token, signed)) = held.as_ref()
            && now.saturating_duration_since(*signed) < TOKEN_REFRESH
        {
            return Ok(token.clone());
        }
        let iat = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let header = json!({ "alg": "ES256", "kid": self.key_id });
        let claims = json!({ "iss": self.team_id, "iat": iat });
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| NotifyError::new(DRIVER, Disposition::FixConfig, "signing the provider token failed"))?;
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
        *held = Some((token.clone(), now));
        Ok(token)
    }

    /// The payload for `n`.
    fn payload(n: &Notification) -> Value {
        let mut alert = json!({ "body": n.body });
        if let Some(title) = &n.title {
            alert["title"] = json!(title);
        }
        let mut payload = json!({ "aps": { "alert": alert } });
        for (k, v) in &n.data {
            if k != "aps" {
                payload[k] = json!(v);
            }
        }
        payload
    }
}

/// What a `reason` means.
fn disposition(status: u16, reason: &str, headers: &reqwest::header::HeaderMap) -> Disposition {
    match reason {
        "Unregistered" | "ExpiredToken" | "BadDeviceToken" | "DeviceTokenNotForTopic" => Disposition::RecipientGone,
        "BadTopic"
        | "MissingTopic"
        | "TopicDisallowed"
        | "InvalidProviderToken"
        | "MissingProviderToken"
        | "BadCertificate"
        | "BadCertificateEnvironment"
        | "BadPath"
        | "MethodNotAllowed"
        | "Forbidden" => Disposition::FixConfig,
        "ExpiredProviderToken"
        | "TooManyRequests"
        | "TooManyProviderTokenUpdates"
        | "IdleTimeout"
        | "InternalServerError"
        | "ServiceUnavailable"
        | "Shutdown" => Disposition::Retry { after: retry_after(headers) },
        _ => match status {
            410 => Disposition::RecipientGone,
            429 | 500..=599 => Disposition::Retry { after: retry_after(headers) },
            403 => Disposition::FixConfig,
            _ => Disposition::FixPayload,
        },
    }
}

#[async_trait]
impl Notifier for Apns {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> Capabilities {
        // 4096 bytes of payload; the text leaves room for the rest and for UTF-8.
        Capabilities { max_text: 2000, title: true, addresses: true }
    }

    async fn send(&self, n: &Notification, to: &Address) -> std::result::Result<Receipt, NotifyError> {
        let Address::Device(device) = to else {
            return Err(NotifyError::new(DRIVER, Disposition::FixConfig, format!("cannot send to {to}")));
        };
        if device.is_empty() || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NotifyError::new(DRIVER, Disposition::RecipientGone, "BadDeviceToken: not a hex device token"));
        }
        let body = Self::payload(n).to_string();
        if body.len() > MAX_PAYLOAD {
            let why = format!("PayloadTooLarge: {} bytes, over APNs' {MAX_PAYLOAD}", body.len());
            return Err(NotifyError::new(DRIVER, Disposition::FixPayload, why));
        }
        let token = self.provider_token(Instant::now())?;
        let mut url = self.base.clone();
        let prefix = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{prefix}/3/device/{device}"));
        let priority = if n.severity == Severity::Info { "5" } else { "10" };
        let mut request = self
            .client
            .post(url)
            .header("authorization", format!("bearer {token}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", priority)
            .header("content-type", "application/json")
            .body(body);
        if uuid::Uuid::parse_str(&n.id).is_ok() {
            request = request.header("apns-id", &n.id);
        }
        let answer = exchange(DRIVER, request).await?;
        let apns_id = answer.headers.get("apns-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        if answer.status == 200 {
            return Ok(Receipt { vendor_id: apns_id, pause: None });
        }
        let json: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        let reason = json.get("reason").and_then(Value::as_str).unwrap_or("no reason given").to_owned();
        if reason == "ExpiredProviderToken" {
            *self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        let disposition = disposition(answer.status, &reason, &answer.headers);
        Err(NotifyError::new(DRIVER, disposition, reason).with_status(answer.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver() -> (Apns, tempfile_path::Path) {
        let path = tempfile_path::Path::new();
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let der = key.to_pkcs8v1().unwrap();
        std::fs::write(&path.0, crate::driver::pem("PRIVATE KEY", der.as_ref())).unwrap();
        let raw = format!("apns://com.example.app?team_id=TEAM123456&key_id=KEY1234567&key_file={}", path.0);
        let url = url::Url::parse(&raw).unwrap();
        let mut params = UrlParams::parse("notify", url.query()).unwrap();
        (Apns::from_url(&url, &mut params).unwrap(), path)
    }

    mod tempfile_path {
        pub(super) struct Path(pub(super) String);
        impl Path {
            pub(super) fn new() -> Self {
                Self(std::env::temp_dir().join(format!("apns-{}.p8", uuid::Uuid::now_v7())).display().to_string())
            }
        }
        impl Drop for Path {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn one_provider_token_per_fifty_minutes() {
        let (apns, _key) = driver();
        let start = Instant::now();
        let first = apns.provider_token(start).unwrap();
        assert_eq!(apns.provider_token(start + Duration::from_secs(20 * 60)).unwrap(), first);
        assert_eq!(apns.provider_token(start + Duration::from_secs(49 * 60)).unwrap(), first);
        let renewed = start + TOKEN_REFRESH;
        let second = apns.provider_token(renewed).unwrap();
        assert_ne!(second, first, "renewed within the hour");
        assert_eq!(apns.provider_token(renewed + Duration::from_secs(60)).unwrap(), second);
    }

    #[test]
    fn reasons_are_dispositions() {
        let h = reqwest::header::HeaderMap::new();
        assert_eq!(disposition(410, "Unregistered", &h), Disposition::RecipientGone);
        assert_eq!(disposition(400, "BadDeviceToken", &h), Disposition::RecipientGone);
        assert_eq!(disposition(400, "DeviceTokenNotForTopic", &h), Disposition::RecipientGone);
        assert_eq!(disposition(400, "TopicDisallowed", &h), Disposition::FixConfig);
        assert_eq!(disposition(403, "InvalidProviderToken", &h), Disposition::FixConfig);
        assert_eq!(disposition(403, "ExpiredProviderToken", &h), Disposition::Retry { after: None });
        assert_eq!(disposition(413, "PayloadTooLarge", &h), Disposition::FixPayload);
        assert_eq!(disposition(429, "TooManyRequests", &h), Disposition::Retry { after: None });
        assert_eq!(disposition(503, "Shutdown", &h), Disposition::Retry { after: None });
        assert_eq!(disposition(400, "BadCollapseId", &h), Disposition::FixPayload);
    }
}
