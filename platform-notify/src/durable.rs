//! Durable delivery through platform-queue (feature `durable`): a notification is first
//! a queue message, one per route that takes it, and a [`Worker`](platform_queue::Worker)
//! running [`DurableHandler`] delivers it. A process that dies mid-send loses nothing:
//! the message was not acked, so its lease runs out and another worker sends it (at
//! least once: the notification's id, stable across retries, lets receivers deduplicate).
//!
//! ```rust,ignore
//! let dispatcher = Arc::new(dispatcher);
//! dispatcher.enqueue(queue.as_ref(), &notification, &Address::Configured).await?;
//! Worker::new(queue, DurableHandler::new(Arc::clone(&dispatcher))).run(shutdown).await?;
//! ```
//!
//! The handler acks a delivered message; a retryable failure goes back on the queue
//! after the vendor's delay (the longest one the route's notifiers asked for), so the
//! queue's `max_attempts` bounds it; a route that failed for good (recipient gone,
//! configuration, payload) is dead-lettered with its reasons, kept for a person.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use platform_core::{Error, Result};
use platform_queue::{Delivery as QueueDelivery, Handler, Message, Queue};

use crate::dispatch::Delivery;
use crate::{Address, Dispatcher, Disposition, Notification};

/// A queued notification: one route of it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Job {
    route: String,
    notification: Notification,
    to: Address,
}

impl Dispatcher {
    /// Queues `notification` for `to`: one message per route that takes it. The
    /// routes queued, in order; a notification no route takes is `InvalidInput` (it
    /// would be dropped).
    pub async fn enqueue(&self, queue: &dyn Queue, notification: &Notification, to: &Address) -> Result<Vec<String>> {
        let routes = self.routes_for(notification);
        if routes.is_empty() {
            return Err(Error::invalid_input(format!("no route takes notification {}", notification.id)));
        }
        let messages = routes
            .iter()
            .map(|route| {
                let job = Job { route: route.clone(), notification: notification.clone(), to: to.clone() };
                Message::json(&job).map(|m| m.with_header("notification-id", notification.id.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        queue.send_batch(messages).await?;
        Ok(routes)
    }
}

/// Delivers queued notifications (see the [module](self) docs).
#[derive(Debug, Clone)]
pub struct DurableHandler {
    dispatcher: Arc<Dispatcher>,
}

impl DurableHandler {
    /// Delivers through `dispatcher`.
    pub fn new(dispatcher: Arc<Dispatcher>) -> Self {
        Self { dispatcher }
    }
}

#[async_trait]
impl Handler for DurableHandler {
    async fn handle(&self, delivery: Arc<QueueDelivery>) -> Result<()> {
        let job: Job = delivery.json().map_err(|e| Error::invalid_input(format!("not a queued notification: {e}")))?;
        let outcome = self.dispatcher.notify_route(&job.route, &job.notification, &job.to).await;
        let errors = match outcome {
            None => return Err(Error::invalid_input(format!("route {:?} is not configured", job.route))),
            Some(Delivery::Failed { errors, .. }) => errors,
            Some(_) => return Ok(()),
        };
        let reasons = errors.iter().map(|(n, e)| format!("{n}: {e}")).collect::<Vec<_>>().join("; ");
        let retryable = errors.iter().any(|(_, e)| e.is_retryable());
        if retryable {
            let after: Option<Duration> = errors
                .iter()
                .filter_map(|(_, e)| match e.disposition {
                    Disposition::Retry { after } => after,
                    _ => None,
                })
                .max();
            delivery.nack_with_reason(after, &reasons).await?;
        } else {
            delivery.dead_letter(&reasons).await?;
        }
        Ok(())
    }
}
