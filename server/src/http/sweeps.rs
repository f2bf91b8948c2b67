//! `/api/sweeps`: a base config times a grid of values, all validated before any is stored.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use trainer::config::RunConfig;
use trainer::error::FieldError;

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
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>)> {
    let value = parse_body(&headers, body, state.settings.max_body_bytes)?;
    let Value::Object(mut body) = value else {
        return Err(Error::field("(body)", "must be {\"base\": {...}, \"grid\": {...}}"));
    };
    let base = body.remove("base").unwrap_or_else(|| Value::Object(Map::new()));
    let grid = body.remove("grid").unwrap_or(Value::Null);
    if let Some(key) = body.keys().next() {
        return Err(Error::field(key, "unknown key: a sweep has only `base` and `grid`"));
    }
    let (id, run_ids) = launch(&state, base, grid).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "run_ids": run_ids }))))
}

/// Validates every grid point of `base` × `grid` and queues them all as one sweep, or none.
pub async fn launch(state: &AppState, base: Value, grid: Value) -> Result<(i64, Vec<i64>)> {
    let configs = validate(state, &base, &grid).map_err(Error::Invalid)?;
    let run_configs = configs
        .iter()
        .map(|c| serde_json::from_value(c.clone()))
        .collect::<Result<Vec<RunConfig>, _>>()
        .map_err(|e| Error::Internal(format!("a validated config no longer parses: {e}")))?;
    check_datasets(&run_configs, &state.settings).await?;
    Ok(state.queue.enqueue_sweep(base, grid, configs).await?)
}

/// The stored config of every distinct grid point, or every problem (each grid value named).
pub fn validate(state: &AppState, base: &Value, grid: &Value) -> Result<Vec<Value>, Vec<FieldError>> {
    let Value::Object(base_map) = base else {
        return Err(vec![FieldError::new("base", "must be a JSON object (a run config)")]);
    };
    let points = expand(grid, state.settings.max_sweep_runs)?;
    let mut configs = Vec::with_capacity(points.len());
    let mut errors: Vec<FieldError> = Vec::new();
    for point in points {
        let mut config = base_map.clone();
        config.extend(point.iter().map(|(k, v)| (k.clone(), v.clone())));
        match prepare(Value::Object(config), &state.settings) {
            // A union of grids may reach one config twice: it is run once, as `goodhart sweep` does.
            Ok((_, stored)) if configs.contains(&stored) => {}
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
        Ok(configs)
    } else {
        Err(errors)
    }
}

/// How many runs `grid` expands to, or why it cannot.
pub fn count(grid: &Value) -> Result<usize, Vec<FieldError>> {
    let grids = grids(grid)?;
    let mut errors = Vec::new();
    let mut total: usize = 0;
    for (name, grid) in &grids {
        let mut product: usize = 1;
        for (key, values) in *grid {
            match values {
                Value::Array(v) if !v.is_empty() => product = product.saturating_mul(v.len()),
                _ => errors.push(FieldError::new(format!("{name}.{key}"), "must be a non-empty array of values")),
            }
        }
        total = total.saturating_add(product);
    }
    if errors.is_empty() {
        Ok(total)
    } else {
        Err(errors)
    }
}

/// One grid (key -> [values]) and the name its errors use (`grid`, `grid[1]`).
type NamedGrid<'a> = (String, &'a Map<String, Value>);

/// A grid object, or a list of them (a union).
fn grids(grid: &Value) -> Result<Vec<NamedGrid<'_>>, Vec<FieldError>> {
    let shape = || vec![FieldError::new("grid", "must be an object of key -> [values], or a list of them")];
    match grid {
        Value::Object(g) => Ok(vec![("grid".to_string(), g)]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, g)| g.as_object().map(|g| (format!("grid[{i}]"), g)).ok_or_else(shape))
            .collect(),
        _ => Err(shape()),
    }
}

/// Every combination of each grid's values (in key order then value order), grids one after
/// the other. Refused before expanding when there would be more than `max_runs`.
fn expand(grid: &Value, max_runs: usize) -> Result<Vec<Map<String, Value>>, Vec<FieldError>> {
    let total = count(grid)?;
    if total > max_runs {
        return Err(vec![FieldError::new(
            "grid",
            format!("{total} runs is more than this server's --max-sweep-runs ({max_runs})"),
        )]);
    }
    let mut all = Vec::with_capacity(total);
    for (_, grid) in grids(grid)? {
        let mut points = vec![Map::new()];
        for (key, values) in grid {
            let values = values.as_array().expect("count checked every value list");
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
        all.extend(points);
    }
    Ok(all)
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
    fn a_list_of_grids_is_their_union() {
        let grid =
            json!([{"sync_ref_model": [false]}, {"sync_ref_model": [true], "ref_model_mixup_alpha": [0.1, 0.6]}]);
        assert_eq!(count(&grid).unwrap(), 3);
        let points = expand(&grid, 512).unwrap();
        assert_eq!(points.len(), 3);
        assert_eq!(points[0].get("ref_model_mixup_alpha"), None);
        assert_eq!(points[2]["ref_model_mixup_alpha"], json!(0.6));
        assert_eq!(expand(&grid, 2).unwrap_err()[0].field, "grid", "the limit counts the union");
        assert_eq!(count(&json!([{"beta": []}])).unwrap_err()[0].field, "grid[0].beta");
    }

    #[test]
    fn an_empty_value_list_is_refused_by_key() {
        let errors = expand(&json!({"beta": []}), 512).unwrap_err();
        assert_eq!(errors[0].field, "grid.beta");
    }
}
