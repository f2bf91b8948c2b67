//! `/api/workers`: the processes that train, with their labels and the runs they hold, as they
//! registered in the database (see [`crate::db::workers`]).

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use schemars::JsonSchema;
use serde::Serialize;

use super::error::Result;
use super::AppState;
use crate::db;

/// Every worker that registered (`GET /api/workers`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkerList {
    pub workers: Vec<WorkerView>,
    /// This server's --stale-after: a worker not heard from for longer is not `live`.
    pub stale_after_seconds: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Worker")]
pub struct WorkerView {
    /// Its --worker-id, as runs name it.
    pub id: String,
    /// Its --labels: it claims only runs whose `requires` they satisfy.
    pub labels: BTreeMap<String, String>,
    /// Its --device, which every run it claims trains on; null: each run's own `device`.
    pub device: Option<String>,
    /// Runs it trains at once (--max-concurrent-runs).
    pub max_concurrent_runs: i64,
    /// The runs it is training now.
    pub running: Vec<i64>,
    /// Its goodhart version.
    pub version: String,
    /// When it started, and when its heartbeat last renewed its row (unix ms).
    pub started_at: i64,
    pub seen_at: i64,
    /// Whether it was heard from within --stale-after; a worker that is not has died or was
    /// cut off, and its runs go back to the queue.
    pub live: bool,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/workers", get(list))
}

/// The workers, the most recently heard from first.
async fn list(State(state): State<AppState>) -> Result<Json<WorkerList>> {
    Ok(Json(WorkerList {
        workers: workers(&state).await?,
        stale_after_seconds: state.settings.stale_after.as_secs_f64(),
    }))
}

/// Every registered worker with the runs it holds, judged live by this server's --stale-after.
pub async fn workers(state: &AppState) -> Result<Vec<WorkerView>> {
    let mut running: HashMap<String, Vec<i64>> = HashMap::new();
    for (worker, run_id) in db::runs::running_by_worker(&state.pool).await? {
        running.entry(worker).or_default().push(run_id);
    }
    let (now, stale_after_ms) =
        (db::now_ms(), i64::try_from(state.settings.stale_after.as_millis()).unwrap_or(i64::MAX));
    Ok(db::workers::list(&state.pool)
        .await?
        .into_iter()
        .map(|w| WorkerView {
            id: super::runs::public_worker(&w.id),
            labels: w.labels(),
            live: w.live(now, stale_after_ms),
            running: running.remove(&w.id).unwrap_or_default(),
            device: w.device,
            max_concurrent_runs: w.max_concurrent_runs,
            version: w.version,
            started_at: w.started_at,
            seen_at: w.seen_at,
        })
        .collect())
}

/// The runs the live ones of `workers` train at once, together: what the queue's time estimates
/// divide the queued runs over ([`crate::report::runs::estimate`]).
pub fn live_slots(workers: &[WorkerView]) -> usize {
    workers.iter().filter(|w| w.live).map(|w| usize::try_from(w.max_concurrent_runs).unwrap_or(0)).sum()
}
