//! Rows and the values in them, the same on every database.
//!
//! A [`Row`] holds [`Value`]s decoded from the database's own column types; [`Row::get`]
//! converts them into Rust types through [`FromValue`], which accepts every
//! representation a portable column type has on the three databases:
//!
//! | Rust type | PostgreSQL | MySQL / MariaDB | SQLite |
//! |---|---|---|---|
//! | `bool` | `boolean` | `tinyint(1)` | `integer` 0/1 |
//! | `i64`, `i32`, `i16` | `bigint`, `integer`, `smallint` | the same | `integer` |
//! | `f64` | `double precision` | `double` | `real` |
//! | `String` | `text`, `varchar` | `varchar`, `text` | `text` |
//! | `Vec<u8>` | `bytea` | `blob`, `varbinary` | `blob` |
//! | [`Uuid`] | `uuid` | `binary(16)` (or `char(36)`) | `blob` (or `text`) |
//! | [`OffsetDateTime`] | `timestamptz` | `timestamp` / `datetime(6)`, kept in UTC | `text` (RFC 3339) |
//! | [`serde_json::Value`] | `jsonb`, `json` | `json` (`longtext` on MariaDB) | `text` |
//!
//! sea-query's `ColumnDef::uuid()`, `timestamp_with_time_zone()`, `json_binary()`,
//! `binary()` and `boolean()` create exactly these columns.
//!
//! **Decimals**: there is no portable decimal type. Store money as an integer in minor
//! units (`bigint` cents) or as text; a PostgreSQL `numeric` column read directly is
//! `Unsupported` (cast it to text in the query), a MySQL `decimal` reads as a string.

use std::fmt;
use std::sync::Arc;

use platform_core::{Error, Result};
use time::OffsetDateTime;
use uuid::Uuid;

/// One decoded column value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// A boolean.
    Bool(bool),
    /// Any integer type.
    Int(i64),
    /// Any floating point type.
    Float(f64),
    /// Text (and MySQL decimals).
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A native UUID (PostgreSQL).
    Uuid(Uuid),
    /// A timestamp, in UTC where the database keeps no offset.
    Timestamp(OffsetDateTime),
    /// A native JSON value (PostgreSQL `json`/`jsonb`, MySQL `json`).
    Json(serde_json::Value),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "boolean",
            Self::Int(_) => "integer",
            Self::Float(_) => "float",
            Self::Text(_) => "text",
            Self::Bytes(_) => "bytes",
            Self::Uuid(_) => "uuid",
            Self::Timestamp(_) => "timestamp",
            Self::Json(_) => "json",
        }
    }
}

/// Conversion from a [`Value`]; implemented for the portable types of the table above.
pub trait FromValue: Sized {
    /// Converts, or says why not (the caller adds the column name).
    fn from_value(value: Value) -> std::result::Result<Self, String>;
}

fn mismatch<T>(want: &str, got: &Value) -> std::result::Result<T, String> {
    Err(format!("cannot read {} as {want}", got.kind()))
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

impl FromValue for Value {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        Ok(value)
    }
}

impl FromValue for bool {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        match value {
            Value::Bool(b) => Ok(b),
            Value::Int(0) => Ok(false),
            Value::Int(1) => Ok(true),
            v => mismatch("bool", &v),
        }
    }
}

impl FromValue for i64 {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        match value {
            Value::Int(i) => Ok(i),
            Value::Bool(b) => Ok(Self::from(b)),
            v => mismatch("i64", &v),
        }
    }
}

macro_rules! narrow_int {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: Value) -> std::result::Result<Self, String> {
                let wide = i64::from_value(value)?;
                <$t>::try_from(wide).map_err(|_| format!("{wide} does not fit in {}", stringify!($t)))
            }
        }
    )*};
}
narrow_int!(i32, i16, u32, u64);

impl FromValue for f64 {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        match value {
            Value::Float(f) => Ok(f),
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => Ok(i as Self),
            v => mismatch("f64", &v),
        }
    }
}

impl FromValue for String {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        match value {
            Value::Text(s) => Ok(s),
            Value::Bytes(b) => Self::from_utf8(b).map_err(|_| "bytes are not UTF-8".to_owned()),
            Value::Uuid(u) => Ok(u.to_string()),
            Value::Json(j) => Ok(j.to_string()),
            v => mismatch("String", &v),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        match value {
            Value::Bytes(b) => Ok(b),
            Value::Text(s) => Ok(s.into_bytes()),
            v => mismatch("bytes", &v),
        }
    }
}

impl FromValue for Uuid {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        match value {
            Value::Uuid(u) => Ok(u),
            Value::Bytes(b) => Self::from_slice(&b).map_err(|e| format!("not a uuid: {e}")),
            Value::Text(s) => Self::parse_str(&s).map_err(|e| format!("not a uuid: {e}")),
            v => mismatch("uuid", &v),
        }
    }
}

impl FromValue for OffsetDateTime {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        match value {
            Value::Timestamp(t) => Ok(t),
            Value::Text(s) => parse_timestamp(&s),
            v => mismatch("timestamp", &v),
        }
    }
}

impl FromValue for serde_json::Value {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        match value {
            Value::Json(j) => Ok(j),
            Value::Text(s) => serde_json::from_str(&s).map_err(|e| format!("not JSON: {e}")),
            Value::Bytes(b) => serde_json::from_slice(&b).map_err(|e| format!("not JSON: {e}")),
            v => mismatch("json", &v),
        }
    }
}

/// Parses the text forms timestamps take in SQLite: RFC 3339, or `YYYY-MM-DD HH:MM:SS[.f][+HH:MM]`
/// (UTC when no offset is given).
fn parse_timestamp(s: &str) -> std::result::Result<OffsetDateTime, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let with_t = s.replacen(' ', "T", 1);
    if let Ok(t) = OffsetDateTime::parse(&with_t, &Rfc3339) {
        return Ok(t);
    }
    OffsetDateTime::parse(&format!("{with_t}Z"), &Rfc3339).map_err(|_| format!("{s:?} is not a timestamp"))
}

/// One result row: column names and values.
#[derive(Clone, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.columns.iter().zip(&self.values)).finish()
    }
}

impl Row {
    pub(crate) fn new(columns: Arc<[String]>, values: Vec<Value>) -> Self {
        Self { columns, values }
    }

    /// The column names, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The raw value of a column, by name.
    pub fn value(&self, column: &str) -> Option<&Value> {
        self.columns.iter().position(|c| c == column).map(|i| &self.values[i])
    }

    /// The value of a column converted to `T`; `InvalidInput` names the column when it is
    /// missing or holds something `T` can't be read from.
    pub fn get<T: FromValue>(&self, column: &str) -> Result<T> {
        let value = self
            .value(column)
            .ok_or_else(|| Error::invalid_input(format!("no column {column:?} in the row")).with_op("get"))?;
        T::from_value(value.clone()).map_err(|why| {
            Error::invalid_input(format!("column {column:?}: {why}")).with_detail(column, why).with_op("get")
        })
    }

    /// The value at a position converted to `T`.
    pub fn get_at<T: FromValue>(&self, index: usize) -> Result<T> {
        let name = self.columns.get(index).cloned().unwrap_or_else(|| format!("#{index}"));
        self.get(&name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_conversions() {
        let row = Row::new(
            vec!["b".to_owned(), "u".to_owned(), "t".to_owned(), "j".to_owned(), "n".to_owned()].into(),
            vec![
                Value::Int(1),
                Value::Bytes(Uuid::nil().as_bytes().to_vec()),
                Value::Text("2026-11-23 06:00:00.5".to_owned()),
                Value::Text("{\"a\":1}".to_owned()),
                Value::Null,
            ],
        );
        assert!(row.get::<bool>("b").unwrap());
        assert_eq!(row.get::<Uuid>("u").unwrap(), Uuid::nil());
        assert_eq!(row.get::<OffsetDateTime>("t").unwrap().unix_timestamp(), 1_795_413_600);
        assert_eq!(row.get::<serde_json::Value>("j").unwrap()["a"], 1);
        assert_eq!(row.get::<Option<i64>>("n").unwrap(), None);
        let err = row.get::<i64>("t").unwrap_err();
        assert!(err.is_invalid_input() && err.to_string().contains("\"t\""), "{err}");
        assert!(row.get::<i64>("nope").unwrap_err().is_invalid_input());
    }
}
