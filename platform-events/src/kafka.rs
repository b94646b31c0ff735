//! The event bus on Kafka and Kafka-protocol brokers: `kafka://host:9092`.
//!
//! - Every group is a queue of platform-queue's Kafka backend: a topic of its own
//!   (`{namespace}.{group}`, with its retry and dead-letter topics) read by a consumer
//!   group (`platform-{namespace}.{group}`); a publish produces each event to every
//!   matching group's topic and returns once the broker acknowledged them all
//!   (`acks=all`).
//! - A group's pattern is kept in a one-partition topic (`{namespace}.__group.{group}`):
//!   every `subscribe` appends its pattern and reads the first record, so the first
//!   pattern stored is the group's for good and a later `subscribe` with another is
//!   refused. Publishers find the groups by listing those topics (each read once, a
//!   pattern never changes) and reuse the list for a second, as the other shared
//!   registries do.
//! - No dedup: Kafka's idempotent producer dedups the client's own retries, not a
//!   publish made again, so a publish retried after an error may deliver an event
//!   twice (`capabilities().deduplicates` is false); consumers dedupe by `event_id`.
//!
//! URL: the queue's (`partitions`, `replication`, `prefetch`, `session_timeout`,
//! `member`, `visibility_timeout`, `max_attempts` apply to every group's queue) plus
//! `namespace`; `group` is refused (the bus names the consumer groups).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use platform_core::{Error, ErrorKind, Result};
use platform_queue::kafka::{KafkaQueue, map_err};
use platform_queue::{Queue, QueueOptions};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::queued::{BusUrl, GroupStore, QueuedBus, SHARED_REGISTRY_TTL};

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["kafka"];

/// How long a broker call may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The groups of a Kafka bus: one registry topic per group.
pub struct KafkaGroups {
    bus: BusUrl,
    brokers: String,
    /// `{namespace}.__group.`: the registry topics' names start with it.
    prefix: String,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Patterns read so far (a group's pattern never changes).
    known: Mutex<HashMap<String, String>>,
}

impl fmt::Debug for KafkaGroups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaGroups")
            .field("brokers", &self.brokers)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The event bus on Kafka.
pub type KafkaBus = QueuedBus<KafkaGroups>;

impl KafkaBus {
    /// Opens the bus: the URL is the queue's (its parameters apply to every group's
    /// queue) plus `namespace`.
    pub async fn from_url(url: &str) -> Result<crate::BusHandle<Self>> {
        let bus = BusUrl::parse(url)?;
        let parsed = url::Url::parse(url).map_err(|e| Error::invalid_input(e.to_string()))?;
        if parsed.query_pairs().any(|(k, _)| k == "group") {
            let why = "is not a parameter of the event bus: it names each group's consumer group";
            return Err(platform_core::config::url_error("kafka", "group", why));
        }
        let (options, caps) = KafkaQueue::check_url(&bus.queue_url(&bus.queue_name("_")))?;
        let brokers = format!("{}:{}", parsed.host_str().unwrap_or("localhost"), parsed.port().unwrap_or(9092));
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("acks", "all")
            .set("message.timeout.ms", TIMEOUT.as_millis().to_string())
            .create()
            .map_err(map_err)?;
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &brokers).create().map_err(map_err)?;
        let prefix = format!("{}.__group.", bus.namespace);
        let groups = KafkaGroups { bus: bus.clone(), brokers, prefix, producer, admin, known: Mutex::default() };
        // A broker that cannot be reached fails the open, as on the other backends.
        groups.ping().await?;
        Ok(crate::BusHandle::new(Self::new(groups, bus, options, &caps)))
    }
}

impl KafkaGroups {
    fn reader(&self) -> Result<BaseConsumer> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("{}registry", self.prefix))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(map_err)
    }

    /// Whether `topic` holds a record (its partition 0's high watermark is past 0).
    async fn has_records(&self, topic: &str) -> Result<bool> {
        let consumer = self.reader()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let (_, high) = consumer.fetch_watermarks(&topic, 0, TIMEOUT).map_err(map_err)?;
            Ok(high > 0)
        })
        .await
        .map_err(|e| Error::internal(format!("registry read: {e}")))?
    }

    /// The first record of `topic` (its partition 0), waiting up to `wait` for one.
    async fn first_record(&self, topic: &str, wait: Duration) -> Result<Option<String>> {
        let consumer = self.reader()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&topic, 0, Offset::Beginning).map_err(map_err)?;
            consumer.assign(&list).map_err(map_err)?;
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                    let m = m.map_err(map_err)?;
                    return Ok(Some(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()));
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| Error::internal(format!("registry read: {e}")))?
    }
}

/// A registry record: who stored it (so `register` knows whether it was first) and the
/// pattern.
fn record(nonce: &str, pattern: &str) -> String {
    format!("{nonce} {pattern}")
}

fn pattern_of(record: &str) -> &str {
    record.split_once(' ').map_or(record, |(_, p)| p)
}

#[async_trait]
impl GroupStore for KafkaGroups {
    fn backend(&self) -> &'static str {
        "kafka"
    }

    fn location(&self) -> String {
        self.brokers.clone()
    }

    fn registry_ttl(&self) -> Duration {
        SHARED_REGISTRY_TTL
    }

    async fn register(&self, group: &str, pattern: &str) -> Result<(String, bool)> {
        let topic = format!("{}{group}", self.prefix);
        let new = [NewTopic::new(&topic, 1, TopicReplication::Fixed(-1))];
        let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        for r in self.admin.create_topics(&new, &opts).await.map_err(map_err)? {
            if let Err((_, code)) = r
                && code != RDKafkaErrorCode::TopicAlreadyExists
            {
                return Err(Error::new(ErrorKind::Unavailable, format!("cannot create topic {topic:?}: {code}"))
                    .with_backend("kafka"));
            }
        }
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let mine = record(&nonce, pattern);
        self.producer
            .send(FutureRecord::<(), _>::to(&topic).partition(0).payload(&mine), TIMEOUT)
            .await
            .map_err(|(e, _)| map_err(e))?;
        let first = self
            .first_record(&topic, TIMEOUT)
            .await?
            .ok_or_else(|| Error::unavailable(format!("topic {topic:?} gave no record")).with_backend("kafka"))?;
        let held = pattern_of(&first).to_owned();
        self.known.lock().unwrap_or_else(PoisonError::into_inner).insert(group.to_owned(), held.clone());
        Ok((held, first == mine))
    }

    async fn groups(&self) -> Result<Vec<(String, String)>> {
        let consumer = self.reader()?;
        let names = tokio::task::spawn_blocking(move || {
            let meta = consumer.fetch_metadata(None, TIMEOUT).map_err(map_err)?;
            Ok::<_, Error>(meta.topics().iter().map(|t| t.name().to_owned()).collect::<Vec<_>>())
        })
        .await
        .map_err(|e| Error::internal(format!("registry read: {e}")))??;
        let mut out = Vec::new();
        for name in names {
            let Some(group) = name.strip_prefix(&self.prefix) else { continue };
            let known = self.known.lock().unwrap_or_else(PoisonError::into_inner).get(group).cloned();
            let pattern = match known {
                Some(p) => p,
                None => {
                    // A group whose first subscribe has not stored its pattern yet is
                    // not there yet: that subscribe has not returned.
                    if !self.has_records(&name).await? {
                        continue;
                    }
                    let first = self.first_record(&name, TIMEOUT).await?.ok_or_else(|| {
                        Error::unavailable(format!("topic {name:?} gave no record")).with_backend("kafka")
                    })?;
                    let p = pattern_of(&first).to_owned();
                    self.known.lock().unwrap_or_else(PoisonError::into_inner).insert(group.to_owned(), p.clone());
                    p
                }
            };
            out.push((group.to_owned(), pattern));
        }
        Ok(out)
    }

    async fn open_queue(&self, options: QueueOptions) -> Result<Arc<dyn Queue>> {
        Ok(Arc::new(KafkaQueue::from_url(&self.bus.queue_url(&options.queue)).await?))
    }

    async fn ping(&self) -> Result<Option<String>> {
        let consumer = self.reader()?;
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, TIMEOUT).map_err(map_err))
            .await
            .map_err(|e| Error::internal(format!("ping: {e}")))??;
        // The client does not expose the broker's version.
        Ok(Some("Kafka protocol".into()))
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_their_pattern() {
        assert_eq!(pattern_of(&record("abc", "jobs.*.events")), "jobs.*.events");
        assert_eq!(pattern_of(&record("abc", ">")), ">");
    }
}
