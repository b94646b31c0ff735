//! Redis and Valkey errors onto the portable kinds, for the crates with a Redis backend
//! (feature `redis`).

use crate::{Error, ErrorKind};

/// Maps a Redis error onto the portable kinds: timeouts, lost connections and a
/// server that is loading or read-only are retryable kinds; a refused command is
/// `PermissionDenied`.
pub fn map_error(e: ::redis::RedisError) -> Error {
    use ::redis::ErrorKind as K;
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        ErrorKind::Unavailable
    } else {
        match e.kind() {
            K::AuthenticationFailed => ErrorKind::Unauthenticated,
            K::InvalidClientConfig => ErrorKind::InvalidInput,
            K::Io | K::ClusterConnectionNotFound => ErrorKind::Unavailable,
            K::Server(s) => match s {
                ::redis::ServerErrorKind::BusyLoading
                | ::redis::ServerErrorKind::TryAgain
                | ::redis::ServerErrorKind::ClusterDown
                | ::redis::ServerErrorKind::MasterDown
                | ::redis::ServerErrorKind::ReadOnly => ErrorKind::Unavailable,
                ::redis::ServerErrorKind::NoPerm => ErrorKind::PermissionDenied,
                ::redis::ServerErrorKind::CrossSlot => ErrorKind::Unsupported,
                _ => ErrorKind::Internal,
            },
            _ => ErrorKind::Internal,
        }
    };
    Error::new(kind, e.to_string()).with_backend("redis").with_source(e)
}
