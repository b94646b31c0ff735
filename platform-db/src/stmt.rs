//! Statements: written once with sea-query (or as [`Sql`] text), rendered for the
//! database in use.

use sea_query::{
    DeleteStatement, IndexCreateStatement, IndexDropStatement, InsertStatement, MysqlQueryBuilder,
    PostgresQueryBuilder, QueryStatementBuilder, SelectStatement, SqliteQueryBuilder, TableAlterStatement,
    TableCreateStatement, TableDropStatement, TableRenameStatement, UpdateStatement, Values, WithQuery,
};

use crate::Dialect;
use crate::oracle_sql::OracleQueryBuilder;
use crate::tsql::SqlServerQueryBuilder;

/// Something that renders to SQL text and bound values for a dialect.
///
/// Implemented for sea-query's query and schema statements and for [`Sql`].
pub trait Statement: Send + Sync {
    /// The SQL text with the dialect's placeholders, and the values to bind.
    fn render(&self, dialect: Dialect) -> (String, Values);
}

impl<S: Statement + ?Sized> Statement for &S {
    fn render(&self, dialect: Dialect) -> (String, Values) {
        (**self).render(dialect)
    }
}

macro_rules! query_statement {
    ($($t:ty),*) => {$(
        impl Statement for $t {
            fn render(&self, dialect: Dialect) -> (String, Values) {
                match dialect {
                    Dialect::Postgres => self.build_any(&PostgresQueryBuilder),
                    Dialect::Mysql => self.build_any(&MysqlQueryBuilder),
                    Dialect::Sqlite => self.build_any(&SqliteQueryBuilder),
                    Dialect::SqlServer => {
                        let (sql, values) = self.build_any(&SqlServerQueryBuilder);
                        crate::tsql::finish(sql, values)
                    }
                    Dialect::Oracle => {
                        let (sql, values) = self.build_any(&OracleQueryBuilder);
                        crate::oracle_sql::finish(sql, values)
                    }
                }
            }
        }
    )*};
}
query_statement!(SelectStatement, InsertStatement, UpdateStatement, DeleteStatement, WithQuery);

macro_rules! schema_statement {
    ($($t:ty),*) => {$(
        impl Statement for $t {
            fn render(&self, dialect: Dialect) -> (String, Values) {
                let sql = match dialect {
                    Dialect::Postgres => self.build(PostgresQueryBuilder),
                    Dialect::Mysql => self.build(MysqlQueryBuilder),
                    Dialect::Sqlite => self.build(SqliteQueryBuilder),
                    Dialect::SqlServer => return crate::tsql::finish(self.build(SqlServerQueryBuilder), Values(Vec::new())),
                    Dialect::Oracle => return crate::oracle_sql::finish(self.build(OracleQueryBuilder), Values(Vec::new())),
                };
                (sql, Values(Vec::new()))
            }
        }
    )*};
}
schema_statement!(
    TableCreateStatement,
    TableAlterStatement,
    TableDropStatement,
    TableRenameStatement,
    IndexCreateStatement,
    IndexDropStatement
);

/// Raw SQL with `?` placeholders, rewritten to `$1, $2, …` on PostgreSQL, `@P1, @P2, …`
/// on SQL Server and `:1, :2, …` on Oracle, so one text works on every dialect when the SQL itself is portable.
///
/// ```
/// use platform_db::{Dialect, Sql, Statement};
///
/// let q = Sql::new("SELECT body FROM notes WHERE id = ? AND note <> '?'").bind(7_i64);
/// assert_eq!(q.render(Dialect::Postgres).0, "SELECT body FROM notes WHERE id = $1 AND note <> '?'");
/// assert_eq!(q.render(Dialect::Mysql).0, "SELECT body FROM notes WHERE id = ? AND note <> '?'");
/// ```
#[derive(Debug, Clone)]
pub struct Sql {
    text: String,
    values: Vec<sea_query::Value>,
}

impl Sql {
    /// SQL text with `?` placeholders (a `?` inside quotes or a comment is left alone).
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into(), values: Vec::new() }
    }

    /// Binds the next placeholder.
    #[must_use]
    pub fn bind(mut self, value: impl Into<sea_query::Value>) -> Self {
        self.values.push(value.into());
        self
    }
}

impl Statement for Sql {
    fn render(&self, dialect: Dialect) -> (String, Values) {
        let text = match dialect {
            Dialect::Postgres => numbered_placeholders(&self.text, "$"),
            Dialect::SqlServer => crate::tsql::numbered(&self.text),
            Dialect::Oracle => crate::oracle_sql::numbered(&self.text),
            Dialect::Mysql | Dialect::Sqlite => self.text.clone(),
        };
        (text, Values(self.values.clone()))
    }
}

/// `?` outside quotes and comments becomes `{prefix}n`.
pub(crate) fn numbered_placeholders(sql: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                // A quote ends at its own character, a `--` comment at the newline.
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' | '`' => {
                    quote = Some(c);
                    out.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    quote = Some('\n');
                    out.push(c);
                }
                '?' => {
                    n += 1;
                    out.push_str(prefix);
                    out.push_str(&n.to_string());
                }
                _ => out.push(c),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_skip_quotes_and_comments() {
        assert_eq!(
            numbered_placeholders("SELECT ? , 'a?b', \"c?\" -- what?\n, ?", "$"),
            "SELECT $1 , 'a?b', \"c?\" -- what?\n, $2"
        );
        assert_eq!(numbered_placeholders("x = 'it''s ?' AND y = ?", "$"), "x = 'it''s ?' AND y = $1");
    }
}
