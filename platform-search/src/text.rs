//! Search indexes: documents under mapped fields, bulk writes with a result per item,
//! optimistic concurrency, text and filter queries, sort, `search_after` paging and
//! aggregations.

use std::sync::atomic::{AtomicBool, Ordering};

use platform_core::{Error, ErrorKind, Result};
use serde_json::{Map, Value};
use tracing::Instrument as _;

/// A JSON document.
pub type Document = Map<String, Value>;

/// How a field is indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Exact strings: filters, sort, terms aggregations.
    Keyword,
    /// Analyzed text (lowercased words): text queries.
    Text,
    /// Whole numbers.
    Integer,
    /// Numbers.
    Float,
    /// Booleans.
    Boolean,
}

/// The fields of an index and their types; other fields are stored, not indexed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mapping {
    /// Each field and its type.
    pub fields: Vec<(String, FieldType)>,
}

impl Mapping {
    /// No fields yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// And `field` of `kind`.
    #[must_use]
    pub fn field(mut self, field: &str, kind: FieldType) -> Self {
        self.fields.push((field.to_owned(), kind));
        self
    }

    /// The type of `field`, if mapped.
    pub fn type_of(&self, field: &str) -> Option<FieldType> {
        self.fields.iter().find(|(f, _)| f == field).map(|(_, t)| *t)
    }

    fn validate(&self) -> Result<()> {
        for (f, _) in &self.fields {
            check_field(f)?;
        }
        Ok(())
    }
}

fn check_field(f: &str) -> Result<()> {
    let ok = !f.is_empty()
        && f.len() <= 128
        && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !f.starts_with(|c: char| c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(format!("{f:?} is not a field name (letters, digits, _)"))
            .with_detail("field", "not a field name"))
    }
}

/// A document's version, for optimistic concurrency (`if_seq_no`/`if_primary_term`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// The sequence number of its last write.
    pub seq_no: u64,
    /// The primary term of its last write.
    pub primary_term: u64,
}

/// One write of a bulk request.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The document's id (1 to 512 bytes).
    pub id: String,
    /// The document.
    pub doc: Document,
    /// Only over this version (`Conflict` otherwise, `NotFound` if there is none).
    pub if_version: Option<Version>,
}

impl Write {
    /// Writes `doc` at `id` unconditionally.
    pub fn new(id: impl Into<String>, doc: Document) -> Self {
        Self { id: id.into(), doc, if_version: None }
    }

    /// Only over `version`.
    #[must_use]
    pub fn if_version(mut self, version: Version) -> Self {
        self.if_version = Some(version);
        self
    }
}

/// A filter of a [`SearchQuery`]: on keyword, number and boolean fields.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchFilter {
    /// The field holds this value.
    Term(String, Value),
    /// The field holds one of these values.
    Terms(String, Vec<Value>),
    /// The field's number (or keyword) is within the bounds given.
    Range {
        /// The field.
        field: String,
        /// At least.
        gte: Option<Value>,
        /// At most.
        lte: Option<Value>,
    },
}

impl SearchFilter {
    fn field(&self) -> &str {
        match self {
            Self::Term(f, _) | Self::Terms(f, _) | Self::Range { field: f, .. } => f,
        }
    }
}

/// Which way a sort goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

/// An aggregation over the matching documents.
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregation {
    /// The most frequent values of a keyword field: `size` buckets, most documents
    /// first, then by value.
    Terms {
        /// The keyword field.
        field: String,
        /// How many buckets.
        size: usize,
    },
    /// The mean of a number field.
    Avg(String),
    /// The least value of a number field.
    Min(String),
    /// The greatest value of a number field.
    Max(String),
    /// The sum of a number field.
    Sum(String),
}

/// A search.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchQuery {
    /// Words to find in text fields (documents with any of them match; more matches
    /// rank higher), and the fields to look in (every text field when empty).
    pub text: Option<(String, Vec<String>)>,
    /// Conditions every hit meets.
    pub filters: Vec<SearchFilter>,
    /// The order (by relevance when empty); for `search_after`, end with a unique field.
    pub sort: Vec<(String, SortOrder)>,
    /// Hits to return (0 to [`MAX_SIZE`]; 10 when not set).
    pub size: Option<usize>,
    /// The `sort` values of the last hit of the previous page.
    pub search_after: Option<Vec<Value>>,
    /// Named aggregations.
    pub aggregations: Vec<(String, Aggregation)>,
}

/// The most hits one search returns.
pub const MAX_SIZE: usize = 10_000;

impl SearchQuery {
    /// Every document.
    pub fn new() -> Self {
        Self::default()
    }

    /// Matching `words` in `fields` (every text field when empty).
    #[must_use]
    pub fn text(mut self, words: &str, fields: &[&str]) -> Self {
        self.text = Some((words.to_owned(), fields.iter().map(|f| (*f).to_owned()).collect()));
        self
    }

    /// And `filter`.
    #[must_use]
    pub fn filter(mut self, filter: SearchFilter) -> Self {
        self.filters.push(filter);
        self
    }

    /// Then sorted by `field`.
    #[must_use]
    pub fn sort(mut self, field: &str, order: SortOrder) -> Self {
        self.sort.push((field.to_owned(), order));
        self
    }

    /// At most `n` hits.
    #[must_use]
    pub fn size(mut self, n: usize) -> Self {
        self.size = Some(n);
        self
    }

    /// After the hit whose sort values are `after`.
    #[must_use]
    pub fn after(mut self, after: Vec<Value>) -> Self {
        self.search_after = Some(after);
        self
    }

    /// With aggregation `name`.
    #[must_use]
    pub fn aggregate(mut self, name: &str, aggregation: Aggregation) -> Self {
        self.aggregations.push((name.to_owned(), aggregation));
        self
    }
}

/// A hit.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// The document's id.
    pub id: String,
    /// Its relevance (only meaningful within one search, when sorted by it).
    pub score: Option<f64>,
    /// The document.
    pub doc: Document,
    /// Its sort values, for `search_after`.
    pub sort: Vec<Value>,
}

/// A bucket of a terms aggregation.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// The value.
    pub key: Value,
    /// How many matching documents hold it.
    pub doc_count: u64,
}

/// An aggregation's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum AggregationResult {
    /// Buckets, most documents first.
    Buckets(Vec<Bucket>),
    /// A number (`None` when no document has the field).
    Value(Option<f64>),
}

/// What a search found.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResults {
    /// How many documents match (all of them, not only this page).
    pub total: u64,
    /// This page.
    pub hits: Vec<SearchHit>,
    /// Each aggregation by name.
    pub aggregations: Vec<(String, AggregationResult)>,
}

/// An index of documents searched by text and fields.
///
/// # Contract
///
/// - An index has a [`Mapping`]; [`open_search`](crate::open_search) makes it when
///   missing. Fields outside the mapping are kept, not searchable.
/// - [`bulk`](SearchIndex::bulk) writes documents by id, one result per write at its
///   index: the new [`Version`], or the write's own error (`Conflict` for an
///   `if_version` that is not the document's, or given for a missing one;
///   `InvalidInput` for a value the mapping cannot take). One failure writes no less of
///   the rest.
/// - Writes are searchable after [`refresh`](SearchIndex::refresh) (at once on
///   backends that are always current); [`get`](SearchIndex::get) sees them at once.
/// - [`search`](SearchIndex::search): text (any word, lowercased; more matching words
///   rank higher), filters (term, terms, range), sort with `search_after`, size, the
///   total count, and aggregations (terms buckets; avg, min, max, sum).
/// - After [`close`](SearchIndex::close), every call is `Unavailable`; errors carry
///   the backend and the operation.
/// - It is a [`HealthCheck`](platform_core::HealthCheck) (`search:{backend}`): a real
///   round trip that names the server's version, for `/up`.
#[async_trait::async_trait]
pub trait SearchIndex: platform_core::HealthCheck + Send + Sync + std::fmt::Debug {
    /// The index's name.
    fn index_name(&self) -> &str;
    /// Its mapping.
    fn mapping(&self) -> &Mapping;
    /// Writes documents; a result per write.
    async fn bulk(&self, writes: Vec<Write>) -> Vec<Result<Version>>;
    /// The document and its version, if there is one.
    async fn get(&self, id: &str) -> Result<Option<(Document, Version)>>;
    /// Deletes a document (absent: no error).
    async fn delete(&self, id: &str) -> Result<()>;
    /// Makes every write so far searchable.
    async fn refresh(&self) -> Result<()>;
    /// Searches.
    async fn search(&self, query: &SearchQuery) -> Result<SearchResults>;
    /// Releases connections.
    async fn close(&self);
}

/// One write at a time.
#[async_trait::async_trait]
pub trait SearchIndexExt: SearchIndex {
    /// Writes `doc` at `id`.
    async fn put(&self, id: &str, doc: Document) -> Result<Version> {
        self.bulk(vec![Write::new(id, doc)]).await.pop().unwrap_or_else(|| Err(Error::internal("no result")))
    }

    /// Writes `doc` at `id` only over `version`.
    async fn put_if(&self, id: &str, doc: Document, version: Version) -> Result<Version> {
        self.bulk(vec![Write::new(id, doc).if_version(version)])
            .await
            .pop()
            .unwrap_or_else(|| Err(Error::internal("no result")))
    }
}

impl<S: SearchIndex + ?Sized> SearchIndexExt for S {}

/// For backend authors: what a search backend implements behind [`SearchHandle`], which
/// has validated every input first.
#[async_trait::async_trait]
pub trait SearchDriver: Send + Sync + std::fmt::Debug + 'static {
    /// Its name, stamped on errors.
    fn backend(&self) -> &'static str;
    /// Writes; a result per write.
    async fn bulk(&self, writes: Vec<Write>) -> Vec<Result<Version>>;
    /// A document by id.
    async fn get(&self, id: &str) -> Result<Option<(Document, Version)>>;
    /// Deletes by id.
    async fn delete(&self, id: &str) -> Result<()>;
    /// Makes writes searchable.
    async fn refresh(&self) -> Result<()>;
    /// Searches.
    async fn search(&self, query: &SearchQuery) -> Result<SearchResults>;
    /// Releases connections.
    async fn close(&self);
    /// A round trip and the server's version.
    async fn ping(&self) -> Result<String>;
}

/// What `open_search` returns: a driver behind the common work.
#[derive(Debug)]
pub struct SearchHandle<D: SearchDriver> {
    driver: D,
    name: String,
    mapping: Mapping,
    closed: AtomicBool,
}

impl<D: SearchDriver> SearchHandle<D> {
    /// `driver` as index `name` with `mapping`.
    pub fn new(driver: D, name: impl Into<String>, mapping: Mapping) -> Result<Self> {
        mapping.validate()?;
        Ok(Self { driver, name: name.into(), mapping, closed: AtomicBool::new(false) })
    }

    fn stamp(&self, op: &'static str) -> impl Fn(Error) -> Error + '_ {
        move |e| e.in_context(self.driver.backend(), op)
    }

    fn closed_error(&self, op: &'static str) -> Error {
        self.stamp(op)(Error::new(ErrorKind::Unavailable, format!("index {} is closed", self.name)))
    }

    fn open_or_err(&self, op: &'static str) -> Result<()> {
        if self.closed.load(Ordering::Acquire) { Err(self.closed_error(op)) } else { Ok(()) }
    }

    fn check_id(id: &str) -> Result<()> {
        if id.is_empty() || id.len() > 512 {
            return Err(Error::invalid_input("an id is 1 to 512 bytes").with_detail("id", "length"));
        }
        Ok(())
    }

    fn check_query(&self, q: &SearchQuery) -> Result<()> {
        let mapped = |f: &str, allowed: &[FieldType], what: &str| match self.mapping.type_of(f) {
            Some(t) if allowed.contains(&t) => Ok(()),
            _ => Err(Error::invalid_input(format!("{f:?} is not a mapped {what} field"))
                .with_detail(f.to_owned(), "not mapped so")),
        };
        let exact = [FieldType::Keyword, FieldType::Integer, FieldType::Float, FieldType::Boolean];
        let numeric = [FieldType::Integer, FieldType::Float];
        if let Some((_, fields)) = &q.text {
            for f in fields {
                mapped(f, &[FieldType::Text], "text")?;
            }
        }
        for f in &q.filters {
            mapped(f.field(), &exact, "keyword, number or boolean")?;
            if let SearchFilter::Terms(_, values) = f
                && values.is_empty()
            {
                return Err(Error::invalid_input("terms takes at least one value"));
            }
        }
        for (f, _) in &q.sort {
            mapped(f, &exact, "keyword, number or boolean")?;
        }
        if q.size.unwrap_or(10) > MAX_SIZE {
            return Err(Error::invalid_input(format!("size is at most {MAX_SIZE}")).with_detail("size", "too large"));
        }
        if let Some(after) = &q.search_after
            && after.len() != q.sort.len()
        {
            return Err(Error::invalid_input("search_after takes one value per sort field, and a sort")
                .with_detail("search_after", "does not match the sort"));
        }
        for (name, a) in &q.aggregations {
            check_field(name)?;
            match a {
                Aggregation::Terms { field, size } => {
                    mapped(field, &[FieldType::Keyword], "keyword")?;
                    if *size == 0 || *size > 1000 {
                        return Err(Error::invalid_input("a terms aggregation has 1 to 1000 buckets"));
                    }
                }
                Aggregation::Avg(f) | Aggregation::Min(f) | Aggregation::Max(f) | Aggregation::Sum(f) => {
                    mapped(f, &numeric, "number")?;
                }
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl<D: SearchDriver> SearchIndex for SearchHandle<D> {
    fn index_name(&self) -> &str {
        &self.name
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    async fn bulk(&self, writes: Vec<Write>) -> Vec<Result<Version>> {
        if self.closed.load(Ordering::Acquire) {
            return writes.iter().map(|_| Err(self.closed_error("bulk"))).collect();
        }
        let mut results: Vec<Option<Result<Version>>> = Vec::with_capacity(writes.len());
        let mut valid = Vec::new();
        let mut at = Vec::new();
        for (i, w) in writes.into_iter().enumerate() {
            match Self::check_id(&w.id) {
                Ok(()) => {
                    at.push(i);
                    valid.push(w);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(self.stamp("bulk")(e)))),
            }
        }
        if !valid.is_empty() {
            let span = tracing::debug_span!("search", backend = self.driver.backend(), op = "bulk", n = valid.len());
            let ran = self.driver.bulk(valid).instrument(span).await;
            for (i, r) in at.into_iter().zip(ran) {
                results[i] = Some(r.map_err(self.stamp("bulk")));
            }
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(Error::internal("a write got no result")))).collect()
    }

    async fn get(&self, id: &str) -> Result<Option<(Document, Version)>> {
        let stamp = self.stamp("get");
        self.open_or_err("get")?;
        Self::check_id(id).map_err(&stamp)?;
        self.driver.get(id).await.map_err(stamp)
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let stamp = self.stamp("delete");
        self.open_or_err("delete")?;
        Self::check_id(id).map_err(&stamp)?;
        self.driver.delete(id).await.map_err(stamp)
    }

    async fn refresh(&self) -> Result<()> {
        self.open_or_err("refresh")?;
        self.driver.refresh().await.map_err(self.stamp("refresh"))
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchResults> {
        let stamp = self.stamp("search");
        self.open_or_err("search")?;
        self.check_query(query).map_err(&stamp)?;
        let span = tracing::debug_span!("search", backend = self.driver.backend(), op = "search", index = %self.name);
        self.driver.search(query).instrument(span).await.map_err(stamp)
    }

    async fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.driver.close().await;
        }
    }
}

#[async_trait::async_trait]
impl<D: SearchDriver> platform_core::HealthCheck for SearchHandle<D> {
    fn name(&self) -> String {
        format!("search:{}", self.driver.backend())
    }

    async fn check(&self) -> Result<platform_core::CheckOutcome> {
        self.open_or_err("ping")?;
        platform_core::CheckOutcome::measure(self.driver.ping()).await.map_err(self.stamp("ping"))
    }
}

/// Lowercased words: what text fields and text queries are split into.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}
