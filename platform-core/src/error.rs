//! The portable error every platform crate returns.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in terms every backend shares.
///
/// Backends decide the kind from the native error code (one mapping function per
/// backend); callers decide what to do from the kind alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The named thing (queue, object, row, event) does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// A precondition failed: a version mismatch, a lease that was lost, a second ack.
    Conflict,
    /// The caller's input is wrong: a bad URL, an oversized body, an unknown parameter.
    InvalidInput,
    /// No or bad credentials.
    Unauthenticated,
    /// The credentials are valid but not allowed to do this.
    PermissionDenied,
    /// Too many requests; see [`Error::retry_after`].
    RateLimited,
    /// The server cannot be reached or refuses service for now.
    Unavailable,
    /// The operation did not finish in time.
    Timeout,
    /// The operation was cancelled by the caller or by shutdown.
    Cancelled,
    /// The backend cannot do this; see its capabilities.
    Unsupported,
    /// Anything else: a bug, a protocol violation, a corrupted state.
    Internal,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [Self; 12] = [
        Self::NotFound,
        Self::AlreadyExists,
        Self::Conflict,
        Self::InvalidInput,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::RateLimited,
        Self::Unavailable,
        Self::Timeout,
        Self::Cancelled,
        Self::Unsupported,
        Self::Internal,
    ];

    /// The stable snake_case code, as used in problem details (`not_found`).
    pub const fn code(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::Conflict => "conflict",
            Self::InvalidInput => "invalid_input",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Unsupported => "unsupported",
            Self::Internal => "internal",
        }
    }

    /// A short human title (`Not found`).
    pub const fn title(self) -> &'static str {
        match self {
            Self::NotFound => "Not found",
            Self::AlreadyExists => "Already exists",
            Self::Conflict => "Conflict",
            Self::InvalidInput => "Invalid input",
            Self::Unauthenticated => "Unauthenticated",
            Self::PermissionDenied => "Permission denied",
            Self::RateLimited => "Rate limited",
            Self::Unavailable => "Unavailable",
            Self::Timeout => "Timed out",
            Self::Cancelled => "Cancelled",
            Self::Unsupported => "Unsupported",
            Self::Internal => "Internal error",
        }
    }

    /// Whether an error of this kind is worth retrying as it is:
    /// `Unavailable`, `Timeout` and `RateLimited`.
    pub const fn is_retryable(self) -> bool {
        matches!(self, Self::Unavailable | Self::Timeout | Self::RateLimited)
    }

    /// Parses a code produced by [`ErrorKind::code`].
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The kind of an HTTP error status a server answered (a 2xx or 3xx is `Internal`:
    /// the caller asked about an error): what HTTP-speaking backends map their answers
    /// with.
    pub const fn from_http_status(status: u16) -> Self {
        match status {
            400 | 413 | 414 | 415 | 422 => Self::InvalidInput,
            401 => Self::Unauthenticated,
            403 => Self::PermissionDenied,
            404 | 410 => Self::NotFound,
            409 | 412 => Self::Conflict,
            408 | 504 => Self::Timeout,
            429 => Self::RateLimited,
            501 => Self::Unsupported,
            500 | 502 | 503 => Self::Unavailable,
            _ => Self::Internal,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotFound => "not found",
            Self::AlreadyExists => "already exists",
            Self::Conflict => "conflict",
            Self::InvalidInput => "invalid input",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission denied",
            Self::RateLimited => "rate limited",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timed out",
            Self::Cancelled => "cancelled",
            Self::Unsupported => "unsupported",
            Self::Internal => "internal error",
        })
    }
}

/// One field-level complaint carried by an `InvalidInput` error (and its problem details).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub struct FieldError {
    /// The field, parameter or variable that is wrong (`visibility_timeout`, `QUEUE_URL`).
    pub field: String,
    /// Why it is wrong.
    pub reason: String,
}

impl FieldError {
    /// A complaint about `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The error of every platform crate: a portable [`ErrorKind`] plus context.
///
/// `Display` is one lowercase line (`not found: queue "jobs" (redis, op=receive)`);
/// `Debug` shows every field and the source. The native error of the backend stays
/// reachable through [`std::error::Error::source`] and [`Error::downcast_source`].
pub struct Error {
    kind: ErrorKind,
    backend: &'static str,
    op: &'static str,
    message: Cow<'static, str>,
    source: Option<BoxError>,
    retry_after: Option<Duration>,
    retryable: Option<bool>,
    details: Vec<FieldError>,
}

impl Error {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            backend: "",
            op: "",
            message: message.into(),
            source: None,
            retry_after: None,
            retryable: None,
            details: Vec::new(),
        }
    }

    /// `NotFound` with `message`.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// `InvalidInput` with `message`.
    pub fn invalid_input(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// `Conflict` with `message`.
    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// `Unavailable` with `message`.
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// `Internal` with `message`.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// `Unsupported`: `backend` cannot do `op`.
    pub fn unsupported(backend: &'static str, op: &'static str) -> Self {
        Self::new(ErrorKind::Unsupported, format!("{backend} does not support {op}")).with_backend(backend).with_op(op)
    }

    /// Sets the backend name (`redis`, `postgres`).
    #[must_use]
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.backend = backend;
        self
    }

    /// Sets the operation (`send`, `receive`, `get`).
    #[must_use]
    pub fn with_op(mut self, op: &'static str) -> Self {
        self.op = op;
        self
    }

    /// Sets the backend and the operation where they are not set yet: what a portable
    /// layer stamps on every error passing through it.
    #[must_use]
    pub fn in_context(mut self, backend: &'static str, op: &'static str) -> Self {
        if self.backend.is_empty() {
            self.backend = backend;
        }
        if self.op.is_empty() {
            self.op = op;
        }
        self
    }

    /// Attaches the native error.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// How long the server asked the caller to wait before trying again.
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Overrides the retryability that the kind implies.
    #[must_use]
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = Some(retryable);
        self
    }

    /// Adds a field-level complaint (shown as `details` in problem details).
    #[must_use]
    pub fn with_detail(mut self, field: impl Into<String>, reason: impl Into<String>) -> Self {
        self.details.push(FieldError::new(field, reason));
        self
    }

    /// The portable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The backend that failed, or `""`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The operation that failed, or `""`.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The message, without kind and context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How long to wait before a retry, when the server said so.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Field-level complaints of an `InvalidInput` error.
    pub fn details(&self) -> &[FieldError] {
        &self.details
    }

    /// Whether retrying may succeed: from the kind, unless the backend overrode it.
    pub fn is_retryable(&self) -> bool {
        self.retryable.unwrap_or_else(|| self.kind.is_retryable())
    }

    /// The native error, if it is a `T`.
    pub fn downcast_source<T: StdError + 'static>(&self) -> Option<&T> {
        self.source.as_deref().and_then(|s| s.downcast_ref::<T>())
    }

    /// `kind() == NotFound`.
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }
    /// `kind() == AlreadyExists`.
    pub fn is_already_exists(&self) -> bool {
        self.kind == ErrorKind::AlreadyExists
    }
    /// `kind() == Conflict`.
    pub fn is_conflict(&self) -> bool {
        self.kind == ErrorKind::Conflict
    }
    /// `kind() == InvalidInput`.
    pub fn is_invalid_input(&self) -> bool {
        self.kind == ErrorKind::InvalidInput
    }
    /// `kind() == Unauthenticated`.
    pub fn is_unauthenticated(&self) -> bool {
        self.kind == ErrorKind::Unauthenticated
    }
    /// `kind() == PermissionDenied`.
    pub fn is_permission_denied(&self) -> bool {
        self.kind == ErrorKind::PermissionDenied
    }
    /// `kind() == RateLimited`.
    pub fn is_rate_limited(&self) -> bool {
        self.kind == ErrorKind::RateLimited
    }
    /// `kind() == Unavailable`.
    pub fn is_unavailable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }
    /// `kind() == Timeout`.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }
    /// `kind() == Cancelled`.
    pub fn is_cancelled(&self) -> bool {
        self.kind == ErrorKind::Cancelled
    }
    /// `kind() == Unsupported`.
    pub fn is_unsupported(&self) -> bool {
        self.kind == ErrorKind::Unsupported
    }
    /// `kind() == Internal`.
    pub fn is_internal(&self) -> bool {
        self.kind == ErrorKind::Internal
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if !self.message.is_empty() {
            f.write_str(": ")?;
            // One line, whatever the native message looked like.
            for (i, line) in self.message.lines().enumerate() {
                if i > 0 {
                    f.write_str(" ")?;
                }
                f.write_str(line.trim())?;
            }
        }
        match (self.backend.is_empty(), self.op.is_empty()) {
            (true, true) => Ok(()),
            (false, true) => write!(f, " ({})", self.backend),
            (true, false) => write!(f, " (op={})", self.op),
            (false, false) => write!(f, " ({}, op={})", self.backend, self.op),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("backend", &self.backend)
            .field("op", &self.op)
            .field("message", &self.message)
            .field("retryable", &self.is_retryable());
        if let Some(after) = self.retry_after {
            d.field("retry_after", &after);
        }
        if !self.details.is_empty() {
            d.field("details", &self.details);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn StdError + 'static))
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        use std::io::ErrorKind as Io;
        let kind = match e.kind {
            ErrorKind::NotFound => Io::NotFound,
            ErrorKind::AlreadyExists => Io::AlreadyExists,
            ErrorKind::PermissionDenied | ErrorKind::Unauthenticated => Io::PermissionDenied,
            ErrorKind::Timeout => Io::TimedOut,
            ErrorKind::InvalidInput => Io::InvalidInput,
            ErrorKind::Unsupported => Io::Unsupported,
            ErrorKind::Cancelled => Io::Interrupted,
            _ => Io::Other,
        };
        Self::new(kind, e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        let kind = if e.is_io() { ErrorKind::Unavailable } else { ErrorKind::InvalidInput };
        Self::new(kind, format!("json: {e}")).with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_lowercase_line_with_context() {
        let e = Error::not_found("queue \"jobs\"").with_backend("redis").with_op("receive");
        assert_eq!(e.to_string(), "not found: queue \"jobs\" (redis, op=receive)");
        let e = Error::internal("first\nsecond\n").with_op("send");
        assert_eq!(e.to_string(), "internal error: first second (op=send)");
        assert_eq!(Error::new(ErrorKind::Timeout, "").to_string(), "timed out");
    }

    #[test]
    fn debug_is_detailed() {
        let e = Error::unavailable("down")
            .with_backend("redis")
            .with_retry_after(Duration::from_secs(2))
            .with_source(std::io::Error::other("connection refused"));
        let s = format!("{e:#?}");
        for part in ["kind: Unavailable", "backend: \"redis\"", "retry_after: 2s", "connection refused"] {
            assert!(s.contains(part), "{part} missing from {s}");
        }
        assert!(s.lines().count() > 4);
    }

    #[test]
    fn http_statuses_map_to_kinds() {
        for (status, kind) in [
            (400, ErrorKind::InvalidInput),
            (401, ErrorKind::Unauthenticated),
            (403, ErrorKind::PermissionDenied),
            (404, ErrorKind::NotFound),
            (409, ErrorKind::Conflict),
            (429, ErrorKind::RateLimited),
            (503, ErrorKind::Unavailable),
            (504, ErrorKind::Timeout),
            (200, ErrorKind::Internal),
        ] {
            assert_eq!(ErrorKind::from_http_status(status), kind, "{status}");
        }
    }

    #[test]
    fn retryable_from_kind_and_override() {
        for kind in ErrorKind::ALL {
            let expected = matches!(kind, ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::RateLimited);
            assert_eq!(Error::new(kind, "x").is_retryable(), expected, "{kind:?}");
        }
        assert!(!Error::unavailable("x").with_retryable(false).is_retryable());
        assert!(Error::internal("x").with_retryable(true).is_retryable());
    }

    #[test]
    fn predicates_match_kinds() {
        let e = Error::new(ErrorKind::PermissionDenied, "no");
        assert!(e.is_permission_denied() && !e.is_not_found());
        assert!(Error::conflict("c").is_conflict());
        assert!(Error::unsupported("mqtt", "delay").is_unsupported());
        assert_eq!(
            Error::unsupported("mqtt", "delay").to_string(),
            "unsupported: mqtt does not support delay (mqtt, op=delay)"
        );
    }

    #[test]
    fn codes_round_trip() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(ErrorKind::from_code("nope"), None);
    }

    #[test]
    fn native_error_is_reachable() {
        let e =
            Error::unavailable("x").with_source(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        let io = e.downcast_source::<std::io::Error>().expect("io error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(StdError::source(&e).is_some());
        assert!(e.downcast_source::<serde_json::Error>().is_none());
    }

    #[test]
    fn converts_to_io_error() {
        let io: std::io::Error = Error::not_found("gone").into();
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        let io: std::io::Error = Error::new(ErrorKind::Timeout, "slow").into();
        assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
        let io: std::io::Error = Error::new(ErrorKind::PermissionDenied, "no").into();
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
        let io: std::io::Error = Error::internal("bug").into();
        assert_eq!(io.kind(), std::io::ErrorKind::Other);
    }
}
