//! What ended (finished, failed, cancelled) runs serve, kept in memory. Their metrics never
//! change again: no claim holds an ended run, and the metric writer stores nothing for a run
//! without one. Yet the same reads come back over and over: the runs table, sweep pages (which
//! refresh while a sweep trains), compare pages, and API clients fetching
//! `GET /api/runs/{id}/metrics`. SQLite prints every value as text to hand a series over, which
//! dominates a page of many long runs; an API answer adds its downsampling and JSON on top.
//!
//! One cache for the pages' series and the API's answers, under one memory bound; a deleted
//! run's entries go with it. Entries are keyed by the run's attempt too: a run retried in place
//! is claimed again, so what it serves after its next end is read afresh.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;

use crate::db::metrics::{self, Series};
use crate::db::runs::Run;
use crate::db::Pool;

/// Series are counted at about 16 bytes a point.
const MAX_BYTES: usize = 128 << 20;

pub type RunSeries = Arc<BTreeMap<String, Series>>;

/// What is kept about one run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum What {
    /// Its series of these metric names (newline-separated; empty: all), for the pages.
    Series(String),
    /// The body of one `GET /api/runs/{id}/metrics` answer, by its normalized query.
    MetricsBody(String),
}

/// Run id and attempt: a run that was retried in place and ended again is another entry.
type Key = (i64, i64, What);

#[derive(Debug, Clone)]
enum Entry {
    Series(RunSeries),
    Body(Bytes),
}

impl Entry {
    fn bytes(&self) -> usize {
        match self {
            Self::Series(series) => series.values().map(Vec::len).sum::<usize>() * 16,
            Self::Body(body) => body.len(),
        }
    }
}

#[derive(Debug, Default)]
pub struct EndedRunCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    /// Oldest first; evicted first.
    order: VecDeque<Key>,
    bytes: usize,
}

impl Inner {
    fn insert(&mut self, key: Key, entry: Entry) {
        self.bytes += entry.bytes();
        match self.map.insert(key.clone(), entry) {
            Some(replaced) => self.bytes -= replaced.bytes(),
            None => self.order.push_back(key),
        }
        while self.bytes > MAX_BYTES {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(gone) = self.map.remove(&oldest) {
                self.bytes -= gone.bytes();
            }
        }
    }
}

impl EndedRunCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("cache lock")
    }

    /// The named metrics of `runs` (run id -> name -> points), from memory for runs that had
    /// ended when `runs` was read, otherwise from the database.
    pub async fn series(&self, pool: &Pool, runs: &[Run], names: &[String]) -> sqlx::Result<HashMap<i64, RunSeries>> {
        let what = What::Series(names.join("\n"));
        let mut out = HashMap::with_capacity(runs.len());
        let mut missing = Vec::new();
        {
            let inner = self.lock();
            for run in runs {
                match inner.map.get(&(run.id, run.attempts, what.clone())) {
                    Some(Entry::Series(hit)) if run.status().is_terminal() => {
                        out.insert(run.id, hit.clone());
                    }
                    _ => missing.push(run.id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let mut read = metrics::series_of_runs(pool, &missing, names).await?;
        let mut inner = self.lock();
        for run in runs.iter().filter(|r| missing.contains(&r.id)) {
            let series: RunSeries = Arc::new(read.remove(&run.id).unwrap_or_default());
            if run.status().is_terminal() {
                inner.insert((run.id, run.attempts, what.clone()), Entry::Series(series.clone()));
            }
            out.insert(run.id, series);
        }
        Ok(out)
    }

    /// The kept answer to `query` (normalized by the caller) for `run`, if it had ended when read.
    pub fn metrics_body(&self, run: &Run, query: &str) -> Option<Bytes> {
        if !run.status().is_terminal() {
            return None;
        }
        match self.lock().map.get(&(run.id, run.attempts, What::MetricsBody(query.to_string()))) {
            Some(Entry::Body(body)) => Some(body.clone()),
            _ => None,
        }
    }

    /// Keeps the answer to `query` for `run` if it had ended when read (a running run's grows).
    pub fn keep_metrics_body(&self, run: &Run, query: String, body: Bytes) {
        if run.status().is_terminal() {
            self.lock().insert((run.id, run.attempts, What::MetricsBody(query)), Entry::Body(body));
        }
    }

    /// Drops everything kept about a deleted run. A request that read the run just before the
    /// delete may still put an entry back; it is never served (ids are not reused and every
    /// request first finds the run) and ages out like any other.
    pub fn forget(&self, run_id: i64) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let before = inner.order.len();
        inner.order.retain(|(id, _, _)| *id != run_id);
        if inner.order.len() != before {
            let gone: Vec<Key> = inner.map.keys().filter(|(id, _, _)| *id == run_id).cloned().collect();
            for key in gone {
                if let Some(entry) = inner.map.remove(&key) {
                    inner.bytes -= entry.bytes();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::db::metrics::MetricRow;
    use crate::jobs::event_bus::event_bus;
    use crate::jobs::queue::{DbQueue, Outcome, RunQueue};

    /// A finished and a running run, each with one loss value at step 1.
    async fn ended_and_running() -> (tempfile::TempDir, Pool, Vec<Run>) {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::db::testing::pool(dir.path()).await;
        let queue = DbQueue::new(pool.clone(), event_bus(), "w");
        let (ended, running) =
            (queue.enqueue(json!({}), None, None).await.unwrap(), queue.enqueue(json!({}), None, None).await.unwrap());
        queue.claim().await.unwrap();
        queue.claim().await.unwrap();
        let rows: Vec<MetricRow> = [ended, running]
            .iter()
            .map(|&run_id| MetricRow { run_id, name: "loss".into(), step: 1, value: Some(0.5) })
            .collect();
        metrics::upsert(&mut pool.acquire().await.unwrap(), &rows).await.unwrap();
        queue.finish(ended, Outcome::Finished).await.unwrap();
        let runs = crate::db::runs::by_ids(&pool, &[ended, running]).await.unwrap();
        (dir, pool, runs)
    }

    /// Removes every stored value behind the cache's back.
    async fn forget_in_the_database(pool: &Pool, runs: &[Run]) {
        let mut conn = pool.acquire().await.unwrap();
        for run in runs {
            metrics::delete_after(&mut conn, run.id, -1).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ended_runs_are_read_once_and_running_runs_every_time() {
        let (_dir, pool, runs) = ended_and_running().await;
        let (ended, running) = (runs[0].id, runs[1].id);
        let cache = EndedRunCache::default();
        let names = ["loss".to_string()];
        let first = cache.series(&pool, &runs, &names).await.unwrap();
        assert_eq!(first[&ended]["loss"], vec![(1, Some(0.5))]);
        forget_in_the_database(&pool, &runs).await;
        let again = cache.series(&pool, &runs, &names).await.unwrap();
        assert_eq!(again[&ended]["loss"], vec![(1, Some(0.5))], "an ended run's series come from memory");
        assert!(again[&running].is_empty(), "a running run's series are read again");
    }

    #[test]
    fn answers_are_kept_for_ended_runs_only_and_forgotten_with_the_run() {
        let run = Run::example;
        let cache = EndedRunCache::default();
        let (ended, running, other) = (run(1, "cancelled"), run(2, "running"), run(3, "finished"));
        cache.keep_metrics_body(&ended, "json|loss".into(), Bytes::from_static(b"{1}"));
        cache.keep_metrics_body(&running, "json|loss".into(), Bytes::from_static(b"{2}"));
        cache.keep_metrics_body(&other, "json|loss".into(), Bytes::from_static(b"{3}"));
        assert_eq!(cache.metrics_body(&ended, "json|loss").as_deref(), Some(&b"{1}"[..]));
        assert_eq!(cache.metrics_body(&ended, "csv|loss"), None, "another query is another answer");
        assert_eq!(cache.metrics_body(&running, "json|loss"), None);
        cache.forget(1);
        assert_eq!(cache.metrics_body(&ended, "json|loss"), None);
        assert_eq!(cache.metrics_body(&other, "json|loss").as_deref(), Some(&b"{3}"[..]));
        assert_eq!(cache.lock().bytes, 3, "only run 3's answer is counted");
    }
}
