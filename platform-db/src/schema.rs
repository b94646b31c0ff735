//! The live schema as the drift check sees it: tables, columns (type, nullability) and
//! indexes, read from the database's catalog, and a readable diff of two of them.

use std::collections::BTreeMap;
use std::fmt;

/// Tables by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Schema {
    /// Every table the catalog lists in the schema (database) looked at.
    pub tables: BTreeMap<String, Table>,
}

/// One table's columns and indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Table {
    /// Columns by name.
    pub columns: BTreeMap<String, Column>,
    /// Indexes by name, each as a normalized description (uniqueness and columns).
    pub indexes: BTreeMap<String, String>,
}

/// A column's type as the database spells it, and whether it takes `NULL`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Column {
    /// The catalog's type name (`character varying(20)`, `varchar(20)`, `TEXT`).
    pub data_type: String,
    /// Whether `NULL` is allowed.
    pub nullable: bool,
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.data_type, if self.nullable { "NULL" } else { "NOT NULL" })
    }
}

impl Schema {
    pub(crate) fn column(&mut self, table: &str, column: &str, data_type: String, nullable: bool) {
        self.tables
            .entry(table.to_owned())
            .or_default()
            .columns
            .insert(column.to_owned(), Column { data_type, nullable });
    }

    pub(crate) fn index(&mut self, table: &str, index: &str, description: String) {
        self.tables.entry(table.to_owned()).or_default().indexes.insert(index.to_owned(), description);
    }

    /// Adds indexes from catalog rows `t` (table), `i` (index), `u` (unique), `c` (column,
    /// `NULL` for an expression), ordered by table, index and column position.
    #[cfg_attr(not(any(feature = "mysql", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn index_columns(&mut self, rows: &[crate::Row]) -> platform_core::Result<()> {
        let mut indexes: Vec<(String, String, bool, Vec<String>)> = Vec::new();
        for r in rows {
            let (t, i): (String, String) = (r.get("t")?, r.get("i")?);
            let col = r.get::<Option<String>>("c")?.unwrap_or_else(|| "<expression>".to_owned());
            match indexes.last_mut() {
                Some(last) if last.0 == t && last.1 == i => last.3.push(col),
                _ => indexes.push((t, i, r.get("u")?, vec![col])),
            }
        }
        for (t, i, unique, cols) in indexes {
            self.index(&t, &i, format!("{}({})", if unique { "unique " } else { "" }, cols.join(", ")));
        }
        Ok(())
    }

    /// What differs between `expected` (what the migrations produce) and `self` (live),
    /// one line each. Tables the migrations don't create are ignored unless `strict`;
    /// `ignore` names tables never compared.
    pub fn diff(&self, expected: &Self, strict: bool, ignore: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for (name, want) in &expected.tables {
            if ignore.contains(name) {
                continue;
            }
            let Some(have) = self.tables.get(name) else {
                out.push(format!("table {name}: missing"));
                continue;
            };
            for (col, want_col) in &want.columns {
                match have.columns.get(col) {
                    None => out.push(format!("table {name}: column {col} missing (expected {want_col})")),
                    Some(have_col) if have_col != want_col => {
                        out.push(format!("table {name}: column {col} is {have_col}, expected {want_col}"));
                    }
                    Some(_) => {}
                }
            }
            for (col, have_col) in &have.columns {
                if !want.columns.contains_key(col) {
                    out.push(format!("table {name}: column {col} ({have_col}) is not in the migrations"));
                }
            }
            for (idx, want_idx) in &want.indexes {
                match have.indexes.get(idx) {
                    None => out.push(format!("table {name}: index {idx} missing (expected {want_idx})")),
                    Some(have_idx) if have_idx != want_idx => {
                        out.push(format!("table {name}: index {idx} is {have_idx}, expected {want_idx}"));
                    }
                    Some(_) => {}
                }
            }
            for (idx, have_idx) in &have.indexes {
                if !want.indexes.contains_key(idx) {
                    out.push(format!("table {name}: index {idx} ({have_idx}) is not in the migrations"));
                }
            }
        }
        if strict {
            for name in self.tables.keys() {
                if !expected.tables.contains_key(name) && !ignore.contains(name) {
                    out.push(format!("table {name}: not in the migrations"));
                }
            }
        }
        out
    }
}

/// Where the schema stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MigrationState {
    /// Every migration is applied and the live schema matches; the newest version.
    UpToDate(i64),
    /// This many migrations are not applied yet.
    Pending(usize),
    /// The live schema differs from what the migrations produce: the diff.
    Drift(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_is_readable() {
        let mut want = Schema::default();
        want.column("notes", "id", "bigint".into(), false);
        want.column("notes", "title", "text".into(), false);
        want.index("notes", "notes_title", "(title)".into());
        let mut have = want.clone();
        have.column("notes", "title", "varchar(20)".into(), true);
        have.column("notes", "extra", "int".into(), true);
        have.tables.get_mut("notes").unwrap().indexes.clear();
        have.column("other", "x", "int".into(), true);
        let diff = have.diff(&want, false, &[]);
        assert_eq!(
            diff,
            [
                "table notes: column title is varchar(20) NULL, expected text NOT NULL",
                "table notes: column extra (int NULL) is not in the migrations",
                "table notes: index notes_title missing (expected (title))",
            ]
        );
        assert_eq!(have.diff(&want, true, &[]).last().unwrap(), "table other: not in the migrations");
        assert!(want.diff(&want, true, &[]).is_empty());
    }
}
