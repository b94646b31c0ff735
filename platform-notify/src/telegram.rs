//! Telegram bots: `tgram://{bot_token}/{chat_id}` sends with `sendMessage` to
//! `https://api.telegram.org/bot{token}/sendMessage` (`base_url=` for another server).
//! [`Address::Chat`] sends to another chat than the URL's.
//!
//! The token never shows. Errors come in the body (`ok: false`, `error_code`,
//! `description`, `parameters`): `parameters.retry_after` retries after that many
//! seconds; `parameters.migrate_to_chat_id` is the recipient moved (the group became a
//! supergroup: send there); a blocked bot, a deactivated user, a kicked bot and a chat
//! not found are the recipient gone, matched on Telegram's whole description, since a
//! 403 may also be passing; `401` is the configuration; a text over 4096 characters is
//! refused before sending.

use async_trait::async_trait;
use platform_core::Result;
use platform_core::config::UrlParams;
use serde_json::{Value, json};

use crate::driver::{Http, exchange, seconds, text_of};
use crate::{Address, Capabilities, Disposition, Notification, Notifier, NotifyError, Receipt};

const DRIVER: &str = "telegram";
const MAX_TEXT: usize = 4096;

/// Descriptions that mean the recipient is gone for good.
const GONE: &[&str] = &[
    "Forbidden: bot was blocked by the user",
    "Forbidden: user is deactivated",
    "Forbidden: bot was kicked from the group chat",
    "Forbidden: bot was kicked from the supergroup chat",
    "Forbidden: bot was kicked from the channel chat",
    "Forbidden: the group chat was deleted",
    "Bad Request: chat not found",
];

/// The Telegram driver.
pub struct Telegram {
    http: Http,
    token: String,
    chat: Option<String>,
}

impl std::fmt::Debug for Telegram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telegram")
            .field("base", &self.http.base.as_str())
            .field("chat", &self.chat)
            .finish_non_exhaustive()
    }
}

impl Telegram {
    /// From `tgram://{bot_token}/{chat_id}?…` (the token holds a `:`, so this URL is
    /// read by hand, not as host and port).
    pub fn from_raw(raw: &str) -> Result<Self> {
        let rest = raw.strip_prefix("tgram://").unwrap_or(raw);
        let (path, query) = rest.split_once('?').map_or((rest, None), |(p, q)| (p, Some(q)));
        let mut params = UrlParams::parse("notify", query)?;
        let http = Http::from_params(&mut params, "https://api.telegram.org")?;
        params.finish(DRIVER)?;
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let token = parts.next().unwrap_or_default().to_owned();
        let valid = token
            .split_once(':')
            .is_some_and(|(id, secret)| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && !secret.is_empty());
        if !valid {
            return Err(params.error("token", "must be the bot's token, digits:secret (tgram://123:abc/chat)"));
        }
        let chat = parts.next().map(str::to_owned);
        if parts.next().is_some() {
            return Err(params.error("path", "takes one chat; send to others with Address::Chat"));
        }
        Ok(Self { http, token, chat })
    }
}

#[async_trait]
impl Notifier for Telegram {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { max_text: MAX_TEXT, title: false, addresses: true }
    }

    async fn send(&self, n: &Notification, to: &Address) -> std::result::Result<Receipt, NotifyError> {
        let chat = match to {
            Address::Configured => self
                .chat
                .clone()
                .ok_or_else(|| NotifyError::new(DRIVER, Disposition::FixConfig, "no chat in the URL and none given"))?,
            Address::Chat(chat) => chat.clone(),
            other => {
                let why = format!("cannot send to {other}");
                return Err(NotifyError::new(DRIVER, Disposition::FixConfig, why));
            }
        };
        let text = text_of(n);
        // A numeric id goes as a number, `@channel` as a string.
        let chat_id = chat.parse::<i64>().map_or_else(|_| json!(chat), |id| json!(id));
        let url = self.http.url(&format!("bot{}/sendMessage", self.token));
        let body = json!({ "chat_id": chat_id, "text": text });
        let answer = exchange(DRIVER, self.http.client.post(url).json(&body)).await?;
        let json: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        if json.get("ok") == Some(&Value::Bool(true)) {
            let id = json.pointer("/result/message_id").map(Value::to_string);
            return Ok(Receipt { vendor_id: id, pause: None });
        }
        let description = json.get("description").and_then(Value::as_str).unwrap_or_default().to_owned();
        let parameters = json.get("parameters");
        let disposition = if let Some(after) = parameters.and_then(|p| p.get("retry_after")).and_then(seconds) {
            Disposition::Retry { after: Some(after) }
        } else if let Some(to) = parameters.and_then(|p| p.get("migrate_to_chat_id")).and_then(Value::as_i64) {
            Disposition::RecipientMoved { to: Address::Chat(to.to_string()) }
        } else if GONE.contains(&description.as_str()) {
            Disposition::RecipientGone
        } else {
            match answer.status {
                401 | 404 => Disposition::FixConfig,
                429 | 500..=599 => Disposition::Retry { after: None },
                // Another 403 may pass ("bot can't send messages to the user" has been
                // seen to): not a reason to drop a recipient.
                403 => Disposition::Retry { after: None },
                _ => Disposition::FixPayload,
            }
        };
        Err(NotifyError::new(DRIVER, disposition, description).with_status(answer.status))
    }
}
