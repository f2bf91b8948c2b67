//! `GET /api/runs/{id}/metrics?names=&max_points=&format=json|csv`. Ended runs' answers are
//! kept in [`super::cache`].

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::runs::find;
use super::AppState;
use crate::charts::downsample::downsample;
use crate::db::metrics;
use crate::report::csv_field;

/// JSON answers are downsampled to this many points per series unless asked otherwise.
const DEFAULT_JSON_POINTS: usize = 2000;

/// A run's metric series (`GET /api/runs/{id}/metrics`, JSON).
#[derive(Debug, Serialize, JsonSchema)]
pub struct MetricsAnswer {
    pub run_id: i64,
    /// Points stored for the names asked for.
    pub points: usize,
    /// Points in this answer, after downsampling to `max_points` per series.
    pub returned: usize,
    #[schemars(schema_with = "super::openapi::metric_series")]
    pub series: BTreeMap<String, Vec<(i64, Option<f64>)>>,
}

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
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(Error::field("format", "must be json or csv")),
    };
    let max_points = match q.max_points.as_deref() {
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
    // Everything the answer depends on, parsed: spellings of one request share an entry.
    let query = format!("{}|{max_points:?}|{}", if csv { "csv" } else { "json" }, names.join("\n"));
    if let Some(body) = state.ended_runs.metrics_body(&run, &query) {
        return Ok(respond(run.id, csv, body));
    }
    let mut by_name: BTreeMap<String, Vec<(i64, Option<f64>)>> =
        metrics::series(&state.pool, run.id, &names).await?.into_iter().collect();
    let total_points: usize = by_name.values().map(Vec::len).sum();
    if let Some(max) = max_points {
        for points in by_name.values_mut() {
            // Keeps the first and last points, the extremes (the peak) and each bucket's extremes.
            *points = downsample(points, max, |p| p.1);
        }
    }
    let body = if csv {
        let mut out = String::from("step,name,value\n");
        for (name, points) in &by_name {
            for (step, value) in points {
                let value = value.map(|v| v.to_string()).unwrap_or_default();
                out.push_str(&format!("{step},{},{value}\n", csv_field(name)));
            }
        }
        Bytes::from(out)
    } else {
        let returned: usize = by_name.values().map(Vec::len).sum();
        let answer = MetricsAnswer { run_id: run.id, points: total_points, returned, series: by_name };
        Bytes::from(serde_json::to_vec(&answer).map_err(|e| Error::Internal(format!("metrics JSON: {e}")))?)
    };
    state.ended_runs.keep_metrics_body(&run, query, body.clone());
    Ok(respond(run.id, csv, body))
}

fn respond(run_id: i64, csv: bool, body: Bytes) -> Response {
    if csv {
        let disposition = format!("attachment; filename=\"run-{run_id}-metrics.csv\"");
        ([(header::CONTENT_TYPE, "text/csv".to_string()), (header::CONTENT_DISPOSITION, disposition)], body)
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}
