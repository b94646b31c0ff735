//! In-process search (`memory://products`): every search reads every document. Text
//! fields are split into lowercased words ([`words`]); a document's score is the
//! number of query words it holds (more, higher), sorting by it then by id. Each
//! `open_search` is a new, empty index; writes are searchable at once.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Mutex;

use platform_core::{Error, ErrorKind, Result};
use serde_json::Value;

use crate::text::{
    Aggregation, AggregationResult, Bucket, Document, FieldType, Mapping, SearchDriver, SearchFilter, SearchHit,
    SearchQuery, SearchResults, SortOrder, Version, Write, words,
};

/// The in-process search backend.
#[derive(Debug)]
pub struct MemorySearch {
    mapping: Mapping,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    docs: BTreeMap<String, (Document, Version)>,
    seq: u64,
}

impl MemorySearch {
    /// An empty index with `mapping`.
    pub fn new(mapping: Mapping) -> Self {
        Self { mapping, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `doc`'s mapped fields hold what their types take.
    fn check(&self, doc: &Document) -> Result<()> {
        for (field, kind) in &self.mapping.fields {
            let Some(v) = doc.get(field) else { continue };
            let ok = match (kind, v) {
                (_, Value::Null) => true,
                (FieldType::Text | FieldType::Keyword, Value::String(_)) => true,
                (FieldType::Keyword, Value::Number(_) | Value::Bool(_)) => true,
                (FieldType::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
                (FieldType::Float, Value::Number(_)) => true,
                (FieldType::Integer | FieldType::Float, Value::String(s)) => s.trim().parse::<f64>().is_ok(),
                (FieldType::Boolean, Value::Bool(_)) => true,
                (FieldType::Boolean, Value::String(s)) => s == "true" || s == "false",
                _ => false,
            };
            if !ok {
                return Err(Error::invalid_input(format!("field {field:?} cannot take {v}"))
                    .with_detail(field.clone(), "wrong type"));
            }
        }
        Ok(())
    }

    fn score(&self, doc: &Document, query: &SearchQuery) -> Option<f64> {
        let Some((text, fields)) = &query.text else { return Some(1.0) };
        let wanted = words(text);
        let fields: Vec<&str> = if fields.is_empty() {
            self.mapping.fields.iter().filter(|(_, t)| *t == FieldType::Text).map(|(f, _)| f.as_str()).collect()
        } else {
            fields.iter().map(String::as_str).collect()
        };
        let held: Vec<String> = fields.iter().filter_map(|f| doc.get(*f)?.as_str()).flat_map(words).collect();
        let matched = wanted.iter().filter(|w| held.contains(w)).count();
        let tf = wanted.iter().map(|w| held.iter().filter(|h| *h == w).count()).sum::<usize>();
        (matched > 0).then(|| matched as f64 + tf as f64 / 1000.0)
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Compares two field values: numbers as numbers, strings byte by byte.
fn compare(a: &Value, b: &Value) -> Ordering {
    match (number(a).filter(|_| !a.is_string()), number(b).filter(|_| !b.is_string())) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => match (a, b) {
            (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
            (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
            _ => a.to_string().cmp(&b.to_string()),
        },
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    compare(a, b) == Ordering::Equal
}

fn passes(filter: &SearchFilter, doc: &Document) -> bool {
    match filter {
        SearchFilter::Term(f, v) => doc.get(f).is_some_and(|x| equal(x, v)),
        SearchFilter::Terms(f, vs) => doc.get(f).is_some_and(|x| vs.iter().any(|v| equal(x, v))),
        SearchFilter::Range { field, gte, lte } => doc.get(field).filter(|x| !x.is_null()).is_some_and(|x| {
            gte.as_ref().is_none_or(|g| compare(x, g) != Ordering::Less)
                && lte.as_ref().is_none_or(|l| compare(x, l) != Ordering::Greater)
        }),
    }
}

/// Sort values of a hit: the field's value (missing ones sort last either way).
fn sort_values(doc: &Document, sort: &[(String, SortOrder)]) -> Vec<Value> {
    sort.iter().map(|(f, _)| doc.get(f).cloned().unwrap_or(Value::Null)).collect()
}

fn by_sort(a: &[Value], b: &[Value], sort: &[(String, SortOrder)]) -> Ordering {
    for ((x, y), (_, order)) in a.iter().zip(b).zip(sort) {
        let o = match (x.is_null(), y.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) => return Ordering::Greater,
            (false, true) => return Ordering::Less,
            _ => compare(x, y),
        };
        let o = if *order == SortOrder::Desc { o.reverse() } else { o };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

#[async_trait::async_trait]
impl SearchDriver for MemorySearch {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn bulk(&self, writes: Vec<Write>) -> Vec<Result<Version>> {
        let mut state = self.state();
        writes
            .into_iter()
            .map(|w| {
                self.check(&w.doc)?;
                if let Some(want) = w.if_version
                    && state.docs.get(&w.id).map(|(_, v)| *v) != Some(want)
                {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("document {} is not at the version given", w.id),
                    ));
                }
                state.seq += 1;
                let version = Version { seq_no: state.seq, primary_term: 1 };
                state.docs.insert(w.id, (w.doc, version));
                Ok(version)
            })
            .collect()
    }

    async fn get(&self, id: &str) -> Result<Option<(Document, Version)>> {
        Ok(self.state().docs.get(id).cloned())
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let mut state = self.state();
        if state.docs.remove(id).is_some() {
            state.seq += 1;
        }
        Ok(())
    }

    async fn refresh(&self) -> Result<()> {
        Ok(())
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchResults> {
        let state = self.state();
        let mut matching: Vec<(f64, &String, &Document)> = state
            .docs
            .iter()
            .filter(|(_, (doc, _))| query.filters.iter().all(|f| passes(f, doc)))
            .filter_map(|(id, (doc, _))| self.score(doc, query).map(|s| (s, id, doc)))
            .collect();
        let total = matching.len() as u64;
        let mut aggregations = Vec::new();
        for (name, a) in &query.aggregations {
            let docs = matching.iter().map(|(_, _, d)| *d);
            let values = |f: &str| docs.clone().filter_map(|d| d.get(f).and_then(number)).collect::<Vec<f64>>();
            let result = match a {
                Aggregation::Terms { field, size } => {
                    let mut counts: BTreeMap<String, (Value, u64)> = BTreeMap::new();
                    for d in docs.clone() {
                        if let Some(v) = d.get(field).filter(|v| !v.is_null()) {
                            counts.entry(v.to_string()).or_insert((v.clone(), 0)).1 += 1;
                        }
                    }
                    let mut buckets: Vec<Bucket> =
                        counts.into_values().map(|(key, doc_count)| Bucket { key, doc_count }).collect();
                    buckets.sort_by(|a, b| b.doc_count.cmp(&a.doc_count).then_with(|| compare(&a.key, &b.key)));
                    buckets.truncate(*size);
                    AggregationResult::Buckets(buckets)
                }
                Aggregation::Avg(f) => {
                    let v = values(f);
                    AggregationResult::Value((!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64))
                }
                Aggregation::Min(f) => AggregationResult::Value(values(f).into_iter().reduce(f64::min)),
                Aggregation::Max(f) => AggregationResult::Value(values(f).into_iter().reduce(f64::max)),
                Aggregation::Sum(f) => AggregationResult::Value(Some(values(f).iter().sum())),
            };
            aggregations.push((name.clone(), result));
        }
        if query.sort.is_empty() {
            matching.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        } else {
            matching
                .sort_by(|a, b| by_sort(&sort_values(a.2, &query.sort), &sort_values(b.2, &query.sort), &query.sort));
        }
        let after = query.search_after.as_ref();
        let hits = matching
            .into_iter()
            .filter(|(_, _, d)| {
                after.is_none_or(|after| by_sort(&sort_values(d, &query.sort), after, &query.sort) == Ordering::Greater)
            })
            .take(query.size.unwrap_or(10))
            .map(|(score, id, doc)| SearchHit {
                id: id.clone(),
                score: query.sort.is_empty().then_some(score),
                doc: doc.clone(),
                sort: sort_values(doc, &query.sort),
            })
            .collect();
        Ok(SearchResults { total, hits, aggregations })
    }

    async fn close(&self) {
        self.state().docs.clear();
    }

    async fn ping(&self) -> Result<String> {
        Ok(format!("in-process, {} documents", self.state().docs.len()))
    }
}
