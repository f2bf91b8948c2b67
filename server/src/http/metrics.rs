//! `GET /api/runs/{id}/metrics?names=&max_points=&format=json|csv`

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::error::{Error, Result};
use super::runs::find;
use super::AppState;
use crate::charts::downsample::downsample;
use crate::db::metrics;
use crate::report::csv_field;

/// JSON answers are downsampled to this many points per series unless asked otherwise.
const DEFAULT_JSON_POINTS: usize = 2000;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/runs/{id}/metrics", get(series))
}

#[derive(Debug, Deserialize)]
struct MetricsQuery {
    names: Option<String>,
    max_points: Option<String>,
    format: Option<String>,
}

async fn series(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> Result<Response> {
    let run = find(&state, &id).await?;
    let csv = match q.format.as_deref() {
        None | Some("" | "json") => false,
        Some("csv") => true,
        Some(_) => return Err(Error::field("format", "must be json or csv")),
    };
    let max_points = match q.max_points.as_deref().filter(|s| !s.is_empty()) {
        None if csv => None,
        None => Some(DEFAULT_JSON_POINTS),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 4 => Some(n),
            _ => return Err(Error::field("max_points", "must be an integer >= 4")),
        },
    };
    let names: Vec<String> = q
        .names
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let mut by_name: BTreeMap<String, Vec<(i64, Option<f64>)>> =
        metrics::series(&state.pool, run.id, &names).await?.into_iter().collect();
    let total_points: usize = by_name.values().map(Vec::len).sum();
    if let Some(max) = max_points {
        for points in by_name.values_mut() {
            // Keeps the first and last points, the extremes (the peak) and each bucket's extremes.
            *points = downsample(points, max, |p| p.1);
        }
    }
    if csv {
        let mut out = String::from("step,name,value\n");
        for (name, points) in &by_name {
            for (step, value) in points {
                let value = value.map(|v| v.to_string()).unwrap_or_default();
                out.push_str(&format!("{step},{},{value}\n", csv_field(name)));
            }
        }
        let disposition = format!("attachment; filename=\"run-{}-metrics.csv\"", run.id);
        return Ok(([(header::CONTENT_TYPE, "text/csv".to_string()), (header::CONTENT_DISPOSITION, disposition)], out)
            .into_response());
    }
    let returned: usize = by_name.values().map(Vec::len).sum();
    Ok(Json(json!({
        "run_id": run.id,
        "points": total_points,
        "returned": returned,
        "series": by_name,
    }))
    .into_response())
}
