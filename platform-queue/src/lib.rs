#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod driver;
mod lease;
mod message;
mod options;
mod queue;
mod worker;

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "_sql")]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "sqs")]
pub mod sqs;
#[cfg(feature = "stomp")]
pub mod stomp;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::sync::Arc;

pub use message::{
    Capabilities, DEAD_LETTER_AT, DEAD_LETTER_ATTEMPTS, DEAD_LETTER_FIRST_FAILURE, DEAD_LETTER_QUEUE,
    DEAD_LETTER_REASON, DeadLetter, Delivery, Headers, MAX_DEDUP_KEY_LEN, MAX_HEADER_NAME_LEN, MAX_HEADER_VALUE_LEN,
    Message, ReceiveOptions,
};
pub use options::{DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, DEFAULT_VISIBILITY_TIMEOUT, QueueOptions};
pub use platform_core::{Error, ErrorKind, Result};
pub use queue::{Queue, QueueExt, QueueHandle};
pub use worker::{Handler, SETTLES_IN_FLIGHT, Worker, WorkerConfig, WorkerStats};

/// Every scheme this build can open, in the order `open` tries them.
#[cfg_attr(
    not(any(
        feature = "memory",
        feature = "sqlite",
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "nats",
        feature = "rabbitmq",
        feature = "sqs",
        feature = "stomp",
        feature = "kafka",
        feature = "mqtt"
    )),
    allow(unused_mut)
)]
pub fn schemes() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = Vec::new();
    #[cfg(feature = "memory")]
    all.extend(memory::SCHEMES);
    #[cfg(feature = "sqlite")]
    all.extend(sqlite::SCHEMES);
    #[cfg(feature = "postgres")]
    all.extend(postgres::SCHEMES);
    #[cfg(feature = "mysql")]
    all.extend(mysql::SCHEMES);
    #[cfg(feature = "redis")]
    all.extend(redis::SCHEMES);
    #[cfg(feature = "nats")]
    all.extend(nats::SCHEMES);
    #[cfg(feature = "rabbitmq")]
    all.extend(rabbitmq::SCHEMES);
    #[cfg(feature = "sqs")]
    all.extend(sqs::SCHEMES);
    #[cfg(feature = "stomp")]
    all.extend(stomp::SCHEMES);
    #[cfg(feature = "kafka")]
    all.extend(kafka::SCHEMES);
    #[cfg(feature = "mqtt")]
    all.extend(mqtt::SCHEMES);
    all
}

/// The feature that enables `scheme`, for errors.
fn feature_for(scheme: &str) -> Option<&'static str> {
    Some(match scheme {
        "memory" => "memory",
        "sqlite" => "sqlite",
        "postgres" | "postgresql" => "postgres",
        "mysql" | "mariadb" => "mysql",
        "redis" | "valkey" => "redis",
        "amqp" => "rabbitmq",
        "nats" => "nats",
        "kafka" => "kafka",
        "sqs" => "sqs",
        "stomp" => "stomp",
        "mqtt" => "mqtt",
        _ => return None,
    })
}

/// Opens the queue a URL names; the scheme picks the backend.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use platform_queue::{QueueExt, open};
/// let queue = open("memory://doc-example?visibility_timeout=10s").await?;
/// queue.send_bytes("hello").await?;
/// let job = queue.receive_one(std::time::Duration::from_secs(1)).await?.expect("a job");
/// assert_eq!(job.body().as_ref(), b"hello");
/// job.ack().await?;
/// # Ok::<_, platform_queue::Error>(()) }).unwrap();
/// ```
///
/// A scheme whose feature is off is an error naming the feature; an unknown scheme
/// lists the schemes this build supports. Errors never show the password.
// With only in-process backends enabled nothing here awaits; the signature stays async.
#[allow(clippy::unused_async)]
#[cfg_attr(
    not(any(
        feature = "memory",
        feature = "sqlite",
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "nats",
        feature = "rabbitmq",
        feature = "sqs",
        feature = "stomp",
        feature = "kafka",
        feature = "mqtt"
    )),
    allow(unreachable_code, unused_variables)
)]
pub async fn open(url: &str) -> Result<Arc<dyn Queue>> {
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase()).unwrap_or_default();
    let queue: Arc<dyn Queue> = match scheme.as_str() {
        #[cfg(feature = "memory")]
        "memory" => Arc::new(memory::MemoryQueue::from_url(url)?),
        #[cfg(feature = "sqlite")]
        "sqlite" => Arc::new(sqlite::SqliteQueue::from_url(url).await?),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Arc::new(postgres::PostgresQueue::from_url(url).await?),
        #[cfg(feature = "mysql")]
        "mysql" | "mariadb" => Arc::new(mysql::MysqlQueue::from_url(url).await?),
        #[cfg(feature = "redis")]
        "redis" | "valkey" => Arc::new(redis::RedisQueue::from_url(url).await?),
        #[cfg(feature = "nats")]
        "nats" => Arc::new(nats::NatsQueue::from_url(url).await?),
        #[cfg(feature = "rabbitmq")]
        "amqp" => Arc::new(rabbitmq::RabbitMqQueue::from_url(url).await?),
        #[cfg(feature = "sqs")]
        "sqs" => Arc::new(sqs::SqsQueue::from_url(url).await?),
        #[cfg(feature = "stomp")]
        "stomp" => Arc::new(stomp::StompQueue::from_url(url).await?),
        #[cfg(feature = "kafka")]
        "kafka" => Arc::new(kafka::KafkaQueue::from_url(url).await?),
        #[cfg(feature = "mqtt")]
        "mqtt" => Arc::new(mqtt::MqttQueue::from_url(url).await?),
        tls if TLS_SCHEMES.contains(&tls) => return Err(no_tls(tls, url)),
        other => {
            return Err(platform_core::config::scheme_error(
                "platform-queue",
                other,
                feature_for(other),
                &schemes(),
                url,
            ));
        }
    };
    Ok(queue)
}

/// Schemes that ask for TLS, which no backend of this crate has compiled in: each is
/// refused with `Unsupported`, never opened in plain text.
const TLS_SCHEMES: &[&str] = &["rediss", "valkeys", "amqps", "stomp+ssl", "mqtts"];

fn no_tls(scheme: &str, url: &str) -> Error {
    let masked = platform_core::mask_url(url);
    Error::new(
        ErrorKind::Unsupported,
        format!("scheme {scheme:?}: TLS is not compiled into platform-queue (url {masked:?})"),
    )
    .with_op("open")
    .with_detail("scheme", "TLS is not compiled in")
}

/// Opens the queue named by `{PREFIX}_URL` (`open_from_env("QUEUE")` reads `QUEUE_URL`).
pub async fn open_from_env(prefix: &str) -> Result<Arc<dyn Queue>> {
    let env = platform_core::config::Env::new(prefix);
    let url: String = env.require("URL")?;
    open(&url).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_and_disabled_schemes() {
        let err = open("carrier-pigeon://coop").await.unwrap_err();
        assert!(err.is_invalid_input());
        assert!(err.to_string().contains("memory"), "{err}");
        #[cfg(not(feature = "redis"))]
        {
            let err = open("redis://u:hunter2@localhost").await.unwrap_err();
            assert!(err.is_unsupported());
            assert!(err.to_string().contains("feature \"redis\""), "{err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        // TLS is not compiled in, with the feature or without it.
        for scheme in TLS_SCHEMES {
            let err = open(&format!("{scheme}://u:hunter2@localhost")).await.unwrap_err();
            assert!(err.is_unsupported() && !err.to_string().contains("hunter2"), "{err}");
            assert!(err.to_string().contains("TLS"), "{err}");
        }
    }

    #[tokio::test]
    async fn from_env_names_the_variable() {
        let err = open_from_env("PLATFORM_QUEUE_SURELY_UNSET").await.unwrap_err();
        assert!(err.to_string().contains("PLATFORM_QUEUE_SURELY_UNSET_URL"), "{err}");
    }
}
