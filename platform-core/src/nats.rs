//! NATS errors onto the portable kinds, for the crates with a NATS backend.
//!
//! async-nats has one error type per call, each carrying a kind of its own; what they
//! share is their text, which names the cause. No dependency: every error type
//! converts into a boxed error.

use crate::{Error, ErrorKind};

/// Maps an async-nats error onto the portable kinds, by what its text names (timeout,
/// authorization, permission, not found, a lost connection, the payload limit).
pub fn map_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let kind = if lower.contains("timed out") || lower.contains("timeout") {
        ErrorKind::Timeout
    } else if lower.contains("authorization") || lower.contains("authentication") {
        ErrorKind::Unauthenticated
    } else if lower.contains("permission") {
        ErrorKind::PermissionDenied
    } else if lower.contains("not found") {
        ErrorKind::NotFound
    } else if lower.contains("no responders")
        || lower.contains("disconnect")
        || lower.contains("connection")
        || lower.contains("broken pipe")
        || lower.contains("io error")
    {
        ErrorKind::Unavailable
    } else if lower.contains("maximum payload") || lower.contains("max payload") {
        ErrorKind::InvalidInput
    } else {
        ErrorKind::Internal
    };
    Error::new(kind, text).with_backend("nats").with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_map_to_kinds() {
        let io = |t: &str| std::io::Error::other(t.to_owned());
        let cases = [
            ("request timed out", ErrorKind::Timeout),
            ("authorization violation", ErrorKind::Unauthenticated),
            ("permissions violation for publish", ErrorKind::PermissionDenied),
            ("stream not found", ErrorKind::NotFound),
            ("no responders", ErrorKind::Unavailable),
            ("maximum payload exceeded", ErrorKind::InvalidInput),
            ("something else", ErrorKind::Internal),
        ];
        for (text, kind) in cases {
            let e = map_error(io(text));
            assert_eq!((e.kind(), e.backend()), (kind, "nats"), "{text}");
        }
    }
}
