//! `/runs/{id}`: status, progress and ETA, config, the error of a failed run, the charts (each
//! also at `/runs/{id}/charts/<chart>.svg|png`, which the page's script fetches again as new
//! metrics arrive), the checkpoints with their downloads, and cancel, retry and clone.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use super::{bytes, figure_file, num, page, see_other, when, PageResult};
use crate::db::{self, runs::Run, runs::RunStatus};
use crate::http::error::Error;
use crate::http::runs::{find, parse_id};
use crate::http::security::CsrfToken;
use crate::http::AppState;
use crate::report::run::{figure, RunChart};
use crate::report::runs::RunRow;
use crate::report::{self, duration, Series};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/runs/{id}", get(show))
        .route("/runs/{id}/charts/{file}", get(chart))
        .route("/runs/{id}/cancel", post(cancel))
        .route("/runs/{id}/retry", post(retry))
}

pub struct ChartView {
    pub slug: &'static str,
    pub title: &'static str,
    pub svg: String,
}

pub struct CheckpointView {
    pub step: i64,
    pub kl: String,
    pub gold: String,
    pub size: String,
    pub archive: String,
    /// The weights alone (`model.safetensors`), when recorded.
    pub weights: Option<String>,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    id: i64,
    label: String,
    method: String,
    colour: String,
    status: &'static str,
    live: bool,
    cancellable: bool,
    retryable: bool,
    cancel_requested: bool,
    total_steps: i64,
    percent: Option<u32>,
    progress_text: String,
    error: String,
    sweep: Option<i64>,
    parent: Option<i64>,
    created: String,
    summary: Vec<(&'static str, String)>,
    charts: Vec<ChartView>,
    checkpoints: Vec<CheckpointView>,
    config: Vec<(String, String)>,
    toml: String,
    csrf: String,
}

/// Every metric the charts read, by name.
async fn chart_series(state: &AppState, run: &Run) -> Result<BTreeMap<String, Series>, Error> {
    let mut names: Vec<String> = RunChart::ALL.iter().flat_map(|c| c.metrics()).map(|s| (*s).to_string()).collect();
    names.sort();
    names.dedup();
    let mut read = state.ended_runs.series(&state.pool, std::slice::from_ref(run), &names).await?;
    Ok(read.remove(&run.id).map(|s| (*s).clone()).unwrap_or_default())
}

async fn show(State(state): State<AppState>, csrf: CsrfToken, Path(id): Path<String>) -> PageResult {
    let run = find(&state, &id).await?;
    let series = chart_series(&state, &run).await?;
    let evals = report::evals(&series);
    let checkpoints = db::checkpoints::list(&state.pool, run.id).await?;
    let steps: Vec<i64> = checkpoints.iter().map(|c| c.step).collect();
    let row = RunRow::new(&run, &evals, &steps);
    let meta = &row.meta;
    let status = row.status;

    let mut checkpoint_views = Vec::with_capacity(checkpoints.len());
    for c in &checkpoints {
        let at = evals.iter().find(|e| e.step == c.step);
        let files = db::checkpoints::files(&state.pool, run.id, c.step).await?;
        let base = format!("/api/runs/{}/checkpoints/{}", run.id, c.step);
        checkpoint_views.push(CheckpointView {
            step: c.step,
            kl: num(at.and_then(|e| e.kl)),
            gold: num(at.and_then(|e| e.gold)),
            size: bytes(c.bytes),
            archive: format!("{base}/archive"),
            weights: files
                .iter()
                .any(|f| f.name == "model.safetensors")
                .then(|| format!("{base}/files/model.safetensors")),
        });
    }
    let summary = match &row.summary {
        None => Vec::new(),
        Some(s) => {
            let mut out = vec![
                ("start gold reward", num(Some(s.start_gold))),
                ("peak gold reward", format!("{} at step {}", num(Some(s.peak_gold)), s.peak_step)),
                ("KL at the peak", num(Some(s.peak_kl))),
                ("final gold reward", num(Some(s.final_gold))),
                ("drop (peak − final)", num(Some(s.drop))),
            ];
            if let Some(f) = s.fit {
                out.push((
                    "Gao fit a, b",
                    format!("{}, {} (R² {})", num(Some(f.a)), num(Some(f.b)), num(Some(f.r_squared))),
                ));
                if let (Some(d), Some(r)) = (f.d_star, f.r_star) {
                    out.push(("fitted optimum d*, R*", format!("{}, {}", num(Some(d)), num(Some(r)))));
                }
            }
            out
        }
    };
    let stored = run.config_json();
    let config = stored
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        match v {
                            serde_json::Value::String(s) => s.clone(),
                            serde_json::Value::Null => "unset".into(),
                            other => other.to_string(),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut progress_text = match (status, run.total_steps) {
        (RunStatus::Queued, None) => "waiting for a free trainer".to_string(),
        (RunStatus::Running, None) if meta.config.task.is_toy() => {
            "starting: the toy task trains (or loads) its π_init first".to_string()
        }
        (_, None) => format!("step {}", run.step),
        (_, Some(total)) => format!("step {} of {total}", run.step),
    };
    if let Some(eta) = row.eta {
        progress_text.push_str(&format!(" · ETA {}", duration(eta)));
    }
    let page_data = RunPage {
        id: run.id,
        label: meta.short_label(),
        method: meta.method(),
        colour: meta.colour_hex(),
        status: status.as_str(),
        live: !status.is_terminal(),
        cancellable: matches!(status, RunStatus::Queued | RunStatus::Running) && !run.cancel_requested,
        retryable: matches!(status, RunStatus::Failed | RunStatus::Cancelled),
        cancel_requested: run.cancel_requested && status == RunStatus::Running,
        total_steps: run.total_steps.unwrap_or(0),
        percent: row.progress.map(|p| (p * 100.0).round() as u32),
        progress_text,
        error: run.error.clone().unwrap_or_default(),
        sweep: run.sweep_id,
        parent: run.parent_id,
        created: when(run.created_at),
        summary,
        charts: RunChart::ALL
            .into_iter()
            .map(|c| ChartView { slug: c.slug(), title: c.title(), svg: figure(meta, &series, c).to_svg() })
            .collect(),
        checkpoints: checkpoint_views,
        config,
        toml: toml::to_string(&meta.config).unwrap_or_default(),
        csrf: csrf.0,
    };
    page(StatusCode::OK, &page_data)
}

/// `/runs/{id}/charts/<chart>.svg|png`
async fn chart(State(state): State<AppState>, Path((id, file)): Path<(String, String)>) -> PageResult {
    let run = find(&state, &id).await?;
    let (name, ext) = file.rsplit_once('.').ok_or_else(|| Error::NotFound(format!("chart {file:?}")))?;
    let chart = RunChart::parse(name).ok_or_else(|| Error::NotFound(format!("chart {name:?}")))?;
    let series = chart_series(&state, &run).await?;
    let meta = report::RunMeta::new(run.id, &run.config_json());
    figure_file(&figure(&meta, &series, chart), &format!("run-{}-{name}", run.id), ext)
}

async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> PageResult {
    let id = parse_id(&id, "run")?;
    state.queue.cancel(id).await?;
    Ok(see_other(&format!("/runs/{id}")))
}

async fn retry(State(state): State<AppState>, Path(id): Path<String>) -> PageResult {
    let id = parse_id(&id, "run")?;
    let new_id = crate::http::runs::retry_run(&state, id).await?;
    Ok(see_other(&format!("/runs/{new_id}")))
}
