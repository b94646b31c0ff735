//! The search suite: every behaviour of the [`SearchIndex`] contract, listed once in
//! [`search_behaviours!`](crate::search_behaviours) and run by
//! [`search_conformance_tests!`](crate::search_conformance_tests).

use std::sync::Arc;

use platform_core::{ErrorKind, Result};
use serde_json::{Value, json};

use crate::{
    Aggregation, AggregationResult, FieldType, Mapping, SearchFilter, SearchIndex, SearchIndexExt as _, SearchQuery,
    SortOrder, Version, Write,
};

/// Makes fresh, uniquely named search indexes.
#[async_trait::async_trait]
pub trait SearchHarness: Send + Sync {
    /// The URL of a new, empty index.
    async fn fresh_url(&self) -> Result<String>;
}

/// The backends the suite knows how to make search indexes on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SearchUrlHarness {
    /// `memory://`: every open is a new index.
    Memory,
    /// A uniquely named index on the server of this `opensearch://` or
    /// `elasticsearch://host:port` URL.
    Server(String),
}

impl SearchUrlHarness {
    /// OpenSearch from `PLATFORM_TEST_OPENSEARCH_URL`; `None` (a skip) when unset.
    pub fn opensearch_from_env() -> Option<Self> {
        platform_core::testkit::server_url("OPENSEARCH").map(Self::Server)
    }

    /// The same server through the `elasticsearch://` scheme, from
    /// `PLATFORM_TEST_OPENSEARCH_URL`: the API subset both share.
    pub fn elasticsearch_api_from_env() -> Option<Self> {
        platform_core::testkit::server_url("OPENSEARCH")
            .map(|u| Self::Server(u.replacen("opensearch://", "elasticsearch://", 1)))
    }
}

#[async_trait::async_trait]
impl SearchHarness for SearchUrlHarness {
    async fn fresh_url(&self) -> Result<String> {
        let name = platform_core::testkit::unique_ident("idx").to_ascii_lowercase();
        Ok(match self {
            Self::Memory => format!("memory://{name}"),
            Self::Server(base) => format!("{}/{name}", base.trim_end_matches('/')),
        })
    }
}

/// Runs every search behaviour with `h`.
pub async fn run_all(h: &dyn SearchHarness) {
    use platform_core::run_behaviours;
    crate::search_behaviours!(run_behaviours!(h));
}

/// Writes one `#[tokio::test]` per search behaviour for a backend.
#[macro_export]
macro_rules! search_conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::search_behaviours!(platform_core::behaviour_tests!($backend, $crate::testkit::text, $harness));
    };
}

/// Every search behaviour, listed once. Calls `$then!(…, behaviour, …)`.
#[doc(hidden)]
#[macro_export]
macro_rules! search_behaviours {
    ($($then:ident)::+ ! ($($args:tt)*)) => {
        $($then)::+! {
            $($args)*,
            bulk_answers_each_write,
            versions_guard_concurrent_writes,
            text_queries_rank_more_matching_words_first,
            filters_sort_and_page_with_search_after,
            aggregations_count_and_measure,
            get_and_delete,
            health_is_a_round_trip_naming_the_server,
            bad_queries_are_refused
        }
    };
}

fn mapping() -> Mapping {
    Mapping::new()
        .field("sku", FieldType::Keyword)
        .field("title", FieldType::Text)
        .field("body", FieldType::Text)
        .field("category", FieldType::Keyword)
        .field("price", FieldType::Float)
        .field("stock", FieldType::Integer)
        .field("active", FieldType::Boolean)
}

async fn fresh(h: &dyn SearchHarness) -> Arc<dyn SearchIndex> {
    crate::open_search(&h.fresh_url().await.expect("a fresh index"), &mapping()).await.expect("open")
}

fn doc(v: Value) -> crate::text::Document {
    v.as_object().cloned().unwrap_or_default()
}

async fn catalogue(h: &dyn SearchHarness) -> Arc<dyn SearchIndex> {
    let index = fresh(h).await;
    let products = [
        ("p1", "red apple", "a crisp red apple from the orchard", "fruit", 1.5, 40),
        ("p2", "green apple", "a sour green apple", "fruit", 1.25, 0),
        ("p3", "banana", "yellow banana bunch", "fruit", 0.5, 120),
        ("p4", "red wine", "a red wine from the hills", "drinks", 12.0, 8),
        ("p5", "apple juice", "juice pressed from red and green apples", "drinks", 3.0, 25),
        ("p6", "bread", "a loaf of rye bread", "bakery", 2.75, 12),
        ("p7", "apple pie", "apple pie with a red apple glaze", "bakery", 6.5, 3),
    ];
    let writes = products
        .iter()
        .map(|(sku, title, body, cat, price, stock)| {
            Write::new(*sku, doc(json!({"sku": sku, "title": title, "body": body, "category": cat, "price": price, "stock": stock, "active": *stock > 0})))
        })
        .collect();
    assert!(index.bulk(writes).await.iter().all(Result::is_ok));
    index.refresh().await.unwrap();
    index
}

fn ids(r: &crate::SearchResults) -> Vec<&str> {
    r.hits.iter().map(|h| h.id.as_str()).collect()
}

/// A bulk request answers every write at its index: a version, or the write's own
/// error (a value the mapping cannot take); the others are written.
pub async fn bulk_answers_each_write(h: &dyn SearchHarness) {
    let index = fresh(h).await;
    let results = index
        .bulk(vec![
            Write::new("a", doc(json!({"sku": "a", "stock": 1}))),
            Write::new("b", doc(json!({"sku": "b", "stock": "not a number"}))),
            Write::new("", doc(json!({"sku": "c"}))),
            Write::new("d", doc(json!({"sku": "d", "extra": {"kept": true}}))),
        ])
        .await;
    assert_eq!(results.len(), 4);
    assert!(results[0].is_ok(), "{results:?}");
    assert_eq!(results[1].as_ref().unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(results[2].as_ref().unwrap_err().kind(), ErrorKind::InvalidInput);
    assert!(results[3].is_ok());
    index.refresh().await.unwrap();
    let all = index.search(&SearchQuery::new().sort("sku", SortOrder::Asc)).await.unwrap();
    assert_eq!(ids(&all), ["a", "d"]);
    assert_eq!(all.total, 2);
    assert_eq!(all.hits[1].doc["extra"], json!({"kept": true}), "unmapped fields are kept");
}

/// A write over a version happens only while the document is at it: the first of two
/// writers over one version wins, the second is a `Conflict`; a version given for a
/// missing document is a `Conflict` too.
pub async fn versions_guard_concurrent_writes(h: &dyn SearchHarness) {
    let index = fresh(h).await;
    let v1 = index.put("x", doc(json!({"sku": "x", "stock": 1}))).await.unwrap();
    let v2 = index.put_if("x", doc(json!({"sku": "x", "stock": 2})), v1).await.unwrap();
    assert_ne!(v1, v2);
    let stale = index.put_if("x", doc(json!({"sku": "x", "stock": 3})), v1).await.unwrap_err();
    assert_eq!(stale.kind(), ErrorKind::Conflict, "{stale}");
    let (got, version) = index.get("x").await.unwrap().expect("x");
    assert_eq!((got["stock"].clone(), version), (json!(2), v2));
    let missing =
        index.put_if("nobody", doc(json!({"sku": "n"})), Version { seq_no: 0, primary_term: 1 }).await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::Conflict, "{missing}");
}

/// Text queries find documents holding any of the words (case aside), the ones with
/// more of them first; `fields` narrows where to look.
pub async fn text_queries_rank_more_matching_words_first(h: &dyn SearchHarness) {
    let index = catalogue(h).await;
    let apple = index.search(&SearchQuery::new().text("Apple", &["title"]).size(10)).await.unwrap();
    let mut found = ids(&apple);
    found.sort_unstable();
    assert_eq!(found, ["p1", "p2", "p5", "p7"]);
    assert_eq!(apple.total, 4);
    let red_apple = index.search(&SearchQuery::new().text("red apple", &["title"]).size(10)).await.unwrap();
    assert_eq!(red_apple.hits[0].id, "p1", "both words first: {:?}", ids(&red_apple));
    assert_eq!(red_apple.total, 5, "red or apple: p1 p2 p4 p5 p7");
    assert!(red_apple.hits.iter().all(|h| h.score.is_some()));
    let anywhere = index.search(&SearchQuery::new().text("orchard", &[])).await.unwrap();
    assert_eq!(ids(&anywhere), ["p1"], "every text field when none are named");
    let nothing = index.search(&SearchQuery::new().text("durian", &[])).await.unwrap();
    assert_eq!((nothing.total, nothing.hits.len()), (0, 0));
}

/// Filters (term, terms, range) narrow without scoring; sort orders by fields (missing
/// values last); `search_after` pages with the last hit's sort values, and the total
/// counts every match, not the page.
pub async fn filters_sort_and_page_with_search_after(h: &dyn SearchHarness) {
    let index = catalogue(h).await;
    let fruit =
        SearchQuery::new().filter(SearchFilter::Term("category".into(), json!("fruit"))).sort("price", SortOrder::Asc);
    assert_eq!(ids(&index.search(&fruit).await.unwrap()), ["p3", "p2", "p1"]);
    let some = SearchQuery::new()
        .filter(SearchFilter::Terms("category".into(), vec![json!("drinks"), json!("bakery")]))
        .filter(SearchFilter::Range { field: "price".into(), gte: Some(json!(2.75)), lte: Some(json!(6.5)) })
        .sort("price", SortOrder::Desc);
    assert_eq!(ids(&index.search(&some).await.unwrap()), ["p7", "p5", "p6"]);
    let in_stock = SearchQuery::new().filter(SearchFilter::Term("active".into(), json!(false)));
    assert_eq!(ids(&index.search(&in_stock).await.unwrap()), ["p2"]);
    let text_and_filter =
        SearchQuery::new().text("apple", &["title"]).filter(SearchFilter::Term("category".into(), json!("bakery")));
    assert_eq!(ids(&index.search(&text_and_filter).await.unwrap()), ["p7"]);

    let mut seen = Vec::new();
    let mut page = SearchQuery::new().sort("stock", SortOrder::Desc).sort("sku", SortOrder::Asc).size(3);
    loop {
        let got = index.search(&page).await.unwrap();
        assert_eq!(got.total, 7, "the total is every match");
        if got.hits.is_empty() {
            break;
        }
        seen.extend(got.hits.iter().map(|h| h.id.clone()));
        page = page.after(got.hits.last().expect("a hit").sort.clone());
        assert!(seen.len() <= 7, "paging ends: {seen:?}");
    }
    assert_eq!(seen, ["p3", "p1", "p5", "p6", "p4", "p7", "p2"]);
}

/// Aggregations over every match (not the page): terms buckets (most documents first,
/// then by value), avg, min, max, sum.
pub async fn aggregations_count_and_measure(h: &dyn SearchHarness) {
    let index = catalogue(h).await;
    let q = SearchQuery::new()
        .size(0)
        .aggregate("by_category", Aggregation::Terms { field: "category".into(), size: 2 })
        .aggregate("avg_price", Aggregation::Avg("price".into()))
        .aggregate("min_price", Aggregation::Min("price".into()))
        .aggregate("max_stock", Aggregation::Max("stock".into()))
        .aggregate("all_stock", Aggregation::Sum("stock".into()));
    let got = index.search(&q).await.unwrap();
    assert!(got.hits.is_empty());
    assert_eq!(got.total, 7);
    let agg = |name: &str| got.aggregations.iter().find(|(n, _)| n == name).map(|(_, a)| a.clone()).expect(name);
    match agg("by_category") {
        AggregationResult::Buckets(b) => {
            let pairs: Vec<(Value, u64)> = b.into_iter().map(|b| (b.key, b.doc_count)).collect();
            assert_eq!(pairs, [(json!("fruit"), 3), (json!("bakery"), 2)]);
        }
        other => panic!("{other:?}"),
    }
    let value = |name: &str| match agg(name) {
        AggregationResult::Value(Some(v)) => v,
        other => panic!("{name}: {other:?}"),
    };
    assert!((value("avg_price") - 27.5 / 7.0).abs() < 1e-9, "{}", value("avg_price"));
    assert!((value("min_price") - 0.5).abs() < 1e-9);
    assert!((value("max_stock") - 120.0).abs() < 1e-9);
    assert!((value("all_stock") - 208.0).abs() < 1e-9);
    let drinks = index
        .search(
            &SearchQuery::new()
                .filter(SearchFilter::Term("category".into(), json!("drinks")))
                .aggregate("avg", Aggregation::Avg("price".into())),
        )
        .await
        .unwrap();
    assert_eq!(drinks.aggregations[0].1, AggregationResult::Value(Some(7.5)), "over the matches only");
}

/// `get` sees a write at once, before any refresh; `delete` removes (a missing one is
/// no error); a closed index is `Unavailable`.
pub async fn get_and_delete(h: &dyn SearchHarness) {
    let index = fresh(h).await;
    let v = index.put("g", doc(json!({"sku": "g", "title": "fresh"}))).await.unwrap();
    let (got, version) = index.get("g").await.unwrap().expect("visible to get at once");
    assert_eq!((got["title"].clone(), version), (json!("fresh"), v));
    assert!(index.get("missing").await.unwrap().is_none());
    index.delete("g").await.unwrap();
    index.delete("never").await.unwrap();
    assert!(index.get("g").await.unwrap().is_none());
    index.close().await;
    assert_eq!(index.get("g").await.unwrap_err().kind(), ErrorKind::Unavailable);
}

/// The index is a health check for `/up`: named after its backend, a real round trip
/// that names the server's version.
pub async fn health_is_a_round_trip_naming_the_server(h: &dyn SearchHarness) {
    let index = fresh(h).await;
    let check: Arc<dyn platform_core::HealthCheck> = Arc::clone(&index) as _;
    assert!(check.name().starts_with("search:"), "{}", check.name());
    let outcome = check.check().await.expect("healthy");
    assert!(outcome.version.as_deref().is_some_and(|v| !v.is_empty()), "{outcome:?}");
}

/// Queries on fields the mapping does not allow them on, `search_after` without a
/// matching sort, and sizes out of range are `InvalidInput`, before any I/O.
pub async fn bad_queries_are_refused(h: &dyn SearchHarness) {
    let index = fresh(h).await;
    for q in [
        SearchQuery::new().text("x", &["sku"]),
        SearchQuery::new().filter(SearchFilter::Term("title".into(), json!("x"))),
        SearchQuery::new().filter(SearchFilter::Terms("sku".into(), vec![])),
        SearchQuery::new().sort("unmapped", SortOrder::Asc),
        SearchQuery::new().after(vec![json!(1)]),
        SearchQuery::new().size(crate::MAX_SIZE + 1),
        SearchQuery::new().aggregate("t", Aggregation::Terms { field: "title".into(), size: 3 }),
        SearchQuery::new().aggregate("a", Aggregation::Avg("sku".into())),
    ] {
        assert_eq!(index.search(&q).await.unwrap_err().kind(), ErrorKind::InvalidInput, "{q:?}");
    }
}
