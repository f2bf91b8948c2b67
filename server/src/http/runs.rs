//! `/api/runs`: create, list, show, cancel, retry, clone-with-edits, delete.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::Identity;
use super::datasets::check_datasets;
use super::error::{Error, Result};
use super::posted_config::{parse_body, prepare};
use super::AppState;
use crate::db::runs::{self, Run, RunStatus, Sort};
use crate::jobs::queue::Cancelled;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/runs", post(create).get(list))
        .route("/api/runs/{id}", get(show).delete(delete))
        .route("/api/runs/{id}/cancel", post(cancel))
        .route("/api/runs/{id}/retry", post(retry))
        .route("/api/runs/{id}/clone", post(clone_with_edits))
}

/// Ids in URLs: anything that is not a run id is a run that does not exist.
pub fn parse_id(raw: &str, what: &str) -> Result<i64> {
    raw.parse().map_err(|_| Error::NotFound(format!("{what} {raw:?}")))
}

pub async fn find(state: &AppState, raw_id: &str) -> Result<Run> {
    let id = parse_id(raw_id, "run")?;
    runs::get(&state.pool, id).await?.ok_or_else(|| Error::NotFound(format!("run {id}")))
}

/// A run as the API shows it (`Run` in the OpenAPI document).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(rename = "Run")]
pub struct RunView {
    pub id: i64,
    pub sweep_id: Option<i64>,
    #[schemars(schema_with = "super::openapi::run_status")]
    pub status: String,
    /// The stored config: every key, paths resolved.
    #[schemars(schema_with = "super::openapi::run_config")]
    pub config: Value,
    pub step: i64,
    pub total_steps: Option<i64>,
    /// `step / total_steps`.
    pub progress: Option<f64>,
    pub error: Option<String>,
    /// Why a finished run ended before its last step, e.g. "stopped: past its peak at step N".
    pub status_reason: Option<String>,
    pub cancel_requested: bool,
    pub attempts: i64,
    /// The run this one retries or clones.
    pub parent_id: Option<i64>,
    /// Unix milliseconds, as are the other times.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub heartbeat_at: Option<i64>,
    /// The worker holding the run while it runs, and the one that trained it once it has ended
    /// (its `--worker-id`; by default `<host>:<data dir name>-<digest>`). `null` while queued.
    pub worker: Option<String>,
    /// The user who launched it; `null` for the `--auth-token` or a server without sign-in.
    pub launched_by: Option<String>,
}

/// A run with the summary of each metric it logged (`GET /api/runs/{id}`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunView,
    /// Per metric name: first, last, min and max value, last step and point count; `null`
    /// before any metric.
    pub summary: Option<BTreeMap<String, runs::SummaryRow>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RunList {
    pub runs: Vec<RunView>,
    /// The runs the filters match: with `limit`, more than `runs` may hold.
    pub total: i64,
}

/// A queued run's id.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Created {
    pub id: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CancelAnswer {
    pub id: i64,
    /// `cancelled`, or `cancel requested: …` while it stops.
    pub result: String,
}

/// A retried run: the same id resumed (`resumes_from_step`), or a new run (`retry_of` names the old).
#[derive(Debug, Serialize, JsonSchema)]
pub struct RetryAnswer {
    pub id: i64,
    pub retry_of: i64,
    /// The checkpoint the run resumes from (`null`: from the start); only when resumed in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumes_from_step: Option<Option<i64>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CloneAnswer {
    pub id: i64,
    pub cloned_from: i64,
}

/// A run as the API shows it.
pub fn view(run: &Run) -> RunView {
    let progress = run.total_steps.filter(|t| *t > 0).map(|t| run.step as f64 / t as f64);
    RunView {
        id: run.id,
        sweep_id: run.sweep_id,
        status: run.status.clone(),
        config: run.config_json(),
        step: run.step,
        total_steps: run.total_steps,
        progress,
        error: run.error.clone(),
        status_reason: run.status_reason.clone(),
        cancel_requested: run.cancel_requested(),
        attempts: run.attempts,
        parent_id: run.parent_id,
        created_at: run.created_at,
        started_at: run.started_at,
        finished_at: run.finished_at,
        heartbeat_at: run.heartbeat_at,
        worker: run.worker.as_deref().map(public_worker),
        launched_by: run.launched_by.clone(),
    }
}

/// A worker id as anyone may read it. Ids are `<host>:<data dir name>-<digest>` now; one stored
/// in the old form, `<host>:<absolute data dir>`, is shown with the directory's name only.
pub fn public_worker(id: &str) -> String {
    match id.split_once(':') {
        Some((host, dir)) if dir.starts_with('/') => {
            let name =
                std::path::Path::new(dir).file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            format!("{host}:{name}")
        }
        _ => id.to_string(),
    }
}

async fn create(
    State(state): State<AppState>,
    who: Identity,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Created>)> {
    let value = parse_body(&headers, body, state.settings.max_body_bytes)?;
    let id = launch(&state, value, None, &who).await?;
    Ok((StatusCode::CREATED, Json(Created { id })))
}

/// Validates a config and queues it as a new run (`parent`: the run it retries or clones),
/// launched by `who`.
pub async fn launch(state: &AppState, config: Value, parent: Option<i64>, who: &Identity) -> Result<i64> {
    let (config, stored) = prepare(config, &state.settings).map_err(Error::Invalid)?;
    check_datasets(std::slice::from_ref(&config), &state.settings).await?;
    Ok(state.queue.enqueue(stored, parent, who.launcher().map(String::from)).await?)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    sweep: Option<String>,
    sort: Option<String>,
    launched_by: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

/// The most runs one page of `GET /api/runs` may ask for.
pub const MAX_LIMIT: i64 = 10_000;

async fn list(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Result<Json<RunList>> {
    let mut errors = Vec::new();
    // Strict where the runs page is lenient: that page leaves out a filter sent blank.
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => RunStatus::parse(s).or_else(|| {
            errors.push(trainer::error::FieldError::new(
                "status",
                "must be one of queued, running, finished, failed, cancelled",
            ));
            None
        }),
    };
    let sweep = match q.sweep.as_deref() {
        None => None,
        Some(s) => s.parse::<i64>().ok().or_else(|| {
            errors.push(trainer::error::FieldError::new("sweep", "must be a sweep id"));
            None
        }),
    };
    let sort = match q.sort.as_deref() {
        None => Sort::Newest,
        Some(s) => Sort::parse(s).unwrap_or_else(|| {
            errors.push(trainer::error::FieldError::new("sort", "must be one of -id (newest), id (oldest), status"));
            Sort::Newest
        }),
    };
    let limit = match q.limit.as_deref() {
        None => None,
        Some(s) => s.parse::<i64>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).or_else(|| {
            errors.push(trainer::error::FieldError::new(
                "limit",
                format!("must be a whole number from 1 to {MAX_LIMIT}"),
            ));
            None
        }),
    };
    let offset = match q.offset.as_deref() {
        None => None,
        Some(s) => s.parse::<i64>().ok().filter(|o| *o >= 0).or_else(|| {
            errors.push(trainer::error::FieldError::new("offset", "must be a whole number >= 0"));
            None
        }),
    };
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    // Without a limit, every matching run from the offset on.
    let page = (limit.is_some() || offset.is_some()).then(|| (limit.unwrap_or(i64::MAX), offset.unwrap_or(0)));
    let launched_by = q.launched_by.as_deref();
    let runs = runs::list_launched_by(&state.pool, status, sweep, launched_by, sort, page).await?;
    let total = match page {
        None => i64::try_from(runs.len()).unwrap_or(i64::MAX),
        Some(_) => runs::count_launched_by(&state.pool, status, sweep, launched_by).await?,
    };
    Ok(Json(RunList { runs: runs.iter().map(view).collect(), total }))
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<RunDetail>> {
    let run = find(&state, &id).await?;
    let summary: BTreeMap<String, runs::SummaryRow> =
        runs::summary(&state.pool, run.id).await?.into_iter().map(|s| (s.name.clone(), s)).collect();
    Ok(Json(RunDetail { run: view(&run), summary: (!summary.is_empty()).then_some(summary) }))
}

async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<CancelAnswer>> {
    let id = parse_id(&id, "run")?;
    let answer = match state.queue.cancel(id).await? {
        Cancelled::Now => "cancelled",
        Cancelled::Requested => "cancel requested: the run checkpoints and stops before its next step",
    };
    Ok(Json(CancelAnswer { id, result: answer.into() }))
}

/// How a failed or cancelled run is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryFrom {
    /// The same run, resumed from its last recorded checkpoint (from step 0 without one).
    Checkpoint,
    /// A new run with the same config, naming this one as its parent.
    Start,
}

impl RetryFrom {
    pub fn parse(raw: Option<&str>) -> Result<Self> {
        match raw {
            None | Some("" | "checkpoint") => Ok(Self::Checkpoint),
            Some("start") => Ok(Self::Start),
            Some(_) => Err(Error::field("from", "must be \"checkpoint\" (resume this run) or \"start\" (a new run)")),
        }
    }
}

/// `POST /api/runs/{id}/retry`, body `{"from": "checkpoint" | "start"}` (default checkpoint).
async fn retry(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RetryAnswer>)> {
    let id = parse_id(&id, "run")?;
    let options = if body.as_ref().is_ok_and(Bytes::is_empty) && headers.get(header::CONTENT_TYPE).is_none() {
        Value::Object(serde_json::Map::new())
    } else {
        parse_body(&headers, body, state.settings.max_body_bytes)?
    };
    let Value::Object(options) = options else {
        return Err(Error::field("(body)", "must be a JSON object: {\"from\": \"checkpoint\" | \"start\"}"));
    };
    if let Some(key) = options.keys().find(|k| *k != "from") {
        return Err(Error::field(key, "unknown key: the only option is \"from\""));
    }
    // The API takes the two names its schema lists; only the page's form sends a blank choice.
    let from = RetryFrom::parse(options.get("from").map(|v| v.as_str().filter(|s| !s.is_empty()).unwrap_or("?")))?;
    match from {
        RetryFrom::Checkpoint => {
            let step = resume_run(&state, id).await?;
            Ok((StatusCode::OK, Json(RetryAnswer { id, retry_of: id, resumes_from_step: Some(step) })))
        }
        RetryFrom::Start => {
            let new_id = retry_run(&state, id, &who).await?;
            Ok((StatusCode::CREATED, Json(RetryAnswer { id: new_id, retry_of: id, resumes_from_step: None })))
        }
    }
}

/// A failed or cancelled run, again, as a new run with the same config; answers its id.
pub async fn retry_run(state: &AppState, id: i64, who: &Identity) -> Result<i64> {
    let config = state.queue.retry(id).await?;
    let value: Value = serde_json::from_str(&config).map_err(|e| Error::Internal(format!("stored config: {e}")))?;
    // Revalidated: a model or dataset may have moved since.
    launch(state, value, Some(id), who).await
}

/// A failed or cancelled run back in the queue under its own id, to continue from its last
/// recorded checkpoint; answers that checkpoint's step (`None`: it starts over).
pub async fn resume_run(state: &AppState, id: i64) -> Result<Option<i64>> {
    let run = runs::get(&state.pool, id).await?.ok_or_else(|| Error::NotFound(format!("run {id}")))?;
    // Revalidated as a new run would be: a model or dataset may have moved since.
    let (config, _) = prepare(run.config_json(), &state.settings).map_err(Error::Invalid)?;
    check_datasets(std::slice::from_ref(&config), &state.settings).await?;
    state.queue.resume(id).await?;
    // What it served as an ended run is out of date from now on.
    state.ended_runs.forget(id);
    let last = crate::db::checkpoints::list(&state.pool, id).await?.last().map(|c| c.step);
    Ok(last)
}

/// A new run: this run's config with the posted keys replaced.
async fn clone_with_edits(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CloneAnswer>)> {
    let run = find(&state, &id).await?;
    let edits = if body.as_ref().is_ok_and(Bytes::is_empty) && headers.get(header::CONTENT_TYPE).is_none() {
        Value::Object(serde_json::Map::new())
    } else {
        parse_body(&headers, body, state.settings.max_body_bytes)?
    };
    let Value::Object(edits) = edits else {
        return Err(Error::field("(body)", "must be a JSON object of config keys to change"));
    };
    let mut config = run.config_json();
    let Some(object) = config.as_object_mut() else {
        return Err(Error::Internal(format!("run {} has a config that is not an object", run.id)));
    };
    object.extend(edits);
    let new_id = launch(&state, config, Some(run.id), &who).await?;
    Ok((StatusCode::CREATED, Json(CloneAnswer { id: new_id, cloned_from: run.id })))
}

/// Deletes a run that is not running, and its files.
async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode> {
    let id = parse_id(&id, "run")?;
    state.queue.delete(id).await?;
    state.ended_runs.forget(id);
    let dir = crate::jobs::run_dir(&state.settings.data_dir, id);
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Internal(format!("run {id} deleted, but removing {} failed: {e}", dir.display()))),
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_shown_without_an_absolute_data_dir() {
        assert_eq!(public_worker("lab1:goodhart-data-3f2a9c1b"), "lab1:goodhart-data-3f2a9c1b");
        assert_eq!(public_worker("lab1:/home/me/goodhart-data"), "lab1:goodhart-data");
        assert_eq!(public_worker("gpu-box-2"), "gpu-box-2");
    }
}
