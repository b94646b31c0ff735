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
        // Distances of every passing record; only the k nearest are copied out.
        let mut near: Vec<(f32, &Record)> = all
            .values()
            .filter(|r| query.filter.as_ref().is_none_or(|f| f.matches(&r.metadata)))
            .map(|r| (self.metric.distance(&query.vector, &r.vector), r))
            .collect();
        let order = |a: &(f32, &Record), b: &(f32, &Record)| a.0.total_cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id));
        if near.len() > query.k {
            near.select_nth_unstable_by(query.k - 1, order);
            near.truncate(query.k);
        }
        near.sort_by(order);
        Ok(near
            .into_iter()
            .map(|(distance, r)| Hit {
                id: r.id.clone(),
                distance,
                metadata: r.metadata.clone(),
                document: r.document.clone(),
            })
            .collect())
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
