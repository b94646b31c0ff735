//! The vector suite on every backend: memory (exact, the reference), pgvector
//! (`PLATFORM_TEST_PGVECTOR_URL`, PostgreSQL with pgvector on its own port) and ChromaDB
//! (`PLATFORM_TEST_CHROMA_URL`); the search suite on memory and on an OpenSearch-API
//! server (`PLATFORM_TEST_OPENSEARCH_URL`), through both the `opensearch://` and the
//! `elasticsearch://` schemes. A server URL unset: skipped, or failed under
//! `PLATFORM_TEST_REQUIRE_ALL=1`.

use platform_search::testkit::UrlHarness;
use platform_search::vector_conformance_tests;

#[cfg(feature = "memory")]
vector_conformance_tests!(memory, Some(UrlHarness::Memory));

#[cfg(feature = "pgvector")]
vector_conformance_tests!(pgvector, UrlHarness::pgvector_from_env());

#[cfg(feature = "chroma")]
vector_conformance_tests!(chroma, UrlHarness::chroma_from_env());

mod search {
    use platform_search::search_conformance_tests;
    use platform_search::testkit::text::SearchUrlHarness;

    #[cfg(feature = "memory")]
    search_conformance_tests!(memory, Some(SearchUrlHarness::Memory));

    #[cfg(feature = "opensearch")]
    search_conformance_tests!(opensearch, SearchUrlHarness::opensearch_from_env());

    #[cfg(feature = "opensearch")]
    search_conformance_tests!(elasticsearch_api, SearchUrlHarness::elasticsearch_api_from_env());
}

/// Bad URLs are errors naming the part that is wrong, with the password masked.
#[tokio::test]
async fn bad_urls_name_what_is_wrong() {
    for (url, part) in [
        ("nope://x?dimensions=3", "scheme"),
        ("memory://docs", "dimensions"),
        ("memory://docs?dimensions=0", "dimensions"),
        ("memory://docs?dimensions=3&metric=manhattan", "metric"),
        ("memory://docs?dimensions=3&bogus=1", "bogus"),
        ("memory://?dimensions=3", "index"),
        ("pgvector://u@127.0.0.1:9/db?dimensions=3", "index"),
        ("pgvector://u@127.0.0.1:9/db?dimensions=3&index=Bad-Name", "index"),
        ("chroma://127.0.0.1:9/x?dimensions=3", "index"),
    ] {
        let err = platform_search::open_vector(url).await.expect_err(url);
        assert!(err.to_string().contains(part), "{url}: {err}");
    }
    let err =
        platform_search::open_vector("pgvector://u:hunter2@127.0.0.1:9/db?dimensions=3").await.expect_err("no index");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = platform_search::open_vector_from_env("VECTORS_UNSET_IN_TESTS").await.expect_err("unset");
    assert!(err.to_string().contains("VECTORS_UNSET_IN_TESTS_URL"), "{err}");
}

/// Elasticsearch and OpenSearch k-NN have no server here: against documented fixtures.
#[cfg(feature = "opensearch")]
#[path = "conformance/knn_fixtures.rs"]
mod knn_fixtures;
