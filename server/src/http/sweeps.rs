//! `/api/sweeps`: a base config times a grid of values, all validated before any is stored.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use trainer::config::FieldError;

use super::config::{parse_body, prepare};
use super::datasets::check_datasets;
use super::error::{Error, Result};
use super::runs::{parse_id, view};
use super::AppState;
use crate::db::runs::{self, Sort};
use crate::db::sweeps;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/sweeps", post(create)).route("/api/sweeps/{id}", get(show))
}

async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>)> {
    let value = parse_body(body, state.settings.max_body_bytes)?;
    let Value::Object(mut body) = value else {
        return Err(Error::field("(body)", "must be {\"base\": {...}, \"grid\": {...}}"));
    };
    let base = body.remove("base").unwrap_or_else(|| Value::Object(Map::new()));
    let grid = body.remove("grid").unwrap_or(Value::Null);
    if let Some(key) = body.keys().next() {
        return Err(Error::field(key, "unknown key: a sweep has only `base` and `grid`"));
    }
    let Value::Object(base_map) = &base else {
        return Err(Error::field("base", "must be a JSON object (a run config)"));
    };
    let points = expand(&grid, state.settings.max_sweep_runs).map_err(Error::Invalid)?;
    let mut configs = Vec::with_capacity(points.len());
    let mut run_configs = Vec::with_capacity(points.len());
    let mut errors: Vec<FieldError> = Vec::new();
    for point in points {
        let mut config = base_map.clone();
        config.extend(point.iter().map(|(k, v)| (k.clone(), v.clone())));
        match prepare(Value::Object(config), &state.settings) {
            Ok((config, stored)) => {
                run_configs.push(config);
                configs.push(stored);
            }
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
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    check_datasets(&run_configs).await?;
    let (id, run_ids) = state.queue.enqueue_sweep(base, grid, configs).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "run_ids": run_ids }))))
}

/// Every combination of the grid's values, in key order then value order.
fn expand(grid: &Value, max_runs: usize) -> Result<Vec<Map<String, Value>>, Vec<FieldError>> {
    let Value::Object(grid) = grid else {
        return Err(vec![FieldError::new("grid", "must be an object of key -> [values]")]);
    };
    let mut errors = Vec::new();
    let mut total: usize = 1;
    for (key, values) in grid {
        match values {
            Value::Array(v) if !v.is_empty() => total = total.saturating_mul(v.len()),
            _ => errors.push(FieldError::new(format!("grid.{key}"), "must be a non-empty array of values")),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if total > max_runs {
        return Err(vec![FieldError::new(
            "grid",
            format!("{total} runs is more than this server's --max-sweep-runs ({max_runs})"),
        )]);
    }
    let mut points = vec![Map::new()];
    for (key, values) in grid {
        let values = values.as_array().expect("checked above");
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut p = p.clone();
                    p.insert(key.clone(), v.clone());
                    p
                })
            })
            .collect();
    }
    Ok(points)
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>> {
    let id = parse_id(&id, "sweep")?;
    let sweep = sweeps::get(&state.pool, id).await?.ok_or_else(|| Error::NotFound(format!("sweep {id}")))?;
    let runs = runs::list(&state.pool, None, Some(id), Sort::Oldest).await?;
    Ok(Json(json!({
        "id": sweep.id,
        "base": serde_json::from_str::<Value>(&sweep.base_config).unwrap_or(Value::Null),
        "grid": serde_json::from_str::<Value>(&sweep.grid).unwrap_or(Value::Null),
        "created_at": sweep.created_at,
        "runs": runs.iter().map(view).collect::<Vec<_>>(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_expands_to_every_combination() {
        let points = expand(&json!({"beta": [0.1, 0.2], "ref_model_mixup_alpha": [0.3, 0.6, 0.9]}), 512).unwrap();
        assert_eq!(points.len(), 6);
        assert_eq!(points[0]["beta"], json!(0.1));
        assert_eq!(points[5]["ref_model_mixup_alpha"], json!(0.9));
    }

    #[test]
    fn a_grid_larger_than_the_limit_is_refused_before_expanding() {
        let big: Vec<u32> = (0..100).collect();
        let errors = expand(&json!({"a": big, "b": big, "c": big}), 512).unwrap_err();
        assert_eq!(errors[0].field, "grid");
        assert!(errors[0].message.contains("1000000 runs"), "{}", errors[0].message);
    }

    #[test]
    fn an_empty_value_list_is_refused_by_key() {
        let errors = expand(&json!({"beta": []}), 512).unwrap_err();
        assert_eq!(errors[0].field, "grid.beta");
    }
}
