//! The broadcast conformance suite, run for every backend against its real server.
//!
//! Server URLs come from `PLATFORM_TEST_<NAME>_URL` (see `scripts/services.env`);
//! unset, a backend's tests are skipped, or fail under `PLATFORM_TEST_REQUIRE_ALL=1`.

use platform_events::conformance_tests;
use platform_events::testkit::UrlHarness;

// One in-process instance per test (the expression runs in each), so that the flood of
// the lag test reaches no other test's subscriptions.
conformance_tests!(
    memory,
    Some(UrlHarness::new(format!("memory://{}", platform_core::testkit::unique_name("conformance"))))
);

#[cfg(feature = "nats")]
conformance_tests!(nats, UrlHarness::from_env("NATS"));

#[cfg(feature = "redis")]
conformance_tests!(redis, UrlHarness::from_env("REDIS"));

#[cfg(feature = "redis")]
conformance_tests!(valkey, UrlHarness::from_env("VALKEY"));

// A namespace per test: a PostgreSQL handle hears every channel of its namespace, and
// the lag test's flood would make the other tests' subscriptions lag.
#[cfg(feature = "postgres")]
conformance_tests!(
    postgres,
    platform_core::testkit::server_url("POSTGRES").map(|u| {
        let sep = if u.contains('?') { '&' } else { '?' };
        UrlHarness::new(format!("{u}{sep}namespace={}", platform_core::testkit::unique_ident("ns")))
    })
);

mod bus {
    use platform_events::bus_conformance_tests;
    use platform_events::testkit::bus::BusHarness;

    bus_conformance_tests!(memory, Some(BusHarness::new("memory://conformance")));

    #[cfg(feature = "sqlite")]
    bus_conformance_tests!(
        sqlite,
        Some(BusHarness::new(format!(
            "sqlite://{}",
            std::env::temp_dir().join(format!("platform-events-bus-{}.db", std::process::id())).display()
        )))
    );

    #[cfg(feature = "postgres")]
    bus_conformance_tests!(postgres, BusHarness::from_env("POSTGRES"));

    #[cfg(feature = "redis")]
    bus_conformance_tests!(redis, BusHarness::from_env("REDIS"));

    #[cfg(feature = "nats")]
    bus_conformance_tests!(nats, BusHarness::from_env("NATS"));

    #[cfg(feature = "rabbitmq")]
    bus_conformance_tests!(rabbitmq, BusHarness::from_env("RABBITMQ"));

    #[cfg(feature = "kafka")]
    bus_conformance_tests!(
        kafka,
        platform_core::testkit::server_url("KAFKA").map(|u| BusHarness::new(format!("{u}?partitions=2")))
    );
}
