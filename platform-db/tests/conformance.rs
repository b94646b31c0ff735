//! The conformance suite, run on SQLite and against the real PostgreSQL and MariaDB.
//!
//! Server URLs come from `PLATFORM_TEST_<NAME>_URL` (see `scripts/services.env`);
//! unset, a backend's tests are skipped, or fail under `PLATFORM_TEST_REQUIRE_ALL=1`.

use platform_db::conformance_tests;
use platform_db::testkit::UrlHarness;

conformance_tests!(sqlite, Some(UrlHarness::sqlite_temp()));

#[cfg(feature = "postgres")]
conformance_tests!(postgres, UrlHarness::from_env("POSTGRES"));

#[cfg(feature = "mysql")]
conformance_tests!(mysql, UrlHarness::from_env("MYSQL"));
