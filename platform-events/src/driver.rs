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

use tokio::sync::broadcast;

pub use crate::broadcast::Published;
pub use crate::channel::{Pattern, validate_channel};
use crate::{Result, Subscription};

/// A subscription to `pattern` reading `rx`; `feeder`, the task that fills `rx` (if
/// any), is aborted when the subscription is dropped.
pub fn subscription(
    pattern: &str,
    rx: broadcast::Receiver<Published>,
    feeder: Option<tokio::task::JoinHandle<()>>,
) -> Result<Subscription> {
    Ok(Subscription::new(Pattern::parse(pattern)?, rx, feeder))
}
