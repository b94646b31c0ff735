//! What the T-SQL and Oracle renderers share: sea-query has neither backend, so each is
//! a builder of its own that borrows the standard clauses from sea-query's defaults
//! and looks at what another builder would write where it must differ.

use std::fmt;

use sea_query::{BinOper, Expr, Oper, QueryBuilder, SqlWriter, Value, Values};

/// Marks a construct the dialect cannot express; [`finish`] turns the whole statement
/// into the dialect's raise of an `Unsupported` error naming it.
pub(crate) const UNSUPPORTED: char = '\u{0}';
/// Marks `CREATE TABLE IF NOT EXISTS`, which neither dialect writes that way.
pub(crate) const IF_NOT_EXISTS: char = '\u{1}';

/// Writes the marker of an unsupported construct.
pub(crate) fn unsupported(what: &str, sql: &mut impl SqlWriter) {
    sql.write_char(UNSUPPORTED).unwrap();
    sql.write_str(what).unwrap();
    sql.write_char(UNSUPPORTED).unwrap();
}

/// Collects what another builder writes, to look at it first.
#[derive(Default)]
pub(crate) struct Capture {
    pub(crate) text: String,
    pub(crate) values: Vec<Value>,
}

impl fmt::Write for Capture {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.text.push_str(s);
        Ok(())
    }
}

impl fmt::Display for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl SqlWriter for Capture {
    fn push_param<T: QueryBuilder>(&mut self, value: Value, _query_builder: &T) {
        self.text.push('?');
        self.values.push(value);
    }

    fn as_writer(&mut self) -> &mut dyn fmt::Write {
        self
    }
}

pub(crate) fn capture(f: impl FnOnce(&mut Capture)) -> Capture {
    let mut c = Capture::default();
    f(&mut c);
    c
}

/// The double-quoted identifiers in `text`, in order, unescaped.
pub(crate) fn quoted_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        match c {
            '\'' => in_string = !in_string,
            '"' if !in_string => {
                let mut name = String::new();
                while let Some(c) = chars.next() {
                    if c == '"' {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            name.push('"');
                            continue;
                        }
                        break;
                    }
                    name.push(c);
                }
                names.push(name);
            }
            _ => {}
        }
    }
    names
}

/// `'text'` with quotes doubled: the only escape either dialect's strings have.
pub(crate) fn write_escaped(buffer: &mut impl fmt::Write, string: &str) {
    for c in string.chars() {
        if c == '\'' {
            buffer.write_char('\'').unwrap();
        }
        buffer.write_char(c).unwrap();
    }
}

/// A literal: booleans as `1`/`0` (neither dialect has TRUE in every position) and
/// strings after `open` (`N'` for T-SQL's Unicode, `'` for Oracle).
pub(crate) fn write_literal<B: QueryBuilder>(
    builder: &B,
    buf: &mut impl fmt::Write,
    value: &Value,
    open: &str,
) -> fmt::Result {
    match value {
        Value::Bool(Some(b)) => buf.write_str(if *b { "1" } else { "0" }),
        Value::String(Some(s)) => {
            buf.write_str(open)?;
            write_escaped(buf, s);
            buf.write_str("'")
        }
        other => builder.write_value_common(buf, other),
    }
}

/// Which operators bind tighter, for leaving out parentheses where the dialect reads the
/// expression the same without them: simple operands never need them; arithmetic
/// inside a comparison or a logical operator doesn't; a comparison inside `AND`/`OR`
/// doesn't. Anything else (bitwise operators, `NOT`, nested logic) keeps them.
pub(crate) fn binds_tighter(inner: &Expr, outer_oper: &Oper) -> bool {
    let Oper::BinOper(outer) = outer_oper else {
        return matches!(inner, Expr::Column(_) | Expr::Value(_) | Expr::FunctionCall(_) | Expr::Tuple(_));
    };
    match inner {
        Expr::Column(_)
        | Expr::Tuple(_)
        | Expr::Constant(_)
        | Expr::FunctionCall(_)
        | Expr::Value(_)
        | Expr::Keyword(_)
        | Expr::Case(_)
        | Expr::SubQuery(..)
        | Expr::TypeName(_) => true,
        Expr::Binary(_, op, _) if arithmetic(*op) => comparison(*outer) || logical(*outer),
        Expr::Binary(_, op, _) if comparison(*op) => logical(*outer),
        _ => false,
    }
}

pub(crate) fn left_associative(op: &BinOper) -> bool {
    matches!(op, BinOper::And | BinOper::Or | BinOper::Add | BinOper::Sub | BinOper::Mul | BinOper::Mod)
}

fn arithmetic(op: BinOper) -> bool {
    matches!(op, BinOper::Add | BinOper::Sub | BinOper::Mul | BinOper::Div | BinOper::Mod)
}

fn comparison(op: BinOper) -> bool {
    matches!(
        op,
        BinOper::Equal
            | BinOper::NotEqual
            | BinOper::SmallerThan
            | BinOper::GreaterThan
            | BinOper::SmallerThanOrEqual
            | BinOper::GreaterThanOrEqual
            | BinOper::In
            | BinOper::NotIn
            | BinOper::Like
            | BinOper::NotLike
            | BinOper::Is
            | BinOper::IsNot
            | BinOper::Between
            | BinOper::NotBetween
    )
}

fn logical(op: BinOper) -> bool {
    matches!(op, BinOper::And | BinOper::Or)
}

/// The statement with its unsupported construct, if any, replaced by `raise(what)`.
pub(crate) fn refuse_unsupported(sql: String, values: Values, raise: fn(&str) -> String) -> (String, Values) {
    match sql.find(UNSUPPORTED) {
        Some(start) => {
            let what = sql[start + 1..].split(UNSUPPORTED).next().unwrap_or_default();
            (raise(what), Values(Vec::new()))
        }
        None => (sql, values),
    }
}

/// The traits both builders implement alike: double-quoted identifiers, quote-doubling
/// strings, the precedence above, and PostgreSQL's foreign key clauses (the same text).
macro_rules! common_builder_traits {
    ($builder:ty) => {
        impl sea_query::GenericBuilder for $builder {}

        impl sea_query::SchemaBuilder for $builder {}

        impl sea_query::QuotedBuilder for $builder {
            fn quote(&self) -> sea_query::Quote {
                sea_query::Quote::new(b'"')
            }
        }

        impl sea_query::EscapeBuilder for $builder {
            fn needs_escape(&self, s: &str) -> bool {
                s.contains('\'')
            }

            fn escape_string(&self, string: &str) -> String {
                string.replace('\'', "''")
            }

            fn write_escaped(&self, buffer: &mut impl std::fmt::Write, string: &str) {
                $crate::render::write_escaped(buffer, string);
            }

            fn unescape_string(&self, string: &str) -> String {
                string.replace("''", "'")
            }
        }

        impl sea_query::TableRefBuilder for $builder {}

        impl sea_query::PrecedenceDecider for $builder {
            fn inner_expr_well_known_greater_precedence(
                &self,
                inner: &sea_query::Expr,
                outer: &sea_query::Oper,
            ) -> bool {
                $crate::render::binds_tighter(inner, outer)
            }
        }

        impl sea_query::OperLeftAssocDecider for $builder {
            fn well_known_left_associative(&self, op: &sea_query::BinOper) -> bool {
                $crate::render::left_associative(op)
            }
        }

        impl sea_query::ForeignKeyBuilder for $builder {
            fn prepare_table_ref_fk_stmt(&self, table_ref: &sea_query::TableRef, sql: &mut impl sea_query::SqlWriter) {
                sea_query::TableRefBuilder::prepare_table_ref_iden(self, table_ref, sql);
            }

            fn prepare_foreign_key_drop_statement_internal(
                &self,
                drop: &sea_query::ForeignKeyDropStatement,
                sql: &mut impl sea_query::SqlWriter,
                mode: sea_query::Mode,
            ) {
                sea_query::PostgresQueryBuilder.prepare_foreign_key_drop_statement_internal(drop, sql, mode);
            }

            fn prepare_foreign_key_create_statement_internal(
                &self,
                create: &sea_query::ForeignKeyCreateStatement,
                sql: &mut impl sea_query::SqlWriter,
                mode: sea_query::Mode,
            ) {
                sea_query::PostgresQueryBuilder.prepare_foreign_key_create_statement_internal(create, sql, mode);
            }
        }
    };
}
pub(crate) use common_builder_traits;

/// The values of a select's `LIMIT` and `OFFSET`, as sea-query holds them.
pub(crate) fn limit_offset(select: &sea_query::SelectStatement) -> (Option<Value>, Option<Value>) {
    let c = capture(|c| sea_query::MysqlQueryBuilder.prepare_select_limit_offset(select, c));
    let mut values = c.values.into_iter();
    let limit = if c.text.contains("LIMIT") { values.next() } else { None };
    let offset = if c.text.contains("OFFSET") { values.next() } else { None };
    (limit, offset)
}

/// The `QueryBuilder` methods both dialects write alike: sub-statements, numbered
/// parameters, `(1 = 1)` for TRUE, and `Unsupported` for `SELECT INTO`, `ON CONFLICT`
/// and `ORDER BY`/`LIMIT` on updates and deletes.
macro_rules! common_query_methods {
    () => {
        fn prepare_query_statement(&self, query: &sea_query::SubQueryStatement, sql: &mut impl sea_query::SqlWriter) {
            use sea_query::SubQueryStatement as S;
            match query {
                S::SelectStatement(s) => self.prepare_select_statement(s, sql),
                S::InsertStatement(s) => self.prepare_insert_statement(s, sql),
                S::UpdateStatement(s) => self.prepare_update_statement(s, sql),
                S::DeleteStatement(s) => self.prepare_delete_statement(s, sql),
                S::WithStatement(s) => self.prepare_with_query(s, sql),
            }
        }

        fn prepare_select_into(&self, _into: &sea_query::SelectInto, sql: &mut impl sea_query::SqlWriter) {
            $crate::render::unsupported("SELECT INTO", sql);
        }

        fn prepare_value(&self, value: sea_query::Value, sql: &mut impl sea_query::SqlWriter) {
            sql.push_param(value, self);
        }

        fn prepare_update_order_by(&self, update: &sea_query::UpdateStatement, sql: &mut impl sea_query::SqlWriter) {
            let c = $crate::render::capture(|c| sea_query::MysqlQueryBuilder.prepare_update_order_by(update, c));
            if !c.text.is_empty() {
                $crate::render::unsupported("ORDER BY on an UPDATE", sql);
            }
        }

        fn prepare_update_limit(&self, update: &sea_query::UpdateStatement, sql: &mut impl sea_query::SqlWriter) {
            let c = $crate::render::capture(|c| sea_query::MysqlQueryBuilder.prepare_update_limit(update, c));
            if !c.text.is_empty() {
                $crate::render::unsupported("LIMIT on an UPDATE", sql);
            }
        }

        fn prepare_delete_order_by(&self, delete: &sea_query::DeleteStatement, sql: &mut impl sea_query::SqlWriter) {
            let c = $crate::render::capture(|c| sea_query::MysqlQueryBuilder.prepare_delete_order_by(delete, c));
            if !c.text.is_empty() {
                $crate::render::unsupported("ORDER BY on a DELETE", sql);
            }
        }

        fn prepare_delete_limit(&self, delete: &sea_query::DeleteStatement, sql: &mut impl sea_query::SqlWriter) {
            let c = $crate::render::capture(|c| sea_query::MysqlQueryBuilder.prepare_delete_limit(delete, c));
            if !c.text.is_empty() {
                $crate::render::unsupported("LIMIT on a DELETE", sql);
            }
        }

        fn prepare_on_conflict(
            &self,
            on_conflict: &Option<sea_query::OnConflict>,
            sql: &mut impl sea_query::SqlWriter,
        ) {
            if on_conflict.is_some() {
                $crate::render::unsupported("ON CONFLICT (write a MERGE in Sql text)", sql);
            }
        }

        fn prepare_constant_true(&self, sql: &mut impl sea_query::SqlWriter) {
            sql.write_str("(1 = 1)").unwrap();
        }

        fn prepare_constant_false(&self, sql: &mut impl sea_query::SqlWriter) {
            sql.write_str("(1 = 0)").unwrap();
        }
    };
}
pub(crate) use common_query_methods;

/// The `TableBuilder` methods both dialects write alike: the `IF NOT EXISTS` marker
/// each `finish` rewrites, and `Unsupported` for table options and sea-query's `ALTER`.
macro_rules! common_table_methods {
    () => {
        fn prepare_create_table_if_not_exists(
            &self,
            create: &sea_query::TableCreateStatement,
            sql: &mut impl sea_query::SqlWriter,
        ) {
            let c = $crate::render::capture(|c| {
                sea_query::SqliteQueryBuilder.prepare_create_table_if_not_exists(create, c)
            });
            if !c.text.is_empty() {
                sql.write_char($crate::render::IF_NOT_EXISTS).unwrap();
            }
        }

        fn prepare_table_opt(&self, create: &sea_query::TableCreateStatement, sql: &mut impl sea_query::SqlWriter) {
            let c = $crate::render::capture(|c| sea_query::SqliteQueryBuilder.prepare_table_opt(create, c));
            if !c.text.trim().is_empty() {
                $crate::render::unsupported(&format!("table options ({})", c.text.trim()), sql);
            }
        }

        fn prepare_table_alter_statement(
            &self,
            _alter: &sea_query::TableAlterStatement,
            sql: &mut impl sea_query::SqlWriter,
        ) {
            $crate::render::unsupported("ALTER TABLE built with sea-query (write the SQL in the migration)", sql);
        }
    };
}
pub(crate) use common_table_methods;

/// The `IndexBuilder` methods both dialects write alike.
macro_rules! common_index_methods {
    () => {
        fn prepare_table_ref_index_stmt(&self, table_ref: &sea_query::TableRef, sql: &mut impl sea_query::SqlWriter) {
            sea_query::TableRefBuilder::prepare_table_ref_iden(self, table_ref, sql);
        }

        fn prepare_index_prefix(&self, create: &sea_query::IndexCreateStatement, sql: &mut impl sea_query::SqlWriter) {
            sea_query::SqliteQueryBuilder.prepare_index_prefix(create, sql);
        }
    };
}
pub(crate) use common_index_methods;

/// The statements both dialects' golden tests render.
#[cfg(test)]
pub(crate) mod fixtures {
    use sea_query::{
        Alias, Asterisk, ColumnDef, Expr, ExprTrait, Index, IndexCreateStatement, InsertStatement, OnConflict, Order,
        Query, SelectStatement, Table, TableCreateStatement, TableDropStatement, TableRenameStatement,
    };

    /// A filtered, ordered page: `LIMIT 10 OFFSET 20`.
    pub(crate) fn page() -> SelectStatement {
        Query::select()
            .columns([Alias::new("id"), Alias::new("body")])
            .from(Alias::new("notes"))
            .and_where(Expr::col(Alias::new("owner")).eq("ada"))
            .and_where(Expr::col(Alias::new("done")).eq(false))
            .order_by(Alias::new("id"), Order::Desc)
            .limit(10)
            .offset(20)
            .to_owned()
    }

    /// `SELECT * … LIMIT 5`, unordered.
    pub(crate) fn first_five() -> SelectStatement {
        Query::select().column(Asterisk).from(Alias::new("notes")).limit(5).to_owned()
    }

    /// An insert with `ON CONFLICT DO NOTHING`.
    pub(crate) fn upsert() -> InsertStatement {
        Query::insert()
            .into_table(Alias::new("t"))
            .columns([Alias::new("k")])
            .values_panic([1.into()])
            .on_conflict(OnConflict::column(Alias::new("k")).do_nothing().to_owned())
            .to_owned()
    }

    /// A table of every portable column type, made if missing.
    pub(crate) fn notes_table() -> TableCreateStatement {
        Table::create()
            .table(Alias::new("notes"))
            .if_not_exists()
            .col(ColumnDef::new(Alias::new("id")).big_integer().not_null().auto_increment().primary_key())
            .col(ColumnDef::new(Alias::new("owner")).uuid().not_null())
            .col(ColumnDef::new(Alias::new("body")).text().not_null())
            .col(ColumnDef::new(Alias::new("title")).string_len(200))
            .col(ColumnDef::new(Alias::new("done")).boolean().not_null().default(false))
            .col(ColumnDef::new(Alias::new("meta")).json_binary())
            .col(ColumnDef::new(Alias::new("blob")).blob())
            .col(ColumnDef::new(Alias::new("at")).timestamp_with_time_zone().not_null())
            .col(ColumnDef::new(Alias::new("score")).double())
            .to_owned()
    }

    /// A unique two-column index, made if missing.
    pub(crate) fn notes_index() -> IndexCreateStatement {
        Index::create()
            .name("notes_owner")
            .table(Alias::new("notes"))
            .col(Alias::new("owner"))
            .col(Alias::new("id"))
            .unique()
            .if_not_exists()
            .to_owned()
    }

    pub(crate) fn rename() -> TableRenameStatement {
        Table::rename().table(Alias::new("a"), Alias::new("b")).to_owned()
    }

    pub(crate) fn drop_notes() -> TableDropStatement {
        Table::drop().table(Alias::new("notes")).if_exists().to_owned()
    }
}
