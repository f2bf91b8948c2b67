//! `/`: the runs table. Status, method, α, τ, β, seed, progress with ETA, and each run's start,
//! peak and final gold reward, KL at the peak and drop; sorted on any column, filtered by
//! status, method and sweep; selected runs open in Compare.

use std::collections::BTreeSet;

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use super::{num, page, pairs, value, PageResult};
use crate::db::{self, runs::RunStatus};
use crate::http::security::CsrfToken;
use crate::http::AppState;
use crate::report::runs::{select, Column, Filter, RunRow};
use crate::report::{self, duration};

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(show))
}

pub struct RowView {
    pub id: i64,
    pub status: &'static str,
    pub method: String,
    pub colour: String,
    pub dasharray: String,
    pub alpha: String,
    pub tau: String,
    pub beta: String,
    pub seed: u64,
    pub sweep: Option<i64>,
    /// 0 … 100, when known.
    pub percent: Option<u32>,
    pub progress_text: String,
    pub start_gold: String,
    pub peak_gold: String,
    pub final_gold: String,
    pub peak_kl: String,
    pub drop: String,
    pub error: String,
}

impl RowView {
    fn new(r: &RunRow) -> Self {
        let s = r.summary.as_ref();
        let mut progress_text = match r.total_steps {
            Some(total) => format!("{} / {total}", r.step),
            None => r.step.to_string(),
        };
        if let Some(eta) = r.eta {
            progress_text.push_str(&format!(" · ETA {}", duration(eta)));
        }
        Self {
            id: r.id(),
            status: r.status.as_str(),
            method: r.meta.method(),
            colour: r.meta.colour_hex(),
            dasharray: r.meta.dash().dasharray().unwrap_or_default(),
            alpha: num(r.meta.alpha()),
            tau: r.meta.tau().map(|t| t.to_string()).unwrap_or_default(),
            beta: num(Some(r.meta.config.beta)),
            seed: r.meta.config.seed,
            sweep: r.sweep_id,
            percent: r.progress.map(|p| (p * 100.0).round() as u32),
            progress_text,
            start_gold: num(s.map(|s| s.start_gold)),
            peak_gold: num(s.map(|s| s.peak_gold)),
            final_gold: num(s.map(|s| s.final_gold)),
            peak_kl: num(s.map(|s| s.peak_kl)),
            drop: num(s.map(|s| s.drop)),
            error: r.error.clone().unwrap_or_default(),
        }
    }
}

pub struct HeaderView {
    pub title: &'static str,
    pub href: String,
    /// `ascending`, `descending` or `none` (aria-sort).
    pub sort: &'static str,
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage {
    rows: Vec<RowView>,
    headers: Vec<HeaderView>,
    total: usize,
    statuses: Vec<(&'static str, bool)>,
    methods: Vec<(String, bool)>,
    sweeps: Vec<(i64, bool)>,
    sort: &'static str,
    dir: &'static str,
    any_live: bool,
    csrf: String,
}

async fn show(State(state): State<AppState>, csrf: CsrfToken, RawQuery(query): RawQuery) -> PageResult {
    let q = pairs(query.as_deref().unwrap_or(""));
    let filter = Filter {
        status: value(&q, "status").and_then(RunStatus::parse),
        method: value(&q, "method").filter(|m| !m.is_empty()).map(String::from),
        sweep: value(&q, "sweep").and_then(|s| s.parse().ok()),
    };
    let column = value(&q, "sort").and_then(Column::parse).unwrap_or(Column::Id);
    let descending = value(&q, "dir").map_or(column == Column::Id, |d| d == "desc");

    let runs = db::runs::list(&state.pool, None, None, db::runs::Sort::Newest).await?;
    let ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
    let names: Vec<String> = report::EVAL_METRICS.iter().map(|s| (*s).to_string()).collect();
    let series = state.ended_runs.series(&state.pool, &runs, &names).await?;
    let checkpoints = db::checkpoints::steps_of_runs(&state.pool, &ids).await?;
    let all: Vec<RunRow> = runs
        .iter()
        .map(|run| {
            let evals = series.get(&run.id).map(|s| report::evals(s)).unwrap_or_default();
            RunRow::new(run, &evals, checkpoints.get(&run.id).map_or(&[][..], Vec::as_slice))
        })
        .collect();
    let methods: BTreeSet<String> = all.iter().map(|r| r.meta.method()).collect();
    let sweeps: BTreeSet<i64> = all.iter().filter_map(|r| r.sweep_id).collect();
    let total = all.len();
    let rows = select(all, &filter, column, descending);

    let keep = |extra: &[(&str, String)]| -> String {
        let mut params: Vec<(String, String)> = Vec::new();
        if let Some(s) = filter.status {
            params.push(("status".into(), s.as_str().into()));
        }
        if let Some(m) = &filter.method {
            params.push(("method".into(), m.clone()));
        }
        if let Some(s) = filter.sweep {
            params.push(("sweep".into(), s.to_string()));
        }
        params.extend(extra.iter().map(|(k, v)| ((*k).to_string(), v.clone())));
        format!("/?{}", serde_urlencoded::to_string(&params).unwrap_or_default())
    };
    let headers = Column::ALL
        .into_iter()
        .map(|c| {
            let active = c == column;
            // A click sorts by the column, or flips the direction of the current one.
            let next_desc = if active { !descending } else { !matches!(c, Column::Status | Column::Method) };
            HeaderView {
                title: c.title(),
                href: keep(&[("sort", c.as_str().into()), ("dir", if next_desc { "desc" } else { "asc" }.into())]),
                sort: match (active, descending) {
                    (false, _) => "none",
                    (true, true) => "descending",
                    (true, false) => "ascending",
                },
            }
        })
        .collect();
    let any_live = rows.iter().any(|r| matches!(r.status, RunStatus::Queued | RunStatus::Running));
    let page_data = RunsPage {
        rows: rows.iter().map(RowView::new).collect(),
        headers,
        total,
        statuses: RunStatus::ALL.iter().map(|s| (s.as_str(), filter.status == Some(*s))).collect(),
        methods: methods.into_iter().map(|m| (m.clone(), filter.method.as_ref() == Some(&m))).collect(),
        sweeps: sweeps.into_iter().map(|s| (s, filter.sweep == Some(s))).collect(),
        sort: column.as_str(),
        dir: if descending { "desc" } else { "asc" },
        any_live,
        csrf: csrf.0,
    };
    page(StatusCode::OK, &page_data)
}
