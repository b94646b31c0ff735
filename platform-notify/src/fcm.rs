//! Firebase Cloud Messaging, HTTP v1: `fcm://{project_id}?service_account=/path/sa.json`
//! sends to [`Address::Device`] tokens at
//! `https://fcm.googleapis.com/v1/projects/{project}/messages:send` (`base_url=` for
//! another server; the token exchange goes to the service account's `token_uri`).
//!
//! An OAuth2 access token is obtained with the service account (an RS256 JWT bearer
//! assertion: `iss` the client email, `scope` firebase.messaging, `aud` the token URI,
//! one hour), cached until a minute before it expires, fetched by one caller at a time,
//! and dropped when FCM answers 401. Errors are read from FCM's `errorCode`, never from
//! text: `UNREGISTERED` and `SENDER_ID_MISMATCH` are the device gone,
//! `INVALID_ARGUMENT` the payload, `THIRD_PARTY_AUTH_ERROR` the configuration,
//! `QUOTA_EXCEEDED`, `UNAVAILABLE` and `INTERNAL` retry after `Retry-After`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform_core::config::UrlParams;
use platform_core::{Error, Result, Secret};
use serde_json::{Value, json};

use crate::driver::{Http, exchange, retry_after};
use crate::{Address, Capabilities, Disposition, Notification, Notifier, NotifyError, Receipt, Severity};

const DRIVER: &str = "fcm";
/// The OAuth2 scope FCM sends need.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The FCM driver.
pub struct Fcm {
    http: Http,
    project: String,
    client_email: String,
    key_id: Option<String>,
    key: aws_lc_rs::rsa::KeyPair,
    token_uri: String,
    token: tokio::sync::Mutex<Option<(Secret<String>, Instant)>>,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm")
            .field("project", &self.project)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl Fcm {
    /// From `fcm://{project}?service_account=/path.json`.
    pub fn from_url(url: &url::Url, params: &mut UrlParams) -> Result<Self> {
        let http = Http::from_params(params, "https://fcm.googleapis.com")?;
        let path = params.take("service_account").ok_or_else(|| params.error("service_account", "is missing"))?;
        params.finish(DRIVER)?;
        let project = url.host_str().unwrap_or_default().to_owned();
        if project.is_empty() {
            return Err(params.error("project", "is missing: fcm://{project_id}?service_account=…"));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| params.error("service_account", &format!("cannot be read: {e}")))?;
        Self::new(http, project, &text).map_err(|e| params.error("service_account", e.message()))
    }

    /// From a service account's JSON.
    fn new(http: Http, project: String, service_account: &str) -> Result<Self> {
        let sa: Value = serde_json::from_str(service_account).map_err(|_| Error::invalid_input("is not JSON"))?;
        let field = |k: &str| sa.get(k).and_then(Value::as_str).map(str::to_owned);
        let client_email = field("client_email").ok_or_else(|| Error::invalid_input("has no client_email"))?;
        let token_uri = field("token_uri").unwrap_or_else(|| "https://oauth2.googleapis.com/token".to_owned());
        let pem = field("private_key").ok_or_else(|| Error::invalid_input("has no private_key"))?;
        let key = crate::driver::pem_der(&pem)
            .and_then(|der| aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).ok())
            .ok_or_else(|| Error::invalid_input("has a private_key that is not an RSA PKCS#8 key"))?;
        Ok(Self {
            http,
            project,
            client_email,
            key_id: field("private_key_id"),
            key,
            token_uri,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// The signed JWT bearer assertion.
    fn assertion(&self) -> std::result::Result<String, NotifyError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut header = json!({ "alg": "RS256", "typ": "JWT" });
        if let Some(kid) = &self.key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": self.client_email, "scope": SCOPE, "aud": self.token_uri, "iat": now, "exp": now + 3600,
        });
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut signature)
            .map_err(|_| NotifyError::new(DRIVER, Disposition::FixConfig, "signing the assertion failed"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// A valid access token: the cached one, or a new one (one fetch at a time).
    async fn access_token(&self) -> std::result::Result<Secret<String>, NotifyError> {
        let mut held = self.token.lock().await;
        if let Some((token, until)) = held.as_ref()
            && *until > Instant::now() + Duration::from_secs(60)
        {
            return Ok(Secret::new(token.expose().clone()));
        }
        let assertion = self.assertion()?;
        let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())];
        let answer = exchange(DRIVER, self.http.client.post(&self.token_uri).form(&form)).await?;
        let json: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        match (answer.status, json.get("access_token").and_then(Value::as_str)) {
            (200, Some(token)) => {
                let ttl = json.get("expires_in").and_then(Value::as_u64).unwrap_or(3600);
                *held = Some((Secret::new(token.to_owned()), Instant::now() + Duration::from_secs(ttl)));
                Ok(Secret::new(token.to_owned()))
            }
            (status, _) => {
                let reason = json.get("error").and_then(Value::as_str).unwrap_or("token exchange failed").to_owned();
                let disposition = if status == 429 || status >= 500 {
                    Disposition::Retry { after: retry_after(&answer.headers) }
                } else {
                    Disposition::FixConfig
                };
                Err(NotifyError::new(DRIVER, disposition, reason).with_status(status))
            }
        }
    }
}

#[async_trait]
impl Notifier for Fcm {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> Capabilities {
        // FCM takes 4096 bytes of message; the text leaves room for the rest.
        Capabilities { max_text: 3000, title: true, addresses: true }
    }

    async fn send(&self, n: &Notification, to: &Address) -> std::result::Result<Receipt, NotifyError> {
        let Address::Device(device) = to else {
            return Err(NotifyError::new(DRIVER, Disposition::FixConfig, format!("cannot send to {to}")));
        };
        let token = self.access_token().await?;
        let mut message = json!({
            "token": device,
            "notification": { "title": n.title, "body": n.body },
            "data": n.data,
        });
        if n.severity == Severity::Critical {
            message["android"] = json!({ "priority": "high" });
        }
        let url = self.http.url(&format!("v1/projects/{}/messages:send", self.project));
        let request = self.http.client.post(url).bearer_auth(token.expose()).json(&json!({ "message": message }));
        let answer = exchange(DRIVER, request).await?;
        let json: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        if answer.status == 200 {
            let name = json.get("name").and_then(Value::as_str).map(str::to_owned);
            return Ok(Receipt { vendor_id: name, pause: None });
        }
        let error = json.get("error");
        let status = error.and_then(|e| e.get("status")).and_then(Value::as_str).unwrap_or_default();
        let code = error
            .and_then(|e| e.get("details"))
            .and_then(Value::as_array)
            .and_then(|details| {
                details.iter().find_map(|d| {
                    let fcm = d.get("@type").and_then(Value::as_str)
                        == Some("type.googleapis.com/google.firebase.fcm.v1.FcmError");
                    fcm.then(|| d.get("errorCode").and_then(Value::as_str)).flatten()
                })
            })
            .unwrap_or(status)
            .to_owned();
        // Our access token was refused (not a vendor credential behind FCM): drop it.
        if answer.status == 401 && code != "THIRD_PARTY_AUTH_ERROR" {
            *self.token.lock().await = None;
        }
        let disposition = match code.as_str() {
            "UNREGISTERED" | "SENDER_ID_MISMATCH" => Disposition::RecipientGone,
            "INVALID_ARGUMENT" => Disposition::FixPayload,
            "THIRD_PARTY_AUTH_ERROR" | "PERMISSION_DENIED" => Disposition::FixConfig,
            "QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL" | "UNAUTHENTICATED" => {
                Disposition::Retry { after: retry_after(&answer.headers) }
            }
            _ => match answer.status {
                429 | 500..=599 => Disposition::Retry { after: retry_after(&answer.headers) },
                404 => Disposition::RecipientGone,
                401 => Disposition::Retry { after: None },
                403 => Disposition::FixConfig,
                _ => Disposition::FixPayload,
            },
        };
        Err(NotifyError::new(DRIVER, disposition, code).with_status(answer.status))
    }
}
