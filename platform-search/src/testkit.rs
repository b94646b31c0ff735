//! The conformance suite (feature `testkit`): every behaviour of the [`VectorIndex`]
//! contract, listed once in [`vector_behaviours!`](crate::vector_behaviours), run by
//! [`vector_conformance_tests!`](crate::vector_conformance_tests) as one test per
//! behaviour and backend, or all at once by [`run_all`]. Recall is measured against
//! exact search on a fixed pseudo-random set.

use std::sync::Arc;

use platform_core::{ErrorKind, Result};
use serde_json::json;

use crate::{Filter, MAX_K, Metric, Record, VectorIndex, VectorQuery};

#[path = "testkit_text.rs"]
pub mod text;

/// Makes fresh, uniquely named indexes.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// The URL of a new, empty index of `dimensions` measuring by `metric`.
    async fn fresh_url(&self, dimensions: usize, metric: Metric) -> Result<String>;
}

/// The backends the suite knows how to make indexes on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum UrlHarness {
    /// `memory://`: every open is a new index.
    Memory,
    /// A uniquely named index in the pgvector database of this `pgvector://` URL.
    Pgvector(String),
    /// A uniquely named collection on the Chroma server of this `chroma://host:port` URL.
    Chroma(String),
}

impl UrlHarness {
    /// pgvector from `PLATFORM_TEST_PGVECTOR_URL`; `None` (a skip) when unset.
    pub fn pgvector_from_env() -> Option<Self> {
        platform_core::testkit::server_url("PGVECTOR").map(Self::Pgvector)
    }

    /// Chroma from `PLATFORM_TEST_CHROMA_URL`; `None` (a skip) when unset.
    pub fn chroma_from_env() -> Option<Self> {
        platform_core::testkit::server_url("CHROMA").map(Self::Chroma)
    }
}

#[async_trait::async_trait]
impl Harness for UrlHarness {
    async fn fresh_url(&self, dimensions: usize, metric: Metric) -> Result<String> {
        let name = platform_core::testkit::unique_ident("vec").to_ascii_lowercase().replace('-', "_");
        let common = format!("dimensions={dimensions}&metric={}", metric.name());
        Ok(match self {
            Self::Memory => format!("memory://{name}?{common}"),
            Self::Pgvector(base) => {
                let sep = if base.contains('?') { '&' } else { '?' };
                format!("{base}{sep}index={name}&{common}")
            }
            Self::Chroma(base) => format!("{}/{name}?{common}", base.trim_end_matches('/')),
        })
    }
}

/// Runs every behaviour with `h`.
pub async fn run_all(h: &dyn Harness) {
    use platform_core::run_behaviours;
    crate::vector_behaviours!(run_behaviours!(h));
}

/// Writes one `#[tokio::test]` per behaviour for a backend:
/// `vector_conformance_tests!(chroma, UrlHarness::chroma_from_env());`
#[macro_export]
macro_rules! vector_conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::vector_behaviours!(platform_core::behaviour_tests!($backend, $crate::testkit, $harness));
    };
}

/// Every behaviour of the suite, listed once. Calls `$then!(…, behaviour, …)`.
#[doc(hidden)]
#[macro_export]
macro_rules! vector_behaviours {
    ($($then:ident)::+ ! ($($args:tt)*)) => {
        $($then)::+! {
            $($args)*,
            records_round_trip_and_delete,
            upsert_replaces_by_id,
            nearest_first_with_the_metrics_distance,
            filters_keep_to_a_tenant,
            recall_against_exact_search,
            bad_input_is_refused,
            health_is_a_round_trip_naming_the_server,
            a_closed_index_refuses
        }
    };
}

async fn fresh(h: &dyn Harness, dimensions: usize, metric: Metric) -> Arc<dyn VectorIndex> {
    crate::open_vector(&h.fresh_url(dimensions, metric).await.expect("a fresh index")).await.expect("open")
}

fn ids(v: &[String]) -> Vec<String> {
    v.to_vec()
}

fn s(list: &[&str]) -> Vec<String> {
    list.iter().map(|x| (*x).to_owned()).collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

/// A small deterministic generator (xorshift) of vector components in [-1, 1), so every
/// backend (and the benches) sees the same set for the same seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next component.
    pub fn component(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// A vector of `n` components.
    pub fn vector(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.component()).collect()
    }
}

/// Records come back by id with their vector, metadata and document; absent ids are
/// left out; a delete removes, and deleting what is absent is no error.
pub async fn records_round_trip_and_delete(h: &dyn Harness) {
    let index = fresh(h, 4, Metric::Cosine).await;
    let a = Record::new("a", vec![0.1, 0.2, 0.3, 0.4])
        .with("tenant", "t1")
        .with("n", 3)
        .with("ok", true)
        .with_document("alpha");
    let b = Record::new("b", vec![-1.0, 0.5, 0.25, 2.0]);
    index.upsert(vec![a.clone(), b.clone()]).await.unwrap();
    let got = index.get(&s(&["b", "missing", "a"])).await.unwrap();
    assert_eq!(got.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["b", "a"], "in the order asked");
    assert!(close(&got[1].vector, &a.vector), "{:?}", got[1].vector);
    assert_eq!(got[1].metadata, a.metadata);
    assert_eq!(got[1].document.as_deref(), Some("alpha"));
    assert!(got[0].metadata.is_empty() && got[0].document.is_none());
    index.delete(&s(&["a", "never"])).await.unwrap();
    assert_eq!(ids(&index.get(&s(&["a", "b"])).await.unwrap().into_iter().map(|r| r.id).collect::<Vec<_>>()), ["b"]);
    assert!(index.get(&[]).await.unwrap().is_empty());
}

/// An upsert replaces what an id had, vector and metadata alike; within one call the
/// last record of an id wins.
pub async fn upsert_replaces_by_id(h: &dyn Harness) {
    let index = fresh(h, 3, Metric::L2).await;
    index.upsert(vec![Record::new("x", vec![1.0, 0.0, 0.0]).with("v", 1)]).await.unwrap();
    index
        .upsert(vec![
            Record::new("x", vec![0.0, 1.0, 0.0]).with("v", 2),
            Record::new("x", vec![0.0, 0.0, 1.0]).with("v", 3),
        ])
        .await
        .unwrap();
    let got = index.get(&s(&["x"])).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(close(&got[0].vector, &[0.0, 0.0, 1.0]));
    assert_eq!(got[0].metadata["v"], json!(3));
    let hits = index.query(&VectorQuery::new(vec![0.0, 0.0, 1.0], 5)).await.unwrap();
    assert_eq!(hits.len(), 1, "one record, not three");
    assert!(hits[0].distance.abs() < 1e-4);
}

/// Hits come nearest first, each with its distance by the index's metric (the same
/// number the exact formula gives), at most `k`.
pub async fn nearest_first_with_the_metrics_distance(h: &dyn Harness) {
    for metric in [Metric::Cosine, Metric::L2, Metric::InnerProduct] {
        let index = fresh(h, 3, metric).await;
        let records = [
            Record::new("east", vec![1.0, 0.0, 0.0]),
            Record::new("north", vec![0.0, 1.0, 0.0]),
            Record::new("up", vec![0.0, 0.0, 1.0]),
            Record::new("north-east", vec![0.6, 0.8, 0.0]),
        ];
        index.upsert(records.to_vec()).await.unwrap();
        let q = vec![0.8, 0.6, 0.0];
        let hits = index.query(&VectorQuery::new(q.clone(), 3)).await.unwrap();
        assert_eq!(hits.len(), 3);
        assert_eq!(hits[0].id, "north-east", "{metric:?}: {hits:?}");
        for hit in &hits {
            let r = records.iter().find(|r| r.id == hit.id).unwrap();
            let want = metric.distance(&q, &r.vector);
            assert!((hit.distance - want).abs() < 1e-3, "{metric:?} {}: {} vs {want}", hit.id, hit.distance);
        }
        assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance), "nearest first");
    }
}

/// A filter keeps results to matching metadata (a tenant, one of some values, both);
/// the nearest of those come back, even when others are nearer.
pub async fn filters_keep_to_a_tenant(h: &dyn Harness) {
    let index = fresh(h, 2, Metric::Cosine).await;
    let mut records = Vec::new();
    for i in 0..30_u8 {
        let angle = f32::from(i) / 30.0 * std::f32::consts::FRAC_PI_2;
        let tenant = ["red", "green", "blue"][usize::from(i % 3)];
        records.push(
            Record::new(format!("r{i}"), vec![angle.cos(), angle.sin()])
                .with("tenant", tenant)
                .with("rank", i64::from(i)),
        );
    }
    index.upsert(records).await.unwrap();
    let q = vec![1.0, 0.0];
    let red =
        index.query(&VectorQuery::new(q.clone(), 4).filter(Filter::Eq("tenant".into(), json!("red")))).await.unwrap();
    assert_eq!(red.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["r0", "r3", "r6", "r9"]);
    assert!(red.iter().all(|h| h.metadata["tenant"] == "red"));
    let two = Filter::In("tenant".into(), vec![json!("green"), json!("blue")]);
    let gb = index.query(&VectorQuery::new(q.clone(), 3).filter(two.clone())).await.unwrap();
    assert_eq!(gb.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["r1", "r2", "r4"]);
    let both = Filter::And(vec![two, Filter::Eq("rank".into(), json!(5))]);
    let one = index.query(&VectorQuery::new(q.clone(), 10).filter(both)).await.unwrap();
    assert_eq!(one.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["r5"]);
    let none =
        index.query(&VectorQuery::new(q, 10).filter(Filter::Eq("tenant".into(), json!("purple")))).await.unwrap();
    assert!(none.is_empty());
}

/// Recall@10 against exact search on 400 pseudo-random vectors of 32 dimensions, over
/// 20 queries: exact backends find every neighbour, approximate ones at least 90 %.
pub async fn recall_against_exact_search(h: &dyn Harness) {
    const N: usize = 400;
    const D: usize = 32;
    let index = fresh(h, D, Metric::Cosine).await;
    let mut rng = Rng(0x5eed_1234_abcd_0042);
    let records: Vec<Record> = (0..N).map(|i| Record::new(format!("v{i}"), rng.vector(D))).collect();
    index.upsert(records.clone()).await.unwrap();
    let (mut found, mut wanted) = (0, 0);
    for _ in 0..20 {
        let q = rng.vector(D);
        let mut exact: Vec<(f32, &str)> =
            records.iter().map(|r| (Metric::Cosine.distance(&q, &r.vector), r.id.as_str())).collect();
        exact.sort_by(|a, b| a.0.total_cmp(&b.0));
        let truth: Vec<&str> = exact[..10].iter().map(|(_, id)| *id).collect();
        let hits = index.query(&VectorQuery::new(q, 10)).await.unwrap();
        assert_eq!(hits.len(), 10);
        found += hits.iter().filter(|h| truth.contains(&h.id.as_str())).count();
        wanted += 10;
    }
    let recall = found as f64 / wanted as f64;
    if index.capabilities().exact {
        assert!((recall - 1.0).abs() < f64::EPSILON, "an exact backend missed neighbours: recall {recall}");
    } else {
        assert!(recall >= 0.9, "recall@10 {recall} below 0.9");
    }
}

/// Wrong dimensions, components that are not finite, `k` out of range, metadata that is
/// not scalar and bad field names are `InvalidInput`, before any I/O.
pub async fn bad_input_is_refused(h: &dyn Harness) {
    let index = fresh(h, 3, Metric::Cosine).await;
    let kind = |r: Result<()>| r.expect_err("refused").kind();
    assert_eq!(kind(index.upsert(vec![Record::new("a", vec![1.0, 2.0])]).await), ErrorKind::InvalidInput);
    assert_eq!(kind(index.upsert(vec![Record::new("a", vec![1.0, f32::NAN, 0.0])]).await), ErrorKind::InvalidInput);
    assert_eq!(kind(index.upsert(vec![Record::new("", vec![1.0, 0.0, 0.0])]).await), ErrorKind::InvalidInput);
    let nested = Record::new("a", vec![1.0, 0.0, 0.0]).with("obj", json!({"a": 1}));
    assert_eq!(kind(index.upsert(vec![nested]).await), ErrorKind::InvalidInput);
    let badname = Record::new("a", vec![1.0, 0.0, 0.0]).with("bad name", 1);
    assert_eq!(kind(index.upsert(vec![badname]).await), ErrorKind::InvalidInput);
    for k in [0, MAX_K + 1] {
        assert_eq!(
            index.query(&VectorQuery::new(vec![1.0, 0.0, 0.0], k)).await.unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
    let q = VectorQuery::new(vec![1.0, 0.0], 1);
    assert_eq!(index.query(&q).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    let empty_in = VectorQuery::new(vec![1.0, 0.0, 0.0], 1).filter(Filter::In("t".into(), vec![]));
    assert_eq!(index.query(&empty_in).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    assert!(index.get(&s(&["nothing"])).await.unwrap().is_empty(), "the index was left empty");
}

/// The index is a health check for `/up`: named after its backend, a real round trip
/// that names the server's version; once closed, it reports the index down.
pub async fn health_is_a_round_trip_naming_the_server(h: &dyn Harness) {
    let index = fresh(h, 3, Metric::Cosine).await;
    let check: Arc<dyn platform_core::HealthCheck> = Arc::clone(&index) as _;
    assert!(check.name().starts_with("vector:"), "{}", check.name());
    let outcome = check.check().await.expect("healthy");
    assert!(outcome.version.as_deref().is_some_and(|v| !v.is_empty()), "{outcome:?}");
    index.close().await;
    assert_eq!(check.check().await.expect_err("closed").kind(), ErrorKind::Unavailable);
}

/// After `close`, every call is `Unavailable`, stamped with the backend.
pub async fn a_closed_index_refuses(h: &dyn Harness) {
    let index = fresh(h, 2, Metric::Cosine).await;
    index.upsert(vec![Record::new("a", vec![1.0, 0.0])]).await.unwrap();
    index.close().await;
    let err = index.query(&VectorQuery::new(vec![1.0, 0.0], 1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(!err.backend().is_empty());
    assert_eq!(index.get(&s(&["a"])).await.unwrap_err().kind(), ErrorKind::Unavailable);
    index.close().await;
}
