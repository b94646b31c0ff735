//! Microsoft Teams through a Workflows (Power Automate) URL, as an Adaptive Card:
//! `teams://prod-00.westus.logic.azure.com:443/workflows/…/invoke?api-version=…&sp=…&sv=…&sig=…`
//! posts to the same URL over HTTPS (`base_url=` for another server). The retired
//! Office 365 connectors (MessageCard) are not used.
//!
//! The `sig` is the secret and never shows. Success is `202` (or `200`); `429` and 5xx
//! retry after `Retry-After`; `401`/`403` are the configuration (the flow's signature
//! rotated), `404` the flow gone.

use async_trait::async_trait;
use platform_core::Result;
use platform_core::config::UrlParams;
use serde_json::json;

use crate::driver::{Http, by_status, exchange};
use crate::{Address, Capabilities, Notification, Notifier, NotifyError, Receipt};

const DRIVER: &str = "teams";
/// The query parameters of a Workflows URL, handed on as they are.
const FLOW_PARAMS: &[&str] = &["api-version", "sp", "sv", "sig"];

/// The Teams driver.
pub struct Teams {
    http: Http,
    path: String,
    query: Vec<(String, String)>,
}

impl std::fmt::Debug for Teams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Teams").field("base", &self.http.base.as_str()).finish_non_exhaustive()
    }
}

impl Teams {
    /// From `teams://host[:port]/path?api-version=…&sp=…&sv=…&sig=…`.
    pub fn from_url(url: &url::Url, params: &mut UrlParams) -> Result<Self> {
        let host = url.host_str().ok_or_else(|| params.error("host", "is missing"))?;
        let default = match url.port() {
            Some(port) => format!("https://{host}:{port}"),
            None => format!("https://{host}"),
        };
        let http = Http::from_params(params, &default)?;
        let query = params.take_all(FLOW_PARAMS);
        params.finish(DRIVER)?;
        if !query.iter().any(|(k, _)| k == "sig") {
            return Err(params.error("sig", "is missing: use the whole URL the workflow gave"));
        }
        Ok(Self { http, path: url.path().to_owned(), query })
    }
}

#[async_trait]
impl Notifier for Teams {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { max_text: 20_000, title: true, addresses: false }
    }

    async fn send(&self, n: &Notification, _to: &Address) -> std::result::Result<Receipt, NotifyError> {
        let mut body = Vec::new();
        if let Some(title) = &n.title {
            body.push(
                json!({ "type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true }),
            );
        }
        body.push(json!({ "type": "TextBlock", "text": n.body, "wrap": true }));
        let card = json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": body,
                    "msteams": { "width": "full" },
                },
            }],
        });
        let mut url = self.http.url(&self.path);
        url.query_pairs_mut().extend_pairs(&self.query);
        let answer = exchange(DRIVER, self.http.client.post(url).json(&card)).await?;
        if matches!(answer.status, 200 | 202) {
            return Ok(Receipt::default());
        }
        let reason: String = answer.body.chars().take(100).collect();
        Err(by_status(DRIVER, &answer, &reason))
    }
}
