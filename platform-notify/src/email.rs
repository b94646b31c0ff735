//! Email over SMTP (through lettre): `smtp://user:password@host[:port]?from=…` with
//! STARTTLS required (port 587 by default), `smtps://…` with TLS from the first byte
//! (port 465). `to=a@example.com,b@example.com` is the configured destination;
//! [`Address::Email`] sends to one address. `tls=opportunistic` or `tls=none` relax
//! STARTTLS (for a local relay), `ca_file=` trusts another CA as well, `timeout=`
//! bounds each command. Connections are pooled.
//!
//! The message is plain UTF-8 text: the subject is the title (or the body's first line,
//! shortened to 78 characters), the body the text. Its `Message-ID` is
//! `<{notification id}@platform-notify>`, the same on every retry so that receivers
//! can drop a duplicate; it is the receipt. Critical notifications carry
//! `Importance: high`.
//!
//! Replies are read by their code: 4yz retry; 535, 530, 534 and 538 are the
//! credentials or TLS (configuration); 550, 551, 553, 521 and 556 the recipient gone;
//! other 5yz (552 too large, 554 refused) the payload. A connection or TLS failure
//! retries, except a certificate the client does not trust (configuration).

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Mailboxes};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use platform_core::Result;
use platform_core::config::UrlParams;

use crate::{Address, Capabilities, Disposition, Notification, Notifier, NotifyError, Receipt, Severity};

const DRIVER: &str = "email";

/// The email driver.
pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Option<Mailboxes>,
    server: String,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Email {
    /// From `smtp://…` or `smtps://…`.
    pub fn from_url(url: &url::Url, params: &mut UrlParams) -> Result<Self> {
        let implicit = url.scheme() == "smtps";
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| params.error("host", "is missing"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = url.port().unwrap_or(if implicit { 465 } else { 587 });
        let from = params.take("from").ok_or_else(|| params.error("from", "is missing: the sender's address"))?;
        let from: Mailbox = from.parse().map_err(|e| params.error("from", &format!("is not an address: {e}")))?;
        let to = match params.take("to") {
            Some(list) => Some(
                list.parse::<Mailboxes>()
                    .map_err(|e| params.error("to", &format!("is not a list of addresses: {e}")))?,
            ),
            None => None,
        };
        let mode = params.take("tls").unwrap_or_else(|| "required".to_owned());
        let timeout = params.take_duration("timeout")?.unwrap_or(Duration::from_secs(10));
        let mut tls = TlsParameters::builder(host.clone());
        if let Some(path) = params.take("ca_file") {
            let pem = std::fs::read(&path).map_err(|e| params.error("ca_file", &format!("cannot be read: {e}")))?;
            let ca = Certificate::from_pem(&pem).map_err(|_| params.error("ca_file", "is not a PEM certificate"))?;
            tls = tls.add_root_certificate(ca);
        }
        let tls = tls.build_rustls().map_err(|e| params.error("ca_file", &format!("TLS could not be set up: {e}")))?;
        let tls = match (implicit, mode.as_str()) {
            (true, "required") => Tls::Wrapper(tls),
            (false, "required") => Tls::Required(tls),
            (false, "opportunistic") => Tls::Opportunistic(tls),
            (false, "none") => Tls::None,
            (true, _) => return Err(params.error("tls", "smtps:// is TLS from the first byte; leave tls= out")),
            (false, _) => return Err(params.error("tls", "is one of required, opportunistic, none")),
        };
        params.finish(DRIVER)?;
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host).port(port).tls(tls).timeout(Some(timeout));
        if !url.username().is_empty() {
            let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            let password = url.password().map(decode).unwrap_or_default();
            builder = builder.credentials(Credentials::new(decode(url.username()), password));
        }
        let server = format!("{}://{host}:{port}", url.scheme());
        Ok(Self { transport: builder.build(), from, to, server })
    }
}

/// The subject: the title, else the body's first line, at most 78 characters.
fn subject(n: &Notification) -> String {
    let line = n.title.as_deref().unwrap_or_else(|| n.body.lines().next().unwrap_or_default());
    if line.chars().count() <= 78 {
        return line.to_owned();
    }
    let mut s: String = line.chars().take(77).collect();
    s.push(crate::driver::ELLIPSIS);
    s
}

/// What a reply code means.
pub fn disposition(code: u16) -> Disposition {
    match code {
        400..=499 => Disposition::Retry { after: None },
        530 | 534 | 535 | 538 => Disposition::FixConfig,
        550 | 551 | 553 | 521 | 556 => Disposition::RecipientGone,
        _ => Disposition::FixPayload,
    }
}

fn failure(e: &lettre::transport::smtp::Error) -> NotifyError {
    if let Some(code) = e.status() {
        let code = u16::from(code);
        // The server's own words after the code (`5.1.1 … User unknown`), never a secret.
        let said = e.to_string();
        return NotifyError::new(DRIVER, disposition(code), said).with_status(code);
    }
    let (disposition, why) = if e.is_timeout() {
        (Disposition::Retry { after: None }, "timed out")
    } else if e.is_tls() || handshake_refused(e) {
        (Disposition::FixConfig, "the TLS handshake failed (is the server's certificate trusted?)")
    } else {
        (Disposition::Retry { after: None }, "could not reach the server")
    };
    NotifyError::new(DRIVER, disposition, why)
}

/// Whether the connection failed in the TLS handshake: rustls reports a certificate it
/// does not trust (or a protocol failure) as invalid data under lettre's connection
/// error, where a refused or reset connection has its own kind.
fn handshake_refused(e: &lettre::transport::smtp::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::InvalidData;
        }
        source = s.source();
    }
    false
}

#[async_trait]
impl Notifier for Email {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { max_text: 1_000_000, title: true, addresses: true }
    }

    async fn send(&self, n: &Notification, to: &Address) -> std::result::Result<Receipt, NotifyError> {
        let recipients = match to {
            Address::Configured => match &self.to {
                Some(list) => list.clone(),
                None => return Err(NotifyError::new(DRIVER, Disposition::FixConfig, "no to= configured")),
            },
            Address::Email(one) => match one.parse::<Mailbox>() {
                Ok(mailbox) => Mailboxes::from(mailbox),
                Err(_) => return Err(NotifyError::new(DRIVER, Disposition::RecipientGone, "not an email address")),
            },
            other => return Err(NotifyError::new(DRIVER, Disposition::FixConfig, format!("cannot send to {other}"))),
        };
        let message_id = format!("<{}@platform-notify>", n.id);
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject(n))
            .message_id(Some(message_id.clone()))
            .header(ContentType::TEXT_PLAIN);
        for mailbox in recipients {
            builder = builder.to(mailbox);
        }
        if n.severity == Severity::Critical {
            builder = builder.header(Importance);
        }
        let message = builder.body(n.body.clone()).map_err(|e| {
            NotifyError::new(DRIVER, Disposition::FixPayload, format!("the message could not be built: {e}"))
        })?;
        match self.transport.send(message).await {
            Ok(_) => Ok(Receipt { vendor_id: Some(message_id), pause: None }),
            Err(e) => Err(failure(&e)),
        }
    }
}

/// `Importance: high`.
#[derive(Debug, Clone, Copy)]
struct Importance;

impl lettre::message::header::Header for Importance {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("Importance")
    }

    fn parse(_: &str) -> std::result::Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }

    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), "high".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_are_dispositions() {
        assert_eq!(disposition(451), Disposition::Retry { after: None });
        assert_eq!(disposition(421), Disposition::Retry { after: None });
        assert_eq!(disposition(550), Disposition::RecipientGone);
        assert_eq!(disposition(553), Disposition::RecipientGone);
        assert_eq!(disposition(535), Disposition::FixConfig);
        assert_eq!(disposition(552), Disposition::FixPayload);
        assert_eq!(disposition(554), Disposition::FixPayload);
    }

    #[test]
    fn subjects_are_short() {
        assert_eq!(subject(&Notification::new("first\nsecond")), "first");
        assert_eq!(subject(&Notification::new("b").title("t")), "t");
        let long = subject(&Notification::new("x".repeat(100)));
        assert_eq!(long.chars().count(), 78);
        assert!(long.ends_with('…'));
    }
}
