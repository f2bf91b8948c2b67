//! `/workers`: who trains, with their labels and runs (the page of `GET /api/workers`).

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use super::{page, when, PageResult};
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/workers", get(show))
}

struct WorkerRow {
    id: String,
    live: bool,
    labels: BTreeMap<String, String>,
    device: Option<String>,
    running: Vec<i64>,
    max_concurrent_runs: i64,
    /// "12s ago", or the time when it is older than an hour.
    seen: String,
    started: String,
    version: String,
}

#[derive(Template)]
#[template(path = "workers.html")]
struct WorkersPage {
    workers: Vec<WorkerRow>,
    stale_after: String,
    /// Whether this server trains runs itself.
    trains_here: bool,
}

async fn show(State(state): State<AppState>) -> PageResult {
    let now = crate::db::now_ms();
    let workers = crate::http::workers::workers(&state)
        .await?
        .into_iter()
        .map(|w| WorkerRow {
            seen: ago(now, w.seen_at),
            started: when(w.started_at),
            id: w.id,
            live: w.live,
            labels: w.labels,
            device: w.device,
            running: w.running,
            max_concurrent_runs: w.max_concurrent_runs,
            version: w.version,
        })
        .collect();
    let page_data = WorkersPage {
        workers,
        stale_after: crate::report::duration(state.settings.stale_after.as_secs_f64()),
        trains_here: state.settings.max_concurrent_runs > 0,
    };
    page(StatusCode::OK, &page_data)
}

/// How long ago `then` was, up to an hour; the time itself after that.
fn ago(now: i64, then: i64) -> String {
    let seconds = (now - then).max(0) as f64 / 1000.0;
    if seconds < 3600.0 {
        format!("{} ago", crate::report::duration(seconds))
    } else {
        when(then)
    }
}
