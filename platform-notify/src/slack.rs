//! Slack incoming webhooks: `slack://T…/B…/X…` posts to
//! `https://hooks.slack.com/services/T…/B…/X…` (`base_url=` for another server).
//!
//! The path is the secret and never shows. Success is `200` with the body `ok`; errors
//! are plain strings, matched whole: `channel_not_found`, `channel_is_archived`,
//! `no_service`, `no_team`, `user_not_found` (recipient gone), `action_prohibited`,
//! `invalid_token` (configuration), `invalid_payload`, `no_text` (payload); `429` with
//! `Retry-After` and 5xx retry.

use async_trait::async_trait;
use platform_core::Result;
use platform_core::config::UrlParams;
use serde_json::json;

use crate::driver::{Http, by_status, exchange, text_of};
use crate::{Address, Capabilities, Disposition, Notification, Notifier, NotifyError, Receipt};

const DRIVER: &str = "slack";

/// The Slack driver.
pub struct Slack {
    http: Http,
    path: String,
}

impl std::fmt::Debug for Slack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slack").field("base", &self.http.base.as_str()).finish_non_exhaustive()
    }
}

impl Slack {
    /// From `slack://T…/B…/X…`.
    pub fn from_url(url: &url::Url, params: &mut UrlParams) -> Result<Self> {
        let http = Http::from_params(params, "https://hooks.slack.com/services")?;
        params.finish(DRIVER)?;
        let parts: Vec<&str> = std::iter::once(url.host_str().unwrap_or_default())
            .chain(url.path_segments().into_iter().flatten())
            .filter(|p| !p.is_empty())
            .collect();
        if parts.len() != 3 {
            return Err(params.error("path", "must be the webhook's three tokens: slack://T…/B…/X…"));
        }
        Ok(Self { http, path: parts.join("/") })
    }
}

#[async_trait]
impl Notifier for Slack {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { max_text: 40_000, title: true, addresses: false }
    }

    async fn send(&self, n: &Notification, _to: &Address) -> std::result::Result<Receipt, NotifyError> {
        let text = match &n.title {
            Some(title) => format!("*{title}*\n{}", n.body),
            None => text_of(n),
        };
        let request = self.http.client.post(self.http.url(&self.path)).json(&json!({ "text": text }));
        let answer = exchange(DRIVER, request).await?;
        if answer.status == 200 && answer.body.trim() == "ok" {
            return Ok(Receipt::default());
        }
        let code = answer.body.trim();
        let disposition = match code {
            "channel_not_found" | "channel_is_archived" | "no_service" | "no_team" | "user_not_found" => {
                Some(Disposition::RecipientGone)
            }
            "action_prohibited" | "invalid_token" => Some(Disposition::FixConfig),
            "invalid_payload" | "no_text" => Some(Disposition::FixPayload),
            _ => None,
        };
        let reason: String = code.chars().take(100).collect();
        Err(match disposition {
            Some(d) => NotifyError::new(DRIVER, d, reason).with_status(answer.status),
            None => by_status(DRIVER, &answer, &reason),
        })
    }
}
