//! Collections in SQL through platform-db: SQLite (JSON text, `sqlite://`) and
//! PostgreSQL (JSONB, `postgres://`). One table per collection,
//! `docstore_{collection} (pk, sk, doc, rev)`, made at open when missing.
//!
//! Writes are optimistic: the driver reads the stored revision, decides with
//! [`driver::apply`], and writes only where the row still has that revision (a row
//! changed in between is a retryable `Conflict`). `run_atomic` does the same inside one
//! transaction. Queries become SQL on the JSON: each filter checks the field's JSON type
//! first, strings compare byte by byte (`COLLATE "C"` on PostgreSQL), numbers as numbers.

use platform_core::{Error, ErrorKind, Result};
use platform_db::{Db, Dialect, Sql, Tx};
use serde_json::Value;

use crate::driver::{self, Checked, Driver, Effect, Kind, Stored};
use crate::types::{
    Action, AtomicWrites, Capabilities, Direction, Document, FieldPath, Filter, Key, KeySpec, Op, Outcome, Plan, Query,
};

/// The SQL backend (SQLite or PostgreSQL).
#[derive(Debug)]
pub struct SqlCollection {
    db: Db,
    table: String,
    spec: KeySpec,
}

/// Where statements run: the pool, or one transaction.
enum Conn<'a> {
    Db(&'a Db),
    Tx(&'a mut Tx),
}

impl Conn<'_> {
    async fn fetch_optional(&mut self, sql: &Sql) -> Result<Option<platform_db::Row>> {
        match self {
            Self::Db(db) => db.fetch_optional(sql).await,
            Self::Tx(tx) => tx.fetch_optional(sql).await,
        }
    }

    async fn execute(&mut self, sql: &Sql) -> Result<u64> {
        match self {
            Self::Db(db) => db.execute(sql).await,
            Self::Tx(tx) => tx.execute(sql).await,
        }
    }
}

fn sort_of(key: &Key) -> String {
    key.sort.as_ref().map(crate::types::KeyPart::encode).unwrap_or_default()
}

impl SqlCollection {
    /// Collection `name` in `db` (its table made when missing), keys `spec`.
    pub async fn open(db: Db, name: &str, spec: KeySpec) -> Result<Self> {
        let table = format!("docstore_{name}");
        let doc_type = if db.dialect() == Dialect::Postgres { "JSONB" } else { "TEXT" };
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} (pk VARCHAR(600) NOT NULL, sk VARCHAR(600) NOT NULL, \
             doc {doc_type} NOT NULL, rev VARCHAR(64) NOT NULL, PRIMARY KEY (pk, sk))"
        );
        db.execute(&Sql::new(create)).await?;
        Ok(Self { db, table, spec })
    }

    fn postgres(&self) -> bool {
        self.db.dialect() == Dialect::Postgres
    }

    async fn read(&self, conn: &mut Conn<'_>, key: &Key) -> Result<Option<Stored>> {
        let sql = Sql::new(format!("SELECT doc, rev FROM {} WHERE pk = ? AND sk = ?", self.table))
            .bind(key.partition.encode())
            .bind(sort_of(key));
        let Some(row) = conn.fetch_optional(&sql).await? else { return Ok(None) };
        let doc = match row.get::<Value>("doc")? {
            Value::Object(doc) => doc,
            other => return Err(Error::internal(format!("a stored document is not an object: {other}"))),
        };
        Ok(Some(Stored { doc, revision: row.get("rev")? }))
    }

    fn doc_param(&self) -> &'static str {
        if self.postgres() { "CAST(? AS JSONB)" } else { "?" }
    }

    async fn step(&self, conn: &mut Conn<'_>, c: &Checked) -> Result<Outcome> {
        let current = self.read(conn, &c.key).await?;
        let (effect, outcome) = driver::apply(c, current.as_ref(), &self.spec)?;
        let (pk, sk) = (c.key.partition.encode(), sort_of(&c.key));
        let changed = || {
            Error::new(ErrorKind::Conflict, format!("document {} changed meanwhile; try again", c.key))
                .with_retryable(true)
        };
        match (effect, current) {
            (Effect::None, _) => {}
            (Effect::Write { doc, revision }, None) => {
                let sql = Sql::new(format!(
                    "INSERT INTO {} (pk, sk, doc, rev) VALUES (?, ?, {}, ?)",
                    self.table,
                    self.doc_param()
                ))
                .bind(pk)
                .bind(sk)
                .bind(Value::Object(doc).to_string())
                .bind(revision);
                conn.execute(&sql).await.map_err(|e| match (e.kind(), &c.action) {
                    (ErrorKind::AlreadyExists, Action::Create(_)) => {
                        Error::new(ErrorKind::AlreadyExists, format!("document {} exists", c.key))
                    }
                    (ErrorKind::AlreadyExists, _) => changed(),
                    _ => e,
                })?;
            }
            (Effect::Write { doc, revision }, Some(was)) => {
                let sql = Sql::new(format!(
                    "UPDATE {} SET doc = {}, rev = ? WHERE pk = ? AND sk = ? AND rev = ?",
                    self.table,
                    self.doc_param()
                ))
                .bind(Value::Object(doc).to_string())
                .bind(revision)
                .bind(pk)
                .bind(sk)
                .bind(was.revision);
                if conn.execute(&sql).await? == 0 {
                    return Err(changed());
                }
            }
            (Effect::Delete, Some(was)) => {
                let sql = Sql::new(format!("DELETE FROM {} WHERE pk = ? AND sk = ? AND rev = ?", self.table))
                    .bind(pk)
                    .bind(sk)
                    .bind(was.revision);
                if conn.execute(&sql).await? == 0 {
                    return Err(changed());
                }
            }
            (Effect::Delete, None) => {}
        }
        Ok(outcome)
    }

    /// The JSON type of the value at `path`, and the value (as text on PostgreSQL), as
    /// SQL expressions. Field paths are letters, digits and `_` only: safe to inline.
    fn exprs(&self, path: &FieldPath) -> (String, String) {
        if self.postgres() {
            let p = format!("'{{{}}}'", path.segments().join(","));
            (format!("jsonb_typeof(doc #> {p})"), format!("(doc #>> {p})"))
        } else {
            let p = format!("'$.{}'", path.segments().join("."));
            (format!("json_type(doc, {p})"), format!("json_extract(doc, {p})"))
        }
    }

    fn condition(&self, f: &Filter, binds: &mut Vec<Value>) -> Result<String> {
        let kind = driver::kind_of(f)?;
        let (ty, text) = self.exprs(&f.path);
        let pg = self.postgres();
        let guard = match (kind, pg) {
            (Kind::Number, true) => format!("{ty} = 'number'"),
            (Kind::Number, false) => format!("{ty} IN ('integer', 'real')"),
            (Kind::String, true) => format!("{ty} = 'string'"),
            (Kind::String, false) => format!("{ty} = 'text'"),
            (Kind::Bool, true) => format!("{ty} = 'boolean'"),
            (Kind::Bool, false) => format!("{ty} IN ('true', 'false')"),
        };
        // The field as the kind compares it, and one bound value as the same.
        let (lhs, param) = match (kind, pg) {
            // In a CASE: a cast in a plain AND could run before the type check.
            (Kind::Number, true) => {
                (format!("CASE WHEN {ty} = 'number' THEN CAST({text} AS NUMERIC) END"), "CAST(? AS NUMERIC)")
            }
            (Kind::String, true) => (format!("{text} COLLATE \"C\""), "?"),
            (Kind::Bool, true) => (text, "?"),
            (Kind::Bool, false) => (ty, "?"),
            (_, false) => (text, "?"),
        };
        let mut bind = |v: &Value| -> &'static str {
            binds.push(match (kind, v) {
                (Kind::Bool, Value::Bool(b)) => Value::from(b.to_string()),
                _ => v.clone(),
            });
            param
        };
        let cond = match f.op {
            Op::In | Op::NotIn => {
                let items = f.value.as_array().map_or(&[][..], Vec::as_slice);
                let params: Vec<&str> = items.iter().map(&mut bind).collect();
                let not = if f.op == Op::NotIn { "NOT " } else { "" };
                format!("{lhs} {not}IN ({})", params.join(", "))
            }
            op => format!("{lhs} {} {}", op.symbol(), bind(&f.value)),
        };
        Ok(format!("({guard} AND {cond})"))
    }

    fn select(&self, query: &Query) -> Result<Sql> {
        let mut binds = Vec::new();
        let mut sql = format!("SELECT doc, rev FROM {}", self.table);
        let conditions = query.filters.iter().map(|f| self.condition(f, &mut binds)).collect::<Result<Vec<_>>>()?;
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        match &query.order_by {
            Some((path, direction)) => {
                let (dir, nulls) = match direction {
                    Direction::Ascending => ("ASC", "NULLS FIRST"),
                    Direction::Descending => ("DESC", "NULLS LAST"),
                };
                let (ty, text) = self.exprs(path);
                if self.postgres() {
                    sql.push_str(&format!(
                        " ORDER BY CASE WHEN {ty} = 'number' THEN CAST({text} AS NUMERIC) END {dir} {nulls}, \
                         {text} COLLATE \"C\" {dir} {nulls}, pk, sk"
                    ));
                } else {
                    sql.push_str(&format!(" ORDER BY {text} {dir} {nulls}, pk, sk"));
                }
            }
            None => sql.push_str(" ORDER BY pk, sk"),
        }
        let limit = query.limit.map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let offset = query.offset.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX));
        sql.push_str(&format!(" LIMIT {limit} OFFSET {offset}"));
        let mut stmt = Sql::new(sql);
        for b in binds {
            stmt = match b {
                Value::Number(n) => match n.as_i64() {
                    Some(i) => stmt.bind(i),
                    None => stmt.bind(n.as_f64().unwrap_or(f64::NAN)),
                },
                Value::String(s) => stmt.bind(s),
                other => stmt.bind(other.to_string()),
            };
        }
        Ok(stmt)
    }
}

#[async_trait::async_trait]
impl Driver for SqlCollection {
    fn backend(&self) -> &'static str {
        if self.postgres() { "postgres" } else { "sqlite" }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { atomic_writes: AtomicWrites::Any, any_field_queries: true }
    }

    async fn run(&self, actions: Vec<Checked>) -> Vec<Result<Outcome>> {
        let mut results = Vec::with_capacity(actions.len());
        for c in &actions {
            results.push(self.step(&mut Conn::Db(&self.db), c).await);
        }
        results
    }

    async fn run_atomic(&self, actions: Vec<Checked>) -> Result<Vec<Outcome>> {
        let mut tx = self.db.begin().await?;
        let mut outcomes = Vec::with_capacity(actions.len());
        for (i, c) in actions.iter().enumerate() {
            match self.step(&mut Conn::Tx(&mut tx), c).await {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    tx.rollback().await?;
                    return Err(e.with_detail("action", i.to_string()));
                }
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn query(&self, query: &Query) -> Result<Vec<Document>> {
        let rows = self.db.fetch_all(&self.select(query)?).await?;
        rows.into_iter()
            .map(|row| {
                let Value::Object(doc) = row.get::<Value>("doc")? else {
                    return Err(Error::internal("a stored document is not an object"));
                };
                let doc = driver::with_revision(doc, &row.get::<String>("rev")?, &self.spec);
                Ok(driver::project(doc, &query.fields, &self.spec))
            })
            .collect()
    }

    async fn plan(&self, query: &Query) -> Result<Plan> {
        let select = self.select(query)?;
        let (explain, column) =
            if self.postgres() { ("EXPLAIN", "QUERY PLAN") } else { ("EXPLAIN QUERY PLAN", "detail") };
        let stmt = ExplainOf { prefix: explain, inner: select };
        let rows = self.db.fetch_all(&stmt).await?;
        let detail = rows.iter().map(|r| r.get::<String>(column)).collect::<Result<Vec<_>>>()?.join("\n");
        let scan = detail.contains("Seq Scan") || detail.contains("SCAN ");
        Ok(Plan { scan, detail })
    }

    async fn close(&self) {
        self.db.close().await;
    }

    async fn ping(&self) -> Result<String> {
        self.db.server_version().await
    }
}

/// `EXPLAIN …` of a statement, with its binds.
struct ExplainOf {
    prefix: &'static str,
    inner: Sql,
}

impl platform_db::Statement for ExplainOf {
    fn render(&self, dialect: Dialect) -> (String, platform_db::sea_query::Values) {
        let (text, values) = self.inner.render(dialect);
        (format!("{} {text}", self.prefix), values)
    }
}

/// Checks a collection name: it becomes part of a table name.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "collection {name:?} must be 1 to 48 lowercase letters, digits and _, not starting with a digit"
        ))
        .with_detail("collection", "not a table name part"))
    }
}
