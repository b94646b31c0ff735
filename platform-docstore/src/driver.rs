//! For backend authors: the [`Driver`] trait a backend implements, and the semantics
//! every backend shares, written once: what an action does to the stored document
//! ([`apply`]), what a filter matches, how documents sort and are projected.
//!
//! A driver reads the stored document of a key, calls [`apply`], and makes the
//! [`Effect`] happen (writing only if the document is still the one it read); the
//! [`CollectionHandle`](crate::CollectionHandle) has validated every action first.

use std::cmp::Ordering;

use platform_core::{Error, ErrorKind, Result};
use serde_json::{Number, Value};

use crate::types::{
    Action, Capabilities, Direction, Document, FieldPath, Filter, Key, KeySpec, Mod, Op, Outcome, Plan, Query,
    type_name,
};

/// An action the handle checked, with the key it acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The action (a `Create` without a key has been given one).
    pub action: Action,
    /// Its key.
    pub key: Key,
}

/// A stored document (without its revision field) and its revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The document.
    pub doc: Document,
    /// Its revision.
    pub revision: String,
}

/// What a driver must make happen for an action.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Nothing (a read, or deleting what is not there).
    None,
    /// Store `doc` (without its revision field) at the key with `revision`.
    Write {
        /// The document.
        doc: Document,
        /// Its new revision.
        revision: String,
    },
    /// Remove the key's document.
    Delete,
}

/// A backend.
#[async_trait::async_trait]
pub trait Driver: Send + Sync + std::fmt::Debug + 'static {
    /// Its name, stamped on errors (`memory`, `sqlite`, `postgres`).
    fn backend(&self) -> &'static str;
    /// What it can do.
    fn capabilities(&self) -> Capabilities;
    /// Runs `actions` in order, each on its own; one result per action.
    async fn run(&self, actions: Vec<Checked>) -> Vec<Result<Outcome>>;
    /// Runs `actions` all or nothing: the first error undoes the rest and is returned
    /// with the index of its action.
    async fn run_atomic(&self, actions: Vec<Checked>) -> Result<Vec<Outcome>>;
    /// The documents `query` selects.
    async fn query(&self, query: &Query) -> Result<Vec<Document>>;
    /// How it would run `query`.
    async fn plan(&self, query: &Query) -> Result<Plan>;
    /// Releases connections.
    async fn close(&self);
    /// A round trip and the server's version, for health.
    async fn ping(&self) -> Result<String>;
}

/// A fresh revision.
pub fn new_revision() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The revision a document asks to write over, if any (a non-string one is an error).
pub fn revision_of(doc: &Document, spec: &KeySpec) -> Result<Option<String>> {
    match doc.get(&spec.revision) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Error::invalid_input(format!("the revision must be a string, not {}", type_name(other)))
            .with_detail(&spec.revision, "not a string")),
    }
}

/// The key fields of `key`, as a document.
pub fn key_document(key: &Key, spec: &KeySpec) -> Document {
    let mut doc = Document::new();
    doc.insert(spec.partition.clone(), key.partition.to_value());
    if let (Some(field), Some(sort)) = (&spec.sort, &key.sort) {
        doc.insert(field.clone(), sort.to_value());
    }
    doc
}

/// `doc` with its revision field set.
pub fn with_revision(mut doc: Document, revision: &str, spec: &KeySpec) -> Document {
    doc.insert(spec.revision.clone(), Value::from(revision));
    doc
}

fn check_revision(want: Option<&String>, stored: &Stored, key: &Key) -> Result<()> {
    match want {
        Some(want) if *want != stored.revision => {
            Err(Error::new(ErrorKind::Conflict, format!("document {key} is at another revision than the one given")))
        }
        _ => Ok(()),
    }
}

fn missing(key: &Key) -> Error {
    Error::not_found(format!("no document {key}"))
}

/// What `action` does given the stored document `current`: the effect to make and the
/// outcome to answer. Errors: `AlreadyExists`, `NotFound`, `Conflict` (a revision that is
/// not the stored one), `InvalidInput` (an increment of a non-number, a key field changed).
pub fn apply(checked: &Checked, current: Option<&Stored>, spec: &KeySpec) -> Result<(Effect, Outcome)> {
    let key = &checked.key;
    let written = |doc: Document| {
        let revision = new_revision();
        let outcome = Outcome::Written { key: key_document(key, spec), revision: revision.clone() };
        (Effect::Write { doc, revision }, outcome)
    };
    let body = |doc: &Document| {
        let mut doc = doc.clone();
        doc.remove(&spec.revision);
        doc
    };
    match &checked.action {
        Action::Create(doc) => match current {
            Some(_) => Err(Error::new(ErrorKind::AlreadyExists, format!("document {key} exists"))),
            None => Ok(written(body(doc))),
        },
        Action::Put(doc) => {
            let want = revision_of(doc, spec)?;
            match (current, want) {
                (None, Some(_)) => Err(missing(key)),
                (Some(stored), want) => {
                    check_revision(want.as_ref(), stored, key)?;
                    Ok(written(body(doc)))
                }
                (None, None) => Ok(written(body(doc))),
            }
        }
        Action::Replace(doc) => {
            let stored = current.ok_or_else(|| missing(key))?;
            check_revision(revision_of(doc, spec)?.as_ref(), stored, key)?;
            Ok(written(body(doc)))
        }
        Action::Get { fields, .. } => {
            let stored = current.ok_or_else(|| missing(key))?;
            let doc = with_revision(stored.doc.clone(), &stored.revision, spec);
            Ok((Effect::None, Outcome::Got(project(doc, fields, spec))))
        }
        Action::Delete(doc) => {
            let want = revision_of(doc, spec)?;
            match (current, want) {
                (None, Some(_)) => Err(missing(key)),
                (None, None) => Ok((Effect::None, Outcome::Deleted)),
                (Some(stored), want) => {
                    check_revision(want.as_ref(), stored, key)?;
                    Ok((Effect::Delete, Outcome::Deleted))
                }
            }
        }
        Action::Update { key: doc, mods } => {
            let stored = current.ok_or_else(|| missing(key))?;
            check_revision(revision_of(doc, spec)?.as_ref(), stored, key)?;
            let mut next = stored.doc.clone();
            for m in mods {
                modify(&mut next, m)?;
            }
            Ok(written(next))
        }
    }
}

fn modify(doc: &mut Document, m: &Mod) -> Result<()> {
    match m {
        Mod::Set(path, value) => path.set(doc, value.clone()),
        Mod::Unset(path) => {
            path.unset(doc);
            Ok(())
        }
        Mod::Increment(path, by) => {
            let sum = match path.get(doc) {
                None | Some(Value::Null) => Value::Number(by.clone()),
                Some(Value::Number(n)) => Value::Number(add(n, by)?),
                Some(other) => {
                    return Err(Error::invalid_input(format!(
                        "cannot increment {path}: it holds {}",
                        type_name(other)
                    ))
                    .with_detail(path.to_string(), "not a number"));
                }
            };
            path.set(doc, sum)
        }
    }
}

fn add(a: &Number, b: &Number) -> Result<Number> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x.checked_add(y).map(Number::from).ok_or_else(|| Error::invalid_input("the increment overflows"));
    }
    let sum = a.as_f64().unwrap_or(f64::NAN) + b.as_f64().unwrap_or(f64::NAN);
    Number::from_f64(sum).ok_or_else(|| Error::invalid_input("the increment is not a finite number"))
}

/// `doc` with only `fields` (all of it when empty), its key fields and revision.
pub fn project(doc: Document, fields: &[FieldPath], spec: &KeySpec) -> Document {
    if fields.is_empty() {
        return doc;
    }
    let mut out = Document::new();
    for always in [Some(&spec.partition), spec.sort.as_ref(), Some(&spec.revision)].into_iter().flatten() {
        if let Some(v) = doc.get(always) {
            out.insert(always.clone(), v.clone());
        }
    }
    for path in fields {
        if let Some(v) = path.get(&doc) {
            // A field cannot be missing on the way: `set` only fails through a non-object.
            let _ = path.set(&mut out, v.clone());
        }
    }
    out
}

/// The JSON type a filter compares within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Numbers.
    Number,
    /// Strings.
    String,
    /// Booleans.
    Bool,
}

/// The kind of a filter value (for `in`/`not-in`, of its elements).
pub fn kind_of(filter: &Filter) -> Result<Kind> {
    let kind = |v: &Value| match v {
        Value::Number(_) => Ok(Kind::Number),
        Value::String(_) => Ok(Kind::String),
        Value::Bool(_) => Ok(Kind::Bool),
        other => Err(Error::invalid_input(format!(
            "filter values are strings, numbers or booleans, not {}",
            type_name(other)
        ))
        .with_detail(filter.path.to_string(), "not a string, number or boolean")),
    };
    match filter.op {
        Op::In | Op::NotIn => {
            let Value::Array(items) = &filter.value else {
                return Err(Error::invalid_input(format!("{} takes an array", filter.op.symbol())));
            };
            let first = items
                .first()
                .ok_or_else(|| Error::invalid_input(format!("{} takes a non-empty array", filter.op.symbol())))?;
            let k = kind(first)?;
            for item in items {
                if kind(item)? != k {
                    return Err(Error::invalid_input(format!(
                        "the values of {} must be of one type",
                        filter.op.symbol()
                    )));
                }
            }
            Ok(k)
        }
        op => {
            let k = kind(&filter.value)?;
            if k == Kind::Bool && op != Op::Eq {
                return Err(Error::invalid_input(format!("booleans take =, in and not-in, not {}", op.symbol())));
            }
            Ok(k)
        }
    }
}

/// Compares two values of one kind; `None` across kinds.
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Whether `doc` passes `filter` (checked with [`kind_of`] first).
pub fn matches(filter: &Filter, doc: &Document) -> bool {
    let Some(v) = filter.path.get(doc) else { return false };
    let is = |want: &Value, pred: fn(Ordering) -> bool| compare(v, want).is_some_and(pred);
    match filter.op {
        Op::Eq => is(&filter.value, Ordering::is_eq),
        Op::Lt => is(&filter.value, Ordering::is_lt),
        Op::Le => is(&filter.value, Ordering::is_le),
        Op::Gt => is(&filter.value, Ordering::is_gt),
        Op::Ge => is(&filter.value, Ordering::is_ge),
        Op::In | Op::NotIn => {
            let items = filter.value.as_array().map_or(&[][..], Vec::as_slice);
            // Of the filter's type at all, or it matches neither.
            if items.first().is_none_or(|first| compare(v, first).is_none()) {
                return false;
            }
            let found = items.iter().any(|item| compare(v, item).is_some_and(Ordering::is_eq));
            found == (filter.op == Op::In)
        }
    }
}

/// The order of two documents by `path` in `direction`: documents without the field
/// first (ascending), values of one type in their order.
pub fn order(a: &Document, b: &Document, path: &FieldPath, direction: Direction) -> Ordering {
    let rank = |v: &Value| match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    };
    let ord = match (path.get(a), path.get(b)) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => compare(x, y).unwrap_or_else(|| rank(x).cmp(&rank(y))),
    };
    match direction {
        Direction::Ascending => ord,
        Direction::Descending => ord.reverse(),
    }
}

/// A conditional write of a key's final state: `state` to store (`None`: delete), on
/// the condition that the key is still at revision `was` (absent when `None`). What
/// the backends that simulate and then write conditionally (DynamoDB, Cassandra) send.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The key.
    pub key: Key,
    /// The document and revision to store, or `None` to delete.
    pub state: Option<(Document, String)>,
    /// The revision the write is conditioned on, or `None` for "absent".
    pub was: Option<String>,
}

/// What one action needs written, given the document `current` read for its key: its
/// outcome, and the conditional write (none for a read or deleting what is not there).
pub fn pending(c: &Checked, current: Option<Stored>, spec: &KeySpec) -> Result<(Outcome, Option<Pending>)> {
    let (effect, outcome) = apply(c, current.as_ref(), spec)?;
    let was = current.map(|s| s.revision);
    let state = match effect {
        Effect::None => return Ok((outcome, None)),
        Effect::Delete if was.is_none() => return Ok((outcome, None)),
        Effect::Delete => None,
        Effect::Write { doc, revision } => Some((doc, revision)),
    };
    Ok((outcome, Some(Pending { key: c.key.clone(), state, was })))
}

/// An atomic list simulated in order on what `read` returns for each key (read once):
/// the outcomes, and every key's final state as a conditional write on its revision
/// read. The first error names its action's index.
pub async fn simulate<F, Fut>(actions: &[Checked], spec: &KeySpec, mut read: F) -> Result<(Vec<Outcome>, Vec<Pending>)>
where
    F: FnMut(Key) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Stored>>>,
{
    let mut seen: Vec<(Key, Option<String>, Option<Stored>)> = Vec::new();
    let mut outcomes = Vec::with_capacity(actions.len());
    for (i, c) in actions.iter().enumerate() {
        let at = match seen.iter().position(|(k, _, _)| *k == c.key) {
            Some(at) => at,
            None => {
                let current = read(c.key.clone()).await?;
                seen.push((c.key.clone(), current.as_ref().map(|s| s.revision.clone()), current));
                seen.len() - 1
            }
        };
        let (effect, outcome) =
            apply(c, seen[at].2.as_ref(), spec).map_err(|e| e.with_detail("action", i.to_string()))?;
        match effect {
            Effect::None => {}
            Effect::Write { doc, revision } => seen[at].2 = Some(Stored { doc, revision }),
            Effect::Delete => seen[at].2 = None,
        }
        outcomes.push(outcome);
    }
    let writes = seen
        .into_iter()
        .filter(|(_, was, now)| was.as_ref() != now.as_ref().map(|s| &s.revision))
        .map(|(key, was, now)| Pending { key, state: now.map(|s| (s.doc, s.revision)), was })
        .collect();
    Ok((outcomes, writes))
}

/// The answer to `query` from the documents read for it: its filters, order, offset,
/// limit and projection applied.
pub fn answer(docs: Vec<Document>, query: &Query, spec: &KeySpec) -> Vec<Document> {
    let mut docs: Vec<Document> = docs.into_iter().filter(|d| query.filters.iter().all(|f| matches(f, d))).collect();
    if let Some((path, direction)) = &query.order_by {
        docs.sort_by(|a, b| order(a, b, path, *direction));
    }
    let docs = docs.into_iter().skip(query.offset.unwrap_or(0)).take(query.limit.unwrap_or(usize::MAX));
    docs.map(|d| project(d, &query.fields, spec)).collect()
}

/// The encoded partition key a query is confined to, if a filter says `key = value`.
pub fn partition_of(query: &Query, spec: &KeySpec) -> Option<String> {
    query.filters.iter().find(|f| f.op == Op::Eq && f.path.is_field(&spec.partition)).and_then(|f| {
        let mut d = Document::new();
        d.insert(spec.partition.clone(), f.value.clone());
        KeySpec::new(spec.partition.clone()).key_of(&d).ok().flatten().map(|k| k.partition.encode())
    })
}

/// The partition `query` reads, or `None` for the whole collection when `allow_scans`;
/// `Unsupported` when it would read the whole collection and scans are not allowed.
pub fn partition_or_refuse(query: &Query, spec: &KeySpec, allow_scans: bool) -> Result<Option<String>> {
    let partition = partition_of(query, spec);
    if partition.is_none() && !allow_scans {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "a query without `{} = …` would read the whole collection: open with allow_scans=true to allow it",
                spec.partition
            ),
        ));
    }
    Ok(partition)
}
