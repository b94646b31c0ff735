#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod broadcast;
mod bus;
pub mod channel;
pub mod driver;
mod handle;
#[cfg(feature = "hub")]
pub mod hub;
pub mod registry;

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "_bus")]
mod queued;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "outbox")]
pub mod relay;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::sync::Arc;

pub use broadcast::{Broadcast, BroadcastCapabilities, BroadcastHandle, Feed, Published, Received, Subscription};
pub use bus::{BusCapabilities, BusHandle, EventBus, EventDelivery, Group};
pub use platform_core::{Envelope, Error, ErrorKind, Event, Result};
pub use registry::EventRegistry;
/// The JSON Schema crate the registry uses: derive `schemars::JsonSchema` on event types.
pub use schemars;

/// Every event bus scheme this build can open.
#[cfg_attr(not(feature = "_bus"), allow(unused_mut))]
pub fn bus_schemes() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = Vec::new();
    #[cfg(feature = "memory")]
    all.extend(memory::SCHEMES);
    #[cfg(feature = "sqlite")]
    all.extend(sqlite::SCHEMES);
    #[cfg(feature = "nats")]
    all.extend(nats::SCHEMES);
    #[cfg(feature = "redis")]
    all.extend(redis::SCHEMES);
    #[cfg(feature = "postgres")]
    all.extend(postgres::SCHEMES);
    #[cfg(feature = "rabbitmq")]
    all.extend(rabbitmq::SCHEMES);
    #[cfg(feature = "kafka")]
    all.extend(kafka::SCHEMES);
    all
}

/// Opens the event bus a URL names; the scheme picks the backend.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use platform_events::{Envelope, EventBus, open_bus};
/// let bus = open_bus("memory://doc-bus").await?; // or EVENTS_URL: sqlite:///data/events.db, postgres://…, amqp://…
/// let mailer = bus.subscribe("user.*", "mailer").await?;
/// bus.publish("user.created", vec![Envelope::raw("user.created", "1", serde_json::json!({"id": 7}))]).await?;
/// let got = mailer.receive(10, Duration::from_secs(1)).await?;
/// assert_eq!(got[0].envelope().payload["id"], 7);
/// got[0].ack().await?;
/// # Ok::<_, platform_events::Error>(()) }).unwrap();
/// ```
///
/// A scheme whose feature is off is an error naming the feature; an unknown scheme
/// lists the schemes this build supports. Errors never show the password.
#[allow(clippy::unused_async)]
#[cfg_attr(not(feature = "_bus"), allow(unreachable_code, unused_variables))]
pub async fn open_bus(url: &str) -> Result<Arc<dyn EventBus>> {
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase()).unwrap_or_default();
    let bus: Arc<dyn EventBus> = match scheme.as_str() {
        #[cfg(feature = "memory")]
        "memory" => Arc::new(memory::MemoryBus::from_url(url)?),
        #[cfg(feature = "sqlite")]
        "sqlite" => Arc::new(sqlite::SqliteBus::from_url(url).await?),
        #[cfg(feature = "nats")]
        "nats" => Arc::new(nats::NatsBus::from_url(url).await?),
        #[cfg(feature = "redis")]
        "redis" | "valkey" => Arc::new(redis::RedisBus::from_url(url).await?),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Arc::new(postgres::PostgresBus::from_url(url).await?),
        #[cfg(feature = "rabbitmq")]
        "amqp" => Arc::new(rabbitmq::RabbitBus::from_url(url).await?),
        #[cfg(feature = "kafka")]
        "kafka" => Arc::new(kafka::KafkaBus::from_url(url).await?),
        other => {
            return Err(platform_core::config::scheme_error(
                "platform-events",
                other,
                feature_for(other),
                &bus_schemes(),
                url,
            ));
        }
    };
    Ok(bus)
}

/// Opens the event bus named by `{PREFIX}_URL` (`open_bus_from_env("EVENTS")` reads
/// `EVENTS_URL`).
pub async fn open_bus_from_env(prefix: &str) -> Result<Arc<dyn EventBus>> {
    let env = platform_core::config::Env::new(prefix);
    let url: String = env.require("URL")?;
    open_bus(&url).await
}

/// Every broadcast scheme this build can open.
#[cfg_attr(not(any(feature = "memory", feature = "nats", feature = "redis", feature = "postgres")), allow(unused_mut))]
pub fn schemes() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = Vec::new();
    #[cfg(feature = "memory")]
    all.extend(memory::SCHEMES);
    #[cfg(feature = "nats")]
    all.extend(nats::SCHEMES);
    #[cfg(feature = "redis")]
    all.extend(redis::SCHEMES);
    #[cfg(feature = "postgres")]
    all.extend(postgres::SCHEMES);
    all
}

/// The feature that enables `scheme`, for errors.
fn feature_for(scheme: &str) -> Option<&'static str> {
    Some(match scheme {
        "memory" => "memory",
        "sqlite" => "sqlite",
        "nats" => "nats",
        "redis" | "valkey" => "redis",
        "postgres" | "postgresql" => "postgres",
        "amqp" => "rabbitmq",
        "kafka" => "kafka",
        _ => return None,
    })
}

/// Opens the broadcast a URL names; the scheme picks the backend.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use platform_events::{Broadcast, Received, open_broadcast};
/// let hub = open_broadcast("memory://doc-example").await?;
/// let mut jobs = hub.subscribe("jobs.*.events").await?;
/// hub.publish("jobs.42.events", "done".into()).await?;
/// let Some(Received::Message(m)) = jobs.recv().await else { panic!("a message") };
/// assert_eq!((&*m.channel, m.payload.as_ref()), ("jobs.42.events", &b"done"[..]));
/// # Ok::<_, platform_events::Error>(()) }).unwrap();
/// ```
///
/// A scheme whose feature is off is an error naming the feature; an unknown scheme
/// lists the schemes this build supports. Errors never show the password.
// With only in-process backends enabled nothing here awaits; the signature stays async.
#[allow(clippy::unused_async)]
#[cfg_attr(
    not(any(feature = "memory", feature = "nats", feature = "redis", feature = "postgres")),
    allow(unreachable_code, unused_variables)
)]
pub async fn open_broadcast(url: &str) -> Result<Arc<dyn Broadcast>> {
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase()).unwrap_or_default();
    let hub: Arc<dyn Broadcast> = match scheme.as_str() {
        #[cfg(feature = "memory")]
        "memory" => Arc::new(memory::MemoryBroadcast::from_url(url)?),
        #[cfg(feature = "nats")]
        "nats" => Arc::new(nats::NatsBroadcast::from_url(url).await?),
        #[cfg(feature = "redis")]
        "redis" | "valkey" => Arc::new(redis::RedisBroadcast::from_url(url).await?),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Arc::new(postgres::PostgresBroadcast::from_url(url).await?),
        other => {
            return Err(platform_core::config::scheme_error(
                "platform-events",
                other,
                feature_for(other),
                &schemes(),
                url,
            ));
        }
    };
    Ok(hub)
}

/// Opens the broadcast named by `{PREFIX}_URL` (`open_broadcast_from_env("BROADCAST")`
/// reads `BROADCAST_URL`).
pub async fn open_broadcast_from_env(prefix: &str) -> Result<Arc<dyn Broadcast>> {
    let env = platform_core::config::Env::new(prefix);
    let url: String = env.require("URL")?;
    open_broadcast(&url).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_schemes_list_the_supported_ones() {
        let err = open_broadcast("carrier-pigeon://u:hunter2@coop").await.unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        #[cfg(feature = "memory")]
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[tokio::test]
    async fn from_env_names_the_variable() {
        let err = open_broadcast_from_env("PLATFORM_EVENTS_SURELY_UNSET").await.unwrap_err();
        assert!(err.to_string().contains("PLATFORM_EVENTS_SURELY_UNSET_URL"), "{err}");
    }
}
