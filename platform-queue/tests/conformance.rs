//! The conformance suite, run for every backend against its real server.
//!
//! Server URLs come from `PLATFORM_TEST_<NAME>_URL` (see `scripts/services.env`);
//! unset, a backend's tests are skipped, or fail under `PLATFORM_TEST_REQUIRE_ALL=1`.

use platform_queue::conformance_tests;
use platform_queue::testkit::{UrlHarness, url_parameters_are_checked};

mod faults;

conformance_tests!(memory, Some(UrlHarness::new("memory://conformance")));

conformance_tests!(sqlite, Some(sqlite_harness()));

fn sqlite_harness() -> UrlHarness {
    let dir = std::env::temp_dir().join("platform-queue-conformance");
    std::fs::create_dir_all(&dir).expect("temp dir");
    UrlHarness::new(format!("sqlite://{}/queues.db", dir.display()))
}

#[cfg(feature = "postgres")]
conformance_tests!(postgres, UrlHarness::from_env("POSTGRES"));

#[cfg(feature = "mysql")]
conformance_tests!(mysql, UrlHarness::from_env("MYSQL"));

#[cfg(feature = "redis")]
conformance_tests!(redis, UrlHarness::from_env("REDIS"));

#[cfg(feature = "redis")]
conformance_tests!(valkey, UrlHarness::from_env("VALKEY"));

#[cfg(feature = "nats")]
conformance_tests!(nats, UrlHarness::from_env("NATS"));

#[cfg(feature = "sqs")]
conformance_tests!(sqs, UrlHarness::from_env("SQS"));

#[cfg(feature = "sqs")]
#[tokio::test]
async fn url_parameters_sqs() {
    let Some(url) = platform_core::testkit::server_url("SQS") else { return };
    url_parameters_are_checked(&url).await;
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn url_parameters_nats() {
    let Some(url) = platform_core::testkit::server_url("NATS") else { return };
    url_parameters_are_checked(&url).await;
}

#[cfg(feature = "rabbitmq")]
conformance_tests!(rabbitmq, UrlHarness::from_env("RABBITMQ"));

#[cfg(feature = "rabbitmq")]
#[tokio::test]
async fn url_parameters_rabbitmq() {
    let Some(url) = platform_core::testkit::server_url("RABBITMQ") else { return };
    url_parameters_are_checked(&url).await;
}

#[tokio::test]
async fn url_parameters_memory_and_sqlite() {
    url_parameters_are_checked("memory://conformance").await;
    url_parameters_are_checked("sqlite::memory:").await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn url_parameters_postgres() {
    let Some(url) = platform_core::testkit::server_url("POSTGRES") else { return };
    url_parameters_are_checked(&url).await;
}

#[cfg(feature = "mysql")]
#[tokio::test]
async fn url_parameters_mysql() {
    let Some(url) = platform_core::testkit::server_url("MYSQL") else { return };
    url_parameters_are_checked(&url).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn url_parameters_redis() {
    let Some(url) = platform_core::testkit::server_url("REDIS") else { return };
    url_parameters_are_checked(&url).await;
}

#[cfg(feature = "stomp")]
conformance_tests!(stomp_activemq, UrlHarness::from_env("ACTIVEMQ_STOMP"));

#[cfg(feature = "stomp")]
conformance_tests!(stomp_rabbitmq, UrlHarness::from_env("RABBITMQ_STOMP"));

#[cfg(feature = "stomp")]
#[tokio::test]
async fn url_parameters_stomp() {
    for name in ["ACTIVEMQ_STOMP", "RABBITMQ_STOMP"] {
        let Some(url) = platform_core::testkit::server_url(name) else { return };
        url_parameters_are_checked(&url).await;
    }
}

#[cfg(feature = "kafka")]
conformance_tests!(kafka, UrlHarness::from_env("KAFKA"));

#[cfg(feature = "kafka")]
#[tokio::test]
async fn url_parameters_kafka() {
    let Some(url) = platform_core::testkit::server_url("KAFKA") else { return };
    url_parameters_are_checked(&url).await;
}
