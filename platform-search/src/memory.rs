//! In-process exact search (`memory://name?dimensions=384&metric=cosine`): every query
//! measures every record, so its answer is the reference the other backends' recall is
//! measured against. Each `open` is a new, empty index.

use std::collections::BTreeMap;
use std::sync::Mutex;

use platform_core::Result;

use crate::vector::{Capabilities, Hit, Metric, Record, VectorDriver, VectorQuery};

/// The in-process backend.
#[derive(Debug)]
pub struct MemoryVectors {
    metric: Metric,
    records: Mutex<BTreeMap<String, Record>>,
}

impl MemoryVectors {
    /// An empty index measuring by `metric`.
    pub fn new(metric: Metric) -> Self {
        Self { metric, records: Mutex::new(BTreeMap::new()) }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Record>> {
        self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl VectorDriver for MemoryVectors {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { exact: true }
    }

    async fn upsert(&self, records: Vec<Record>) -> Result<()> {
        let mut all = self.records();
        for r in records {
            all.insert(r.id.clone(), r);
        }
        Ok(())
    }

    async fn query(&self, query: &VectorQuery) -> Result<Vec<Hit>> {
        let all = self.records();
        let mut hits: Vec<Hit> = all
            .values()
            .filter(|r| query.filter.as_ref().is_none_or(|f| f.matches(&r.metadata)))
            .map(|r| Hit {
                id: r.id.clone(),
                distance: self.metric.distance(&query.vector, &r.vector),
                metadata: r.metadata.clone(),
                document: r.document.clone(),
            })
            .collect();
        drop(all);
        hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then_with(|| a.id.cmp(&b.id)));
        hits.truncate(query.k);
        Ok(hits)
    }

    async fn get(&self, ids: &[String]) -> Result<Vec<Record>> {
        let all = self.records();
        Ok(ids.iter().filter_map(|id| all.get(id).cloned()).collect())
    }

    async fn delete(&self, ids: &[String]) -> Result<()> {
        let mut all = self.records();
        for id in ids {
            all.remove(id);
        }
        Ok(())
    }

    async fn close(&self) {
        self.records().clear();
    }

    async fn ping(&self) -> Result<String> {
        Ok(format!("in-process, {} records", self.records().len()))
    }
}
