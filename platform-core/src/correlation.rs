//! Correlation ids: the id that ties one request's logs, messages and events together.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::{Error, Result};

/// The header that carries the correlation id in HTTP requests and messages.
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";
/// The W3C trace-context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The W3C trace-context vendor header.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// The longest correlation id accepted from outside.
pub const MAX_CORRELATION_ID_LEN: usize = 128;

/// A correlation id: printable ASCII, 1 to 128 characters; new ones are UUID v7.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CorrelationId(String);

tokio::task_local! {
    static CURRENT: CorrelationId;
    static TRACEPARENT: String;
}

impl CorrelationId {
    /// A fresh id (UUID v7, time ordered).
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// Validates an id received from outside (a header, a message).
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() || s.len() > MAX_CORRELATION_ID_LEN {
            return Err(Error::invalid_input(format!(
                "correlation id must be 1 to {MAX_CORRELATION_ID_LEN} characters, got {}",
                s.len()
            )));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid_input("correlation id must be printable ASCII without spaces"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id of the current task, if one was set with [`with_correlation`].
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// The id of the current task, or a fresh one.
    pub fn current_or_new() -> Self {
        Self::current().unwrap_or_default()
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for CorrelationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CorrelationId({})", self.0)
    }
}

impl FromStr for CorrelationId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for CorrelationId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Runs `fut` with `id` as the current correlation id, inside a tracing span that
/// carries it (`correlation_id` field), so every log line below it shows the id and
/// [`CorrelationId::current`] finds it (for message headers, problem details, envelopes).
pub fn with_correlation<F: Future>(id: CorrelationId, fut: F) -> impl Future<Output = F::Output> {
    let span = tracing::info_span!("correlation", correlation_id = %id);
    CURRENT.scope(id, fut.instrument(span))
}

/// Runs `fut` with `id` as the current correlation id and no span of its own: for
/// callers whose span carries the id already (the HTTP request's).
#[cfg(feature = "http")]
pub(crate) fn scope_correlation<F: Future>(id: CorrelationId, fut: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(id, fut)
}

/// Runs `fut` with `traceparent` as the current W3C trace context: messages sent and
/// events made below it carry it (a `traceparent` header, the envelope's field). The
/// HTTP layer sets it from the request's header.
pub fn with_traceparent<F: Future>(traceparent: String, fut: F) -> impl Future<Output = F::Output> {
    TRACEPARENT.scope(traceparent, fut)
}

/// The current task's `traceparent`, if one was set with [`with_traceparent`].
pub fn current_traceparent() -> Option<String> {
    TRACEPARENT.try_with(Clone::clone).ok()
}

/// Whether `value` is a well-formed W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn current_follows_the_task() {
        assert!(CorrelationId::current().is_none());
        let id = CorrelationId::parse("req-42").unwrap();
        let seen = with_correlation(id.clone(), async {
            tokio::task::yield_now().await;
            CorrelationId::current()
        })
        .await;
        assert_eq!(seen, Some(id));
        assert!(CorrelationId::current().is_none());
        assert_ne!(CorrelationId::current_or_new(), CorrelationId::current_or_new());
    }

    #[tokio::test]
    async fn traceparent_follows_the_task() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned();
        assert_eq!(with_traceparent(tp.clone(), async { current_traceparent() }).await, Some(tp));
        assert!(current_traceparent().is_none());
    }

    #[test]
    fn parse_rejects_bad_ids() {
        assert!(CorrelationId::parse("").is_err());
        assert!(CorrelationId::parse("has space").is_err());
        assert!(CorrelationId::parse("line\nbreak").is_err());
        assert!(CorrelationId::parse(&"x".repeat(129)).is_err());
        assert!(CorrelationId::parse(&"x".repeat(128)).is_ok());
        assert!(serde_json::from_str::<CorrelationId>("\"a b\"").is_err());
        let id: CorrelationId = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(id.as_str(), "abc");
        assert_eq!(uuid::Uuid::parse_str(CorrelationId::new().as_str()).unwrap().get_version_num(), 7);
    }

    #[test]
    fn traceparent_validation() {
        assert!(is_valid_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!is_valid_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
        assert!(!is_valid_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"));
        assert!(!is_valid_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));
    }
}
