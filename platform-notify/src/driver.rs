//! What driver authors need: the text layout every chat driver uses, the shortening
//! rule, and (with an HTTP driver compiled in) the HTTP client, `Retry-After` parsing and
//! the status classification drivers start from.

use std::time::Duration;

use crate::Notification;

/// The text of a notification as one message: `title` on its own line, then the body.
pub fn text_of(notification: &Notification) -> String {
    match &notification.title {
        Some(title) => format!("{title}\n{}", notification.body),
        None => notification.body.clone(),
    }
}

/// The marker that ends shortened text.
pub const ELLIPSIS: char = '…';

/// The stated rule for text longer than a vendor takes: the body is cut at a character
/// boundary so that the whole text (title line included) is `max` characters, the last
/// being [`ELLIPSIS`]; the title is kept whole unless it alone is too long, then it is cut
/// the same way and the body dropped. Returns the notification unchanged when it fits.
pub fn shorten(notification: &Notification, max: usize) -> Notification {
    let len = text_of(notification).chars().count();
    if len <= max || max == 0 {
        return notification.clone();
    }
    let cut = |s: &str, keep: usize| -> String {
        let mut out: String = s.chars().take(keep.saturating_sub(1)).collect();
        out.push(ELLIPSIS);
        out
    };
    let mut short = notification.clone();
    let title_len = notification.title.as_ref().map_or(0, |t| t.chars().count() + 1);
    if title_len >= max {
        short.title = notification.title.as_ref().map(|t| cut(t, max));
        short.body = String::new();
        // The title line has no newline left after it; drop the empty body's line.
        if let Some(t) = short.title.take() {
            short.body = t;
        }
    } else {
        short.body = cut(&notification.body, max - title_len);
    }
    short
}

/// What every notifier [`crate::open`] returns does before its driver runs: the
/// address and the text length checked against the driver's capabilities, and a span
/// around the send. A driver of your own gets the same by being wrapped in it.
#[derive(Debug)]
pub struct Checked<N>(pub N);

#[async_trait::async_trait]
impl<N: crate::Notifier> crate::Notifier for Checked<N> {
    fn driver(&self) -> &'static str {
        self.0.driver()
    }

    fn capabilities(&self) -> crate::Capabilities {
        self.0.capabilities()
    }

    async fn send(
        &self,
        notification: &Notification,
        to: &crate::Address,
    ) -> Result<crate::Receipt, crate::NotifyError> {
        let (driver, caps) = (self.0.driver(), self.0.capabilities());
        if !caps.addresses && *to != crate::Address::Configured {
            let why = format!("sends to its configured destination only, not {to}");
            return Err(crate::NotifyError::new(driver, crate::Disposition::FixConfig, why));
        }
        let len = text_of(notification).chars().count();
        if len > caps.max_text {
            let why = format!("text of {len} characters, over the {} this driver takes", caps.max_text);
            return Err(crate::NotifyError::new(driver, crate::Disposition::FixPayload, why));
        }
        let span = tracing::debug_span!("notify.driver", driver, id = %notification.id);
        tracing::Instrument::instrument(self.0.send(notification, to), span).await
    }
}

/// The DER inside a PEM block (`-----BEGIN …-----` lines dropped).
#[cfg(any(feature = "fcm", feature = "apns"))]
pub fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// `der` as a PEM block labelled `label` (`PRIVATE KEY`, `CERTIFICATE`).
#[cfg(any(feature = "fcm", feature = "apns"))]
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

#[cfg(feature = "_http")]
pub use http::*;

#[cfg(feature = "_http")]
mod http {
    use std::time::{Duration, SystemTime};

    use platform_core::Result;
    use platform_core::config::UrlParams;

    use crate::{Disposition, NotifyError};

    /// The HTTP side of a driver: a client that follows no redirects (a webhook URL is
    /// a secret; a redirect could carry the body elsewhere), with a timeout.
    #[derive(Debug, Clone)]
    pub struct Http {
        /// The client.
        pub client: reqwest::Client,
        /// Where requests go: the vendor's API, or `base_url=`.
        pub base: url::Url,
    }

    impl Http {
        /// A client for `default_base`, or the `base_url` parameter; takes `timeout`.
        pub fn from_params(params: &mut UrlParams, default_base: &str) -> Result<Self> {
            let base = params.take("base_url").unwrap_or_else(|| default_base.to_owned());
            let base = url::Url::parse(&base).map_err(|e| params.error("base_url", &format!("is not a URL: {e}")))?;
            let timeout = params.take_duration("timeout")?.unwrap_or(Duration::from_secs(10));
            Ok(Self { client: client(timeout)?, base })
        }

        /// `path` under the base URL (whose own path is kept as a prefix).
        pub fn url(&self, path: &str) -> url::Url {
            let mut url = self.base.clone();
            let prefix = url.path().trim_end_matches('/').to_owned();
            url.set_path(&format!("{prefix}/{}", path.trim_start_matches('/')));
            url
        }
    }

    /// The client every driver sends with: no redirects followed, `timeout` per request.
    pub fn client(timeout: Duration) -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| platform_core::Error::internal(format!("the HTTP client could not be built: {e}")))
    }

    /// An answer: status, headers, body.
    #[derive(Debug)]
    pub struct Answer {
        /// The status.
        pub status: u16,
        /// The headers.
        pub headers: reqwest::header::HeaderMap,
        /// The body as text.
        pub body: String,
    }

    /// Sends `request`; a connection failure or timeout is `Retry` (the message may
    /// not have arrived), never a secret-bearing URL in the reason.
    pub async fn exchange(driver: &'static str, request: reqwest::RequestBuilder) -> Result<Answer, NotifyError> {
        let response = request.send().await.map_err(|e| {
            let why = if e.is_timeout() { "timed out" } else { "could not reach the server" };
            NotifyError::new(driver, Disposition::Retry { after: None }, why)
        })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        Ok(Answer { status, headers, body })
    }

    /// `Retry-After` in seconds (fractions taken) or as an HTTP date.
    pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
        let value = headers.get("retry-after")?.to_str().ok()?.trim();
        if let Ok(secs) = value.parse::<f64>() {
            return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
        }
        let at = httpdate(value)?;
        Some(at.duration_since(SystemTime::now()).unwrap_or_default())
    }

    /// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
    fn httpdate(s: &str) -> Option<SystemTime> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [_, day, month, year, time, "GMT"] = parts.as_slice() else { return None };
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let month = months.iter().position(|m| m == month)? as u64 + 1;
        let (day, year): (u64, u64) = (day.parse().ok()?, year.parse().ok()?);
        let hms: Vec<u64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
        let [h, m, sec] = hms.as_slice() else { return None };
        // Days from the civil date (Howard Hinnant's algorithm).
        let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
        let era = y / 400;
        let yoe = y - era * 400;
        let doy = (153 * mo + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + sec))
    }

    /// What a status means when the vendor's body says nothing more precise: 429 and
    /// 5xx retry (after `Retry-After`), 401/403 fix the configuration, 404/410 the
    /// recipient is gone, 413 and other 4xx fix the payload.
    pub fn by_status(driver: &'static str, answer: &Answer, reason: &str) -> NotifyError {
        let disposition = match answer.status {
            429 | 500..=599 | 408 => Disposition::Retry { after: retry_after(&answer.headers) },
            401 | 403 => Disposition::FixConfig,
            404 | 410 => Disposition::RecipientGone,
            _ => Disposition::FixPayload,
        };
        NotifyError::new(driver, disposition, reason).with_status(answer.status)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn retry_after_reads_seconds_and_dates() {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("retry-after", "1.5".parse().unwrap());
            assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
            h.insert("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
            assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past is now");
            assert_eq!(
                httpdate("Sun, 06 Nov 1994 08:49:37 GMT"),
                Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
            );
            h.insert("retry-after", "soon".parse().unwrap());
            assert_eq!(retry_after(&h), None);
        }
    }
}

/// Seconds as a duration, from a vendor's JSON number (`retry_after: 0.3`).
pub fn seconds(value: &serde_json::Value) -> Option<Duration> {
    let secs = value.as_f64()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortening_keeps_the_title_and_cuts_the_body() {
        let n = Notification::new("a".repeat(50)).title("Disk full");
        let s = shorten(&n, 20);
        assert_eq!(text_of(&s).chars().count(), 20);
        assert_eq!(s.title.as_deref(), Some("Disk full"));
        assert!(s.body.ends_with(ELLIPSIS));
        assert_eq!(shorten(&n, 100), n);
        let long_title = Notification::new("body").title("t".repeat(30));
        let s = shorten(&long_title, 10);
        assert_eq!(text_of(&s).chars().count(), 10);
        let multibyte = Notification::new("é".repeat(30));
        assert_eq!(shorten(&multibyte, 7).body.chars().count(), 7);
    }
}
