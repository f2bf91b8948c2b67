//! The metric series of finished, failed and cancelled runs, kept in memory: their metrics never
//! change again, and the runs table, sweep pages (which refresh while a sweep trains) and
//! compare pages read the same series over and over. SQLite prints every value as text to hand
//! a series over, which dominates a page of many long runs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::db::metrics::{self, Series};
use crate::db::runs::Run;
use crate::db::Pool;

/// About 16 bytes a point: some 128 MB at most.
const MAX_POINTS: usize = 8_000_000;

type Key = (i64, String);
pub type RunSeries = Arc<BTreeMap<String, Series>>;

#[derive(Debug, Default)]
pub struct SeriesCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Key, RunSeries>,
    /// Oldest first; evicted first.
    order: VecDeque<Key>,
    points: usize,
}

fn points(series: &BTreeMap<String, Series>) -> usize {
    series.values().map(Vec::len).sum()
}

impl SeriesCache {
    /// The named metrics of `runs` (run id -> name -> points), from memory for runs that had
    /// ended when `runs` was read, otherwise from the database.
    pub async fn series(&self, pool: &Pool, runs: &[Run], names: &[String]) -> sqlx::Result<HashMap<i64, RunSeries>> {
        let names_key = names.join("\n");
        let mut out = HashMap::with_capacity(runs.len());
        let mut missing = Vec::new();
        {
            let inner = self.inner.lock().expect("cache lock");
            for run in runs {
                match inner.map.get(&(run.id, names_key.clone())) {
                    Some(hit) if run.status().is_terminal() => {
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
        let mut inner = self.inner.lock().expect("cache lock");
        for run in runs.iter().filter(|r| missing.contains(&r.id)) {
            let series: RunSeries = Arc::new(read.remove(&run.id).unwrap_or_default());
            if run.status().is_terminal() {
                let key = (run.id, names_key.clone());
                inner.points += points(&series);
                match inner.map.insert(key.clone(), series.clone()) {
                    Some(replaced) => inner.points -= points(&replaced),
                    None => inner.order.push_back(key),
                }
                while inner.points > MAX_POINTS {
                    let Some(oldest) = inner.order.pop_front() else { break };
                    if let Some(gone) = inner.map.remove(&oldest) {
                        inner.points -= points(&gone);
                    }
                }
            }
            out.insert(run.id, series);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::db::metrics::MetricRow;
    use crate::jobs::events::event_bus;
    use crate::jobs::queue::{Outcome, RunQueue, SqliteQueue};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ended_runs_are_read_once_and_running_runs_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::db::connect(&format!("sqlite://{}", dir.path().join("c.db").display())).await.unwrap();
        let queue = SqliteQueue::new(pool.clone(), event_bus(), "w");
        let (ended, running) =
            (queue.enqueue(json!({}), None).await.unwrap(), queue.enqueue(json!({}), None).await.unwrap());
        queue.claim().await.unwrap();
        queue.claim().await.unwrap();
        let rows: Vec<MetricRow> = [ended, running]
            .iter()
            .map(|&run_id| MetricRow { run_id, name: "loss".into(), step: 1, value: Some(0.5) })
            .collect();
        metrics::upsert(&mut pool.acquire().await.unwrap(), &rows).await.unwrap();
        queue.finish(ended, Outcome::Finished).await.unwrap();
        let runs = crate::db::runs::by_ids(&pool, &[ended, running]).await.unwrap();
        let cache = SeriesCache::default();
        let names = ["loss".to_string()];
        let first = cache.series(&pool, &runs, &names).await.unwrap();
        assert_eq!(first[&ended]["loss"], vec![(1, Some(0.5))]);
        let mut conn = pool.acquire().await.unwrap();
        for id in [ended, running] {
            metrics::delete_after(&mut conn, id, -1).await.unwrap();
        }
        drop(conn);
        let again = cache.series(&pool, &runs, &names).await.unwrap();
        assert_eq!(again[&ended]["loss"], vec![(1, Some(0.5))], "an ended run's series come from memory");
        assert!(again[&running].is_empty(), "a running run's series are read again");
    }
}
