//! Cassandra and ScyllaDB (`cassandra://user:pass@host:9042/keyspace?collection=people&key=id`,
//! feature `cassandra`, the scylla driver).
//!
//! A collection is a table `(pk text, sk text, doc text, rev text, PRIMARY KEY ((pk), sk))`:
//! the key parts in their stable text form (`7` and `"7"` stay two documents; a one-part
//! key's `sk` is `-`), the document as JSON text, the revision beside it. Every write is
//! a lightweight transaction conditioned on the revision read (`IF NOT EXISTS`, `IF rev
//! = ?`): one that another writer beat is a retryable `Conflict`. Atomic lists are
//! simulated in order on what was read, then written as one conditional `BATCH`, which
//! Cassandra takes within **one partition** only: a list over several partition keys is
//! `Unsupported`.
//!
//! Queries run on one partition (`SELECT … WHERE pk = ?`) when a filter says `key =
//! value`; otherwise only with `allow_scans=true` (a paged full read, never `ALLOW
//! FILTERING` behind your back), else `Unsupported`. The other filters, the order,
//! offset, limit and projection are applied to what was read, with the semantics every
//! backend shares.
//!
//! Parameters: `collection` (the table), `hosts` (more contact points, `h2:9042,h3`),
//! `consistency` (`local_quorum`, the default, `quorum`, `one`, `all`, …),
//! `serial_consistency` (`serial`, the default, or `local_serial`), `allow_scans`,
//! `create_table` (make the table when it is missing), `timeout` (10 s).

use std::time::Duration;

use futures::TryStreamExt;
use platform_core::config::UrlParams;
use platform_core::{Error, ErrorKind, Result};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};

use crate::driver::{self, Checked, Driver, Pending, Stored};
use crate::types::{Action, AtomicWrites, Capabilities, Document, Key, KeySpec, Outcome, Plan, Query};

const BACKEND: &str = "cassandra";
/// The sort part of a one-part key (a stable text form is never this).
const NO_SORT: &str = "-";

/// The Cassandra backend.
pub struct CassandraCollection {
    session: Session,
    table: String,
    spec: KeySpec,
    allow_scans: bool,
    read: PreparedStatement,
    read_partition: PreparedStatement,
    read_all: PreparedStatement,
    insert: PreparedStatement,
    update: PreparedStatement,
    delete: PreparedStatement,
}

impl std::fmt::Debug for CassandraCollection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraCollection").field("table", &self.table).finish_non_exhaustive()
    }
}

fn failed(kind: ErrorKind, retryable: bool, message: String) -> Error {
    Error::new(kind, message).with_backend(BACKEND).with_retryable(retryable)
}

/// Maps the driver's errors onto the portable kinds by the server's error code.
fn map_err(e: &(dyn std::error::Error + 'static)) -> Error {
    use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
    let text = e.to_string();
    let db = |db: &DbError| match db {
        DbError::SyntaxError | DbError::Invalid | DbError::ConfigError => (ErrorKind::InvalidInput, false),
        DbError::Unauthorized => (ErrorKind::PermissionDenied, false),
        DbError::AuthenticationError => (ErrorKind::Unauthenticated, false),
        DbError::AlreadyExists { .. } => (ErrorKind::AlreadyExists, false),
        DbError::Unavailable { .. } | DbError::Overloaded | DbError::IsBootstrapping => (ErrorKind::Unavailable, true),
        // A conditional write that timed out may have been applied: the caller reads
        // before it retries, as after any retryable error.
        DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => (ErrorKind::Timeout, true),
        DbError::ReadFailure { .. } | DbError::WriteFailure { .. } => (ErrorKind::Unavailable, true),
        _ => (ErrorKind::Internal, false),
    };
    let (kind, retryable) = if let Some(ex) = e.downcast_ref::<ExecutionError>() {
        match ex {
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(d, _)) => db(d),
            ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(_))
            | ExecutionError::ConnectionPoolError(_)
            | ExecutionError::EmptyPlan => (ErrorKind::Unavailable, true),
            ExecutionError::RequestTimeout(_) => (ErrorKind::Timeout, true),
            ExecutionError::BadQuery(_) => (ErrorKind::InvalidInput, false),
            _ => (ErrorKind::Internal, false),
        }
    } else if let Some(p) = e.downcast_ref::<scylla::errors::PrepareError>() {
        match p {
            scylla::errors::PrepareError::AllAttemptsFailed { first_attempt: RequestAttemptError::DbError(d, _) } => {
                db(d)
            }
            scylla::errors::PrepareError::ConnectionPoolError(_) => (ErrorKind::Unavailable, true),
            _ => (ErrorKind::Internal, false),
        }
    } else if e.downcast_ref::<scylla::errors::NewSessionError>().is_some() {
        (ErrorKind::Unavailable, true)
    } else {
        (ErrorKind::Internal, false)
    };
    failed(kind, retryable, text)
}

fn consistency(name: &str) -> Result<Consistency> {
    Ok(match name {
        "any" => Consistency::Any,
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        other => {
            return Err(platform_core::config::url_error(
                "docstore",
                "consistency",
                &format!("{other:?} is not one, two, three, quorum, all, local_quorum, each_quorum, local_one or any"),
            ));
        }
    })
}

/// A plain identifier (letters, digits, `_`), as CQL takes it unquoted.
fn check_identifier(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(platform_core::config::url_error(
            "docstore",
            what,
            &format!("{name:?} is not a plain identifier (a letter, then letters, digits or _; at most 48)"),
        ))
    }
}

fn sort_text(key: &Key) -> String {
    key.sort.as_ref().map_or_else(|| NO_SORT.to_owned(), crate::types::KeyPart::encode)
}

/// The CQL of a collection: what the backend prepares.
pub(crate) fn statements(table: &str) -> [String; 7] {
    [
        format!("CREATE TABLE IF NOT EXISTS {table} (pk text, sk text, doc text, rev text, PRIMARY KEY ((pk), sk))"),
        format!("SELECT doc, rev FROM {table} WHERE pk = ? AND sk = ?"),
        format!("SELECT doc, rev FROM {table} WHERE pk = ?"),
        format!("SELECT doc, rev FROM {table}"),
        format!("INSERT INTO {table} (pk, sk, doc, rev) VALUES (?, ?, ?, ?) IF NOT EXISTS"),
        format!("UPDATE {table} SET doc = ?, rev = ? WHERE pk = ? AND sk = ? IF rev = ?"),
        format!("DELETE FROM {table} WHERE pk = ? AND sk = ? IF rev = ?"),
    ]
}

impl CassandraCollection {
    /// From `cassandra://…/keyspace` with `collection` and the other parameters.
    pub async fn open(url: &url::Url, collection: &str, spec: KeySpec, params: &mut UrlParams) -> Result<Self> {
        let keyspace = url.path().trim_start_matches('/').to_owned();
        check_identifier("keyspace", &keyspace)?;
        check_identifier("collection", collection)?;
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
            platform_core::config::url_error("docstore", "host", "is missing (cassandra://host:9042/keyspace)")
        })?;
        let mut hosts = vec![format!("{host}:{}", url.port().unwrap_or(9042))];
        if let Some(more) = params.take("hosts") {
            hosts.extend(
                more.split(',')
                    .filter(|h| !h.is_empty())
                    .map(|h| if h.contains(':') { h.to_owned() } else { format!("{h}:9042") }),
            );
        }
        let level = consistency(&params.take("consistency").unwrap_or_else(|| "local_quorum".to_owned()))?;
        let serial = match params.take("serial_consistency").as_deref() {
            None | Some("serial") => SerialConsistency::Serial,
            Some("local_serial") => SerialConsistency::LocalSerial,
            Some(other) => {
                return Err(platform_core::config::url_error(
                    "docstore",
                    "serial_consistency",
                    &format!("{other:?} is not serial or local_serial"),
                ));
            }
        };
        let allow_scans = params.take_bool("allow_scans")?.unwrap_or(false);
        let create_table = params.take_bool("create_table")?.unwrap_or(false);
        let timeout = params.take_duration("timeout")?.unwrap_or(Duration::from_secs(10));
        params.finish(BACKEND)?;
        let mut builder = SessionBuilder::new()
            .known_nodes(&hosts)
            .use_keyspace(&keyspace, false)
            .fetch_schema_metadata(false)
            .connection_timeout(timeout);
        if !url.username().is_empty() {
            let user = platform_core::config::url_decode(url.username());
            builder = builder.user(user, platform_core::config::url_decode(url.password().unwrap_or_default()));
        }
        let session = builder.build().await.map_err(|e| map_err(&e).with_op("open"))?;
        let [create, read, read_partition, read_all, insert, update, delete] = statements(collection);
        if create_table {
            session.query_unpaged(create, ()).await.map_err(|e| map_err(&e).with_op("open"))?;
        }
        let prepare = |cql: String| {
            let session = &session;
            async move {
                let mut p = session.prepare(cql).await.map_err(|e| map_err(&e).with_op("open"))?;
                p.set_consistency(level);
                p.set_serial_consistency(Some(serial));
                p.set_request_timeout(Some(timeout));
                Ok::<_, Error>(p)
            }
        };
        Ok(Self {
            read: prepare(read).await?,
            read_partition: prepare(read_partition).await?,
            read_all: prepare(read_all).await?,
            insert: prepare(insert).await?,
            update: prepare(update).await?,
            delete: prepare(delete).await?,
            session,
            table: collection.to_owned(),
            spec,
            allow_scans,
        })
    }

    fn stored(&self, doc: &str, rev: String) -> Result<Stored> {
        match serde_json::from_str(doc) {
            Ok(serde_json::Value::Object(doc)) => Ok(Stored { doc, revision: rev }),
            _ => Err(failed(
                ErrorKind::Internal,
                false,
                format!("a stored document of {} is not a JSON object", self.table),
            )),
        }
    }

    async fn read(&self, key: &Key) -> Result<Option<Stored>> {
        let result = self
            .session
            .execute_unpaged(&self.read, (key.partition.encode(), sort_text(key)))
            .await
            .map_err(|e| map_err(&e))?;
        let rows = result.into_rows_result().map_err(|e| map_err(&e))?;
        let mut it = rows.rows::<(String, String)>().map_err(|e| map_err(&e))?;
        match it.next() {
            Some(row) => {
                let (doc, rev) = row.map_err(|e| map_err(&e))?;
                self.stored(&doc, rev).map(Some)
            }
            None => Ok(None),
        }
    }

    /// The statement and values that make `w` happen.
    fn statement(&self, w: &Pending) -> Option<(&PreparedStatement, Vec<CqlValue>)> {
        let (pk, sk) = (CqlValue::Text(w.key.partition.encode()), CqlValue::Text(sort_text(&w.key)));
        let text = |s: &str| CqlValue::Text(s.to_owned());
        match (&w.state, &w.was) {
            (Some((doc, rev)), None) => {
                Some((&self.insert, vec![pk, sk, text(&serde_json::Value::Object(doc.clone()).to_string()), text(rev)]))
            }
            (Some((doc, rev)), Some(was)) => Some((
                &self.update,
                vec![text(&serde_json::Value::Object(doc.clone()).to_string()), text(rev), pk, sk, text(was)],
            )),
            (None, Some(was)) => Some((&self.delete, vec![pk, sk, text(was)])),
            (None, None) => None,
        }
    }

    /// Whether a conditional write or batch was applied (`[applied]`, its first column).
    fn applied(result: scylla::response::query_result::QueryResult) -> Result<bool> {
        let rows = result.into_rows_result().map_err(|e| map_err(&e))?;
        let first = rows.rows::<Row>().map_err(|e| map_err(&e))?.next();
        match first {
            Some(Ok(row)) => match row.columns.first() {
                Some(Some(CqlValue::Boolean(b))) => Ok(*b),
                _ => Err(failed(ErrorKind::Internal, false, "a conditional write answered no [applied]".to_owned())),
            },
            Some(Err(e)) => Err(map_err(&e)),
            None => Err(failed(ErrorKind::Internal, false, "a conditional write answered no row".to_owned())),
        }
    }

    fn lost(w: &Pending, create: bool) -> Error {
        if create && w.was.is_none() {
            failed(ErrorKind::AlreadyExists, false, format!("document {} exists", w.key))
        } else {
            failed(ErrorKind::Conflict, true, format!("document {} changed meanwhile; try again", w.key))
        }
    }

    async fn write(&self, w: &Pending, create: bool) -> Result<()> {
        let Some((statement, values)) = self.statement(w) else { return Ok(()) };
        let result = self.session.execute_unpaged(statement, values).await.map_err(|e| map_err(&e))?;
        if Self::applied(result)? { Ok(()) } else { Err(Self::lost(w, create)) }
    }

    async fn step(&self, c: &Checked) -> Result<Outcome> {
        let current = self.read(&c.key).await?;
        let (outcome, write) = driver::pending(c, current, &self.spec)?;
        if let Some(w) = write {
            self.write(&w, matches!(c.action, Action::Create(_))).await?;
        }
        Ok(outcome)
    }

    /// Every document of one partition, or of the table.
    async fn read_many(&self, partition: Option<String>) -> Result<Vec<Document>> {
        let pager = match partition {
            Some(pk) => self.session.execute_iter(self.read_partition.clone(), (pk,)).await,
            None => self.session.execute_iter(self.read_all.clone(), ()).await,
        }
        .map_err(|e| map_err(&e))?;
        let mut stream = pager.rows_stream::<(String, String)>().map_err(|e| map_err(&e))?;
        let mut docs = Vec::new();
        while let Some((doc, rev)) = stream.try_next().await.map_err(|e| map_err(&e))? {
            let s = self.stored(&doc, rev)?;
            docs.push(driver::with_revision(s.doc, &s.revision, &self.spec));
        }
        Ok(docs)
    }
}

#[async_trait::async_trait]
impl Driver for CassandraCollection {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { atomic_writes: AtomicWrites::SinglePartition, any_field_queries: self.allow_scans }
    }

    async fn run(&self, actions: Vec<Checked>) -> Vec<Result<Outcome>> {
        let mut results = Vec::with_capacity(actions.len());
        for c in &actions {
            results.push(self.step(c).await);
        }
        results
    }

    async fn run_atomic(&self, actions: Vec<Checked>) -> Result<Vec<Outcome>> {
        if let Some(first) = actions.first()
            && actions.iter().any(|c| c.key.partition != first.key.partition)
        {
            return Err(failed(
                ErrorKind::Unsupported,
                false,
                "Cassandra writes a conditional batch within one partition only: these actions span several".to_owned(),
            ));
        }
        let (outcomes, writes) =
            driver::simulate(&actions, &self.spec, |key| async move { self.read(&key).await }).await?;
        let mut batch = Batch::new(BatchType::Logged);
        let mut values = Vec::new();
        for w in &writes {
            if let Some((statement, v)) = self.statement(w) {
                batch.append_statement(statement.clone());
                values.push(v);
            }
        }
        if values.is_empty() {
            return Ok(outcomes);
        }
        if let Some(first) = writes.first() {
            batch.set_consistency(self.insert.get_consistency().unwrap_or(Consistency::LocalQuorum));
            batch.set_serial_consistency(self.insert.get_serial_consistency());
            let result = self.session.batch(&batch, values).await.map_err(|e| map_err(&e))?;
            if !Self::applied(result)? {
                return Err(failed(
                    ErrorKind::Conflict,
                    true,
                    format!(
                        "a document of partition {} changed meanwhile; nothing was written, try again",
                        first.key.partition.encode()
                    ),
                ));
            }
        }
        Ok(outcomes)
    }

    async fn query(&self, query: &Query) -> Result<Vec<Document>> {
        let partition = driver::partition_or_refuse(query, &self.spec, self.allow_scans)?;
        Ok(driver::answer(self.read_many(partition).await?, query, &self.spec))
    }

    async fn plan(&self, query: &Query) -> Result<Plan> {
        Ok(match driver::partition_of(query, &self.spec) {
            Some(_) => Plan {
                scan: false,
                detail: format!(
                    "SELECT on partition {}.pk; other filters, order and paging applied to the partition read",
                    self.table
                ),
            },
            None if self.allow_scans => Plan {
                scan: true,
                detail: format!("paged read of all of {} (allow_scans=true); the rest applied to it", self.table),
            },
            None => {
                Plan { scan: true, detail: "refused: it would read the whole table (allow_scans=false)".to_owned() }
            }
        })
    }

    async fn close(&self) {}

    async fn ping(&self) -> Result<String> {
        let result = self
            .session
            .query_unpaged("SELECT release_version FROM system.local WHERE key = 'local'", ())
            .await
            .map_err(|e| map_err(&e))?;
        let rows = result.into_rows_result().map_err(|e| map_err(&e))?;
        let version = rows
            .rows::<(String,)>()
            .map_err(|e| map_err(&e))?
            .next()
            .transpose()
            .map_err(|e| map_err(&e))?
            .map_or_else(String::new, |(v,)| v);
        Ok(format!("Cassandra {version}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cql_is_conditional_and_confined_to_a_partition() {
        let [create, read, partition, all, insert, update, delete] = statements("people");
        assert_eq!(
            create,
            "CREATE TABLE IF NOT EXISTS people (pk text, sk text, doc text, rev text, PRIMARY KEY ((pk), sk))"
        );
        assert_eq!(read, "SELECT doc, rev FROM people WHERE pk = ? AND sk = ?");
        assert_eq!(partition, "SELECT doc, rev FROM people WHERE pk = ?");
        assert_eq!(all, "SELECT doc, rev FROM people");
        assert_eq!(insert, "INSERT INTO people (pk, sk, doc, rev) VALUES (?, ?, ?, ?) IF NOT EXISTS");
        assert_eq!(update, "UPDATE people SET doc = ?, rev = ? WHERE pk = ? AND sk = ? IF rev = ?");
        assert_eq!(delete, "DELETE FROM people WHERE pk = ? AND sk = ? IF rev = ?");
        assert!(check_identifier("collection", "people_2").is_ok());
        assert!(check_identifier("collection", "people; DROP").is_err());
        assert!(consistency("local_quorum").is_ok() && consistency("most").is_err());
    }
}
