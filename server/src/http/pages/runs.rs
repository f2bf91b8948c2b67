//! `/`: the runs table. Status, method, α, τ, β, seeds, progress with ETA (π_init's SFT before
//! training; the place in the queue before that), and each run's start, peak and final gold
//! reward, KL at the peak and drop; sorted on any column, filtered by status, method and sweep;
//! selected runs open in Compare. `/runs/table` is the table alone, which the page's script
//! polls to keep it live (status, progress, new runs).

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use trainer::metric_names as names;

use super::{num, page, pairs, value, PageResult};
use crate::charts::colour::hex;
use crate::db::{self, runs::RunStatus};
use crate::http::security::CsrfToken;
use crate::http::workers::{live_slots, workers};
use crate::http::AppState;
use crate::report::runs::{estimate, select, Column, Filter, RunRow};
use crate::report::style::Styles;
use crate::report::{self, duration};

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(show)).route("/runs/table", get(table))
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
    /// Toy tasks: the problem's seed.
    pub task_seed: Option<u64>,
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
    /// "past peak since step N (KL x)", and its explanation; empty unless the run is past its peak.
    pub past_peak: String,
    pub past_peak_title: String,
    /// The user who launched it, or empty.
    pub launched_by: String,
}

impl RowView {
    fn new(r: &RunRow, styles: &Styles, sft: Option<&(i64, BTreeMap<String, f64>)>) -> Self {
        let s = r.summary.as_ref();
        let style = styles.of(&r.meta);
        Self {
            id: r.id(),
            status: r.status.as_str(),
            method: r.meta.method(),
            colour: hex(style.colour),
            dasharray: style.dash.dasharray().unwrap_or_default(),
            alpha: num(r.meta.alpha()),
            tau: r.meta.tau().map(|t| t.to_string()).unwrap_or_default(),
            beta: num(Some(r.meta.config.beta)),
            seed: r.meta.config.seed,
            task_seed: r.meta.config.task.is_toy().then_some(r.meta.config.task_seed),
            sweep: r.sweep_id,
            percent: r.progress.map(|p| (p * 100.0).round() as u32),
            progress_text: progress_text(r, sft),
            start_gold: num(s.map(|s| s.start_gold)),
            peak_gold: num(s.map(|s| s.peak_gold)),
            final_gold: num(s.map(|s| s.final_gold)),
            peak_kl: num(s.map(|s| s.peak_kl)),
            drop: num(s.map(|s| s.drop)),
            error: r.error.clone().unwrap_or_default(),
            past_peak: r.past_peak.map(|p| p.badge()).unwrap_or_default(),
            past_peak_title: r.past_peak.map(|p| p.title()).unwrap_or_default(),
            launched_by: r.launched_by.clone().unwrap_or_default(),
        }
    }
}

/// Where a run is: its step and ETA; π_init's SFT before its first step; its place in the queue.
pub fn progress_text(r: &RunRow, sft: Option<&(i64, BTreeMap<String, f64>)>) -> String {
    let mut text = match (r.status, r.total_steps, sft) {
        (RunStatus::Queued, _, _) => {
            let mut text = match r.queue_position {
                Some(1) => "next in the queue".to_string(),
                Some(n) => format!("#{n} in the queue"),
                None => "queued".to_string(),
            };
            if !r.meta.config.requires.is_empty() {
                text.push_str(&format!(" · needs {}", trainer::config::labels_text(&r.meta.config.requires)));
            }
            text
        }
        (RunStatus::Running, None, Some((step, values))) => {
            let kl = values.get(names::SFT_KL_BEHAVIOUR).map(|kl| format!(", KL(behaviour ‖ π) {}", num(Some(*kl))));
            format!("building π_init: SFT step {step}{}", kl.unwrap_or_default())
        }
        (RunStatus::Running, None, None) if r.meta.config.task.is_toy() => "starting: π_init first".to_string(),
        // Only `early_stopping` finishes a run before its total.
        (RunStatus::Finished, Some(total), _) if r.step < total => format!("stopped at {} of {total}", r.step),
        (_, Some(total), _) => format!("{} / {total}", r.step),
        (_, None, _) => r.step.to_string(),
    };
    match (r.status, r.starts_in, r.eta) {
        (RunStatus::Queued, Some(start), Some(end)) => {
            text.push_str(&format!(" · starts in ~{}, ends in ~{}", duration(start), duration(end)));
        }
        (RunStatus::Running, _, Some(eta)) => text.push_str(&format!(" · ETA {}", duration(eta))),
        _ => {}
    }
    text
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
    t: RunsTable,
    csrf: String,
    statuses: Vec<(&'static str, bool)>,
    methods: Vec<(String, bool)>,
    sweeps: Vec<(i64, bool)>,
    launchers: Vec<(String, bool)>,
    sort: &'static str,
    dir: &'static str,
}

/// The table alone: what the page polls to stay live.
#[derive(Template)]
#[template(path = "runs_table.html")]
struct RunsTableFragment {
    t: RunsTable,
}

/// Rows of the runs table per page: a lab's thousands of runs are pages, not megabytes of HTML.
pub const PAGE_SIZE: usize = 200;

struct RunsTable {
    rows: Vec<RowView>,
    headers: Vec<HeaderView>,
    /// Runs in the database, and those the filters keep.
    total: usize,
    matched: usize,
    /// The first row's number among those matched (1-based).
    first: usize,
    /// (this page, pages, the previous page's link, the next's) when there is more than one.
    pager: Option<(usize, usize, Option<String>, Option<String>)>,
    any_live: bool,
    /// Whether the table has the "Launched by" column.
    show_launcher: bool,
    /// This table's own address, with the page's filters and sort.
    src: String,
}

async fn show(State(state): State<AppState>, csrf: CsrfToken, RawQuery(query): RawQuery) -> PageResult {
    let (t, choices) = build(&state, query.as_deref().unwrap_or("")).await?;
    let page_data = RunsPage {
        csrf: csrf.0,
        statuses: choices.statuses,
        methods: choices.methods,
        sweeps: choices.sweeps,
        launchers: choices.launchers,
        sort: choices.sort,
        dir: choices.dir,
        t,
    };
    page(StatusCode::OK, &page_data)
}

async fn table(State(state): State<AppState>, RawQuery(query): RawQuery) -> PageResult {
    let (t, _) = build(&state, query.as_deref().unwrap_or("")).await?;
    page(StatusCode::OK, &RunsTableFragment { t })
}

/// The filter form's choices.
struct Choices {
    statuses: Vec<(&'static str, bool)>,
    methods: Vec<(String, bool)>,
    sweeps: Vec<(i64, bool)>,
    launchers: Vec<(String, bool)>,
    sort: &'static str,
    dir: &'static str,
}

async fn build(state: &AppState, query: &str) -> Result<(RunsTable, Choices), crate::http::error::Error> {
    let q = pairs(query);
    let filter = Filter {
        status: value(&q, "status").and_then(RunStatus::parse),
        method: value(&q, "method").filter(|m| !m.is_empty()).map(String::from),
        sweep: value(&q, "sweep").and_then(|s| s.parse().ok()),
        launched_by: value(&q, "launched_by").filter(|u| !u.is_empty()).map(String::from),
    };
    let column = value(&q, "sort").and_then(Column::parse).unwrap_or(Column::Id);
    let descending = value(&q, "dir").map_or(column == Column::Id, |d| d == "desc");
    let dir = if descending { "desc" } else { "asc" };

    let runs = db::runs::list(&state.pool, None, None, db::runs::Sort::Newest).await?;
    let ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
    let names: Vec<String> = report::EVAL_METRICS.iter().map(|s| (*s).to_string()).collect();
    let series = state.ended_runs.series(&state.pool, &runs, &names).await?;
    let checkpoints = db::checkpoints::steps_of_runs(&state.pool, &ids).await?;
    let mut all: Vec<RunRow> = runs
        .iter()
        .map(|run| {
            let evals = series.get(&run.id).map(|s| report::evals(s)).unwrap_or_default();
            RunRow::new(run, &evals, checkpoints.get(&run.id).map_or(&[][..], Vec::as_slice))
        })
        .collect();
    estimate(&mut all, live_slots(&workers(state).await?));
    let starting: Vec<i64> =
        runs.iter().filter(|r| r.status() == RunStatus::Running && r.total_steps.is_none()).map(|r| r.id).collect();
    let sft = db::metrics::latest_sft(&state.pool, &starting).await?;
    let styles = Styles::for_runs(all.iter().map(|r| &r.meta));
    let methods: BTreeSet<String> = all.iter().map(|r| r.meta.method()).collect();
    let sweeps: BTreeSet<i64> = all.iter().filter_map(|r| r.sweep_id).collect();
    let launchers: BTreeSet<String> = all.iter().filter_map(|r| r.launched_by.clone()).collect();
    let total = all.len();
    let rows = select(all, &filter, column, descending);
    let matched = rows.len();
    let pages = matched.div_ceil(PAGE_SIZE).max(1);
    let page = value(&q, "page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(1).clamp(1, pages);
    let rows: Vec<RunRow> = rows.into_iter().skip((page - 1) * PAGE_SIZE).take(PAGE_SIZE).collect();

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
        if let Some(u) = &filter.launched_by {
            params.push(("launched_by".into(), u.clone()));
        }
        params.extend(extra.iter().map(|(k, v)| ((*k).to_string(), v.clone())));
        format!("/?{}", serde_urlencoded::to_string(&params).unwrap_or_default())
    };
    // Who launched each run, once anyone signed in has launched one.
    let show_launcher = !launchers.is_empty();
    let headers = Column::ALL
        .into_iter()
        .filter(|c| show_launcher || *c != Column::LaunchedBy)
        .map(|c| {
            let active = c == column;
            // A click sorts by the column, or flips the direction of the current one.
            let next_desc =
                if active { !descending } else { !matches!(c, Column::Status | Column::Method | Column::LaunchedBy) };
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
    let sorted = [("sort", column.as_str().to_string()), ("dir", dir.to_string())];
    let page_link = |p: usize| keep(&[sorted[0].clone(), sorted[1].clone(), ("page", p.to_string())]);
    let pager = (pages > 1)
        .then(|| (page, pages, (page > 1).then(|| page_link(page - 1)), (page < pages).then(|| page_link(page + 1))));
    let table = RunsTable {
        rows: rows.iter().map(|r| RowView::new(r, &styles, sft.get(&r.id()))).collect(),
        headers,
        total,
        matched,
        first: (page - 1) * PAGE_SIZE + 1,
        pager,
        any_live,
        show_launcher,
        src: format!("/runs/table{}", page_link(page).trim_start_matches('/')),
    };
    let choices = Choices {
        statuses: RunStatus::ALL.iter().map(|s| (s.as_str(), filter.status == Some(*s))).collect(),
        methods: methods.into_iter().map(|m| (m.clone(), filter.method.as_ref() == Some(&m))).collect(),
        sweeps: sweeps.into_iter().map(|s| (s, filter.sweep == Some(s))).collect(),
        launchers: launchers.into_iter().map(|u| (u.clone(), filter.launched_by.as_ref() == Some(&u))).collect(),
        sort: column.as_str(),
        dir,
    };
    Ok((table, choices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::runs::Run;

    fn row(status: &str, step: i64) -> RunRow {
        let run = Run {
            step,
            total_steps: Some(400),
            started_at: Some(0),
            finished_at: Some(1_000),
            ..Run::example(1, status)
        };
        RunRow::new(&run, &[], &[])
    }

    #[test]
    fn a_run_that_finished_before_its_total_reads_as_stopped_there() {
        assert_eq!(progress_text(&row("finished", 30), None), "stopped at 30 of 400");
        assert_eq!(progress_text(&row("finished", 400), None), "400 / 400");
        assert_eq!(progress_text(&row("cancelled", 30), None), "30 / 400");
    }
}
