//! `/compare?runs=…` and `/sweeps/{id}`: the overoptimization chart (one path per run, colour by
//! α, dash by τ, markers for other differing parameters, a panel per loss; x axis step, KL or
//! sqrt(KL), optionally log; smoothing of y that keeps endpoints and the peak; seeds aggregated
//! into mean ± 95% band), each run's best policy and the Pareto fronts of evaluations with their
//! downloads, the paired TR-minus-vanilla table and forest plot, the summary table (params
//! "diff only"), OOD mass against step, and CSV, SVG and PNG downloads of all of it.
//!
//! Every option lives in the query string, the toggles too (`hide=run-3,run-7`): a reload, a
//! link and every download show the same runs as the page, and hidden runs leave the axes.

use std::collections::BTreeSet;

use askama::Template;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use super::{csv_file, figure_file, flag, num, page, pairs, value, values, when, PageResult};
use crate::db;
use crate::http::error::Error;
use crate::http::runs::parse_id;
use crate::http::workers::{live_slots, workers};
use crate::http::AppState;
use crate::report::compare::{
    self, Aggregate, CompareRun, Comparison, LegendItem, Options, SummaryTable, XAxis, PAIRED_STATS,
};
use crate::report::runs::{estimate, RunRow};
use crate::report::{self, duration, RunMeta};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/compare", get(show))
        .route("/sweeps/{id}", get(show_sweep))
        .route("/compare/charts/{file}", get(chart))
        .route("/compare/summary.csv", get(summary_csv))
        .route("/compare/series.csv", get(series_csv))
        .route("/compare/paired.csv", get(paired_csv))
}

/// Which runs: a list, or a sweep's.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    Runs(Vec<i64>),
    Sweep(i64),
}

impl Selection {
    fn from_query(q: &[(String, String)]) -> Result<Self, Error> {
        if let Some(s) = value(q, "sweep").filter(|s| !s.is_empty()) {
            return Ok(Self::Sweep(parse_id(s, "sweep")?));
        }
        let ids = values(q, "runs").iter().map(|s| parse_id(s, "run")).collect::<Result<Vec<_>, _>>()?;
        Ok(Self::Runs(ids))
    }

    fn query(&self) -> String {
        match self {
            Self::Sweep(id) => format!("sweep={id}"),
            Self::Runs(ids) => format!("runs={}", ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")),
        }
    }

    /// The start of every download's file name: `sweep-3`, or `runs-1-2-3` (`runs-1-2-3-and-9-more`).
    fn file_stem(&self) -> String {
        match self {
            Self::Sweep(id) => format!("sweep-{id}"),
            Self::Runs(ids) => {
                let shown: Vec<String> = ids.iter().take(6).map(ToString::to_string).collect();
                let more = if ids.len() > 6 { format!("-and-{}-more", ids.len() - 6) } else { String::new() };
                format!("runs-{}{more}", shown.join("-"))
            }
        }
    }
}

/// The runs of a selection with their evaluations and checkpoints (missing ids are skipped).
pub async fn load(state: &AppState, selection: &Selection) -> Result<Vec<CompareRun>, Error> {
    let runs = match selection {
        Selection::Runs(ids) => db::runs::by_ids(&state.pool, ids).await?,
        Selection::Sweep(id) => db::runs::list(&state.pool, None, Some(*id), db::runs::Sort::Oldest).await?,
    };
    let ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
    let names: Vec<String> = report::EVAL_METRICS.iter().map(|s| (*s).to_string()).collect();
    let mut series = state.ended_runs.series(&state.pool, &runs, &names).await?;
    let mut checkpoints = db::checkpoints::steps_of_runs(&state.pool, &ids).await?;
    Ok(runs
        .iter()
        .map(|run| {
            let evals = series.remove(&run.id).map(|s| report::evals(&s)).unwrap_or_default();
            CompareRun::new(
                RunMeta::new(run.id, &run.config_json()),
                evals,
                checkpoints.remove(&run.id).unwrap_or_default(),
            )
        })
        .collect())
}

/// Chart options and the table's "diff only" from the query; defaults until the options form
/// was submitted (`opts=1`: an unchecked box sends nothing). The legend's boxes (`show`, with
/// `legend=1`) or the script's `hide` say which runs are toggled off.
fn options(q: &[(String, String)]) -> (Options, bool) {
    let submitted = flag(q, "opts");
    let smooth = value(q, "smooth").and_then(|s| s.parse::<f64>().ok()).filter(|s| s.is_finite()).unwrap_or(0.0);
    let aggregate = match value(q, "agg").and_then(Aggregate::parse) {
        Some(a) => a,
        None if flag(q, "seeds") => Aggregate::Seeds,
        None => Aggregate::Runs,
    };
    let opts = Options {
        x: value(q, "x").and_then(XAxis::parse).unwrap_or_default(),
        log_x: flag(q, "log_x"),
        smooth: smooth.clamp(0.0, 0.99),
        aggregate,
        hidden: values(q, "hide").into_iter().collect(),
    };
    (opts, if submitted { flag(q, "diff") } else { true })
}

/// The legend form's boxes, when it was submitted: every key not ticked is hidden.
fn hidden_from_legend(q: &[(String, String)], c: &Comparison) -> Option<BTreeSet<String>> {
    if !flag(q, "legend") {
        return None;
    }
    let shown: BTreeSet<String> = values(q, "show").into_iter().collect();
    Some(c.legend_items().into_iter().map(|i| i.key).filter(|k| !shown.contains(k)).collect())
}

fn options_query(opts: &Options, diff: bool) -> String {
    let mut q = format!("opts=1&x={}&smooth={}&agg={}", opts.x.as_str(), opts.smooth, opts.aggregate.as_str());
    for (on, key) in [(opts.log_x, "log_x"), (diff, "diff")] {
        if on {
            q.push_str(&format!("&{key}=1"));
        }
    }
    if !opts.hidden.is_empty() {
        q.push_str(&format!("&hide={}", opts.hidden.iter().cloned().collect::<Vec<_>>().join(",")));
    }
    q
}

/// The selection's runs as the options ask, hidden ones included (they keep their styles).
async fn comparison(state: &AppState, q: &[(String, String)]) -> Result<(Selection, Comparison, bool), Error> {
    let (opts, diff) = options(q);
    let selection = Selection::from_query(q)?;
    let runs = load(state, &selection).await?;
    let mut c = Comparison::new(runs, opts);
    if let Some(hidden) = hidden_from_legend(q, &c) {
        c = Comparison::new(c.runs, Options { hidden, ..c.opts });
    }
    Ok((selection, c, diff))
}

pub struct SweepView {
    pub id: i64,
    pub created: String,
    pub base: String,
    pub grid: String,
}

pub struct BestView {
    pub run_id: i64,
    pub label: String,
    pub colour: String,
    pub step: i64,
    pub kl: String,
    pub gold: String,
    /// The archive of the kept checkpoint, and its step.
    pub download: Option<(String, i64)>,
}

pub struct FrontView {
    pub problem: String,
    pub points: Vec<FrontPointView>,
    /// How many of its points have weights to download.
    pub downloadable: usize,
}

pub struct FrontPointView {
    pub run_id: i64,
    pub label: String,
    pub step: i64,
    pub kl: String,
    pub gold: String,
    pub download: Option<String>,
}

pub struct PairedView {
    pub label: String,
    pub n: usize,
    pub cells: Vec<String>,
    pub better: String,
}

#[derive(Template)]
#[template(path = "compare.html")]
struct ComparePage {
    title: String,
    sweep: Option<SweepView>,
    /// Hidden inputs that keep the selection in the options form.
    hidden: Vec<(&'static str, String)>,
    query: String,
    stem: String,
    run_count: usize,
    shown_count: usize,
    status_text: String,
    /// When the selection's last run should end, and how many are queued.
    eta_text: String,
    live: bool,
    x_options: Vec<(&'static str, &'static str, bool)>,
    agg_options: Vec<(&'static str, &'static str, bool)>,
    log_x: bool,
    smooth: String,
    diff: bool,
    overoptimization: String,
    ood: String,
    forest: String,
    legend: Vec<LegendItem>,
    band_notes: Vec<String>,
    table: SummaryTable,
    columns: Vec<&'static str>,
    best: Vec<BestView>,
    fronts: Vec<FrontView>,
    paired: Vec<PairedView>,
    paired_columns: Vec<String>,
    past_peak: Vec<crate::report::compare::PastPeakCount>,
}

async fn render(state: &AppState, q: &[(String, String)], sweep: Option<SweepView>) -> PageResult {
    let (selection, c, diff) = comparison(state, q).await?;
    let statuses = match &selection {
        Selection::Sweep(id) => db::runs::list(&state.pool, None, Some(*id), db::runs::Sort::Oldest).await?,
        Selection::Runs(ids) => db::runs::by_ids(&state.pool, ids).await?,
    };
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for r in &statuses {
        match counts.iter_mut().find(|(s, _)| *s == r.status.as_str()) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.status.as_str(), 1)),
        }
    }
    let status_text = counts.iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", ");
    let live = statuses.iter().any(|r| !r.status().is_terminal());
    let eta_text = if live { eta(state, &statuses).await? } else { String::new() };
    let figure = c.overoptimization();
    let title = match &sweep {
        Some(s) => format!("Sweep {}", s.id),
        None => "Compare runs".to_string(),
    };
    let hidden = match &selection {
        Selection::Sweep(_) => Vec::new(),
        Selection::Runs(ids) => vec![("runs", ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))],
    };
    let archive = |run: i64, step: i64| format!("/api/runs/{run}/checkpoints/{step}/archive");
    let paired = c.paired();
    let page_data = ComparePage {
        title,
        sweep,
        hidden,
        query: format!("{}&{}", selection.query(), options_query(&c.opts, diff)),
        stem: selection.file_stem(),
        run_count: c.runs.len(),
        shown_count: c.visible().len(),
        status_text,
        eta_text,
        live,
        x_options: XAxis::ALL.iter().map(|x| (x.as_str(), x.label(), *x == c.opts.x)).collect(),
        agg_options: Aggregate::ALL.iter().map(|a| (a.as_str(), a.label(), *a == c.opts.aggregate)).collect(),
        log_x: c.opts.log_x,
        smooth: num(Some(c.opts.smooth)),
        diff,
        overoptimization: figure.to_svg(),
        ood: c.ood_mass().to_svg(),
        forest: if paired.is_empty() { String::new() } else { c.forest().to_svg() },
        legend: c.legend_items(),
        band_notes: c.band_notes(),
        table: c.summary_table(diff),
        columns: compare::summary_headings(),
        best: c
            .best_policies()
            .into_iter()
            .map(|b| BestView {
                download: b.checkpoint.map(|step| (archive(b.run_id, step), step)),
                run_id: b.run_id,
                label: b.label,
                colour: b.colour,
                step: b.peak_step,
                kl: num(Some(b.kl)),
                gold: num(Some(b.gold)),
            })
            .collect(),
        fronts: c
            .fronts()
            .into_iter()
            .map(|f| FrontView {
                problem: f.problem,
                downloadable: f.points.iter().filter(|p| p.downloadable).count(),
                points: f
                    .points
                    .into_iter()
                    .map(|p| FrontPointView {
                        download: p.downloadable.then(|| archive(p.run_id, p.step)),
                        run_id: p.run_id,
                        label: p.label,
                        step: p.step,
                        kl: num(Some(p.kl)),
                        gold: num(Some(p.gold)),
                    })
                    .collect(),
            })
            .collect(),
        paired: paired
            .iter()
            .map(|r| PairedView {
                label: r.label.clone(),
                n: r.n,
                cells: r.deltas.iter().map(|d| d.map_or("—".into(), |ci| format!("{ci:+.3}"))).collect(),
                better: format!("{} of {}", r.better, r.n),
            })
            .collect(),
        paired_columns: PAIRED_STATS.iter().map(|s| format!("Δ {s}")).collect(),
        past_peak: c.past_peak_counts(),
    };
    page(StatusCode::OK, &page_data)
}

/// "3 running, 4 queued; all done in ~12m 30s", as this server would run them.
async fn eta(state: &AppState, runs: &[db::runs::Run]) -> Result<String, Error> {
    // Queue positions and start times depend on every run in the queue, not only these.
    let everything = db::runs::list(&state.pool, None, None, db::runs::Sort::Oldest).await?;
    let mut rows: Vec<RunRow> = everything
        .iter()
        .filter(|r| !r.status().is_terminal() || runs.iter().any(|m| m.id == r.id))
        .map(|r| RunRow::new(r, &[], &[]))
        .collect();
    estimate(&mut rows, live_slots(&workers(state).await?));
    let mine: Vec<&RunRow> = rows.iter().filter(|r| runs.iter().any(|m| m.id == r.id())).collect();
    let left: Vec<&&RunRow> = mine.iter().filter(|r| !r.status.is_terminal()).collect();
    let queued: Vec<usize> = left.iter().filter_map(|r| r.queue_position).collect();
    let mut text = String::new();
    if let (Some(first), Some(last)) = (queued.iter().min(), queued.iter().max()) {
        text.push_str(&format!("queued runs at places {first}–{last} of the queue; "));
    }
    match left.iter().map(|r| r.eta).collect::<Option<Vec<f64>>>() {
        Some(etas) if !etas.is_empty() => {
            let end = etas.into_iter().fold(0.0, f64::max);
            text.push_str(&format!("all done in ~{}", duration(end)));
        }
        _ => text.push_str("no estimate yet (no run like these has trained long enough to time it)"),
    }
    Ok(text)
}

async fn show(State(state): State<AppState>, RawQuery(query): RawQuery) -> PageResult {
    let q = pairs(query.as_deref().unwrap_or(""));
    let sweep = match Selection::from_query(&q)? {
        Selection::Sweep(id) => Some(sweep_view(&state, id).await?),
        Selection::Runs(_) => None,
    };
    render(&state, &q, sweep).await
}

async fn sweep_view(state: &AppState, id: i64) -> Result<SweepView, Error> {
    let sweep = db::sweeps::get(&state.pool, id).await?.ok_or_else(|| Error::NotFound(format!("sweep {id}")))?;
    let pretty = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| text.to_string())
    };
    Ok(SweepView { id, created: when(sweep.created_at), base: pretty(&sweep.base_config), grid: pretty(&sweep.grid) })
}

async fn show_sweep(State(state): State<AppState>, Path(id): Path<String>, RawQuery(query): RawQuery) -> PageResult {
    let id = parse_id(&id, "sweep")?;
    let sweep = sweep_view(&state, id).await?;
    let mut q = pairs(query.as_deref().unwrap_or(""));
    q.retain(|(k, _)| k != "sweep" && k != "runs");
    q.push(("sweep".into(), id.to_string()));
    render(&state, &q, Some(sweep)).await
}

/// `/compare/charts/{overoptimization|ood|forest}.{svg|png}?runs=…|sweep=…&x=…&hide=…`
async fn chart(State(state): State<AppState>, Path(file): Path<String>, RawQuery(query): RawQuery) -> PageResult {
    let q = pairs(query.as_deref().unwrap_or(""));
    let (name, ext) = file.rsplit_once('.').ok_or_else(|| Error::NotFound(format!("chart {file:?}")))?;
    let (selection, c, _) = comparison(&state, &q).await?;
    let figure = match name {
        "overoptimization" => c.overoptimization(),
        "ood" => c.ood_mass(),
        "forest" => c.forest(),
        other => return Err(Error::NotFound(format!("chart {other:?}")).into()),
    };
    figure_file(&figure, &format!("{}-{name}", selection.file_stem()), ext)
}

async fn summary_csv(State(state): State<AppState>, RawQuery(query): RawQuery) -> PageResult {
    let q = pairs(query.as_deref().unwrap_or(""));
    let (selection, c, diff) = comparison(&state, &q).await?;
    let name = format!("{}-summary.csv", selection.file_stem());
    Ok(csv_file(&name, compare::summary_csv(&c.summary_table(diff))))
}

async fn series_csv(State(state): State<AppState>, RawQuery(query): RawQuery) -> PageResult {
    let q = pairs(query.as_deref().unwrap_or(""));
    let (selection, c, _) = comparison(&state, &q).await?;
    Ok(csv_file(&format!("{}-series.csv", selection.file_stem()), compare::series_csv(&c.visible())))
}

async fn paired_csv(State(state): State<AppState>, RawQuery(query): RawQuery) -> PageResult {
    let q = pairs(query.as_deref().unwrap_or(""));
    let (selection, c, _) = comparison(&state, &q).await?;
    Ok(csv_file(&format!("{}-paired.csv", selection.file_stem()), compare::paired_csv(&c.paired())))
}
