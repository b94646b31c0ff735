//! Outbound webhooks signed as Standard Webhooks: `webhook://host/path?secret=whsec_…`
//! posts JSON to `https://host/path` (`webhook+http://` for plain HTTP, `base_url=` for
//! another server).
//!
//! Headers: `webhook-id` (the notification's id, the same on every retry, so the
//! receiver can deduplicate), `webhook-timestamp` (now, per attempt) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. Any 2xx
//! is delivered; `410` is the endpoint gone; `429`, 5xx and timeouts retry after
//! `Retry-After`; `401`/`403` are the configuration. The body:
//! `{"id", "title", "body", "severity", "tags", "data"}`.

use async_trait::async_trait;
use platform_auth::ingest::{decode_secret, sign};
use platform_core::config::UrlParams;
use platform_core::{Result, Secret};
use serde_json::json;

use crate::driver::{Http, by_status, exchange};
use crate::{Address, Capabilities, Notification, Notifier, NotifyError, Receipt};

const DRIVER: &str = "webhook";

/// The webhook driver.
pub struct Webhook {
    http: Http,
    path: String,
    secret: Secret<Vec<u8>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("base", &self.http.base.as_str()).finish_non_exhaustive()
    }
}

impl Webhook {
    /// From `webhook://host[:port]/path?secret=whsec_…`.
    pub fn from_url(url: &url::Url, params: &mut UrlParams) -> Result<Self> {
        let host = url.host_str().ok_or_else(|| params.error("host", "is missing"))?;
        let scheme = if url.scheme().ends_with("+http") { "http" } else { "https" };
        let default = match url.port() {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        };
        let http = Http::from_params(params, &default)?;
        let secret = params.take("secret").ok_or_else(|| params.error("secret", "is missing (whsec_…)"))?;
        let secret = decode_secret(&secret).map_err(|e| params.error("secret", e.message()))?;
        params.finish(DRIVER)?;
        Ok(Self { http, path: url.path().to_owned(), secret })
    }
}

#[async_trait]
impl Notifier for Webhook {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { max_text: 1 << 20, title: true, addresses: false }
    }

    async fn send(&self, n: &Notification, _to: &Address) -> std::result::Result<Receipt, NotifyError> {
        let body = json!({
            "id": n.id, "title": n.title, "body": n.body, "severity": n.severity, "tags": n.tags, "data": n.data,
        })
        .to_string();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let signature = sign(&self.secret, &n.id, timestamp, body.as_bytes());
        let request = self
            .http
            .client
            .post(self.http.url(&self.path))
            .header("content-type", "application/json")
            .header("webhook-id", &n.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body);
        let answer = exchange(DRIVER, request).await?;
        if (200..300).contains(&answer.status) {
            return Ok(Receipt::default());
        }
        let reason: String = answer.body.chars().take(100).collect();
        Err(by_status(DRIVER, &answer, &reason))
    }
}
