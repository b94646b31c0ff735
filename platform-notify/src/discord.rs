//! Discord webhooks: `discord://{id}/{token}` posts to
//! `https://discord.com/api/webhooks/{id}/{token}?wait=true` (`base_url=` for another
//! server).
//!
//! The title goes in an embed, the body in `content`. The token never shows. Success is
//! `200` with the message (its id is the receipt).
//! `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset-After` is a pause in the receipt,
//! so the dispatcher waits before the next send instead of earning a 429; a `429` retries
//! after the body's `retry_after` (or `Retry-After`). `404` (Unknown Webhook) is the
//! destination gone and `401` the configuration, neither retried: Discord bans clients
//! that keep sending invalid requests.

use std::time::Duration;

use async_trait::async_trait;
use platform_core::Result;
use platform_core::config::UrlParams;
use serde_json::{Value, json};

use crate::driver::{Http, by_status, exchange, retry_after, seconds};
use crate::{Address, Capabilities, Disposition, Notification, Notifier, NotifyError, Receipt};

const DRIVER: &str = "discord";

/// The Discord driver.
pub struct Discord {
    http: Http,
    path: String,
}

impl std::fmt::Debug for Discord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discord").field("base", &self.http.base.as_str()).finish_non_exhaustive()
    }
}

impl Discord {
    /// From `discord://{id}/{token}`.
    pub fn from_url(url: &url::Url, params: &mut UrlParams) -> Result<Self> {
        let http = Http::from_params(params, "https://discord.com")?;
        params.finish(DRIVER)?;
        let id = url.host_str().unwrap_or_default();
        let token = url.path().trim_matches('/');
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || token.is_empty() || token.contains('/') {
            return Err(params.error("path", "must be the webhook's id and token: discord://{id}/{token}"));
        }
        Ok(Self { http, path: format!("api/webhooks/{id}/{token}") })
    }
}

fn header_secs(headers: &reqwest::header::HeaderMap, name: &str) -> Option<Duration> {
    let v: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
    seconds(&json!(v))
}

#[async_trait]
impl Notifier for Discord {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { max_text: 2000, title: true, addresses: false }
    }

    async fn send(&self, n: &Notification, _to: &Address) -> std::result::Result<Receipt, NotifyError> {
        // The title goes in an embed, so the content is the body alone and Discord's
        // 2000 characters are the dispatcher's (title + body) limit with room to spare.
        let mut body = json!({ "content": n.body, "allowed_mentions": { "parse": [] } });
        if let Some(title) = &n.title {
            body["embeds"] = json!([{ "title": title.chars().take(256).collect::<String>() }]);
        }
        let mut url = self.http.url(&self.path);
        url.query_pairs_mut().append_pair("wait", "true");
        let answer = exchange(DRIVER, self.http.client.post(url).json(&body)).await?;
        let json: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        if (200..300).contains(&answer.status) {
            let remaining = answer.headers.get("x-ratelimit-remaining").and_then(|v| v.to_str().ok());
            let pause = if remaining.map(str::trim) == Some("0") {
                header_secs(&answer.headers, "x-ratelimit-reset-after")
            } else {
                None
            };
            let vendor_id = json.get("id").and_then(Value::as_str).map(str::to_owned);
            return Ok(Receipt { vendor_id, pause });
        }
        let message = json.get("message").and_then(Value::as_str).unwrap_or_default();
        let reason: String = match json.get("code").and_then(Value::as_i64) {
            Some(code) => format!("{code} {message}"),
            None => message.to_owned(),
        };
        Err(match answer.status {
            429 => {
                let after = json.get("retry_after").and_then(seconds).or_else(|| retry_after(&answer.headers));
                NotifyError::new(DRIVER, Disposition::Retry { after }, reason).with_status(429)
            }
            _ => by_status(DRIVER, &answer, &reason),
        })
    }
}
