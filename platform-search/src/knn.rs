//! Vector indexes on Elasticsearch (`elasticsearch://host:9200/docs?dimensions=384`) and
//! OpenSearch's k-NN plugin (`opensearch://host:9200/docs?dimensions=384`), feature
//! `opensearch`.
//!
//! - **Elasticsearch**: a `dense_vector` field (`index: true`, HNSW) with the metric as
//!   its `similarity` (`cosine`, `l2_norm`, `max_inner_product`), searched with the
//!   top-level `knn` section (`k`, `num_candidates`, a `filter`).
//! - **OpenSearch**: `index.knn: true` and a `knn_vector` field (Lucene HNSW, space
//!   `cosinesimil`, `l2` or `innerproduct`), searched with a `knn` query and its
//!   `filter`.
//!
//! Metadata is a `flattened` (Elasticsearch) or `flat_object` (OpenSearch) field, so a
//! filter's `term`s match its values exactly; the document is stored, not indexed.
//! Writes go as one `_bulk` with `refresh=wait_for`. Both engines answer a `_score`,
//! not a distance; the contract's distance is computed back from it: cosine `2 - 2s`,
//! squared L2 `1/s - 1`, inner product `1 - (s - 1)` for `s ≥ 1`, else `1 - (1 - 1/s)`.
//!
//! Parameters: `tls=true` (HTTPS), `timeout` (10 s), `num_candidates` (Elasticsearch,
//! the HNSW candidates per shard, at least `k`; `max(100, 10k)` by default); a user and
//! password in the URL go as HTTP Basic.
//!
//! No Elasticsearch installs here, and the OpenSearch-API server that does (osmem)
//! has no k-NN: both are tested against fixtures written from the vendors' documented
//! requests and answers (`tests/fixtures/knn/`), never against a server. The README's
//! matrix says so.

use std::time::Duration;

use platform_core::config::UrlParams;
use platform_core::{Error, ErrorKind, Result};
use serde_json::{Map, Value, json};

use crate::vector::{Capabilities, Filter, Hit, Metric, Record, VectorDriver, VectorQuery};

/// Which engine's k-NN API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Elasticsearch,
    OpenSearch,
}

/// A vector index on Elasticsearch or OpenSearch.
#[derive(Debug)]
pub struct KnnVectors {
    http: reqwest::Client,
    base: String,
    index: String,
    auth: Option<(String, Option<String>)>,
    engine: Engine,
    metric: Metric,
    num_candidates: Option<usize>,
}

fn error_of(status: u16, body: &Value, backend: &'static str) -> Error {
    let kind = ErrorKind::from_http_status(status);
    let e = &body["error"];
    let reason = e["reason"].as_str().or_else(|| e.as_str()).unwrap_or("");
    let ty = e["type"].as_str().unwrap_or("");
    Error::new(kind, format!("{status} {ty}: {reason}")).with_retryable(kind.is_retryable()).with_backend(backend)
}

/// The contract's distance from an engine's `_score` for `metric`.
pub(crate) fn distance(metric: Metric, score: f64) -> f64 {
    match metric {
        Metric::Cosine => 2.0 - 2.0 * score,
        Metric::L2 => 1.0 / score - 1.0,
        Metric::InnerProduct => {
            let dot = if score >= 1.0 { score - 1.0 } else { 1.0 - 1.0 / score };
            1.0 - dot
        }
    }
}

fn filter_of(f: &Filter) -> Value {
    match f {
        Filter::Eq(field, value) => json!({"term": {format!("metadata.{field}"): value}}),
        Filter::In(field, values) => json!({"terms": {format!("metadata.{field}"): values}}),
        Filter::And(all) => json!({"bool": {"filter": all.iter().map(filter_of).collect::<Vec<_>>()}}),
    }
}

/// A vector as JSON numbers in their shortest `f32` form (`0.6`, not the `f64`
/// widening `0.6000000238418579`): the same values, as the engines store them.
fn vector_json(v: &[f32]) -> Value {
    Value::Array(
        v.iter()
            .map(|x| {
                x.to_string()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            })
            .collect(),
    )
}

fn vector_of(v: &Value) -> Result<Vec<f32>> {
    v.as_array()
        .ok_or_else(|| Error::internal("the index returned no vector"))?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32).ok_or_else(|| Error::internal("the index returned a non-number")))
        .collect()
}

impl KnnVectors {
    /// The index named by the path of `url`, made with `dimensions` and `metric` when
    /// missing.
    pub async fn open(url: &url::Url, dimensions: usize, metric: Metric, params: &mut UrlParams) -> Result<Self> {
        let engine = if url.scheme() == "elasticsearch" { Engine::Elasticsearch } else { Engine::OpenSearch };
        let backend = Self::name(engine);
        let tls = params.take_bool("tls")?.unwrap_or(false);
        let timeout = params.take_duration("timeout")?.unwrap_or(Duration::from_secs(10));
        let num_candidates: Option<usize> = params.take_number("num_candidates")?;
        if num_candidates.is_some() && engine == Engine::OpenSearch {
            return Err(platform_core::config::url_error(
                "vector index",
                "num_candidates",
                "is an Elasticsearch parameter (OpenSearch's k-NN query takes k only)",
            ));
        }
        params.finish(backend)?;
        let crate::opensearch::Endpoint { http, base, index, auth } = crate::opensearch::endpoint(url, tls, timeout)?;
        let this = Self { http, base, index, auth, engine, metric, num_candidates };
        let (status, body) = this.call(reqwest::Method::PUT, "", Some(this.mapping(dimensions))).await?;
        let exists = body["error"]["type"].as_str() == Some("resource_already_exists_exception");
        if !(200..300).contains(&status) && !exists {
            return Err(error_of(status, &body, backend).with_op("open"));
        }
        Ok(this)
    }

    fn name(engine: Engine) -> &'static str {
        match engine {
            Engine::Elasticsearch => "elasticsearch",
            Engine::OpenSearch => "opensearch",
        }
    }

    /// The index's settings and mappings.
    fn mapping(&self, dimensions: usize) -> Value {
        match self.engine {
            Engine::Elasticsearch => {
                let similarity = match self.metric {
                    Metric::Cosine => "cosine",
                    Metric::L2 => "l2_norm",
                    Metric::InnerProduct => "max_inner_product",
                };
                json!({"mappings": {"properties": {
                    "embedding": {"type": "dense_vector", "dims": dimensions, "index": true, "similarity": similarity},
                    "metadata": {"type": "flattened"},
                    "document": {"type": "text", "index": false},
                }}})
            }
            Engine::OpenSearch => {
                let space = match self.metric {
                    Metric::Cosine => "cosinesimil",
                    Metric::L2 => "l2",
                    Metric::InnerProduct => "innerproduct",
                };
                json!({"settings": {"index.knn": true}, "mappings": {"properties": {
                    "embedding": {"type": "knn_vector", "dimension": dimensions,
                                  "method": {"name": "hnsw", "engine": "lucene", "space_type": space}},
                    "metadata": {"type": "flat_object"},
                    "document": {"type": "text", "index": false},
                }}})
            }
        }
    }

    /// The search body for `query`.
    fn search(&self, query: &VectorQuery) -> Value {
        let filter = query.filter.as_ref().map(filter_of);
        let mut body = match self.engine {
            Engine::Elasticsearch => {
                let candidates = self.num_candidates.unwrap_or((query.k * 10).max(100)).max(query.k);
                let mut knn = json!({"field": "embedding", "query_vector": vector_json(&query.vector), "k": query.k,
                                     "num_candidates": candidates});
                if let Some(f) = filter {
                    knn["filter"] = f;
                }
                json!({"knn": knn})
            }
            Engine::OpenSearch => {
                let mut knn = json!({"vector": vector_json(&query.vector), "k": query.k});
                if let Some(f) = filter {
                    knn["filter"] = f;
                }
                json!({"query": {"knn": {"embedding": knn}}})
            }
        };
        body["size"] = json!(query.k);
        body["_source"] = json!(["metadata", "document"]);
        body
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}/{path}", self.base));
        if let Some((user, password)) = &self.auth {
            r = r.basic_auth(user, password.as_ref());
        }
        r
    }

    fn unreachable(&self, e: &reqwest::Error) -> Error {
        let kind = if e.is_timeout() { ErrorKind::Timeout } else { ErrorKind::Unavailable };
        let backend = Self::name(self.engine);
        Error::new(kind, format!("{backend}: {e}")).with_retryable(true).with_backend(backend)
    }

    /// A call on the index (`path` after its name).
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut r = self.request(method, &format!("{}{path}", self.index));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.map_err(|e| self.unreachable(&e))?;
        let status = res.status().as_u16();
        Ok((status, res.json().await.unwrap_or(Value::Null)))
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, body) = self.call(method, path, body).await?;
        if (200..300).contains(&status) { Ok(body) } else { Err(error_of(status, &body, Self::name(self.engine))) }
    }

    async fn bulk(&self, lines: Vec<Value>) -> Result<()> {
        let mut text = String::new();
        for line in lines {
            text.push_str(&line.to_string());
            text.push('\n');
        }
        let res = self
            .request(reqwest::Method::POST, &format!("{}/_bulk?refresh=wait_for", self.index))
            .header("content-type", "application/x-ndjson")
            .body(text)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(error_of(status, &body, Self::name(self.engine)));
        }
        if body["errors"].as_bool() == Some(true) {
            let first = body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i.as_object()?.values().next())
                .find(|i| i.get("error").is_some_and(|e| !e.is_null()));
            let (status, error) = first.map_or((500, Value::Null), |i| {
                (i["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(500), json!({"error": i["error"]}))
            });
            return Err(error_of(status, &error, Self::name(self.engine)));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl VectorDriver for KnnVectors {
    fn backend(&self) -> &'static str {
        Self::name(self.engine)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { exact: false }
    }

    async fn upsert(&self, records: Vec<Record>) -> Result<()> {
        for chunk in records.chunks(500) {
            let mut lines = Vec::with_capacity(chunk.len() * 2);
            for r in chunk {
                lines.push(json!({"index": {"_id": r.id}}));
                lines
                    .push(json!({"embedding": vector_json(&r.vector), "metadata": r.metadata, "document": r.document}));
            }
            self.bulk(lines).await?;
        }
        Ok(())
    }

    async fn query(&self, query: &VectorQuery) -> Result<Vec<Hit>> {
        let got = self.ok(reqwest::Method::POST, "/_search", Some(self.search(query))).await?;
        got["hits"]["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                let score = h["_score"].as_f64().ok_or_else(|| Error::internal("a hit without a score"))?;
                Ok(Hit {
                    id: h["_id"].as_str().unwrap_or_default().to_owned(),
                    distance: distance(self.metric, score) as f32,
                    metadata: h["_source"]["metadata"].as_object().cloned().unwrap_or_default(),
                    document: h["_source"]["document"].as_str().map(str::to_owned),
                })
            })
            .collect()
    }

    async fn get(&self, ids: &[String]) -> Result<Vec<Record>> {
        let got = self.ok(reqwest::Method::POST, "/_mget", Some(json!({"ids": ids}))).await?;
        got["docs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["found"].as_bool() == Some(true))
            .map(|d| {
                let source = &d["_source"];
                Ok(Record {
                    id: d["_id"].as_str().unwrap_or_default().to_owned(),
                    vector: vector_of(&source["embedding"])?,
                    metadata: source["metadata"].as_object().cloned().unwrap_or_else(Map::new),
                    document: source["document"].as_str().map(str::to_owned),
                })
            })
            .collect()
    }

    async fn delete(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        // Deleting what is not there is no error: a bulk item's 404 is fine.
        let lines = ids.iter().map(|id| json!({"delete": {"_id": id}})).collect();
        match self.bulk(lines).await {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn close(&self) {}

    async fn ping(&self) -> Result<String> {
        let res = self.request(reqwest::Method::GET, "").send().await.map_err(|e| self.unreachable(&e))?;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(error_of(status, &body, Self::name(self.engine)));
        }
        let number = body["version"]["number"].as_str().unwrap_or("?");
        let product = match (self.engine, body["version"]["distribution"].as_str()) {
            (Engine::OpenSearch, _) | (_, Some("opensearch")) => "OpenSearch",
            _ => "Elasticsearch",
        };
        Ok(format!("{product} {number}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_turn_back_into_the_contracts_distances() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // cosine 0.6 → score (1 + 0.6) / 2 = 0.8 → distance 0.4
        assert!(close(distance(Metric::Cosine, 0.8), 0.4));
        // squared L2 3 → score 1 / (1 + 3) = 0.25 → 3
        assert!(close(distance(Metric::L2, 0.25), 3.0));
        // dot 0.5 → score 1.5 → distance 0.5; dot -1 → score 1 / (1 + 1) = 0.5 → 2
        assert!(close(distance(Metric::InnerProduct, 1.5), 0.5));
        assert!(close(distance(Metric::InnerProduct, 0.5), 2.0));
    }
}
