#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "chroma")]
mod chroma;
#[cfg(feature = "opensearch")]
mod knn;
#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "memory")]
mod memory_text;
#[cfg(feature = "opensearch")]
mod opensearch;
#[cfg(feature = "pgvector")]
mod pgvector;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod text;
pub mod vector;

use std::sync::Arc;

#[cfg(feature = "chroma")]
pub use chroma::ChromaVectors;
#[cfg(feature = "opensearch")]
pub use knn::KnnVectors;
#[cfg(feature = "memory")]
pub use memory::MemoryVectors;
#[cfg(feature = "memory")]
pub use memory_text::MemorySearch;
#[cfg(feature = "opensearch")]
pub use opensearch::OpenSearch;
#[cfg(feature = "pgvector")]
pub use pgvector::PgVectors;
pub use platform_core::{Error, ErrorKind, Result};
pub use text::{
    Aggregation, AggregationResult, Bucket, FieldType, MAX_SIZE, Mapping, SearchFilter, SearchHandle, SearchHit,
    SearchIndex, SearchIndexExt, SearchQuery, SearchResults, SortOrder, Version, Write,
};
pub use vector::{Capabilities, Filter, Hit, MAX_K, Metric, Record, VectorHandle, VectorIndex, VectorQuery};

/// The largest number of dimensions an index may have.
pub const MAX_DIMENSIONS: usize = 16_000;

/// Every vector index scheme this build can open.
pub fn schemes() -> Vec<&'static str> {
    let all = [
        ("memory", cfg!(feature = "memory")),
        ("pgvector", cfg!(feature = "pgvector")),
        ("chroma", cfg!(feature = "chroma")),
        ("elasticsearch", cfg!(feature = "opensearch")),
        ("opensearch", cfg!(feature = "opensearch")),
    ];
    all.into_iter().filter(|(_, on)| *on).map(|(scheme, _)| scheme).collect()
}

fn bad(key: &str, why: &str) -> Error {
    platform_core::config::url_error("vector index", key, why)
}

/// Opens a vector index from a URL:
///
/// | URL | backend | exact |
/// |---|---|---|
/// | `memory://docs?dimensions=384` | in-process exact search (feature `memory`) | yes |
/// | `pgvector://user@host:5433/db?index=docs&dimensions=384` | PostgreSQL with pgvector, HNSW (`pgvector`); other parameters are platform-db's | no |
/// | `chroma://host:8000/docs?dimensions=384` | ChromaDB, HTTP API v2 (`chroma`): `tenant`, `database`, `tls`, `timeout` | no |
/// | `elasticsearch://host:9200/docs?dimensions=384` | Elasticsearch `dense_vector` and `knn` (`opensearch`): `tls`, `timeout`, `num_candidates`; tested on fixtures only | no |
/// | `opensearch://host:9200/docs?dimensions=384` | OpenSearch's k-NN plugin, `knn_vector` (`opensearch`): `tls`, `timeout`; tested on fixtures only | no |
///
/// Every URL takes `dimensions` (required, 1 to [`MAX_DIMENSIONS`]) and `metric`
/// (`cosine`, the default; `l2`; `ip`). Unknown parameters are errors naming them;
/// passwords are masked in every error.
#[cfg_attr(
    not(any(feature = "pgvector", feature = "chroma", feature = "opensearch")),
    expect(clippy::unused_async, reason = "only the network backends await")
)]
pub async fn open_vector(raw: &str) -> Result<Arc<dyn VectorIndex>> {
    let masked = platform_core::mask_url(raw);
    let url = url::Url::parse(raw).map_err(|e| bad("url", &format!("{masked:?} is not a URL: {e}")))?;
    let mut params = platform_core::config::UrlParams::parse("vector index", url.query())?;
    let dimensions: usize = params.take_number("dimensions")?.ok_or_else(|| bad("dimensions", "is required"))?;
    if !(1..=MAX_DIMENSIONS).contains(&dimensions) {
        return Err(bad("dimensions", &format!("must be 1 to {MAX_DIMENSIONS}")));
    }
    let metric = match params.take("metric") {
        Some(m) => Metric::parse(&m)?,
        None => Metric::Cosine,
    };
    // Used by the backends this build has, whichever they are.
    let _ = (&mut params, dimensions, metric);
    let index: Result<Arc<dyn VectorIndex>> = match url.scheme() {
        #[cfg(feature = "memory")]
        "memory" => {
            let name = url.host_str().unwrap_or_default().to_owned();
            if name.is_empty() {
                return Err(bad("index", "memory:// names its index as the host (memory://docs)"));
            }
            params.finish("memory")?;
            Ok(Arc::new(VectorHandle::new(MemoryVectors::new(metric), name, dimensions, metric)))
        }
        #[cfg(feature = "pgvector")]
        "pgvector" => {
            let name = params.take("index").ok_or_else(|| bad("index", "is required (…?index=docs)"))?;
            let ok = !name.is_empty()
                && name.len() <= 48
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                return Err(bad("index", "must be 1 to 48 lowercase letters, digits and _, not starting with a digit"));
            }
            // The rest is platform-db's, on a postgres:// URL.
            let mut db_url = url.clone();
            let rest: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| !matches!(k.as_ref(), "index" | "dimensions" | "metric"))
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if rest.is_empty() {
                db_url.set_query(None);
            } else {
                db_url.query_pairs_mut().clear().extend_pairs(rest);
            }
            let db_url = format!("postgres{}", &db_url.as_str()["pgvector".len()..]);
            let db = platform_db::open(&db_url).await?;
            let driver = PgVectors::open(db, &name, dimensions, metric).await?;
            Ok(Arc::new(VectorHandle::new(driver, name, dimensions, metric)))
        }
        #[cfg(feature = "chroma")]
        "chroma" => {
            let name = url.path().trim_start_matches('/').to_owned();
            chroma::check_name(&name)?;
            let driver = ChromaVectors::open(&url, &name, metric, &mut params).await?;
            Ok(Arc::new(VectorHandle::new(driver, name, dimensions, metric)))
        }
        #[cfg(feature = "opensearch")]
        "elasticsearch" | "opensearch" => {
            let name = url.path().trim_start_matches('/').to_owned();
            let driver = KnnVectors::open(&url, dimensions, metric, &mut params).await?;
            Ok(Arc::new(VectorHandle::new(driver, name, dimensions, metric)))
        }
        other => {
            let feature = match other {
                "memory" => Some("memory"),
                "pgvector" => Some("pgvector"),
                "chroma" => Some("chroma"),
                "elasticsearch" | "opensearch" => Some("opensearch"),
                _ => None,
            };
            Err(match feature {
                Some(f) => {
                    Error::new(ErrorKind::Unsupported, format!("{other}:// needs the `{f}` feature of platform-search"))
                }
                None => bad("scheme", &format!("{other}:// is not a vector index ({})", schemes().join(", "))),
            })
        }
    };
    index
}

/// Opens the vector index `{PREFIX}_URL` names (`VECTORS_URL` for prefix `VECTORS`).
pub async fn open_vector_from_env(prefix: &str) -> Result<Arc<dyn VectorIndex>> {
    let var = format!("{prefix}_URL");
    let url = std::env::var(&var).map_err(|_| {
        Error::invalid_input(format!("{var} is not set (a vector index URL, e.g. memory://docs?dimensions=384)"))
            .with_detail(var.clone(), "not set")
    })?;
    open_vector(&url).await
}

/// Every search index scheme this build can open.
pub fn search_schemes() -> Vec<&'static str> {
    let all = [
        ("memory", cfg!(feature = "memory")),
        ("opensearch", cfg!(feature = "opensearch")),
        ("elasticsearch", cfg!(feature = "opensearch")),
    ];
    all.into_iter().filter(|(_, on)| *on).map(|(scheme, _)| scheme).collect()
}

/// Opens a search index from a URL, making it with `mapping` when missing:
///
/// | URL | backend |
/// |---|---|
/// | `memory://products` | in-process (feature `memory`) |
/// | `opensearch://host:9200/products` | OpenSearch (`opensearch`): `tls`, `timeout`, a user and password as HTTP Basic |
/// | `elasticsearch://host:9200/products` | Elasticsearch, the API it shares with OpenSearch (`opensearch`) |
///
/// Unknown parameters are errors naming them; passwords are masked in every error.
#[cfg_attr(not(feature = "opensearch"), expect(clippy::unused_async, reason = "only the network backends await"))]
pub async fn open_search(raw: &str, mapping: &Mapping) -> Result<Arc<dyn SearchIndex>> {
    let masked = platform_core::mask_url(raw);
    let url = url::Url::parse(raw).map_err(|e| {
        platform_core::config::url_error("search index", "url", &format!("{masked:?} is not a URL: {e}"))
    })?;
    let mut params = platform_core::config::UrlParams::parse("search index", url.query())?;
    // Used by the backends this build has, whichever they are.
    let _ = (&mut params, mapping);
    let index: Result<Arc<dyn SearchIndex>> = match url.scheme() {
        #[cfg(feature = "memory")]
        "memory" => {
            let name = url.host_str().unwrap_or_default().to_owned();
            if name.is_empty() {
                return Err(platform_core::config::url_error(
                    "search index",
                    "index",
                    "memory:// names its index as the host",
                ));
            }
            params.finish("memory")?;
            Ok(Arc::new(SearchHandle::new(MemorySearch::new(mapping.clone()), name, mapping.clone())?))
        }
        #[cfg(feature = "opensearch")]
        "opensearch" | "elasticsearch" => {
            let driver = OpenSearch::open(&url, mapping, &mut params).await?;
            let name = url.path().trim_start_matches('/').to_owned();
            Ok(Arc::new(SearchHandle::new(driver, name, mapping.clone())?))
        }
        other => Err(match other {
            "memory" | "opensearch" | "elasticsearch" => Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{other}:// needs the `{}` feature of platform-search",
                    if other == "memory" { "memory" } else { "opensearch" }
                ),
            ),
            _ => platform_core::config::url_error(
                "search index",
                "scheme",
                &format!("{other}:// is not a search index ({})", search_schemes().join(", ")),
            ),
        }),
    };
    index
}
