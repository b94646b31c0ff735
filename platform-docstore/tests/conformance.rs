//! The conformance suite on every backend: memory (the reference), SQLite (a fresh
//! file per collection) and PostgreSQL (`PLATFORM_TEST_POSTGRES_URL`, a table per
//! collection; unset, skipped, or failed under `PLATFORM_TEST_REQUIRE_ALL=1`).

use platform_docstore::conformance_tests;
use platform_docstore::testkit::UrlHarness;

#[cfg(feature = "memory")]
conformance_tests!(memory, Some(UrlHarness::Memory));

#[cfg(feature = "sqlite")]
conformance_tests!(sqlite, Some(UrlHarness::Sqlite));

#[cfg(feature = "postgres")]
conformance_tests!(postgres, UrlHarness::postgres_from_env());

/// Bad URLs are errors naming the part that is wrong, with the password masked.
#[tokio::test]
async fn bad_urls_name_what_is_wrong() {
    for (url, part) in [
        ("nope://x", "scheme"),
        ("memory://?key=id", "collection"),
        ("memory://users?key=a-b", "key"),
        ("memory://users?key=id&revision=id", "key"),
        ("memory://users?bogus=1", "bogus"),
        ("sqlite:///tmp/docs.db?key=id", "collection"),
        ("sqlite:///tmp/docs.db?collection=Users", "collection"),
    ] {
        let err = platform_docstore::open(url).await.expect_err(url);
        assert!(err.to_string().contains(part), "{url}: {err}");
    }
    let err = platform_docstore::open("postgres://u:hunter2@127.0.0.1:9/db?key=id").await.expect_err("no collection");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = platform_docstore::open_from_env("DOCSTORE_UNSET_IN_TESTS").await.expect_err("unset");
    assert!(err.to_string().contains("DOCSTORE_UNSET_IN_TESTS_URL"), "{err}");
}
