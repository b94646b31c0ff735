//! The conformance suite on every backend: memory (the reference), SQLite (a fresh
//! file per collection) and PostgreSQL (`PLATFORM_TEST_POSTGRES_URL`, a table per
//! collection), and DynamoDB on moto (`PLATFORM_TEST_DYNAMODB_URL`) and on dynalite
//! (`PLATFORM_TEST_DYNALITE_URL`, which validates requests as AWS does), a new table per
//! collection. A server URL unset: skipped, or failed under `PLATFORM_TEST_REQUIRE_ALL=1`.

use platform_docstore::conformance_tests;
use platform_docstore::testkit::UrlHarness;

#[cfg(feature = "memory")]
conformance_tests!(memory, Some(UrlHarness::Memory));

#[cfg(feature = "sqlite")]
conformance_tests!(sqlite, Some(UrlHarness::Sqlite));

#[cfg(feature = "postgres")]
conformance_tests!(postgres, UrlHarness::postgres_from_env());

#[cfg(feature = "mongodb")]
conformance_tests!(mongodb, UrlHarness::mongodb_from_env());

#[cfg(feature = "dynamodb")]
conformance_tests!(dynamodb, UrlHarness::dynamodb_from_env());

#[cfg(feature = "dynamodb")]
conformance_tests!(dynalite, UrlHarness::dynalite_from_env());

/// Without `allow_scans`, DynamoDB runs only queries on the partition key: any other is
/// `Unsupported`, never a silent scan; the plan says which is which.
#[cfg(feature = "dynamodb")]
#[tokio::test]
async fn dynamodb_refuses_scans_unless_allowed() {
    use platform_docstore::{CollectionExt as _, ErrorKind, Op, Query};
    use serde_json::json;
    let Some(base) = platform_core::testkit::server_url("DYNAMODB") else { return };
    let name = platform_core::testkit::unique_ident("noscan").replace('-', "_");
    let query = base.split_once('?').map_or("", |(_, q)| q);
    let c = platform_docstore::open(&format!("dynamodb://{name}?{query}&create_table=true&key=pk&sort_key=sk"))
        .await
        .expect("open");
    assert!(!c.capabilities().any_field_queries);
    for (pk, sk) in [("a", 1), ("a", 2), ("b", 1)] {
        c.create(json!({"pk": pk, "sk": sk, "n": sk}).as_object().cloned().unwrap()).await.unwrap();
    }
    let by_key = Query::new().filter("pk", Op::Eq, "a").unwrap().filter("n", Op::Gt, 1).unwrap();
    let got = c.query(&by_key).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["sk"], 2);
    assert!(!c.plan(&by_key).await.unwrap().scan);
    let scan = Query::new().filter("n", Op::Eq, 1).unwrap();
    assert_eq!(c.query(&scan).await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert!(c.plan(&scan).await.unwrap().scan);
    let err = platform_docstore::open(&format!("dynamodb://{name}?{query}&bogus=1")).await.unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
    let err = platform_docstore::open(
        "dynamodb://t?access_key_id=AKIA&secret_access_key=hunter2&endpoint=http://127.0.0.1:9&bogus=1",
    )
    .await
    .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

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

/// Cassandra has no server here: the backend against scripted CQL frames.
#[cfg(feature = "cassandra")]
#[path = "conformance/cassandra_cql.rs"]
mod cassandra_cql;
