//! What only a backend author needs: the building blocks the backends of this crate
//! are made of, public so a backend outside it is built the same way.
//!
//! Users never need this module: they hold an `Arc<dyn Broadcast>` from
//! [`open_broadcast`](crate::open_broadcast) or a backend's `from_url`, both a
//! [`BroadcastHandle`](crate::BroadcastHandle), which checks channel names, patterns
//! and payload sizes, keeps the closed state, stamps errors and opens spans for every
//! backend alike.
//!
//! A backend implements [`Broadcast`](crate::Broadcast) and returns it wrapped in
//! [`BroadcastHandle::new`](crate::BroadcastHandle::new). Its subscriptions are
//! [`subscription`]s over a `tokio::sync::broadcast` receiver, which gives every
//! backend the same lag signal: a backend that reads from the network feeds the sender
//! from a task that the subscription ends when it is dropped.

use platform_core::Error;
use platform_core::config::UrlParams;
use tokio::sync::broadcast;

pub use crate::broadcast::{Feed, Published};
pub use crate::bus::{
    CORRELATION_HEADER, KEY_EXTENSION, KEY_HEADER, TOPIC_HEADER, TRACEPARENT_HEADER, TYPE_HEADER, validate_group,
};
pub use crate::channel::{Pattern, validate_channel};
#[cfg(feature = "_bus")]
pub use crate::queued::{BusUrl, GroupStore, QueuedBus, SHARED_REGISTRY_TTL, queue_options};
use crate::{Result, Subscription};

/// A subscription to `pattern` reading `rx`; `feeder`, the task that fills `rx` (if
/// any), is aborted when the subscription is dropped.
pub fn subscription(
    pattern: &str,
    rx: broadcast::Receiver<Feed>,
    feeder: Option<tokio::task::JoinHandle<()>>,
) -> Result<Subscription> {
    Ok(Subscription::new(Pattern::parse(pattern)?, rx, feeder))
}

/// Messages a subscription holds for a slow reader before it lags, unless `buffer`
/// says.
pub const DEFAULT_BUFFER: usize = 1024;

/// A broadcast URL as a backend reads it: the URL without its query, the parameters
/// still to take (call [`UrlParams::finish`] after taking the backend's own), and the
/// `buffer` every backend has.
#[derive(Debug)]
#[non_exhaustive]
pub struct BroadcastUrl {
    /// The URL, query removed (it may hold a password: mask it before showing).
    pub url: url::Url,
    /// The parameters not taken yet.
    pub params: UrlParams,
    /// Messages a subscription holds before it lags (`buffer`, at least 1).
    pub buffer: usize,
}

impl BroadcastUrl {
    /// Parses `raw` and takes `buffer`.
    pub fn parse(raw: &str) -> Result<Self> {
        let mut url = url::Url::parse(raw).map_err(|e| {
            let shown = platform_core::mask_url(raw);
            Error::invalid_input(format!("broadcast url {shown:?}: {e}"))
                .with_op("open")
                .with_detail("url", e.to_string())
        })?;
        let mut params = UrlParams::parse("broadcast", url.query())?;
        let buffer = params.take_number::<usize>("buffer")?.unwrap_or(DEFAULT_BUFFER);
        if buffer == 0 {
            return Err(params.error("buffer", "must be at least 1"));
        }
        url.set_query(None);
        Ok(Self { url, params, buffer })
    }
}
