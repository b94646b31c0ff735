//! MongoDB (`mongodb://host/db?collection=people&key=id`, feature `mongodb`, the
//! official driver; the URL's other parameters are the driver's, such as
//! `directConnection=true`).
//!
//! A document is stored as `{_id, doc, rev}`: the key in its stable text form (so `7`
//! and `"7"` stay two documents, and a two-part key is one `_id`), the document as a
//! BSON subdocument, the revision beside it. Writes are conditional on the revision
//! read (an insert for a new key, whose duplicate-key error is `AlreadyExists`); another
//! writer in between is a retryable `Conflict`. Atomic lists run in one transaction
//! (a replica set is needed; a write conflict there is a retryable `Conflict`).
//!
//! Queries send their filters to the server (with `$type`, so a comparison stays within
//! its JSON type) and check what comes back with the semantics every backend shares:
//! MongoDB also matches an array holding a matching element, which the contract does
//! not. Order, offset, limit and projection are then applied the shared way.

use futures::TryStreamExt as _;
use mongodb::bson::{self, Bson, Document as BsonDoc, doc};
use platform_core::{Error, ErrorKind, Result};
use serde_json::{Map, Number, Value};

use crate::driver::{self, Checked, Driver, Effect, Kind, Stored};
use crate::types::{Action, AtomicWrites, Capabilities, Document, Key, KeySpec, Op, Outcome, Plan, Query};

const BACKEND: &str = "mongodb";

/// The MongoDB backend.
#[derive(Debug)]
pub struct MongoCollection {
    client: mongodb::Client,
    db: mongodb::Database,
    coll: mongodb::Collection<BsonDoc>,
    spec: KeySpec,
}

fn mongo_error(e: mongodb::error::Error) -> Error {
    use mongodb::error::{ErrorKind as K, WriteFailure};
    let transient = e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR);
    let code = match e.kind.as_ref() {
        K::Command(c) => Some(c.code),
        K::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    };
    let (kind, retryable) = match (e.kind.as_ref(), code) {
        (_, Some(11000)) => (ErrorKind::AlreadyExists, false),
        (_, Some(112 | 251)) => (ErrorKind::Conflict, true),
        _ if transient => (ErrorKind::Conflict, true),
        (_, Some(13)) => (ErrorKind::PermissionDenied, false),
        (_, Some(18)) | (K::Authentication { .. }, _) => (ErrorKind::Unauthenticated, false),
        (K::Io(_) | K::ServerSelection { .. } | K::ConnectionPoolCleared { .. }, _) => (ErrorKind::Unavailable, true),
        (K::InvalidArgument { .. }, _) => (ErrorKind::InvalidInput, false),
        _ => (ErrorKind::Internal, false),
    };
    Error::new(kind, e.to_string()).with_retryable(retryable).with_backend(BACKEND).with_source(e)
}

fn to_bson(v: &Value) -> Bson {
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Bson::Int64(i),
            None => Bson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(to_bson).collect()),
        Value::Object(m) => Bson::Document(to_doc(m)),
    }
}

fn to_doc(m: &Document) -> BsonDoc {
    m.iter().map(|(k, v)| (k.clone(), to_bson(v))).collect()
}

fn from_bson(b: &Bson) -> Result<Value> {
    Ok(match b {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => Value::from(*i),
        Bson::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Bson::String(s) => Value::String(s.clone()),
        Bson::Array(items) => Value::Array(items.iter().map(from_bson).collect::<Result<_>>()?),
        Bson::Document(d) => Value::Object(from_doc(d)?),
        other => return Err(Error::internal(format!("a BSON value this backend never writes: {other}"))),
    })
}

fn from_doc(d: &BsonDoc) -> Result<Map<String, Value>> {
    d.iter().map(|(k, v)| Ok((k.clone(), from_bson(v)?))).collect()
}

fn id_of(key: &Key) -> String {
    match &key.sort {
        Some(s) => format!("{}\u{1f}{}", key.partition.encode(), s.encode()),
        None => key.partition.encode(),
    }
}

fn stored_of(d: &BsonDoc) -> Result<Stored> {
    let doc = match d.get("doc") {
        Some(Bson::Document(doc)) => from_doc(doc)?,
        _ => return Err(Error::internal("a stored document has no body")),
    };
    let revision = d.get_str("rev").map_err(|_| Error::internal("a stored document has no revision"))?.to_owned();
    Ok(Stored { doc, revision })
}

/// A filter's condition on `doc.{path}`, within the filter's JSON type.
fn condition(f: &crate::types::Filter) -> Result<(String, BsonDoc)> {
    let ty = match driver::kind_of(f)? {
        Kind::Number => "number",
        Kind::String => "string",
        Kind::Bool => "bool",
    };
    let op = match f.op {
        Op::Eq => "$eq",
        Op::Lt => "$lt",
        Op::Le => "$lte",
        Op::Gt => "$gt",
        Op::Ge => "$gte",
        Op::In => "$in",
        Op::NotIn => "$nin",
    };
    Ok((format!("doc.{}", f.path), doc! { op: to_bson(&f.value), "$type": ty }))
}

impl MongoCollection {
    /// Collection `name` of the database the connection string names.
    pub async fn open(uri: &str, name: &str, spec: KeySpec) -> Result<Self> {
        let client = mongodb::Client::with_uri_str(uri).await.map_err(|e| mongo_error(e).with_op("open"))?;
        let db = client.default_database().ok_or_else(|| {
            platform_core::config::url_error("docstore", "database", "is required in the path (mongodb://host/db)")
        })?;
        let coll = db.collection::<BsonDoc>(name);
        Ok(Self { client, db, coll, spec })
    }

    async fn read(&self, key: &Key, session: Option<&mut mongodb::ClientSession>) -> Result<Option<Stored>> {
        let find = self.coll.find_one(doc! {"_id": id_of(key)});
        let found = match session {
            Some(s) => find.session(s).await,
            None => find.await,
        };
        found.map_err(mongo_error)?.as_ref().map(stored_of).transpose()
    }

    async fn write(
        &self,
        c: &Checked,
        effect: Effect,
        was: Option<String>,
        session: Option<&mut mongodb::ClientSession>,
    ) -> Result<()> {
        let id = id_of(&c.key);
        let changed = || {
            Error::new(ErrorKind::Conflict, format!("document {} changed meanwhile; try again", c.key))
                .with_retryable(true)
        };
        match (effect, was) {
            (Effect::None, _) | (Effect::Delete, None) => Ok(()),
            (Effect::Write { doc, revision }, None) => {
                let insert = self.coll.insert_one(doc! {"_id": &id, "doc": to_doc(&doc), "rev": revision});
                let done = match session {
                    Some(s) => insert.session(s).await,
                    None => insert.await,
                };
                done.map(|_| ()).map_err(mongo_error).map_err(|e| match (e.kind(), &c.action) {
                    (ErrorKind::AlreadyExists, Action::Create(_)) => {
                        Error::new(ErrorKind::AlreadyExists, format!("document {} exists", c.key))
                    }
                    (ErrorKind::AlreadyExists, _) => changed(),
                    _ => e,
                })
            }
            (Effect::Write { doc, revision }, Some(was)) => {
                let replace = self.coll.replace_one(
                    doc! {"_id": &id, "rev": was},
                    doc! {"_id": &id, "doc": to_doc(&doc), "rev": revision},
                );
                let done = match session {
                    Some(s) => replace.session(s).await,
                    None => replace.await,
                };
                if done.map_err(mongo_error)?.matched_count == 0 { Err(changed()) } else { Ok(()) }
            }
            (Effect::Delete, Some(was)) => {
                let delete = self.coll.delete_one(doc! {"_id": &id, "rev": was});
                let done = match session {
                    Some(s) => delete.session(s).await,
                    None => delete.await,
                };
                if done.map_err(mongo_error)?.deleted_count == 0 { Err(changed()) } else { Ok(()) }
            }
        }
    }

    async fn step(&self, c: &Checked, mut session: Option<&mut mongodb::ClientSession>) -> Result<Outcome> {
        let current = self.read(&c.key, session.as_deref_mut()).await?;
        let (effect, outcome) = driver::apply(c, current.as_ref(), &self.spec)?;
        self.write(c, effect, current.map(|s| s.revision), session).await?;
        Ok(outcome)
    }

    fn filter(query: &Query) -> Result<BsonDoc> {
        let mut all = Vec::new();
        for f in &query.filters {
            let (path, cond) = condition(f)?;
            all.push(Bson::Document(doc! { path: cond }));
        }
        Ok(if all.is_empty() {
            doc! {}
        } else {
            doc! {"$and": all}
        })
    }
}

#[async_trait::async_trait]
impl Driver for MongoCollection {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { atomic_writes: AtomicWrites::Any, any_field_queries: true }
    }

    async fn run(&self, actions: Vec<Checked>) -> Vec<Result<Outcome>> {
        let mut results = Vec::with_capacity(actions.len());
        for c in &actions {
            results.push(self.step(c, None).await);
        }
        results
    }

    async fn run_atomic(&self, actions: Vec<Checked>) -> Result<Vec<Outcome>> {
        let mut session = self.client.start_session().await.map_err(mongo_error)?;
        session.start_transaction().await.map_err(mongo_error)?;
        let mut outcomes = Vec::with_capacity(actions.len());
        for (i, c) in actions.iter().enumerate() {
            match self.step(c, Some(&mut session)).await {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    return Err(e.with_detail("action", i.to_string()));
                }
            }
        }
        session.commit_transaction().await.map_err(mongo_error)?;
        Ok(outcomes)
    }

    async fn query(&self, query: &Query) -> Result<Vec<Document>> {
        let found: Vec<BsonDoc> = self
            .coll
            .find(Self::filter(query)?)
            .await
            .map_err(mongo_error)?
            .try_collect()
            .await
            .map_err(mongo_error)?;
        let mut docs = Vec::with_capacity(found.len());
        for d in &found {
            let s = stored_of(d)?;
            let doc = driver::with_revision(s.doc, &s.revision, &self.spec);
            if query.filters.iter().all(|f| driver::matches(f, &doc)) {
                docs.push(doc);
            }
        }
        if let Some((path, direction)) = &query.order_by {
            docs.sort_by(|a, b| driver::order(a, b, path, *direction));
        }
        let docs = docs.into_iter().skip(query.offset.unwrap_or(0)).take(query.limit.unwrap_or(usize::MAX));
        Ok(docs.map(|d| driver::project(d, &query.fields, &self.spec)).collect())
    }

    async fn plan(&self, query: &Query) -> Result<Plan> {
        let explain = doc! {
            "explain": {"find": self.coll.name(), "filter": Self::filter(query)?},
            "verbosity": "queryPlanner",
        };
        let answer = self.db.run_command(explain).await.map_err(mongo_error)?;
        let detail = bson::Bson::Document(answer.get_document("queryPlanner").cloned().unwrap_or_default())
            .into_relaxed_extjson()
            .to_string();
        Ok(Plan { scan: detail.contains("COLLSCAN"), detail })
    }

    async fn close(&self) {
        self.client.clone().shutdown().await;
    }

    async fn ping(&self) -> Result<String> {
        let info = self.db.run_command(doc! {"buildInfo": 1}).await.map_err(mongo_error)?;
        Ok(format!("MongoDB {}", info.get_str("version").unwrap_or("?")))
    }
}
