//! In-process collections (`memory://name?key=id`): the reference every backend is
//! checked against. Each `open` is a new, empty collection; nothing outlives the process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use platform_core::{Error, Result};

use crate::driver::{self, Checked, Driver, Effect, Stored};
use crate::types::{AtomicWrites, Capabilities, Document, Key, KeySpec, Outcome, Plan, Query};

/// The in-process backend.
#[derive(Debug)]
pub struct MemoryCollection {
    spec: KeySpec,
    docs: Mutex<BTreeMap<Key, Stored>>,
}

impl MemoryCollection {
    /// An empty collection with keys `spec`.
    pub fn new(spec: KeySpec) -> Self {
        Self { spec, docs: Mutex::new(BTreeMap::new()) }
    }

    fn docs(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Stored>> {
        self.docs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn step(docs: &mut BTreeMap<Key, Stored>, c: &Checked, spec: &KeySpec) -> Result<Outcome> {
    let (effect, outcome) = driver::apply(c, docs.get(&c.key), spec)?;
    match effect {
        Effect::None => {}
        Effect::Write { doc, revision } => {
            docs.insert(c.key.clone(), Stored { doc, revision });
        }
        Effect::Delete => {
            docs.remove(&c.key);
        }
    }
    Ok(outcome)
}

#[async_trait::async_trait]
impl Driver for MemoryCollection {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { atomic_writes: AtomicWrites::Any, any_field_queries: true }
    }

    async fn run(&self, actions: Vec<Checked>) -> Vec<Result<Outcome>> {
        let mut docs = self.docs();
        actions.iter().map(|c| step(&mut docs, c, &self.spec)).collect()
    }

    async fn run_atomic(&self, actions: Vec<Checked>) -> Result<Vec<Outcome>> {
        let mut docs = self.docs();
        // On a copy, swapped in only when every action succeeded.
        let mut next = docs.clone();
        let mut outcomes = Vec::with_capacity(actions.len());
        for (i, c) in actions.iter().enumerate() {
            outcomes.push(step(&mut next, c, &self.spec).map_err(|e| e.with_detail("action", i.to_string()))?);
        }
        *docs = next;
        Ok(outcomes)
    }

    async fn query(&self, query: &Query) -> Result<Vec<Document>> {
        let docs = self.docs();
        let mut found: Vec<Document> = docs
            .values()
            .map(|s| driver::with_revision(s.doc.clone(), &s.revision, &self.spec))
            .filter(|d| query.filters.iter().all(|f| driver::matches(f, d)))
            .collect();
        drop(docs);
        if let Some((path, direction)) = &query.order_by {
            found.sort_by(|a, b| driver::order(a, b, path, *direction));
        }
        let found = found.into_iter().skip(query.offset.unwrap_or(0)).take(query.limit.unwrap_or(usize::MAX));
        Ok(found.map(|d| driver::project(d, &query.fields, &self.spec)).collect())
    }

    async fn plan(&self, query: &Query) -> Result<Plan> {
        let _ = query;
        Ok(Plan { scan: true, detail: "every document, filtered and sorted in memory".to_owned() })
    }

    async fn close(&self) {
        self.docs().clear();
    }

    async fn ping(&self) -> Result<String> {
        let n = self.docs().len();
        Ok(format!("in-process, {n} documents"))
    }
}

/// Checks a `memory://` URL's host part: the collection's name.
pub(crate) fn name_of(url: &url::Url) -> Result<String> {
    let name = url.host_str().unwrap_or_default().to_owned();
    if name.is_empty() {
        return Err(Error::invalid_input("memory:// needs a collection name (memory://users?key=id)")
            .with_detail("collection", "missing"));
    }
    Ok(name)
}
