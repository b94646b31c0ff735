#![doc = include_str!("../README.md")]

pub mod dispatch;
pub mod driver;
#[cfg(feature = "durable")]
pub mod durable;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "testkit")]
pub mod testkit;

#[cfg(feature = "apns")]
pub mod apns;
#[cfg(feature = "discord")]
pub mod discord;
#[cfg(feature = "email")]
pub mod email;
#[cfg(feature = "fcm")]
pub mod fcm;
#[cfg(feature = "slack")]
pub mod slack;
#[cfg(feature = "sns")]
pub mod sns;
#[cfg(feature = "teams")]
pub mod teams;
#[cfg(feature = "telegram")]
pub mod telegram;
#[cfg(feature = "webhook")]
pub mod webhook;
#[cfg(feature = "webpush")]
pub mod webpush;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use dispatch::{Delivery, Dispatcher, RecipientHook, Report, RetryPolicy, Route};
use platform_core::config::{mask_url, scheme_error, url_error};
pub use platform_core::{Error, ErrorKind, Result};

/// How serious a notification is; routes pick by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For the record.
    Info,
    /// The default.
    #[default]
    Notice,
    /// Someone should look.
    Warning,
    /// Someone must act now.
    Critical,
}

/// A notification: what to say, independent of where it goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Notification {
    /// Stable across retries and fallbacks: the idempotency key (`webhook-id`, …).
    pub id: String,
    /// A title, where the vendor shows one.
    pub title: Option<String>,
    /// The text.
    pub body: String,
    /// How serious it is.
    pub severity: Severity,
    /// Tags routes match on.
    pub tags: BTreeSet<String>,
    /// Extra key-value data, sent where the vendor carries data.
    pub data: BTreeMap<String, String>,
}

impl Notification {
    /// A notification with `body`, a fresh id, severity `Notice` and no tags.
    pub fn new(body: impl Into<String>) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            title: None,
            body: body.into(),
            severity: Severity::Notice,
            tags: BTreeSet::new(),
            data: BTreeMap::new(),
        }
    }

    /// With a title.
    #[must_use]
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// With a severity.
    #[must_use]
    pub fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// With a tag.
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.insert(tag.into());
        self
    }

    /// With a data entry.
    #[must_use]
    pub fn data(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.data.insert(key.into(), value.into());
        self
    }

    /// With `id` instead of the fresh one.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

/// Where a notification goes, beyond the notifier itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Address {
    /// The destination the notifier was opened with (a webhook URL, the chat in its URL).
    Configured,
    /// A chat (Telegram: a numeric id or `@channel`).
    Chat(String),
    /// A device token (APNs, FCM).
    Device(String),
    /// An email address.
    Email(String),
    /// A phone number in E.164 form (`+15555550100`), for SMS.
    Phone(String),
    /// A browser's Web Push subscription.
    WebPush(PushSubscription),
}

/// A browser's push subscription, as `PushSubscription.toJSON()` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PushSubscription {
    /// The push resource URL (the push service's).
    pub endpoint: String,
    /// The keys.
    pub keys: PushKeys,
}

/// A push subscription's keys, base64url.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PushKeys {
    /// The user agent's P-256 public key (65 bytes, uncompressed).
    pub p256dh: String,
    /// The authentication secret (16 bytes).
    pub auth: String,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Configured => f.write_str("(configured)"),
            Self::Chat(c) => write!(f, "chat {c}"),
            Self::Device(d) => write!(f, "device {}…", d.get(..8).unwrap_or(d)),
            Self::Email(e) => write!(f, "{e}"),
            Self::Phone(p) => write!(f, "phone {}…", p.get(..5).unwrap_or(p)),
            Self::WebPush(s) => {
                let origin = url::Url::parse(&s.endpoint).map(|u| u.origin().ascii_serialization());
                write!(f, "push subscription at {}", origin.unwrap_or_default())
            }
        }
    }
}

/// What the vendor said when it took a notification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The vendor's id for the message, when it gives one.
    pub vendor_id: Option<String>,
    /// How long to wait before the next send to the same destination, when the vendor
    /// said (Discord's `X-RateLimit-Remaining: 0` with its reset).
    pub pause: Option<Duration>,
}

/// What to do about a failed send: every failure has exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// Send it again, after `after` when the vendor said (`Retry-After`, Telegram's
    /// `retry_after`, Discord's reset): rate limits, outages, timeouts.
    Retry {
        /// The vendor's delay.
        after: Option<Duration>,
    },
    /// The recipient is gone (410, `Unregistered`, a blocked bot, an archived channel,
    /// a deleted webhook): stop sending to it.
    RecipientGone,
    /// The recipient moved (Telegram's `migrate_to_chat_id`): store the new address
    /// and send there.
    RecipientMoved {
        /// The new address.
        to: Address,
    },
    /// The configuration is wrong (bad credentials, a bad URL): a person must fix it.
    FixConfig,
    /// The payload is wrong (too large, invalid): it will never pass unchanged.
    FixPayload,
}

/// A send that failed, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyError {
    /// What to do.
    pub disposition: Disposition,
    /// The driver (`slack`, `telegram`, …).
    pub driver: &'static str,
    /// The HTTP status, when there was one.
    pub status: Option<u16>,
    /// The vendor's own code or description (`channel_is_archived`, …), never a secret.
    pub reason: String,
}

impl NotifyError {
    /// A failure of `driver` with `disposition`.
    pub fn new(driver: &'static str, disposition: Disposition, reason: impl Into<String>) -> Self {
        Self { disposition, driver, status: None, reason: reason.into() }
    }

    /// With the HTTP status.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Whether sending again can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self.disposition, Disposition::Retry { .. })
    }
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.disposition {
            Disposition::Retry { after: Some(after) } => format!("retry after {after:?}"),
            Disposition::Retry { after: None } => "retry".to_owned(),
            Disposition::RecipientGone => "recipient gone".to_owned(),
            Disposition::RecipientMoved { to } => format!("recipient moved to {to}"),
            Disposition::FixConfig => "fix the configuration".to_owned(),
            Disposition::FixPayload => "fix the payload".to_owned(),
        };
        write!(f, "{}: {what}: {}", self.driver, self.reason)?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        Ok(())
    }
}

impl std::error::Error for NotifyError {}

impl From<NotifyError> for Error {
    fn from(e: NotifyError) -> Self {
        let kind = match &e.disposition {
            Disposition::Retry { .. } => ErrorKind::Unavailable,
            Disposition::RecipientGone => ErrorKind::NotFound,
            Disposition::RecipientMoved { .. } => ErrorKind::Conflict,
            Disposition::FixConfig => ErrorKind::PermissionDenied,
            Disposition::FixPayload => ErrorKind::InvalidInput,
        };
        let after = match &e.disposition {
            Disposition::Retry { after } => *after,
            _ => None,
        };
        let mut err = Self::new(kind, e.to_string()).with_backend(e.driver).with_op("send");
        if let Some(after) = after {
            err = err.with_retry_after(after);
        }
        err
    }
}

/// What a notifier can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The longest text the vendor takes, in characters (title and body together, as
    /// the driver lays them out); the dispatcher shortens longer text by its stated rule.
    pub max_text: usize,
    /// Whether it shows a separate title.
    pub title: bool,
    /// Whether it sends to per-message addresses (chats, devices), beyond
    /// [`Address::Configured`].
    pub addresses: bool,
}

impl Capabilities {
    /// Text up to `max_text` characters, no title, the configured address only.
    pub const fn new(max_text: usize) -> Self {
        Self { max_text, title: false, addresses: false }
    }
}

/// One way of delivering notifications (a vendor, a channel).
///
/// # Contract
/// - `send` delivers once or fails with a [`NotifyError`] whose disposition says what to
///   do; a driver never retries on its own and never matches a vendor's error by
///   substring when the vendor gives a code.
/// - Text longer than [`Capabilities::max_text`] is refused with `FixPayload` before
///   any request, and an address other than [`Address::Configured`] where
///   [`Capabilities::addresses`] is false is `FixConfig`, never a silent drop: the
///   handle [`open`] returns checks both before the driver runs. The dispatcher
///   shortens text first.
/// - Secrets in URLs (webhook paths, bot tokens, signatures) never appear in errors,
///   logs or `Debug`.
#[async_trait]
pub trait Notifier: fmt::Debug + Send + Sync {
    /// The driver's name (`slack`, `telegram`, …).
    fn driver(&self) -> &'static str;

    /// What it can carry.
    fn capabilities(&self) -> Capabilities;

    /// Delivers `notification` to `to`.
    async fn send(&self, notification: &Notification, to: &Address) -> std::result::Result<Receipt, NotifyError>;
}

/// The URL schemes this build opens.
pub fn schemes() -> Vec<&'static str> {
    let all = [
        ("memory", cfg!(feature = "memory")),
        ("slack", cfg!(feature = "slack")),
        ("discord", cfg!(feature = "discord")),
        ("teams", cfg!(feature = "teams")),
        ("tgram", cfg!(feature = "telegram")),
        ("webhook", cfg!(feature = "webhook")),
        ("webpush", cfg!(feature = "webpush")),
        ("fcm", cfg!(feature = "fcm")),
        ("apns", cfg!(feature = "apns")),
        ("sns", cfg!(feature = "sns")),
        ("smtp", cfg!(feature = "email")),
        ("smtps", cfg!(feature = "email")),
    ];
    all.into_iter().filter(|(_, on)| *on).map(|(scheme, _)| scheme).collect()
}

fn feature_for(scheme: &str) -> Option<&'static str> {
    Some(match scheme {
        "memory" => "memory",
        "slack" => "slack",
        "discord" => "discord",
        "teams" => "teams",
        "tgram" => "telegram",
        "webhook" | "webhook+http" => "webhook",
        "webpush" => "webpush",
        "fcm" => "fcm",
        "apns" => "apns",
        "sns" => "sns",
        "smtp" | "smtps" => "email",
        _ => return None,
    })
}

/// Opens a notifier from a URL: `slack://T…/B…/X…`, `discord://id/token`,
/// `teams://host/path?query`, `tgram://token/chat`, `webhook://host/path?secret=…`,
/// `webpush://?vapid_key=…`, `fcm://{project}?service_account=…`,
/// `apns://{bundle_id}?team_id=…&key_id=…&key_file=…`, `sns://?topic_arn=…`,
/// `smtp://user:password@host?from=…`, `memory://`. Every driver takes `timeout=` (10 s by default) and a way to send to
/// another server (a local double, a proxy): `base_url=`, or `endpoint=` for SNS. An
/// unknown parameter is an error naming it.
pub fn open(raw: &str) -> Result<Arc<dyn Notifier>> {
    #[cfg(feature = "telegram")]
    if raw.starts_with("tgram://") {
        return Ok(Arc::new(driver::Checked(telegram::Telegram::from_raw(raw)?)));
    }
    let masked = mask_url(raw);
    let url = url::Url::parse(raw).map_err(|e| url_error("notify", "url", &format!("{masked:?} is not a URL: {e}")))?;
    #[cfg_attr(not(feature = "_url"), expect(unused_mut, reason = "only these drivers take parameters from the URL"))]
    #[cfg_attr(
        not(any(feature = "memory", feature = "_url")),
        expect(unused_variables, reason = "no driver of this build reads the parsed URL")
    )]
    let mut params = platform_core::config::UrlParams::parse("notify", url.query())?;
    match url.scheme() {
        #[cfg(feature = "memory")]
        "memory" => {
            params.finish("memory")?;
            Ok(Arc::new(driver::Checked(memory::MemoryNotifier::new())))
        }
        #[cfg(feature = "slack")]
        "slack" => Ok(Arc::new(driver::Checked(slack::Slack::from_url(&url, &mut params)?))),
        #[cfg(feature = "discord")]
        "discord" => Ok(Arc::new(driver::Checked(discord::Discord::from_url(&url, &mut params)?))),
        #[cfg(feature = "teams")]
        "teams" => Ok(Arc::new(driver::Checked(teams::Teams::from_url(&url, &mut params)?))),
        #[cfg(feature = "webhook")]
        "webhook" | "webhook+http" => Ok(Arc::new(driver::Checked(webhook::Webhook::from_url(&url, &mut params)?))),
        #[cfg(feature = "fcm")]
        "fcm" => Ok(Arc::new(driver::Checked(fcm::Fcm::from_url(&url, &mut params)?))),
        #[cfg(feature = "apns")]
        "apns" => Ok(Arc::new(driver::Checked(apns::Apns::from_url(&url, &mut params)?))),
        #[cfg(feature = "sns")]
        "sns" => Ok(Arc::new(driver::Checked(sns::Sns::from_url(&mut params)?))),
        #[cfg(feature = "email")]
        "smtp" | "smtps" => Ok(Arc::new(driver::Checked(email::Email::from_url(&url, &mut params)?))),
        #[cfg(feature = "webpush")]
        "webpush" => Ok(Arc::new(driver::Checked(webpush::WebPush::from_url(&mut params)?))),
        other => Err(scheme_error("platform-notify", other, feature_for(other), &schemes(), raw)),
    }
}

/// Opens the notifier at `{PREFIX}_URL`.
pub fn open_from_env(prefix: &str) -> Result<Arc<dyn Notifier>> {
    let url: String = platform_core::config::Env::new(prefix).require("URL")?;
    open(&url)
}
