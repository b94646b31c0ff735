//! What a collection holds and is asked: documents, keys, actions, modifications,
//! queries, capabilities.

use std::fmt;

use platform_core::{Error, Result};
use serde_json::{Map, Value};

/// A document: a JSON object. Its key fields, and its revision field once written, are
/// fields like any other.
pub type Document = Map<String, Value>;

/// The revision field when the URL names none (`revision=`).
pub const DEFAULT_REVISION_FIELD: &str = "_rev";

/// Which fields make a document's key, and where its revision is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// The partition key field (`key=`), a string or an integer.
    pub partition: String,
    /// The sort key field (`sort_key=`), when the key has two parts.
    pub sort: Option<String>,
    /// The field holding the revision (`revision=`, `_rev` by default).
    pub revision: String,
}

impl KeySpec {
    /// A one-field key, with the default revision field.
    pub fn new(partition: impl Into<String>) -> Self {
        Self { partition: partition.into(), sort: None, revision: DEFAULT_REVISION_FIELD.to_owned() }
    }

    /// With a sort key: the key is (partition, sort).
    #[must_use]
    pub fn with_sort(mut self, sort: impl Into<String>) -> Self {
        self.sort = Some(sort.into());
        self
    }

    /// With another revision field.
    #[must_use]
    pub fn with_revision(mut self, field: impl Into<String>) -> Self {
        self.revision = field.into();
        self
    }

    /// Checks the field names.
    pub fn validate(&self) -> Result<()> {
        for (what, name) in
            [("key", Some(&self.partition)), ("sort_key", self.sort.as_ref()), ("revision", Some(&self.revision))]
        {
            if let Some(name) = name
                && !is_field_name(name)
            {
                return Err(Error::invalid_input(format!("{what} {name:?} is not a field name (letters, digits, _)"))
                    .with_detail(what, "not a field name"));
            }
        }
        if self.sort.as_ref() == Some(&self.partition) || self.revision == self.partition {
            return Err(Error::invalid_input("the key, sort key and revision fields must differ"));
        }
        Ok(())
    }

    /// The key of `doc`: its partition and sort values. `None` for a missing or `null`
    /// part; a part that is neither a string nor an integer, or an empty string, is an
    /// error.
    pub fn key_of(&self, doc: &Document) -> Result<Option<Key>> {
        let part = |field: &str| -> Result<Option<KeyPart>> {
            match doc.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => {
                    Err(Error::invalid_input(format!("the key field {field:?} is empty")).with_detail(field, "empty"))
                }
                Some(Value::String(s)) => Ok(Some(KeyPart::Str(s.clone()))),
                Some(Value::Number(n)) if n.is_i64() => Ok(Some(KeyPart::Int(n.as_i64().unwrap_or_default()))),
                Some(other) => Err(Error::invalid_input(format!(
                    "the key field {field:?} must be a string or an integer, not {}",
                    type_name(other)
                ))
                .with_detail(field, "not a string or an integer")),
            }
        };
        let partition = part(&self.partition)?;
        let sort = match &self.sort {
            Some(f) => Some(part(f)?),
            None => None,
        };
        Ok(match (partition, sort) {
            (Some(p), None) => Some(Key { partition: p, sort: None }),
            (Some(p), Some(Some(s))) => Some(Key { partition: p, sort: Some(s) }),
            _ => None,
        })
    }
}

/// One part of a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyPart {
    /// An integer.
    Int(i64),
    /// A string.
    Str(String),
}

impl KeyPart {
    /// As JSON.
    pub fn to_value(&self) -> Value {
        match self {
            Self::Int(i) => Value::from(*i),
            Self::Str(s) => Value::from(s.clone()),
        }
    }

    /// A stable text form, distinct for `1` and `"1"` (stored as SQL key columns).
    pub fn encode(&self) -> String {
        match self {
            Self::Int(i) => format!("i:{i:+021}"),
            Self::Str(s) => format!("s:{s}"),
        }
    }
}

/// A document's key: its partition part and, for two-part keys, its sort part.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// The partition part.
    pub partition: KeyPart,
    /// The sort part, for two-part keys.
    pub sort: Option<KeyPart>,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.partition.to_value())?;
        if let Some(s) = &self.sort {
            write!(f, "/{}", s.to_value())?;
        }
        Ok(())
    }
}

/// A dotted path to a field (`address.city`): segments of letters, digits and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// Parses `a.b.c`.
    pub fn parse(path: &str) -> Result<Self> {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segments.iter().any(|s| !is_field_name(s)) {
            return Err(Error::invalid_input(format!(
                "{path:?} is not a field path (dotted names of letters, digits and _)"
            ))
            .with_detail("field_path", "not a field path"));
        }
        Ok(Self(segments))
    }

    /// Its segments.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The value at this path in `doc`, if any.
    pub fn get<'d>(&self, doc: &'d Document) -> Option<&'d Value> {
        let (first, rest) = self.0.split_first()?;
        let mut at = doc.get(first)?;
        for s in rest {
            at = at.as_object()?.get(s)?;
        }
        Some(at)
    }

    /// Sets the value at this path, making the objects on the way (a non-object on the
    /// way is an error).
    pub fn set(&self, doc: &mut Document, value: Value) -> Result<()> {
        let Some((last, parents)) = self.0.split_last() else { return Ok(()) };
        let mut at = doc;
        for s in parents {
            let next = at.entry(s.clone()).or_insert_with(|| Value::Object(Map::new()));
            at = next.as_object_mut().ok_or_else(|| {
                Error::invalid_input(format!("{self} goes through {s:?}, which is not an object"))
                    .with_detail("field_path", "through a non-object")
            })?;
        }
        at.insert(last.clone(), value);
        Ok(())
    }

    /// Removes the value at this path, if any.
    pub fn unset(&self, doc: &mut Document) {
        let Some((last, parents)) = self.0.split_last() else { return };
        let mut at = doc;
        for s in parents {
            match at.get_mut(s).and_then(Value::as_object_mut) {
                Some(next) => at = next,
                None => return,
            }
        }
        at.remove(last);
    }

    /// Whether this is the top-level field `name`.
    pub fn is_field(&self, name: &str) -> bool {
        self.0.len() == 1 && self.0[0] == name
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

fn is_field_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A change [`Action::Update`] makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Mod {
    /// Sets the field (making the objects on the way).
    Set(FieldPath, Value),
    /// Removes the field.
    Unset(FieldPath),
    /// Adds a number to the field (a missing field counts as 0; a field that is not a
    /// number is an error). Integers stay integers when both are.
    Increment(FieldPath, serde_json::Number),
}

/// One thing to do to a collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Writes a new document: `AlreadyExists` if its key is taken. A missing one-part key
    /// is made up (a UUID). It must carry no revision.
    Create(Document),
    /// Writes the document whether or not its key exists. With a revision, only over
    /// that revision (as [`Action::Replace`]).
    Put(Document),
    /// Overwrites an existing document: `NotFound` if there is none; `Conflict` if the
    /// document carries a revision that is not the stored one.
    Replace(Document),
    /// Reads the document with the key `doc` has: all of it, or only `fields` (the key
    /// and revision always come back). `NotFound` if there is none.
    Get {
        /// A document with the key fields (other fields are ignored).
        key: Document,
        /// The fields to return; empty for all.
        fields: Vec<FieldPath>,
    },
    /// Deletes the document with this key; nothing if there is none, unless the
    /// document carries a revision (then `NotFound`, or `Conflict` if it changed).
    Delete(Document),
    /// Changes fields of an existing document (`NotFound` if there is none), over its
    /// revision when `key` carries one.
    Update {
        /// A document with the key fields (and optionally the revision).
        key: Document,
        /// The changes, applied in order.
        mods: Vec<Mod>,
    },
}

impl Action {
    /// Its name, for errors and spans.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Create(_) => "create",
            Self::Put(_) => "put",
            Self::Replace(_) => "replace",
            Self::Get { .. } => "get",
            Self::Delete(_) => "delete",
            Self::Update { .. } => "update",
        }
    }

    /// Whether it writes.
    pub fn writes(&self) -> bool {
        !matches!(self, Self::Get { .. })
    }

    /// The document or key document it carries.
    pub fn document(&self) -> &Document {
        match self {
            Self::Create(d) | Self::Put(d) | Self::Replace(d) | Self::Delete(d) => d,
            Self::Get { key, .. } | Self::Update { key, .. } => key,
        }
    }
}

/// What an action did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// A write: the document's key (as a document of its key fields) and new revision.
    Written {
        /// The key fields.
        key: Document,
        /// The new revision.
        revision: String,
    },
    /// A read: the document, with its revision.
    Got(Document),
    /// A delete (also when there was nothing to delete).
    Deleted,
}

/// A comparison in a [`Query`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// One of a list.
    In,
    /// None of a list.
    NotIn,
}

impl Op {
    /// Its spelling.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::In => "in",
            Self::NotIn => "not-in",
        }
    }
}

/// One condition of a [`Query`]. It matches only documents whose field holds a value
/// of the same JSON type as the filter's value (numbers compare as numbers, strings
/// byte by byte): `not-in` too, so a missing field matches no filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// The field.
    pub path: FieldPath,
    /// The comparison.
    pub op: Op,
    /// A string, number or boolean; for `in` and `not-in`, a non-empty array of them,
    /// all of one type. Booleans take `=`, `in` and `not-in` only.
    pub value: Value,
}

/// Which way to sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Smallest first; documents without the field before the rest.
    Ascending,
    /// Largest first; documents without the field after the rest.
    Descending,
}

/// A query: filters (all must hold), at most one order, an offset, a limit, and the
/// fields to return (the key and revision always come back).
///
/// Ordering is defined between values of one JSON type; a field holding several types
/// across documents sorts in an order each backend chooses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    /// The conditions.
    pub filters: Vec<Filter>,
    /// The order.
    pub order_by: Option<(FieldPath, Direction)>,
    /// Documents to skip.
    pub offset: Option<usize>,
    /// At most this many documents.
    pub limit: Option<usize>,
    /// The fields to return; empty for all.
    pub fields: Vec<FieldPath>,
}

impl Query {
    /// Every document.
    pub fn new() -> Self {
        Self::default()
    }

    /// And `path op value` (`path` a dotted field path).
    pub fn filter(mut self, path: &str, op: Op, value: impl Into<Value>) -> Result<Self> {
        self.filters.push(Filter { path: FieldPath::parse(path)?, op, value: value.into() });
        Ok(self)
    }

    /// Sorted by `path`.
    pub fn order_by(mut self, path: &str, direction: Direction) -> Result<Self> {
        self.order_by = Some((FieldPath::parse(path)?, direction));
        Ok(self)
    }

    /// At most `n` documents.
    #[must_use]
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Skipping the first `n`.
    #[must_use]
    pub fn offset(mut self, n: usize) -> Self {
        self.offset = Some(n);
        self
    }

    /// Only these fields (and the key and revision).
    pub fn fields(mut self, paths: &[&str]) -> Result<Self> {
        self.fields = paths.iter().map(|p| FieldPath::parse(p)).collect::<Result<_>>()?;
        Ok(self)
    }
}

/// How a backend would run a query ([`Collection::plan`](crate::Collection::plan)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Whether it reads the whole collection.
    pub scan: bool,
    /// What the backend says it does (its SQL, say).
    pub detail: String,
}

/// Which writes can be made all or nothing ([`Collection::run_atomic`](crate::Collection::run_atomic)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicWrites {
    /// None: `run_atomic` is `Unsupported`.
    None,
    /// Only writes to one partition key.
    SinglePartition,
    /// Any writes.
    Any,
}

/// What a backend can do; what it cannot is `Unsupported`, never a silent fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Which writes can be made all or nothing.
    pub atomic_writes: AtomicWrites,
    /// Whether queries may filter and sort on any field (no partition key needed).
    pub any_field_queries: bool,
}
