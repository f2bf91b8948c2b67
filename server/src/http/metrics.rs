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
use crate::db::metrics;

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
            *points = downsample(points, max);
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

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// At most `max` points that keep the curve's shape: the first and last points, the global
/// minimum and maximum (the peak of a gold-reward curve), and the min and max of every bucket
/// in between. Input and output are in step order.
pub fn downsample(points: &[(i64, Option<f64>)], max: usize) -> Vec<(i64, Option<f64>)> {
    let n = points.len();
    if n <= max {
        return points.to_vec();
    }
    let value = |i: usize| points[i].1.unwrap_or(f64::NAN);
    let extreme = |range: std::ops::Range<usize>| -> (Option<usize>, Option<usize>) {
        let mut lo: Option<usize> = None;
        let mut hi: Option<usize> = None;
        for i in range {
            if value(i).is_nan() {
                continue;
            }
            if lo.is_none_or(|l| value(i) < value(l)) {
                lo = Some(i);
            }
            if hi.is_none_or(|h| value(i) > value(h)) {
                hi = Some(i);
            }
        }
        (lo, hi)
    };
    let mut keep = vec![0, n - 1];
    let (lo, hi) = extreme(0..n);
    keep.extend(lo);
    keep.extend(hi);
    // Two points per bucket from what is left of the budget.
    let buckets = ((max - keep.len()) / 2).max(1);
    let interior = n - 2;
    for b in 0..buckets {
        let start = 1 + b * interior / buckets;
        let end = 1 + (b + 1) * interior / buckets;
        let (lo, hi) = extreme(start..end);
        keep.extend(lo);
        keep.extend(hi);
    }
    keep.sort_unstable();
    keep.dedup();
    keep.into_iter().map(|i| points[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(n: i64) -> Vec<(i64, Option<f64>)> {
        // Rises to a peak at step 7_000, then falls: an overoptimization curve.
        (0..n).map(|s| (s, Some(-((s - 7_000) as f64 / 1_000.0).powi(2) + (s % 7) as f64 * 0.01))).collect()
    }

    #[test]
    fn downsampling_keeps_first_last_min_max_and_peak() {
        let points = curve(20_000);
        let kept = downsample(&points, 200);
        assert!(kept.len() <= 200, "{} points", kept.len());
        assert_eq!(kept.first(), points.first());
        assert_eq!(kept.last(), points.last());
        let max = points.iter().map(|p| p.1.unwrap()).fold(f64::MIN, f64::max);
        let min = points.iter().map(|p| p.1.unwrap()).fold(f64::MAX, f64::min);
        assert!(kept.iter().any(|p| p.1 == Some(max)));
        assert!(kept.iter().any(|p| p.1 == Some(min)));
        assert!(kept.windows(2).all(|w| w[0].0 < w[1].0), "steps stay in order");
    }

    #[test]
    fn short_series_are_returned_whole() {
        let points = curve(10);
        assert_eq!(downsample(&points, 100), points);
    }
}
