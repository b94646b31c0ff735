//! The four ways a backend keeps a lease, one file each. Which backend uses which, and
//! why:
//!
//! | strategy | file | backends | why |
//! |---|---|---|---|
//! | store-held leases | `store.rs` ([`LeaseStore`], [`LeasedQueue`]) | SQLite, PostgreSQL, MySQL, Redis | the server stores rows and runs atomic steps on them, but has no queue semantics: the lease is a token and a `visible_at` in the row, and the whole contract is written once over it |
//! | server leases with a clock | `clock.rs` (`LeaseClock`) | NATS JetStream, SQS | the broker leases (ack wait, visibility timeout) and redelivers by itself, but accepts a settle after the lease ran out: the client keeps the deadline too and refuses a late settle with `Conflict` |
//! | client-held leases with an own acker | `client.rs` (`ClientLease`) | RabbitMQ | the broker holds a message for a consumer until it is acked or the channel closes, with no deadline: the client keeps one per delivery, and a timer returns the message when it passes |
//! | client-held leases that republish | `republish.rs` (`Republish`, `Republishing`), over `client.rs` | STOMP, Kafka, MQTT | the broker has neither nack with delay nor delivery counts: every settle but `ack` sends a copy carrying the attempts so far, then acknowledges the original; a crash in between gives a duplicate, never a loss |
//!
//! The in-process `memory` backend keeps its leases under its own shard locks.

#[cfg(any(feature = "rabbitmq", feature = "stomp", feature = "kafka", feature = "mqtt"))]
pub(crate) mod client;
#[cfg(any(feature = "nats", feature = "sqs"))]
pub(crate) mod clock;
#[cfg(any(feature = "stomp", feature = "kafka", feature = "mqtt"))]
pub(crate) mod republish;
pub(crate) mod store;

pub use store::{Claimed, Lease, LeaseStore, LeasedQueue, NewMessage, Release, StoredMessage, now_ms};
