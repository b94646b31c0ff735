//! ChromaDB (`chroma://host:8000/name?dimensions=384&metric=cosine`, feature `chroma`):
//! its HTTP API v2, with our own vectors (no server-side embedding). The collection is
//! made with the metric as its HNSW space when missing (`get_or_create`); `tenant` and
//! `database` default to Chroma's `default_tenant` and `default_database`; `tls=true`
//! speaks HTTPS; `timeout` bounds each call (10 s). Chroma's distances are the
//! contract's: cosine `1 - cos`, L2 squared, inner product `1 - a·b`.

use std::time::Duration;

use platform_core::config::UrlParams;
use platform_core::{Error, ErrorKind, Result};
use serde_json::{Map, Value, json};

use crate::vector::{Capabilities, Filter, Hit, Metric, Record, VectorDriver, VectorQuery};

const BACKEND: &str = "chroma";

/// The ChromaDB backend.
#[derive(Debug)]
pub struct ChromaVectors {
    http: reqwest::Client,
    base: String,
    collection: String,
}

fn http_error(e: &reqwest::Error) -> Error {
    let kind = if e.is_timeout() { ErrorKind::Timeout } else { ErrorKind::Unavailable };
    Error::new(kind, format!("chroma: {e}")).with_retryable(true).with_backend(BACKEND)
}

async fn answer(res: reqwest::Response) -> Result<Value> {
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let message = body["message"].as_str().or_else(|| body["error"].as_str()).unwrap_or("").to_owned();
    let kind = ErrorKind::from_http_status(status.as_u16());
    Err(Error::new(kind, format!("chroma answered {status}: {message}"))
        .with_retryable(kind.is_retryable())
        .with_backend(BACKEND))
}

fn where_of(f: &Filter) -> Value {
    match f {
        Filter::Eq(field, value) => json!({ field: {"$eq": value} }),
        Filter::In(field, values) => json!({ field: {"$in": values} }),
        Filter::And(all) if all.len() == 1 => where_of(&all[0]),
        Filter::And(all) => json!({"$and": all.iter().map(where_of).collect::<Vec<_>>()}),
    }
}

fn metadata_of(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn vector_of(v: &Value) -> Result<Vec<f32>> {
    v.as_array()
        .ok_or_else(|| Error::internal("chroma returned no embedding"))?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32).ok_or_else(|| Error::internal("chroma returned a non-number")))
        .collect()
}

impl ChromaVectors {
    /// The collection `name` on the server of `chroma://host:port/…`, made with
    /// `metric` when missing.
    pub async fn open(url: &url::Url, name: &str, metric: Metric, params: &mut UrlParams) -> Result<Self> {
        let tls = params.take_bool("tls")?.unwrap_or(false);
        let tenant = params.take("tenant").unwrap_or_else(|| "default_tenant".to_owned());
        let database = params.take("database").unwrap_or_else(|| "default_database".to_owned());
        let timeout = params.take_duration("timeout")?.unwrap_or(Duration::from_secs(10));
        params.finish(BACKEND)?;
        let host = url.host_str().unwrap_or("127.0.0.1");
        let port = url.port().unwrap_or(8000);
        let scheme = if tls { "https" } else { "http" };
        let base = format!("{scheme}://{host}:{port}/api/v2/tenants/{tenant}/databases/{database}");
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| Error::internal(format!("an HTTP client: {e}")))?;
        let space = match metric {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
            Metric::InnerProduct => "ip",
        };
        let made = http
            .post(format!("{base}/collections"))
            .json(&json!({"name": name, "get_or_create": true, "configuration": {"hnsw": {"space": space}}}))
            .send()
            .await
            .map_err(|e| http_error(&e).with_op("open"))?;
        let made = answer(made).await.map_err(|e| e.with_op("open"))?;
        let existing = made["configuration_json"]["hnsw"]["space"].as_str().unwrap_or(space);
        if existing != space {
            return Err(Error::invalid_input(format!("chroma collection {name} measures by {existing}, not {space}"))
                .with_detail("metric", "differs from the collection's"));
        }
        let collection =
            made["id"].as_str().ok_or_else(|| Error::internal("chroma made a collection without an id"))?.to_owned();
        Ok(Self { http, base, collection })
    }

    async fn call(&self, op: &str, body: Value) -> Result<Value> {
        let res = self
            .http
            .post(format!("{}/collections/{}/{op}", self.base, self.collection))
            .json(&body)
            .send()
            .await
            .map_err(|e| http_error(&e))?;
        answer(res).await
    }
}

#[async_trait::async_trait]
impl VectorDriver for ChromaVectors {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { exact: false }
    }

    async fn upsert(&self, records: Vec<Record>) -> Result<()> {
        for chunk in records.chunks(500) {
            let body = json!({
                "ids": chunk.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
                "embeddings": chunk.iter().map(|r| r.vector.clone()).collect::<Vec<_>>(),
                "metadatas": chunk.iter().map(|r| if r.metadata.is_empty() { Value::Null } else { Value::Object(r.metadata.clone()) }).collect::<Vec<_>>(),
                "documents": chunk.iter().map(|r| r.document.clone()).collect::<Vec<_>>(),
            });
            self.call("upsert", body).await?;
        }
        Ok(())
    }

    async fn query(&self, query: &VectorQuery) -> Result<Vec<Hit>> {
        let mut body = json!({
            "query_embeddings": [query.vector],
            "n_results": query.k,
            "include": ["metadatas", "documents", "distances"],
        });
        if let Some(f) = &query.filter {
            body["where"] = where_of(f);
        }
        let got = self.call("query", body).await?;
        let ids = got["ids"][0].as_array().cloned().unwrap_or_default();
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                Ok(Hit {
                    id: id.as_str().unwrap_or_default().to_owned(),
                    distance: got["distances"][0][i]
                        .as_f64()
                        .ok_or_else(|| Error::internal("chroma returned no distance"))?
                        as f32,
                    metadata: metadata_of(&got["metadatas"][0][i]),
                    document: got["documents"][0][i].as_str().map(str::to_owned),
                })
            })
            .collect()
    }

    async fn get(&self, ids: &[String]) -> Result<Vec<Record>> {
        let got = self.call("get", json!({"ids": ids, "include": ["metadatas", "documents", "embeddings"]})).await?;
        let found = got["ids"].as_array().cloned().unwrap_or_default();
        found
            .iter()
            .enumerate()
            .map(|(i, id)| {
                Ok(Record {
                    id: id.as_str().unwrap_or_default().to_owned(),
                    vector: vector_of(&got["embeddings"][i])?,
                    metadata: metadata_of(&got["metadatas"][i]),
                    document: got["documents"][i].as_str().map(str::to_owned),
                })
            })
            .collect()
    }

    async fn delete(&self, ids: &[String]) -> Result<()> {
        self.call("delete", json!({"ids": ids})).await.map(|_| ())
    }

    async fn close(&self) {}

    async fn ping(&self) -> Result<String> {
        let root = self.base.split("/api/v2/").next().unwrap_or_default();
        let res = self.http.get(format!("{root}/api/v2/version")).send().await.map_err(|e| http_error(&e))?;
        let version = answer(res).await?;
        Ok(format!("ChromaDB API {}", version.as_str().unwrap_or("?")))
    }
}

/// Checks an index name as Chroma takes it.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let ok = (3..=512).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && edge(name.chars().next())
        && edge(name.chars().last());
    if ok {
        Ok(())
    } else {
        Err(platform_core::config::url_error(
            "vector index",
            "index",
            &format!("{name:?} must be 3 to 512 of [a-zA-Z0-9._-], starting and ending with a letter or digit"),
        ))
    }
}
