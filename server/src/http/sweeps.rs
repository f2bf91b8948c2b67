//! `/api/sweeps`: a base config times a grid of values, all validated before any is stored.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};
use trainer::config::RunConfig;
use trainer::error::FieldError;

use super::auth::Identity;
use super::datasets::check_datasets;
use super::error::{Error, Result};
use super::posted_config::{parse_body, prepare};
use super::runs::{parse_id, view, RunView};
use super::AppState;
use crate::db::runs::{self, Sort};
use crate::db::sweeps;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/sweeps", post(create)).route("/api/sweeps/{id}", get(show))
}

/// A queued sweep (`POST /api/sweeps`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct SweepCreated {
    pub id: i64,
    /// One run per distinct grid point, in grid order.
    pub run_ids: Vec<i64>,
    /// Grid points dropped because they repeat an earlier point's run config.
    pub duplicates_dropped: usize,
}

/// A sweep and its runs (`GET /api/sweeps/{id}`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct SweepView {
    pub id: i64,
    /// The base config as posted.
    pub base: Value,
    /// The grid as posted.
    pub grid: Value,
    /// Unix milliseconds.
    pub created_at: i64,
    pub runs: Vec<RunView>,
}

async fn create(
    State(state): State<AppState>,
    who: Identity,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<SweepCreated>)> {
    let value = parse_body(&headers, body, state.settings.max_body_bytes)?;
    let Value::Object(mut body) = value else {
        return Err(Error::field("(body)", "must be {\"base\": {...}, \"grid\": {...}}"));
    };
    let base = body.remove("base").unwrap_or_else(|| Value::Object(Map::new()));
    // Without a grid the base config is the one run; a grid sent as null is a mistake.
    let grid = match body.remove("grid") {
        None => Value::Null,
        Some(Value::Null) => return Err(Error::field("grid", "must be an object of key -> values, or a list of them")),
        Some(grid) => grid,
    };
    if let Some(key) = body.keys().next() {
        return Err(Error::field(key, "unknown key: a sweep has only `base` and `grid`"));
    }
    let launched = launch(&state, base, grid, &who).await?;
    let answer = SweepCreated { id: launched.id, run_ids: launched.run_ids, duplicates_dropped: launched.duplicates };
    Ok((StatusCode::CREATED, Json(answer)))
}

/// A queued sweep: its id, its runs, and how many grid points were dropped as duplicates of an
/// earlier point (the same run config).
pub struct Launched {
    pub id: i64,
    pub run_ids: Vec<i64>,
    pub duplicates: usize,
}

/// Validates every grid point of `base` × `grid` and queues them all as one sweep, or none,
/// launched by `who`.
pub async fn launch(state: &AppState, base: Value, grid: Value, who: &Identity) -> Result<Launched> {
    let (configs, duplicates) = validate(state, &base, &grid).map_err(Error::Invalid)?;
    let run_configs = configs
        .iter()
        .map(|c| serde_json::from_value(c.clone()))
        .collect::<Result<Vec<RunConfig>, _>>()
        .map_err(|e| Error::Internal(format!("a validated config no longer parses: {e}")))?;
    check_datasets(&run_configs, &state.settings).await?;
    let (id, run_ids) = state.queue.enqueue_sweep(base, grid, configs, who.launcher().map(String::from)).await?;
    Ok(Launched { id, run_ids, duplicates })
}

/// The stored config of every distinct grid point and how many points repeated an earlier one,
/// or every problem (each grid value named). The points are the trainer's
/// ([`trainer::sweep::points`]: a single value is a one-element list); each is then prepared
/// against this server's directories.
pub fn validate(state: &AppState, base: &Value, grid: &Value) -> Result<(Vec<Value>, usize), Vec<FieldError>> {
    let Value::Object(base_map) = base else {
        return Err(vec![FieldError::new("base", "must be a JSON object (a run config)")]);
    };
    let points = trainer::sweep::points(grid, state.settings.max_sweep_runs)?;
    let mut configs = Vec::with_capacity(points.len());
    let mut duplicates = 0;
    let mut errors: Vec<FieldError> = Vec::new();
    for point in points {
        let mut config = base_map.clone();
        config.extend(point.iter().map(|(k, v)| (k.clone(), v.clone())));
        match prepare(Value::Object(config), &state.settings) {
            // A union of grids may reach one config twice: it is run once, as `goodhart sweep` does.
            Ok((_, stored)) if configs.contains(&stored) => duplicates += 1,
            Ok((_, stored)) => configs.push(stored),
            Err(errs) => {
                for e in errs {
                    // Name the grid point when the value came from the grid.
                    let field = match point.get(&e.field) {
                        Some(v) => format!("grid.{}={v}", e.field),
                        None => e.field.clone(),
                    };
                    let e = FieldError::new(field, e.message);
                    if !errors.contains(&e) {
                        errors.push(e);
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok((configs, duplicates))
    } else {
        Err(errors)
    }
}

/// How many grid points `grid` expands to (before duplicates are dropped), or why it cannot.
pub fn count(grid: &Value) -> Result<usize, Vec<FieldError>> {
    trainer::sweep::count(grid)
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<SweepView>> {
    let id = parse_id(&id, "sweep")?;
    let sweep = sweeps::get(&state.pool, id).await?.ok_or_else(|| Error::NotFound(format!("sweep {id}")))?;
    let runs = runs::list(&state.pool, None, Some(id), Sort::Oldest).await?;
    Ok(Json(SweepView {
        id: sweep.id,
        base: serde_json::from_str::<Value>(&sweep.base_config).unwrap_or(Value::Null),
        grid: serde_json::from_str::<Value>(&sweep.grid).unwrap_or(Value::Null),
        created_at: sweep.created_at,
        runs: runs.iter().map(view).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_server_counts_with_the_trainers_rules() {
        assert_eq!(count(&json!({"beta": [0.1, 0.2], "ref_model_mixup_alpha": [0.3, 0.6, 0.9]})).unwrap(), 6);
        assert_eq!(count(&json!({"beta": 0.1, "seed": [1, 2]})).unwrap(), 2, "a single value is one value");
        assert_eq!(count(&json!({"beta": []})).unwrap_err()[0].field, "grid.beta");
        assert_eq!(count(&json!([{"beta": [0.1]}, {"beta": []}])).unwrap_err()[0].field, "grid[1].beta");
    }
}
