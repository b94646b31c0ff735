//! OpenSearch and Elasticsearch (`opensearch://host:9200/products`,
//! `elasticsearch://host:9200/products`, feature `opensearch`): the REST API both
//! share, spoken over reqwest. The index is made with the mapping when missing. Bulk
//! writes go as one `_bulk` request, each item answering for itself;
//! `if_seq_no`/`if_primary_term` carry the version. Text queries are `multi_match`
//! (any word), filters go in a `bool` filter (no scoring), sorts put missing values
//! last, `track_total_hits` counts every match.
//!
//! Parameters: `tls=true` (HTTPS), `timeout` (10 s); a user and password in the URL
//! are sent as HTTP Basic.

use std::time::Duration;

use platform_core::config::UrlParams;
use platform_core::{Error, ErrorKind, Result};
use serde_json::{Map, Value, json};

use crate::text::{
    Aggregation, AggregationResult, Bucket, Document, FieldType, Mapping, SearchDriver, SearchFilter, SearchHit,
    SearchQuery, SearchResults, SortOrder, Version, Write,
};

/// The OpenSearch / Elasticsearch backend.
#[derive(Debug)]
pub struct OpenSearch {
    http: reqwest::Client,
    base: String,
    index: String,
    auth: Option<(String, Option<String>)>,
    backend: &'static str,
    mapping: Mapping,
}

fn error_of(status: u16, body: &Value) -> Error {
    let kind = ErrorKind::from_http_status(status);
    let e = &body["error"];
    let reason = e["reason"].as_str().or_else(|| e.as_str()).unwrap_or("");
    let ty = e["type"].as_str().unwrap_or("");
    Error::new(kind, format!("{status} {ty}: {reason}")).with_retryable(kind.is_retryable())
}

fn type_name(t: FieldType) -> &'static str {
    match t {
        FieldType::Keyword => "keyword",
        FieldType::Text => "text",
        FieldType::Integer => "long",
        FieldType::Float => "double",
        FieldType::Boolean => "boolean",
    }
}

/// Checks an index name as OpenSearch takes it.
pub(crate) fn check_index(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        && !name.starts_with(['_', '-']);
    if ok {
        Ok(())
    } else {
        Err(platform_core::config::url_error(
            "search index",
            "index",
            &format!("{name:?} must be lowercase letters, digits, _ and -, not starting with _ or -"),
        ))
    }
}

/// Where an OpenSearch or Elasticsearch index is, and the client to reach it.
pub(crate) struct Endpoint {
    pub(crate) http: reqwest::Client,
    /// `http://host:9200`.
    pub(crate) base: String,
    /// The index, from the URL's path (checked).
    pub(crate) index: String,
    /// HTTP Basic credentials from the URL.
    pub(crate) auth: Option<(String, Option<String>)>,
}

/// The endpoint of `…://user:pass@host:9200/index`.
pub(crate) fn endpoint(url: &url::Url, tls: bool, timeout: Duration) -> Result<Endpoint> {
    let index = url.path().trim_start_matches('/').to_owned();
    check_index(&index)?;
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port().unwrap_or(9200);
    let base = format!("{}://{host}:{port}", if tls { "https" } else { "http" });
    let auth = (!url.username().is_empty()).then(|| (url.username().to_owned(), url.password().map(str::to_owned)));
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| Error::internal(format!("an HTTP client: {e}")))?;
    Ok(Endpoint { http, base, index, auth })
}

impl OpenSearch {
    /// The index named by the path of `url`, made with `mapping` when missing.
    pub async fn open(url: &url::Url, mapping: &Mapping, params: &mut UrlParams) -> Result<Self> {
        let tls = params.take_bool("tls")?.unwrap_or(false);
        let timeout = params.take_duration("timeout")?.unwrap_or(Duration::from_secs(10));
        let backend = if url.scheme() == "elasticsearch" { "elasticsearch" } else { "opensearch" };
        params.finish(backend)?;
        let Endpoint { http, base, index, auth } = endpoint(url, tls, timeout)?;
        let this = Self { http, base, index, auth, backend, mapping: mapping.clone() };
        let properties: Map<String, Value> =
            mapping.fields.iter().map(|(f, t)| (f.clone(), json!({"type": type_name(*t)}))).collect();
        let (status, body) =
            this.call(reqwest::Method::PUT, "", Some(json!({"mappings": {"properties": properties}}))).await?;
        let exists = body["error"]["type"].as_str() == Some("resource_already_exists_exception");
        if !(200..300).contains(&status) && !exists {
            return Err(error_of(status, &body).with_backend(backend).with_op("open"));
        }
        Ok(this)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}/{}{path}", self.base, self.index));
        if let Some((user, password)) = &self.auth {
            r = r.basic_auth(user, password.as_ref());
        }
        r
    }

    fn unreachable(&self, e: &reqwest::Error) -> Error {
        let kind = if e.is_timeout() { ErrorKind::Timeout } else { ErrorKind::Unavailable };
        Error::new(kind, format!("{}: {e}", self.backend)).with_retryable(true).with_backend(self.backend)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut r = self.request(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.map_err(|e| self.unreachable(&e))?;
        let status = res.status().as_u16();
        let body = res.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, body) = self.call(method, path, body).await?;
        if (200..300).contains(&status) { Ok(body) } else { Err(error_of(status, &body)) }
    }

    fn text_fields(&self, fields: &[String]) -> Vec<String> {
        if fields.is_empty() {
            self.mapping.fields.iter().filter(|(_, t)| *t == FieldType::Text).map(|(f, _)| f.clone()).collect()
        } else {
            fields.to_vec()
        }
    }

    fn body(&self, q: &SearchQuery) -> Value {
        let must = match &q.text {
            Some((words, fields)) => {
                json!({"multi_match": {"query": words, "fields": self.text_fields(fields), "operator": "or"}})
            }
            None => json!({"match_all": {}}),
        };
        let filter: Vec<Value> = q
            .filters
            .iter()
            .map(|f| match f {
                SearchFilter::Term(field, v) => json!({"term": {field: v}}),
                SearchFilter::Terms(field, vs) => json!({"terms": {field: vs}}),
                SearchFilter::Range { field, gte, lte } => {
                    let mut bounds = Map::new();
                    if let Some(g) = gte {
                        bounds.insert("gte".into(), g.clone());
                    }
                    if let Some(l) = lte {
                        bounds.insert("lte".into(), l.clone());
                    }
                    json!({"range": {field: bounds}})
                }
            })
            .collect();
        let mut body = json!({
            "size": q.size.unwrap_or(10),
            "track_total_hits": true,
            "query": {"bool": {"must": [must], "filter": filter}},
        });
        if !q.sort.is_empty() {
            body["sort"] = Value::Array(
                q.sort
                    .iter()
                    .map(|(f, o)| {
                        let order = if *o == SortOrder::Desc { "desc" } else { "asc" };
                        json!({f: {"order": order, "missing": "_last"}})
                    })
                    .collect(),
            );
        }
        if let Some(after) = &q.search_after {
            body["search_after"] = Value::Array(after.clone());
        }
        if !q.aggregations.is_empty() {
            let aggs: Map<String, Value> = q
                .aggregations
                .iter()
                .map(|(name, a)| {
                    let spec = match a {
                        Aggregation::Terms { field, size } => {
                            json!({"terms": {"field": field, "size": size, "order": [{"_count": "desc"}, {"_key": "asc"}]}})
                        }
                        Aggregation::Avg(f) => json!({"avg": {"field": f}}),
                        Aggregation::Min(f) => json!({"min": {"field": f}}),
                        Aggregation::Max(f) => json!({"max": {"field": f}}),
                        Aggregation::Sum(f) => json!({"sum": {"field": f}}),
                    };
                    (name.clone(), spec)
                })
                .collect();
            body["aggs"] = Value::Object(aggs);
        }
        body
    }
}

fn version_of(v: &Value) -> Option<Version> {
    Some(Version { seq_no: v["_seq_no"].as_u64()?, primary_term: v["_primary_term"].as_u64()? })
}

#[async_trait::async_trait]
impl SearchDriver for OpenSearch {
    fn backend(&self) -> &'static str {
        self.backend
    }

    async fn bulk(&self, writes: Vec<Write>) -> Vec<Result<Version>> {
        let mut ndjson = String::new();
        for w in &writes {
            let mut action = json!({"_id": w.id});
            if let Some(v) = w.if_version {
                action["if_seq_no"] = json!(v.seq_no);
                action["if_primary_term"] = json!(v.primary_term);
            }
            ndjson.push_str(&json!({"index": action}).to_string());
            ndjson.push('\n');
            ndjson.push_str(&Value::Object(w.doc.clone()).to_string());
            ndjson.push('\n');
        }
        let sent = self
            .request(reqwest::Method::POST, "/_bulk")
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(ndjson)
            .send()
            .await;
        let res = match sent {
            Ok(res) => res,
            Err(e) => return writes.iter().map(|_| Err(self.unreachable(&e))).collect(),
        };
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return writes.iter().map(|_| Err(error_of(status, &body))).collect();
        }
        let items = body["items"].as_array().cloned().unwrap_or_default();
        (0..writes.len())
            .map(|i| {
                let item = &items
                    .get(i)
                    .ok_or_else(|| Error::internal("the bulk answer has fewer items than writes"))?["index"];
                let status = item["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(500);
                if (200..300).contains(&status) {
                    version_of(item).ok_or_else(|| Error::internal("a bulk item without its version"))
                } else {
                    Err(error_of(status, item))
                }
            })
            .collect()
    }

    async fn get(&self, id: &str) -> Result<Option<(Document, Version)>> {
        let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let (status, body) = self.call(reqwest::Method::GET, &format!("/_doc/{encoded}"), None).await?;
        if status == 404 && body["found"] == false {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(error_of(status, &body));
        }
        let doc = body["_source"].as_object().cloned().unwrap_or_default();
        Ok(Some((doc, version_of(&body).ok_or_else(|| Error::internal("a document without its version"))?)))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let (status, body) = self.call(reqwest::Method::DELETE, &format!("/_doc/{encoded}"), None).await?;
        if (200..300).contains(&status) || (status == 404 && body["result"] == "not_found") {
            Ok(())
        } else {
            Err(error_of(status, &body))
        }
    }

    async fn refresh(&self) -> Result<()> {
        self.ok(reqwest::Method::POST, "/_refresh", None).await.map(|_| ())
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchResults> {
        let body = self.ok(reqwest::Method::POST, "/_search", Some(self.body(query))).await?;
        let total = body["hits"]["total"]["value"].as_u64().unwrap_or(0);
        let hits = body["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|h| SearchHit {
                id: h["_id"].as_str().unwrap_or_default().to_owned(),
                score: if query.sort.is_empty() { h["_score"].as_f64() } else { None },
                doc: h["_source"].as_object().cloned().unwrap_or_default(),
                sort: h["sort"].as_array().cloned().unwrap_or_default(),
            })
            .collect();
        let aggregations = query
            .aggregations
            .iter()
            .map(|(name, a)| {
                let got = &body["aggregations"][name];
                let result = match a {
                    Aggregation::Terms { .. } => AggregationResult::Buckets(
                        got["buckets"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|b| Bucket { key: b["key"].clone(), doc_count: b["doc_count"].as_u64().unwrap_or(0) })
                            .collect(),
                    ),
                    _ => AggregationResult::Value(got["value"].as_f64()),
                };
                (name.clone(), result)
            })
            .collect();
        Ok(SearchResults { total, hits, aggregations })
    }

    async fn close(&self) {}

    async fn ping(&self) -> Result<String> {
        let mut r = self.http.get(format!("{}/", self.base));
        if let Some((user, password)) = &self.auth {
            r = r.basic_auth(user, password.as_ref());
        }
        let res = r.send().await.map_err(|e| self.unreachable(&e))?;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(error_of(status, &body));
        }
        let distribution = body["version"]["distribution"].as_str().unwrap_or("elasticsearch");
        Ok(format!("{distribution} {}", body["version"]["number"].as_str().unwrap_or("?")))
    }
}
