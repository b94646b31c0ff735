//! The [`Collection`] trait, its conveniences ([`CollectionExt`]), and the handle that
//! does the common work for every backend ([`CollectionHandle`]).

use std::sync::atomic::{AtomicBool, Ordering};

use platform_core::{Error, ErrorKind, Result};
use tracing::Instrument as _;

use crate::driver::{self, Checked, Driver};
use crate::types::{Action, AtomicWrites, Capabilities, Document, FieldPath, KeySpec, Mod, Outcome, Plan, Query};

/// A collection of documents.
///
/// # Contract
///
/// - Every document has a key: its partition key field, and its sort key field when the
///   collection has one (strings or integers). Every write gives it a new revision, kept
///   in its revision field (`_rev` unless the URL names another).
/// - [`Action::Create`] fails with `AlreadyExists` on a taken key and makes up a missing
///   one-part key; [`Action::Put`] writes regardless; [`Action::Replace`] and
///   [`Action::Update`] need the document (`NotFound`). A write or delete that carries a
///   revision happens only over that revision: `Conflict` otherwise. [`Action::Delete`]
///   of nothing is no error. [`Action::Get`] returns the document with its revision, or
///   only the fields asked (key and revision always).
/// - [`run`](Collection::run) runs a list of actions, one result each at its index; a
///   failure stops nothing else. Actions on one key happen in the list's order.
/// - [`run_atomic`](Collection::run_atomic) applies every write or none, as far as
///   [`Capabilities::atomic_writes`] says; otherwise `Unsupported`.
/// - [`query`](Collection::query): filters on dotted paths (`= < <= > >= in not-in`,
///   each matching only values of the filter value's JSON type), one order, offset,
///   limit, projection. A backend that cannot run a query without a full scan it was not
///   allowed says `Unsupported`; [`plan`](Collection::plan) says how it would run one.
/// - After [`close`](Collection::close), every call is `Unavailable`.
/// - Errors carry the backend and the operation.
/// - It is a [`HealthCheck`](platform_core::HealthCheck) (`docstore:{backend}`): a real
///   round trip that names the server's version, for `/up`.
#[async_trait::async_trait]
pub trait Collection: platform_core::HealthCheck + Send + Sync + std::fmt::Debug {
    /// The collection's name.
    fn collection_name(&self) -> &str;
    /// Its key and revision fields.
    fn key_spec(&self) -> &KeySpec;
    /// What its backend can do.
    fn capabilities(&self) -> Capabilities;
    /// Runs `actions`; one result per action, at its index.
    async fn run(&self, actions: Vec<Action>) -> Vec<Result<Outcome>>;
    /// Runs `actions` all or nothing; the error names the index of the action that failed.
    async fn run_atomic(&self, actions: Vec<Action>) -> Result<Vec<Outcome>>;
    /// The documents `query` selects.
    async fn query(&self, query: &Query) -> Result<Vec<Document>>;
    /// How the backend would run `query`.
    async fn plan(&self, query: &Query) -> Result<Plan>;
    /// Releases the backend's connections; later calls are `Unavailable`.
    async fn close(&self);
}

/// One action at a time, and typed documents.
#[async_trait::async_trait]
pub trait CollectionExt: Collection {
    /// [`Action::Create`]: the key (made up when missing) and revision.
    async fn create(&self, doc: Document) -> Result<Outcome> {
        one(self.run(vec![Action::Create(doc)]).await)
    }

    /// [`Action::Put`].
    async fn put(&self, doc: Document) -> Result<Outcome> {
        one(self.run(vec![Action::Put(doc)]).await)
    }

    /// [`Action::Replace`].
    async fn replace(&self, doc: Document) -> Result<Outcome> {
        one(self.run(vec![Action::Replace(doc)]).await)
    }

    /// [`Action::Get`] of the whole document.
    async fn get(&self, key: Document) -> Result<Document> {
        self.get_fields(key, &[]).await
    }

    /// [`Action::Get`] of some fields (dotted paths), with the key and revision.
    async fn get_fields(&self, key: Document, fields: &[&str]) -> Result<Document> {
        let fields = fields.iter().map(|f| FieldPath::parse(f)).collect::<Result<Vec<_>>>()?;
        match one(self.run(vec![Action::Get { key, fields }]).await)? {
            Outcome::Got(doc) => Ok(doc),
            other => Err(Error::internal(format!("a get answered {other:?}"))),
        }
    }

    /// [`Action::Get`] as `T`.
    async fn get_as<T: serde::de::DeserializeOwned>(&self, key: Document) -> Result<T> {
        let doc = self.get(key).await?;
        serde_json::from_value(serde_json::Value::Object(doc))
            .map_err(|e| Error::invalid_input(format!("the document is not the type asked: {e}")))
    }

    /// [`Action::Delete`].
    async fn delete(&self, key: Document) -> Result<()> {
        one(self.run(vec![Action::Delete(key)]).await).map(|_| ())
    }

    /// [`Action::Update`].
    async fn update(&self, key: Document, mods: Vec<Mod>) -> Result<Outcome> {
        one(self.run(vec![Action::Update { key, mods }]).await)
    }
}

impl<C: Collection + ?Sized> CollectionExt for C {}

fn one(mut results: Vec<Result<Outcome>>) -> Result<Outcome> {
    results.pop().unwrap_or_else(|| Err(Error::internal("no result for the action")))
}

/// What `open` returns: a driver behind the common work (validation, the closed state,
/// errors stamped with backend and operation, a span per call).
#[derive(Debug)]
pub struct CollectionHandle<D: Driver> {
    driver: D,
    name: String,
    spec: KeySpec,
    closed: AtomicBool,
}

impl<D: Driver> CollectionHandle<D> {
    /// `driver` as collection `name` with keys `spec`.
    pub fn new(driver: D, name: impl Into<String>, spec: KeySpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self { driver, name: name.into(), spec, closed: AtomicBool::new(false) })
    }

    /// The driver, for users who want the backend concretely.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    fn stamp(&self, op: &'static str) -> impl Fn(Error) -> Error + '_ {
        move |e| e.in_context(self.driver.backend(), op)
    }

    fn closed(&self, op: &'static str) -> Error {
        self.stamp(op)(Error::new(ErrorKind::Unavailable, format!("collection {} is closed", self.name)))
    }

    fn open_or_err(&self, op: &'static str) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.closed(op));
        }
        Ok(())
    }

    fn span(&self, op: &'static str, n: usize) -> tracing::Span {
        tracing::debug_span!("docstore", backend = self.driver.backend(), op, collection = %self.name, actions = n)
    }

    /// Validates `action`; a `Create` without a one-part key gets one.
    fn check(&self, action: Action) -> Result<Checked> {
        let stamp = self.stamp(action.name());
        let mut action = action;
        if let Action::Create(doc) = &mut action {
            if driver::revision_of(doc, &self.spec)?.is_some() {
                return Err(stamp(Error::invalid_input("a document to create carries no revision")));
            }
            if self.spec.key_of(doc).map_err(&stamp)?.is_none() {
                if self.spec.sort.is_some() || doc.get(&self.spec.partition).is_some_and(|v| !v.is_null()) {
                    return Err(stamp(
                        Error::invalid_input("a two-part key is never made up: give both parts")
                            .with_detail(self.spec.sort.clone().unwrap_or_default(), "missing"),
                    ));
                }
                doc.insert(self.spec.partition.clone(), uuid::Uuid::new_v4().to_string().into());
            }
        }
        let key = self.spec.key_of(action.document()).map_err(&stamp)?.ok_or_else(|| {
            stamp(
                Error::invalid_input(format!("the document has no key ({})", self.key_fields()))
                    .with_detail(self.spec.partition.clone(), "missing"),
            )
        })?;
        driver::revision_of(action.document(), &self.spec).map_err(&stamp)?;
        if let Action::Update { mods, .. } = &action {
            for m in mods {
                let (Mod::Set(path, _) | Mod::Unset(path) | Mod::Increment(path, _)) = m;
                let fixed = [Some(&self.spec.partition), self.spec.sort.as_ref(), Some(&self.spec.revision)];
                if let Some(field) = fixed.into_iter().flatten().find(|f| path.segments()[0] == **f) {
                    return Err(stamp(
                        Error::invalid_input(format!("an update cannot change {field:?}: it is the key or revision"))
                            .with_detail(field.clone(), "key or revision"),
                    ));
                }
            }
        }
        Ok(Checked { action, key })
    }

    fn key_fields(&self) -> String {
        match &self.spec.sort {
            Some(s) => format!("{} and {s}", self.spec.partition),
            None => self.spec.partition.clone(),
        }
    }

    fn check_query(&self, query: &Query) -> Result<()> {
        for f in &query.filters {
            driver::kind_of(f)?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl<D: Driver> Collection for CollectionHandle<D> {
    fn collection_name(&self) -> &str {
        &self.name
    }

    fn key_spec(&self) -> &KeySpec {
        &self.spec
    }

    fn capabilities(&self) -> Capabilities {
        self.driver.capabilities()
    }

    async fn run(&self, actions: Vec<Action>) -> Vec<Result<Outcome>> {
        let n = actions.len();
        if self.closed.load(Ordering::Acquire) {
            return (0..n).map(|_| Err(self.closed("run"))).collect();
        }
        // Invalid actions answer at their index; the rest run.
        let mut results: Vec<Option<Result<Outcome>>> = Vec::with_capacity(n);
        let mut valid = Vec::new();
        let mut names = Vec::new();
        for (i, action) in actions.into_iter().enumerate() {
            let name = action.name();
            match self.check(action) {
                Ok(c) => {
                    valid.push((i, c));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
            names.push(name);
        }
        let (indices, checked): (Vec<usize>, Vec<Checked>) = valid.into_iter().unzip();
        let ran = self.driver.run(checked).instrument(self.span("run", n)).await;
        for (i, r) in indices.into_iter().zip(ran) {
            results[i] = Some(r.map_err(self.stamp(names[i])));
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(Error::internal("an action got no result")))).collect()
    }

    async fn run_atomic(&self, actions: Vec<Action>) -> Result<Vec<Outcome>> {
        let stamp = self.stamp("run_atomic");
        self.open_or_err("run_atomic")?;
        let caps = self.driver.capabilities();
        let checked = actions
            .into_iter()
            .enumerate()
            .map(|(i, a)| self.check(a).map_err(|e| e.with_detail("action", i.to_string())))
            .collect::<Result<Vec<_>>>()?;
        match caps.atomic_writes {
            AtomicWrites::None => {
                return Err(stamp(Error::new(ErrorKind::Unsupported, "this backend has no atomic writes")));
            }
            AtomicWrites::SinglePartition => {
                let mut partitions = checked.iter().filter(|c| c.action.writes()).map(|c| &c.key.partition);
                if let Some(first) = partitions.next()
                    && partitions.any(|p| p != first)
                {
                    return Err(stamp(Error::new(
                        ErrorKind::Unsupported,
                        "this backend makes writes atomic within one partition key only",
                    )));
                }
            }
            AtomicWrites::Any => {}
        }
        let n = checked.len();
        self.driver.run_atomic(checked).instrument(self.span("run_atomic", n)).await.map_err(stamp)
    }

    async fn query(&self, query: &Query) -> Result<Vec<Document>> {
        let stamp = self.stamp("query");
        self.open_or_err("query")?;
        self.check_query(query).map_err(&stamp)?;
        self.driver.query(query).instrument(self.span("query", 0)).await.map_err(stamp)
    }

    async fn plan(&self, query: &Query) -> Result<Plan> {
        let stamp = self.stamp("plan");
        self.open_or_err("plan")?;
        self.check_query(query).map_err(&stamp)?;
        self.driver.plan(query).await.map_err(stamp)
    }

    async fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.driver.close().await;
        }
    }
}

#[async_trait::async_trait]
impl<D: Driver> platform_core::HealthCheck for CollectionHandle<D> {
    fn name(&self) -> String {
        format!("docstore:{}", self.driver.backend())
    }

    async fn check(&self) -> Result<platform_core::CheckOutcome> {
        self.open_or_err("ping")?;
        platform_core::CheckOutcome::measure(self.driver.ping()).await.map_err(self.stamp("ping"))
    }
}
