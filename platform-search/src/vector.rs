//! Vector indexes: records (an id, a vector, scalar metadata, an optional document),
//! k-nearest queries with a metadata filter, get and delete.

use std::sync::atomic::{AtomicBool, Ordering};

use platform_core::{Error, ErrorKind, Result};
use serde_json::{Map, Value};
use tracing::Instrument as _;

/// How distance is measured; every backend reports the same number for the same pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// `1 - cos(a, b)`: 0 for the same direction, 2 for opposite ones.
    Cosine,
    /// The squared Euclidean distance.
    L2,
    /// `1 - a·b` (for normalized vectors, the same order as cosine).
    InnerProduct,
}

impl Metric {
    /// From a URL's `metric=` (`cosine`, `l2`, `ip`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "cosine" => Ok(Self::Cosine),
            "l2" => Ok(Self::L2),
            "ip" => Ok(Self::InnerProduct),
            other => Err(platform_core::config::url_error(
                "vector index",
                "metric",
                &format!("{other:?} is not one of cosine, l2, ip"),
            )),
        }
    }

    /// Its name in URLs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::L2 => "l2",
            Self::InnerProduct => "ip",
        }
    }

    /// The distance between `a` and `b` (the exact answer backends are checked against).
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        match self {
            Self::Cosine => {
                let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
                let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
                if na == 0.0 || nb == 0.0 { 1.0 } else { 1.0 - dot / (na * nb) }
            }
            Self::L2 => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
            Self::InnerProduct => 1.0 - dot,
        }
    }
}

/// A record of an index.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its id (1 to 256 characters).
    pub id: String,
    /// Its vector, of the index's dimensions, every component finite.
    pub vector: Vec<f32>,
    /// Scalar metadata: strings, numbers, booleans (what a filter can test).
    pub metadata: Map<String, Value>,
    /// The text it stands for, if any.
    pub document: Option<String>,
}

impl Record {
    /// A record with no metadata and no document.
    pub fn new(id: impl Into<String>, vector: Vec<f32>) -> Self {
        Self { id: id.into(), vector, metadata: Map::new(), document: None }
    }

    /// With a metadata field.
    #[must_use]
    pub fn with(mut self, field: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(field.to_owned(), value.into());
        self
    }

    /// With its document.
    #[must_use]
    pub fn with_document(mut self, document: impl Into<String>) -> Self {
        self.document = Some(document.into());
        self
    }
}

/// A condition on metadata.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// The field holds this value (of the same JSON type).
    Eq(String, Value),
    /// The field holds one of these values.
    In(String, Vec<Value>),
    /// Every condition holds.
    And(Vec<Self>),
}

impl Filter {
    /// Whether `metadata` passes (the reference semantics).
    pub fn matches(&self, metadata: &Map<String, Value>) -> bool {
        match self {
            Self::Eq(field, value) => metadata.get(field).is_some_and(|v| same(v, value)),
            Self::In(field, values) => metadata.get(field).is_some_and(|v| values.iter().any(|x| same(v, x))),
            Self::And(all) => all.iter().all(|f| f.matches(metadata)),
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            Self::Eq(field, value) => {
                check_field(field)?;
                check_scalar(field, value)
            }
            Self::In(field, values) => {
                check_field(field)?;
                if values.is_empty() {
                    return Err(Error::invalid_input(format!("in on {field:?} takes at least one value")));
                }
                values.iter().try_for_each(|v| check_scalar(field, v))
            }
            Self::And(all) => {
                if all.is_empty() {
                    return Err(Error::invalid_input("and takes at least one condition"));
                }
                all.iter().try_for_each(Self::validate)
            }
        }
    }
}

/// Numbers equal as numbers (1 and 1.0), everything else as JSON.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn check_field(field: &str) -> Result<()> {
    let ok = !field.is_empty()
        && field.len() <= 64
        && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !field.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(format!("{field:?} is not a metadata field name (letters, digits, _)"))
            .with_detail("metadata", "not a field name"))
    }
}

fn check_scalar(field: &str, v: &Value) -> Result<()> {
    match v {
        Value::String(_) | Value::Bool(_) => Ok(()),
        Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => Ok(()),
        _ => Err(Error::invalid_input(format!("metadata {field:?} must be a string, a number or a boolean"))
            .with_detail(field.to_owned(), "not a scalar")),
    }
}

/// A k-nearest query.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorQuery {
    /// The vector to search near.
    pub vector: Vec<f32>,
    /// How many records at most (1 to [`MAX_K`]).
    pub k: usize,
    /// Only records whose metadata passes.
    pub filter: Option<Filter>,
}

impl VectorQuery {
    /// The `k` records nearest `vector`.
    pub fn new(vector: Vec<f32>, k: usize) -> Self {
        Self { vector, k, filter: None }
    }

    /// Only records passing `filter`.
    #[must_use]
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }
}

/// The largest `k` a query may ask for.
pub const MAX_K: usize = 1000;

/// A record a query found, nearest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The record's id.
    pub id: String,
    /// Its distance from the query, by the index's [`Metric`].
    pub distance: f32,
    /// Its metadata.
    pub metadata: Map<String, Value>,
    /// Its document.
    pub document: Option<String>,
}

/// What a backend does, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Whether k-nearest answers are exact (a scan) or approximate (an index such as
    /// HNSW: recall below 1 is possible).
    pub exact: bool,
}

/// An index of vectors.
///
/// # Contract
///
/// - An index has fixed dimensions and a [`Metric`]; a vector of other dimensions, or
///   with a component that is not finite, is `InvalidInput`.
/// - [`upsert`](VectorIndex::upsert) writes records by id, replacing what an id had
///   (vector, metadata and document alike).
/// - [`query`](VectorIndex::query) returns at most `k` records passing the filter,
///   nearest first, each with its distance by the metric (the same number on every
///   backend, within float rounding). Approximate backends may miss a neighbour
///   ([`Capabilities::exact`]); the suite bounds how often.
/// - [`get`](VectorIndex::get) returns the records of the ids that exist, in the order
///   asked; [`delete`](VectorIndex::delete) removes ids (absent ones are no error).
/// - After [`close`](VectorIndex::close) every call is `Unavailable`; errors carry the
///   backend and the operation.
/// - It is a [`HealthCheck`](platform_core::HealthCheck) (`vector:{backend}`): a real
///   round trip that names the server's version, for `/up`.
#[async_trait::async_trait]
pub trait VectorIndex: platform_core::HealthCheck + Send + Sync + std::fmt::Debug {
    /// The index's name.
    fn index_name(&self) -> &str;
    /// Its dimensions.
    fn dimensions(&self) -> usize;
    /// Its metric.
    fn metric(&self) -> Metric;
    /// What its backend does.
    fn capabilities(&self) -> Capabilities;
    /// Writes `records` by id.
    async fn upsert(&self, records: Vec<Record>) -> Result<()>;
    /// The nearest records.
    async fn query(&self, query: &VectorQuery) -> Result<Vec<Hit>>;
    /// The records of `ids` that exist, in that order.
    async fn get(&self, ids: &[String]) -> Result<Vec<Record>>;
    /// Removes `ids`.
    async fn delete(&self, ids: &[String]) -> Result<()>;
    /// Releases the backend's connections.
    async fn close(&self);
}

/// For backend authors: what a vector backend implements behind [`VectorHandle`],
/// which has validated every input first.
#[async_trait::async_trait]
pub trait VectorDriver: Send + Sync + std::fmt::Debug + 'static {
    /// Its name, stamped on errors.
    fn backend(&self) -> &'static str;
    /// What it does.
    fn capabilities(&self) -> Capabilities;
    /// Writes records (validated, deduplicated by id: the last one wins).
    async fn upsert(&self, records: Vec<Record>) -> Result<()>;
    /// The nearest records.
    async fn query(&self, query: &VectorQuery) -> Result<Vec<Hit>>;
    /// Records by id, any order; absent ids left out.
    async fn get(&self, ids: &[String]) -> Result<Vec<Record>>;
    /// Removes ids.
    async fn delete(&self, ids: &[String]) -> Result<()>;
    /// Releases connections.
    async fn close(&self);
    /// A round trip and the server's version, for health.
    async fn ping(&self) -> Result<String>;
}

/// What `open_vector` returns: a driver behind the common work (validation, the closed
/// state, errors stamped with backend and operation, a span per call).
#[derive(Debug)]
pub struct VectorHandle<D: VectorDriver> {
    driver: D,
    name: String,
    dimensions: usize,
    metric: Metric,
    closed: AtomicBool,
}

impl<D: VectorDriver> VectorHandle<D> {
    /// `driver` as index `name`.
    pub fn new(driver: D, name: impl Into<String>, dimensions: usize, metric: Metric) -> Self {
        Self { driver, name: name.into(), dimensions, metric, closed: AtomicBool::new(false) }
    }

    /// The driver, for users who want the backend concretely.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    fn stamp(&self, op: &'static str) -> impl Fn(Error) -> Error + '_ {
        move |e| e.in_context(self.driver.backend(), op)
    }

    fn open_or_err(&self, op: &'static str) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.stamp(op)(Error::new(ErrorKind::Unavailable, format!("index {} is closed", self.name))));
        }
        Ok(())
    }

    fn span(&self, op: &'static str, n: usize) -> tracing::Span {
        tracing::debug_span!("vector", backend = self.driver.backend(), op, index = %self.name, n)
    }

    fn check_vector(&self, v: &[f32]) -> Result<()> {
        if v.len() != self.dimensions {
            return Err(Error::invalid_input(format!(
                "a vector of {} dimensions, where the index has {}",
                v.len(),
                self.dimensions
            ))
            .with_detail("vector", "wrong dimensions"));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(Error::invalid_input("a vector component is not finite").with_detail("vector", "not finite"));
        }
        Ok(())
    }

    fn check_ids(ids: &[String]) -> Result<()> {
        for id in ids {
            if id.is_empty() || id.chars().count() > 256 {
                return Err(
                    Error::invalid_input(format!("id {id:?} must be 1 to 256 characters")).with_detail("id", "length")
                );
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl<D: VectorDriver> VectorIndex for VectorHandle<D> {
    fn index_name(&self) -> &str {
        &self.name
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    fn capabilities(&self) -> Capabilities {
        self.driver.capabilities()
    }

    async fn upsert(&self, records: Vec<Record>) -> Result<()> {
        let stamp = self.stamp("upsert");
        self.open_or_err("upsert")?;
        let mut unique: Vec<Record> = Vec::with_capacity(records.len());
        for r in records {
            Self::check_ids(std::slice::from_ref(&r.id)).map_err(&stamp)?;
            self.check_vector(&r.vector).map_err(&stamp)?;
            for (field, value) in &r.metadata {
                check_field(field).and_then(|()| check_scalar(field, value)).map_err(&stamp)?;
            }
            match unique.iter_mut().find(|u| u.id == r.id) {
                Some(u) => *u = r,
                None => unique.push(r),
            }
        }
        if unique.is_empty() {
            return Ok(());
        }
        let n = unique.len();
        self.driver.upsert(unique).instrument(self.span("upsert", n)).await.map_err(stamp)
    }

    async fn query(&self, query: &VectorQuery) -> Result<Vec<Hit>> {
        let stamp = self.stamp("query");
        self.open_or_err("query")?;
        self.check_vector(&query.vector).map_err(&stamp)?;
        if query.k == 0 || query.k > MAX_K {
            return Err(stamp(
                Error::invalid_input(format!("k must be 1 to {MAX_K}")).with_detail("k", "out of range"),
            ));
        }
        if let Some(f) = &query.filter {
            f.validate().map_err(&stamp)?;
        }
        let mut hits = self.driver.query(query).instrument(self.span("query", query.k)).await.map_err(&stamp)?;
        hits.sort_by(|a, b| a.distance.total_cmp(&b.distance));
        hits.truncate(query.k);
        Ok(hits)
    }

    async fn get(&self, ids: &[String]) -> Result<Vec<Record>> {
        let stamp = self.stamp("get");
        self.open_or_err("get")?;
        Self::check_ids(ids).map_err(&stamp)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let found = self.driver.get(ids).instrument(self.span("get", ids.len())).await.map_err(stamp)?;
        Ok(ids.iter().filter_map(|id| found.iter().find(|r| r.id == *id).cloned()).collect())
    }

    async fn delete(&self, ids: &[String]) -> Result<()> {
        let stamp = self.stamp("delete");
        self.open_or_err("delete")?;
        Self::check_ids(ids).map_err(&stamp)?;
        if ids.is_empty() {
            return Ok(());
        }
        self.driver.delete(ids).instrument(self.span("delete", ids.len())).await.map_err(stamp)
    }

    async fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.driver.close().await;
        }
    }
}

#[async_trait::async_trait]
impl<D: VectorDriver> platform_core::HealthCheck for VectorHandle<D> {
    fn name(&self) -> String {
        format!("vector:{}", self.driver.backend())
    }

    async fn check(&self) -> Result<platform_core::CheckOutcome> {
        self.open_or_err("ping")?;
        platform_core::CheckOutcome::measure(self.driver.ping()).await.map_err(self.stamp("ping"))
    }
}
