//! PostgreSQL with pgvector (`pgvector://user@host:port/db?index=docs&dimensions=384`,
//! feature `pgvector`; the other parameters are platform-db's). One table per index,
//! `vectors_{index} (id, embedding vector(N), metadata JSONB, document)`, with an HNSW
//! index for the metric, made at open (with `CREATE EXTENSION IF NOT EXISTS vector`)
//! when missing. Metadata filters are JSONB containment, so `1` and `"1"` differ.
//! Distances are pgvector's, brought to the contract's: cosine `<=>`, L2 `<->` squared,
//! inner product `1 + <#>`.

use platform_core::{Error, Result};
use platform_db::{Db, Sql};
use serde_json::{Map, Value};

use crate::vector::{Capabilities, Filter, Hit, Metric, Record, VectorDriver, VectorQuery};

/// The pgvector backend.
#[derive(Debug)]
pub struct PgVectors {
    db: Db,
    table: String,
    metric: Metric,
}

fn literal(v: &[f32]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
    format!("[{}]", parts.join(","))
}

fn parse_vector(s: &str) -> Result<Vec<f32>> {
    s.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.trim().parse::<f32>().map_err(|e| Error::internal(format!("a stored vector is not one: {e}"))))
        .collect()
}

impl PgVectors {
    /// Index `name` of `dimensions` in `db`, made when missing.
    pub async fn open(db: Db, name: &str, dimensions: usize, metric: Metric) -> Result<Self> {
        let table = format!("vectors_{name}");
        let ops = match metric {
            Metric::Cosine => "vector_cosine_ops",
            Metric::L2 => "vector_l2_ops",
            Metric::InnerProduct => "vector_ip_ops",
        };
        // `IF NOT EXISTS` is not safe against a concurrent creator of the same object
        // (two opens of a fresh database both create the extension): one at a time,
        // under a transaction-scoped advisory lock.
        let statements = [
            "SELECT pg_advisory_xact_lock(hashtext('platform-search schema'))".to_owned(),
            "CREATE EXTENSION IF NOT EXISTS vector".to_owned(),
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, embedding vector({dimensions}) NOT NULL, \
                 metadata JSONB NOT NULL, document TEXT)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} USING hnsw (embedding {ops})"),
        ];
        db.tx(|tx| {
            Box::pin(async move {
                for sql in statements {
                    tx.execute(&Sql::new(sql)).await?;
                }
                Ok(())
            })
        })
        .await?;
        Ok(Self { db, table, metric })
    }

    /// pgvector's distance operator for the metric (what its index orders by).
    fn operator(&self) -> &'static str {
        match self.metric {
            Metric::Cosine => "<=>",
            Metric::L2 => "<->",
            Metric::InnerProduct => "<#>",
        }
    }

    fn distance_expr(&self) -> &'static str {
        match self.metric {
            Metric::Cosine => "(embedding <=> CAST(? AS vector))",
            Metric::L2 => "power(embedding <-> CAST(? AS vector), 2)",
            Metric::InnerProduct => "(1 + (embedding <#> CAST(? AS vector)))",
        }
    }
}

/// The filter as SQL on `metadata`, its values bound in order.
fn condition(f: &Filter, binds: &mut Vec<String>) -> String {
    let contains = |field: &str, value: &Value, binds: &mut Vec<String>| {
        let mut one = Map::new();
        one.insert(field.to_owned(), value.clone());
        binds.push(Value::Object(one).to_string());
        "metadata @> CAST(? AS JSONB)".to_owned()
    };
    match f {
        Filter::Eq(field, value) => contains(field, value, binds),
        Filter::In(field, values) => {
            let any: Vec<String> = values.iter().map(|v| contains(field, v, binds)).collect();
            format!("({})", any.join(" OR "))
        }
        Filter::And(all) => {
            let every: Vec<String> = all.iter().map(|f| condition(f, binds)).collect();
            format!("({})", every.join(" AND "))
        }
    }
}

fn metadata_of(v: Value) -> Result<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(Error::internal(format!("stored metadata is not an object: {other}"))),
    }
}

#[async_trait::async_trait]
impl VectorDriver for PgVectors {
    fn backend(&self) -> &'static str {
        "pgvector"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { exact: false }
    }

    async fn upsert(&self, records: Vec<Record>) -> Result<()> {
        // One statement per 200 records.
        for chunk in records.chunks(200) {
            let rows = vec!["(?, CAST(? AS vector), CAST(? AS JSONB), ?)"; chunk.len()].join(", ");
            let mut sql = Sql::new(format!(
                "INSERT INTO {} (id, embedding, metadata, document) VALUES {rows} ON CONFLICT (id) DO UPDATE SET \
                 embedding = EXCLUDED.embedding, metadata = EXCLUDED.metadata, document = EXCLUDED.document",
                self.table
            ));
            for r in chunk {
                sql = sql
                    .bind(r.id.clone())
                    .bind(literal(&r.vector))
                    .bind(Value::Object(r.metadata.clone()).to_string())
                    .bind(r.document.clone());
            }
            self.db.execute(&sql).await?;
        }
        Ok(())
    }

    async fn query(&self, query: &VectorQuery) -> Result<Vec<Hit>> {
        let mut binds = Vec::new();
        let filter = query.filter.as_ref().map(|f| condition(f, &mut binds));
        let mut text = format!(
            "SELECT id, metadata, document, CAST({} AS DOUBLE PRECISION) AS distance FROM {}",
            self.distance_expr(),
            self.table
        );
        if let Some(f) = &filter {
            text.push_str(&format!(" WHERE {f}"));
        }
        // Ordered by the operator itself, which the HNSW index serves.
        let k = i64::try_from(query.k).unwrap_or(i64::MAX);
        text.push_str(&format!(" ORDER BY embedding {} CAST(? AS vector) LIMIT {k}", self.operator()));
        let vector = literal(&query.vector);
        let mut sql = Sql::new(text).bind(vector.clone());
        for b in binds {
            sql = sql.bind(b);
        }
        let sql = sql.bind(vector);
        // Enough candidates for k, and with a filter, more until k pass (pgvector 0.8's
        // iterative scans), in this transaction only.
        let ef_search = (query.k * 2).max(64);
        let rows = self
            .db
            .tx(move |tx| {
                Box::pin(async move {
                    tx.execute(&Sql::new(format!("SET LOCAL hnsw.ef_search = {ef_search}"))).await?;
                    tx.execute(&Sql::new("SET LOCAL hnsw.iterative_scan = strict_order")).await?;
                    tx.fetch_all(&sql).await
                })
            })
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Hit {
                    id: r.get("id")?,
                    distance: r.get::<f64>("distance")? as f32,
                    metadata: metadata_of(r.get("metadata")?)?,
                    document: r.get("document")?,
                })
            })
            .collect()
    }

    async fn get(&self, ids: &[String]) -> Result<Vec<Record>> {
        let marks = vec!["?"; ids.len()].join(", ");
        let mut sql = Sql::new(format!(
            "SELECT id, CAST(embedding AS TEXT) AS embedding, metadata, document FROM {} WHERE id IN ({marks})",
            self.table
        ));
        for id in ids {
            sql = sql.bind(id.clone());
        }
        let rows = self.db.fetch_all(&sql).await?;
        rows.into_iter()
            .map(|r| {
                Ok(Record {
                    id: r.get("id")?,
                    vector: parse_vector(&r.get::<String>("embedding")?)?,
                    metadata: metadata_of(r.get("metadata")?)?,
                    document: r.get("document")?,
                })
            })
            .collect()
    }

    async fn delete(&self, ids: &[String]) -> Result<()> {
        let marks = vec!["?"; ids.len()].join(", ");
        let mut sql = Sql::new(format!("DELETE FROM {} WHERE id IN ({marks})", self.table));
        for id in ids {
            sql = sql.bind(id.clone());
        }
        self.db.execute(&sql).await.map(|_| ())
    }

    async fn close(&self) {
        self.db.close().await;
    }

    async fn ping(&self) -> Result<String> {
        let version = self.db.server_version().await?;
        let row = self.db.fetch_one(&Sql::new("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).await?;
        Ok(format!("{version}, pgvector {}", row.get::<String>("extversion")?))
    }
}
