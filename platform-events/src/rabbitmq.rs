//! The event bus on RabbitMQ: `amqp://user:password@host:5672/vhost`.
//!
//! - A durable topic exchange per namespace (`platform.events.{namespace}`); every
//!   group is a quorum queue of platform-queue's RabbitMQ backend (`{namespace}.{group}`)
//!   bound to it with the group's pattern. The broker routes: a publish is one message
//!   per event, confirmed once the broker stored it in every matching group's queue, and
//!   a publisher never reads the groups (a new group is reached at once).
//! - Patterns become AMQP topic bindings: `*` is `*`, a trailing `>` is `*.#` (one
//!   segment or more).
//! - A group's pattern is kept in a one-message queue (`{namespace}.{group}.pattern`,
//!   `x-max-length` 1 with `reject-publish`): the first `subscribe` stores it, a later one
//!   with another pattern reads it and is refused.
//! - No dedup: RabbitMQ has none, so a publish retried after an error may deliver an
//!   event twice (`capabilities().deduplicates` is false); consumers dedupe by
//!   `event_id`.
//!
//! URL: the queue's (`queue_type`, `prefetch`, `visibility_timeout`, `max_attempts`
//! apply to every group's queue) plus `namespace`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use platform_core::{Error, Result};
use platform_queue::rabbitmq::{RabbitMqQueue, map_err, message_properties};
use platform_queue::{Message, Queue};

use crate::queued::{BusUrl, GroupStore, QueuedBus};

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["amqp"];

/// How long `subscribe` waits to read a group's pattern that another consumer is
/// reading at the same moment.
const READ_PATTERN: Duration = Duration::from_secs(5);

/// The groups of a RabbitMQ bus: bindings on the namespace's topic exchange.
pub struct RabbitGroups {
    bus: BusUrl,
    exchange: String,
    conn: Connection,
    publisher: Channel,
    location: String,
}

impl fmt::Debug for RabbitGroups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitGroups").field("exchange", &self.exchange).finish_non_exhaustive()
    }
}

/// The event bus on RabbitMQ.
pub type RabbitBus = QueuedBus<RabbitGroups>;

impl RabbitBus {
    /// Opens the bus: the URL is the queue's (its parameters apply to every group's
    /// queue) plus `namespace`.
    pub async fn from_url(url: &str) -> Result<crate::BusHandle<Self>> {
        let bus = BusUrl::parse(url)?;
        let (options, caps) = RabbitMqQueue::check_url(&bus.queue_url(&bus.queue_name("_")))?;
        let mut server = url::Url::parse(url).map_err(|e| Error::invalid_input(e.to_string()))?;
        server.set_query(None);
        let location = format!("{}:{}", server.host_str().unwrap_or("localhost"), server.port().unwrap_or(5672));
        let conn = Connection::connect(server.as_str(), ConnectionProperties::default()).await.map_err(map_err)?;
        let publisher = conn.create_channel().await.map_err(map_err)?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(map_err)?;
        let exchange = format!("platform.events.{}", bus.namespace);
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        publisher
            .exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await
            .map_err(map_err)?;
        let groups = RabbitGroups { bus: bus.clone(), exchange, conn, publisher, location };
        Ok(crate::BusHandle::new(Self::new(groups, bus, options, &caps)))
    }
}

/// The AMQP binding key of a pattern: `>` (one segment or more) is `*.#`.
fn binding_key(pattern: &str) -> String {
    match pattern.strip_suffix('>') {
        Some(head) => format!("{head}*.#"),
        None => pattern.to_owned(),
    }
}

impl RabbitGroups {
    /// Publishes on the publisher channel and waits for every confirm.
    async fn confirm_all(&self, exchange: &str, sends: Vec<(String, &[u8], BasicProperties)>) -> Result<bool> {
        let mut confirms = Vec::with_capacity(sends.len());
        for (key, body, props) in sends {
            let c = self
                .publisher
                .basic_publish(exchange.into(), key.as_str().into(), BasicPublishOptions::default(), body, props)
                .await
                .map_err(map_err)?;
            confirms.push(c);
        }
        let mut all_acked = true;
        for c in confirms {
            if let Confirmation::Nack(_) = c.await.map_err(map_err)? {
                all_acked = false;
            }
        }
        Ok(all_acked)
    }

    /// The pattern kept in `marker`, waiting while another consumer reads it.
    async fn read_pattern(&self, marker: &str) -> Result<String> {
        let deadline = tokio::time::Instant::now() + READ_PATTERN;
        let channel = self.conn.create_channel().await.map_err(map_err)?;
        let held = loop {
            let got = channel.basic_get(marker.into(), BasicGetOptions { no_ack: false }).await.map_err(map_err)?;
            if let Some(got) = got {
                break String::from_utf8_lossy(&got.delivery.data).into_owned();
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = channel.close(200, "".into()).await;
                return Err(Error::unavailable(format!("the pattern in {marker:?} could not be read")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Unacked, it goes back when the channel closes.
        let _ = channel.close(200, "".into()).await;
        Ok(held)
    }
}

#[async_trait]
impl GroupStore for RabbitGroups {
    fn backend(&self) -> &'static str {
        "rabbitmq"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn register(&self, group: &str, pattern: &str) -> Result<(String, bool)> {
        let marker = format!("{}.pattern", self.bus.queue_name(group));
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
        args.insert("x-overflow".into(), AMQPValue::LongString(LongString::from("reject-publish")));
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        self.publisher.queue_declare(marker.as_str().into(), durable, args).await.map_err(map_err)?;
        let props = BasicProperties::default().with_delivery_mode(2);
        // The first pattern stored stays; a full queue refuses the rest (a nack).
        if self.confirm_all("", vec![(marker.clone(), pattern.as_bytes(), props)]).await? {
            return Ok((pattern.to_owned(), true));
        }
        Ok((self.read_pattern(&marker).await?, false))
    }

    async fn groups(&self) -> Result<Vec<(String, String)>> {
        // The broker routes events: the bus never lists the groups.
        Err(Error::unsupported("rabbitmq", "listing groups"))
    }

    async fn open_queue(&self, options: platform_queue::QueueOptions) -> Result<Arc<dyn Queue>> {
        Ok(Arc::new(RabbitMqQueue::from_url(&self.bus.queue_url(&options.queue)).await?))
    }

    fn routes(&self) -> bool {
        true
    }

    async fn route(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        let sends = messages.iter().map(|m| (topic.to_owned(), &m.body[..], message_properties(&m.headers))).collect();
        if self.confirm_all(&self.exchange, sends).await? {
            Ok(())
        } else {
            Err(Error::unavailable("broker refused an event (nack)").with_backend("rabbitmq"))
        }
    }

    async fn attach(&self, _group: &str, pattern: &str, queue: &str) -> Result<()> {
        let key = binding_key(pattern);
        self.publisher
            .queue_bind(
                queue.into(),
                self.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(map_err)
    }

    async fn ping(&self) -> Result<Option<String>> {
        // A passive declare is a real round trip to the broker.
        let passive = ExchangeDeclareOptions { passive: true, durable: true, ..Default::default() };
        self.publisher
            .exchange_declare(self.exchange.as_str().into(), ExchangeKind::Topic, passive, FieldTable::default())
            .await
            .map_err(map_err)?;
        // The client does not expose the broker's version.
        Ok(Some("RabbitMQ (AMQP 0-9-1)".into()))
    }

    async fn close(&self) -> Result<()> {
        let _ = self.conn.close(200, "closed".into()).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_binding_keys() {
        assert_eq!(binding_key("jobs.*.events"), "jobs.*.events");
        assert_eq!(binding_key("jobs.>"), "jobs.*.#");
        assert_eq!(binding_key(">"), "*.#");
        assert_eq!(binding_key("a.b"), "a.b");
    }
}
