//! T-SQL for SQL Server: a sea-query builder, and what [`Statement`](crate::Statement)
//! does with its output.
//!
//! sea-query has no SQL Server backend, so this one renders its statements as T-SQL:
//!
//! - identifiers in double quotes (every connection runs with `QUOTED_IDENTIFIER ON`),
//!   strings as `N'…'`, booleans as `1`/`0`, parameters as `@P1, @P2, …`;
//! - `LIMIT`/`OFFSET` as `OFFSET n ROWS FETCH NEXT m ROWS ONLY` (with `ORDER BY (SELECT
//!   NULL)` when the query has no order);
//! - `RETURNING` as `OUTPUT INSERTED.…` (`DELETED.…` for a delete);
//! - `CREATE TABLE IF NOT EXISTS` and `CREATE INDEX IF NOT EXISTS` as a guard on
//!   `OBJECT_ID` / `sys.indexes`; a table rename as `sp_rename`;
//! - the portable column types as `bit`, `bigint`, `float`, `nvarchar`, `varbinary`,
//!   `uniqueidentifier`, `datetimeoffset` (the table in [`crate::sqlserver`]).
//!
//! What T-SQL has no form for here (`ON CONFLICT`, `FOR UPDATE`, `ALTER TABLE` built
//! with sea-query, `EXPLAIN`, `LIMIT` on an update or delete, unknown column types) is
//! rendered as a `THROW` of error 59999 naming the construct, which the driver reports
//! as `Unsupported`: never a statement that does something else. Write those in
//! [`Sql`](crate::Sql) text or a migration's [`with_sql`](crate::migrate::Migration::with_sql)
//! for [`Dialect::SqlServer`](crate::Dialect::SqlServer) (`MERGE`, table hints such as
//! `WITH (UPDLOCK, READPAST)`).

use std::fmt;

use sea_query::{
    ColumnDef, ColumnType, IndexBuilder, IndexCreateStatement, IndexDropStatement, MysqlQueryBuilder, QueryBuilder,
    ReturningClause, SelectStatement, SqlWriter, SqliteQueryBuilder, StringLen, TableBuilder, TableCreateStatement,
    TableRenameStatement, Value, Values,
};

use crate::render::{IF_NOT_EXISTS, capture, common_builder_traits, quoted_names, unsupported};

/// sea-query's statements as T-SQL. See the [module docs](self).
#[derive(Debug, Default, Clone, Copy)]
pub struct SqlServerQueryBuilder;

impl SqlServerQueryBuilder {
    fn unsupported(what: &str, sql: &mut impl SqlWriter) {
        unsupported(what, sql);
    }
}

common_builder_traits!(SqlServerQueryBuilder);

impl QueryBuilder for SqlServerQueryBuilder {
    crate::render::common_query_methods!();

    fn placeholder(&self) -> (&'static str, bool) {
        ("@P", true)
    }

    fn prepare_explain_statement(&self, _explain: &sea_query::ExplainStatement, sql: &mut impl SqlWriter) {
        Self::unsupported("EXPLAIN (use SET SHOWPLAN_XML ON)", sql);
    }

    fn prepare_select_limit_offset(&self, select: &SelectStatement, sql: &mut impl SqlWriter) {
        let (limit, offset) = crate::render::limit_offset(select);
        if limit.is_none() && offset.is_none() {
            return;
        }
        if !sql.to_string().contains(" ORDER BY ") {
            sql.write_str(" ORDER BY (SELECT NULL)").unwrap();
        }
        sql.write_str(" OFFSET ").unwrap();
        match offset {
            Some(v) => self.prepare_value(v, sql),
            None => sql.write_str("0").unwrap(),
        }
        sql.write_str(" ROWS").unwrap();
        if let Some(v) = limit {
            sql.write_str(" FETCH NEXT ").unwrap();
            self.prepare_value(v, sql);
            sql.write_str(" ROWS ONLY").unwrap();
        }
    }

    fn prepare_select_lock(&self, _lock: &sea_query::LockClause, sql: &mut impl SqlWriter) {
        Self::unsupported("FOR UPDATE / FOR SHARE (use a table hint such as WITH (UPDLOCK) in Sql text)", sql);
    }

    fn prepare_output(&self, returning: &Option<ReturningClause>, sql: &mut impl SqlWriter) {
        let Some(returning) = returning else { return };
        let table = if sql.to_string().starts_with("DELETE") { "DELETED" } else { "INSERTED" };
        sql.write_str(" OUTPUT ").unwrap();
        match returning {
            ReturningClause::All => {
                sql.write_str(table).unwrap();
                sql.write_str(".*").unwrap();
            }
            ReturningClause::Columns(cols) => {
                for (i, col) in cols.iter().enumerate() {
                    if i > 0 {
                        sql.write_str(", ").unwrap();
                    }
                    sql.write_str(table).unwrap();
                    sql.write_str(".").unwrap();
                    let c = capture(|c| self.prepare_column_ref(col, c));
                    // Only the column's own name: OUTPUT names the pseudo-table.
                    let name = c.text.rsplit('.').next().unwrap_or_default().to_owned();
                    sql.write_str(&name).unwrap();
                }
            }
            ReturningClause::Exprs(_) => Self::unsupported("RETURNING expressions (OUTPUT takes columns)", sql),
        }
    }

    fn prepare_returning(&self, _returning: &Option<ReturningClause>, _sql: &mut impl SqlWriter) {}

    fn write_value(&self, buf: &mut impl fmt::Write, value: &Value) -> fmt::Result {
        crate::render::write_literal(self, buf, value, "N'")
    }

    fn if_null_function(&self) -> &str {
        "ISNULL"
    }

    fn char_length_function(&self) -> &str {
        "LEN"
    }

    fn random_function(&self) -> &str {
        "NEWID"
    }
}

impl TableBuilder for SqlServerQueryBuilder {
    crate::render::common_table_methods!();

    fn prepare_column_def(&self, column_def: &ColumnDef, sql: &mut impl SqlWriter) {
        let name = column_def.get_column_name();
        sql.write_char('"').unwrap();
        sql.write_str(&name.replace('"', "\"\"")).unwrap();
        sql.write_char('"').unwrap();
        if let Some(ty) = column_def.get_column_type() {
            sql.write_str(" ").unwrap();
            self.prepare_column_type(ty, sql);
        }
        self.prepare_column_spec(column_def.get_column_spec(), sql);
    }

    fn prepare_column_type(&self, column_type: &ColumnType, sql: &mut impl SqlWriter) {
        let text = match column_type {
            ColumnType::Char(n) => format!("nchar({})", n.unwrap_or(1)),
            ColumnType::String(StringLen::N(n)) if *n <= 4000 => format!("nvarchar({n})"),
            ColumnType::String(StringLen::None) => "nvarchar(255)".to_owned(),
            ColumnType::String(_) | ColumnType::Text | ColumnType::Json | ColumnType::JsonBinary => {
                "nvarchar(max)".to_owned()
            }
            ColumnType::Blob | ColumnType::VarBinary(StringLen::Max | StringLen::None) => "varbinary(max)".to_owned(),
            ColumnType::VarBinary(StringLen::N(n)) if *n <= 8000 => format!("varbinary({n})"),
            ColumnType::VarBinary(_) => "varbinary(max)".to_owned(),
            ColumnType::Binary(n) => format!("binary({n})"),
            ColumnType::TinyInteger | ColumnType::SmallInteger => "smallint".to_owned(),
            ColumnType::TinyUnsigned => "tinyint".to_owned(),
            ColumnType::Integer | ColumnType::SmallUnsigned => "int".to_owned(),
            ColumnType::BigInteger | ColumnType::Unsigned => "bigint".to_owned(),
            ColumnType::BigUnsigned => "decimal(20, 0)".to_owned(),
            ColumnType::Float => "real".to_owned(),
            ColumnType::Double => "float".to_owned(),
            ColumnType::Decimal(Some((p, s))) => format!("decimal({p}, {s})"),
            ColumnType::Decimal(None) => "decimal".to_owned(),
            ColumnType::Money(Some((p, s))) => format!("decimal({p}, {s})"),
            ColumnType::Money(None) => "money".to_owned(),
            ColumnType::DateTime | ColumnType::Timestamp => "datetime2".to_owned(),
            ColumnType::TimestampWithTimeZone => "datetimeoffset".to_owned(),
            ColumnType::Time => "time".to_owned(),
            ColumnType::Date => "date".to_owned(),
            ColumnType::Boolean => "bit".to_owned(),
            ColumnType::Uuid => "uniqueidentifier".to_owned(),
            ColumnType::Custom(name) => name.to_string(),
            other => {
                Self::unsupported(&format!("column type {other:?}"), sql);
                return;
            }
        };
        sql.write_str(&text).unwrap();
    }

    fn column_spec_auto_increment_keyword(&self) -> &str {
        " IDENTITY(1,1)"
    }

    fn column_comment(&self, _comment: &str, sql: &mut impl SqlWriter) {
        Self::unsupported("column comments (use sp_addextendedproperty)", sql);
    }

    fn prepare_create_temporary_table(&self, create: &TableCreateStatement, sql: &mut impl SqlWriter) {
        if !capture(|c| SqliteQueryBuilder.prepare_create_temporary_table(create, c)).text.is_empty() {
            Self::unsupported("TEMPORARY tables (name the table #name)", sql);
        }
    }

    fn prepare_table_rename_statement(&self, rename: &TableRenameStatement, sql: &mut impl SqlWriter) {
        let c = capture(|c| SqliteQueryBuilder.prepare_table_rename_statement(rename, c));
        let names = quoted_names(&c.text);
        match names.as_slice() {
            [from, to] => {
                write!(sql, "EXEC sp_rename N'{}', N'{}'", from.replace('\'', "''"), to.replace('\'', "''")).unwrap();
            }
            _ => Self::unsupported("renaming a schema-qualified table", sql),
        }
    }
}

impl IndexBuilder for SqlServerQueryBuilder {
    crate::render::common_index_methods!();

    fn prepare_index_create_statement(&self, create: &IndexCreateStatement, sql: &mut impl SqlWriter) {
        let c = capture(|c| SqliteQueryBuilder.prepare_index_create_statement(create, c));
        let text = c.text.replace("IF NOT EXISTS ", "");
        if text.len() == c.text.len() {
            sql.write_str(&text).unwrap();
            return;
        }
        let names = quoted_names(&text);
        let (Some(index), Some(table)) = (names.first(), names.get(1)) else {
            Self::unsupported("CREATE INDEX IF NOT EXISTS without a name", sql);
            return;
        };
        write!(
            sql,
            "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'{}' AND object_id = OBJECT_ID(N'{}')) {text}",
            index.replace('\'', "''"),
            bracketed(table).replace('\'', "''"),
        )
        .unwrap();
    }

    fn prepare_index_drop_statement(&self, drop: &IndexDropStatement, sql: &mut impl SqlWriter) {
        let mysql = capture(|c| MysqlQueryBuilder.prepare_index_drop_statement(drop, c)).text.replace('`', "\"");
        let if_exists =
            capture(|c| SqliteQueryBuilder.prepare_index_drop_statement(drop, c)).text.contains("IF EXISTS");
        if !mysql.contains(" ON ") {
            Self::unsupported("DROP INDEX without its table", sql);
            return;
        }
        let text = if if_exists { mysql.replacen("DROP INDEX ", "DROP INDEX IF EXISTS ", 1) } else { mysql };
        sql.write_str(&text).unwrap();
    }
}

fn bracketed(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// What a rendered statement becomes: a marked construct turns the whole statement into
/// a `THROW` naming it; `CREATE TABLE IF NOT EXISTS` becomes a guarded `CREATE TABLE`.
pub(crate) fn finish(sql: String, values: Values) -> (String, Values) {
    let (sql, values) = crate::render::refuse_unsupported(sql, values, unsupported_statement);
    if let Some(start) = sql.find(IF_NOT_EXISTS) {
        let after = &sql[start + IF_NOT_EXISTS.len_utf8()..];
        let table_end = after.find(" ( ").unwrap_or(after.len());
        let table: Vec<String> = quoted_names(&after[..table_end]);
        let object = table.iter().map(|n| bracketed(n)).collect::<Vec<_>>().join(".");
        let create = format!("{}{after}", &sql[..start]);
        let guarded = format!("IF OBJECT_ID(N'{}', N'U') IS NULL {create}", object.replace('\'', "''"));
        return (guarded, values);
    }
    (sql, values)
}

/// A statement that fails with error 59999 (`Unsupported`) naming what T-SQL lacks.
pub(crate) fn unsupported_statement(what: &str) -> String {
    let message = format!("platform-db renders no T-SQL for {what}").replace('\'', "''");
    format!("THROW {}, N'{message}', 1", platform_core::sql::SQLSERVER_UNSUPPORTED)
}

/// `?` placeholders outside quotes and comments, numbered `@P1, @P2, …`.
pub(crate) fn numbered(sql: &str) -> String {
    crate::stmt::numbered_placeholders(sql, "@P")
}

#[cfg(test)]
mod tests {
    use sea_query::{Alias, Asterisk, ColumnDef, Expr, ExprTrait, Index, Query, Table};

    use super::*;
    use crate::render::fixtures;
    use crate::{Dialect, Statement};

    fn tsql(s: &impl Statement) -> String {
        s.render(Dialect::SqlServer).0
    }

    #[test]
    fn selects_page_with_offset_fetch() {
        let (sql, values) = fixtures::page().render(Dialect::SqlServer);
        assert_eq!(
            sql,
            r#"SELECT "id", "body" FROM "notes" WHERE "owner" = @P1 AND "done" = @P2 ORDER BY "id" DESC OFFSET @P3 ROWS FETCH NEXT @P4 ROWS ONLY"#
        );
        assert_eq!(
            values.0,
            vec![Value::from("ada"), Value::from(false), Value::BigUnsigned(Some(20)), Value::BigUnsigned(Some(10))]
        );
        assert_eq!(
            tsql(&fixtures::first_five()),
            r#"SELECT * FROM "notes" ORDER BY (SELECT NULL) OFFSET 0 ROWS FETCH NEXT @P1 ROWS ONLY"#
        );
    }

    #[test]
    fn inserts_output_inserted_columns() {
        let q = Query::insert()
            .into_table(Alias::new("notes"))
            .columns([Alias::new("body"), Alias::new("done")])
            .values_panic(["it's".into(), true.into()])
            .returning_col(Alias::new("id"))
            .to_owned();
        assert_eq!(tsql(&q), r#"INSERT INTO "notes" ("body", "done") OUTPUT INSERTED."id" VALUES (@P1, @P2)"#);
        let q = Query::delete()
            .from_table(Alias::new("notes"))
            .and_where(Expr::col(Alias::new("id")).eq(1))
            .returning_all()
            .to_owned();
        assert_eq!(tsql(&q), r#"DELETE FROM "notes" OUTPUT DELETED.* WHERE "id" = @P1"#);
    }

    #[test]
    fn what_tsql_lacks_is_a_throw() {
        let (sql, values) = fixtures::upsert().render(Dialect::SqlServer);
        assert_eq!(sql, "THROW 59999, N'platform-db renders no T-SQL for ON CONFLICT (write a MERGE in Sql text)', 1");
        assert!(values.0.is_empty());
        let q = Query::select().column(Asterisk).from(Alias::new("t")).lock_exclusive().to_owned();
        assert!(tsql(&q).starts_with("THROW 59999, N'platform-db renders no T-SQL for FOR UPDATE"));
        let alter =
            Table::alter().table(Alias::new("t")).add_column(ColumnDef::new(Alias::new("c")).integer()).to_owned();
        assert!(tsql(&alter).starts_with("THROW 59999"));
    }

    #[test]
    fn tables_and_indexes() {
        assert_eq!(
            tsql(&fixtures::notes_table()),
            "IF OBJECT_ID(N'[notes]', N'U') IS NULL CREATE TABLE \"notes\" ( \
             \"id\" bigint NOT NULL PRIMARY KEY IDENTITY(1,1), \"owner\" uniqueidentifier NOT NULL, \
             \"body\" nvarchar(max) NOT NULL, \"title\" nvarchar(200), \"done\" bit NOT NULL DEFAULT 0, \
             \"meta\" nvarchar(max), \"blob\" varbinary(max), \"at\" datetimeoffset NOT NULL, \"score\" float )"
        );
        assert_eq!(
            tsql(&fixtures::notes_index()),
            "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'notes_owner' AND object_id = OBJECT_ID(N'[notes]')) \
             CREATE UNIQUE INDEX \"notes_owner\" ON \"notes\" (\"owner\", \"id\")"
        );
        let drop = Index::drop().name("notes_owner").table(Alias::new("notes")).to_owned();
        assert_eq!(tsql(&drop), r#"DROP INDEX "notes_owner" ON "notes""#);
        assert_eq!(tsql(&fixtures::rename()), "EXEC sp_rename N'a', N'b'");
        assert_eq!(tsql(&fixtures::drop_notes()), r#"DROP TABLE IF EXISTS "notes""#);
    }

    #[test]
    fn sql_text_numbers_placeholders() {
        let q = crate::Sql::new("SELECT body FROM notes WHERE id = ? AND note <> N'?'").bind(7_i64);
        assert_eq!(tsql(&q), "SELECT body FROM notes WHERE id = @P1 AND note <> N'?'");
    }
}
