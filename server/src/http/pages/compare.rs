//! `/compare?runs=…` and `/sweeps/{id}`: the overoptimization chart (one path per run, colour by
//! α with a colour bar, dash by τ, a panel per loss; x axis step, KL or sqrt(KL), optionally
//! log; EMA smoothing over the faint raw data; seeds aggregated into mean ± 95% band), the
//! summary table (params "diff only"), the Pareto front of checkpoints with their downloads,
//! OOD mass against step, and CSV, SVG and PNG downloads of all of it.

use askama::Template;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use super::{csv_file, figure_file, flag, num, page, pairs, value, values, when, PageResult};
use crate::db;
use crate::http::error::Error;
use crate::http::runs::parse_id;
use crate::http::AppState;
use crate::report::compare::{
    self, legend_items, pareto_checkpoints, summary_table, CompareRun, LegendItem, Options, SummaryTable, XAxis,
    SUMMARY_COLUMNS,
};
use crate::report::{self, RunMeta};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/compare", get(show))
        .route("/sweeps/{id}", get(show_sweep))
        .route("/compare/charts/{file}", get(chart))
        .route("/compare/summary.csv", get(summary_csv))
        .route("/compare/series.csv", get(series_csv))
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
/// was submitted (`opts=1`: an unchecked box sends nothing).
fn options(q: &[(String, String)]) -> (Options, bool) {
    let submitted = flag(q, "opts");
    let smooth = value(q, "smooth").and_then(|s| s.parse::<f64>().ok()).filter(|s| s.is_finite()).unwrap_or(0.0);
    let opts = Options {
        x: value(q, "x").and_then(XAxis::parse).unwrap_or_default(),
        log_x: flag(q, "log_x"),
        smooth: smooth.clamp(0.0, 0.99),
        aggregate_seeds: flag(q, "seeds"),
    };
    (opts, if submitted { flag(q, "diff") } else { true })
}

fn options_query(opts: &Options, diff: bool) -> String {
    let mut q = format!("opts=1&x={}&smooth={}", opts.x.as_str(), opts.smooth);
    for (on, key) in [(opts.log_x, "log_x"), (opts.aggregate_seeds, "seeds"), (diff, "diff")] {
        if on {
            q.push_str(&format!("&{key}=1"));
        }
    }
    q
}

pub struct SweepView {
    pub id: i64,
    pub created: String,
    pub base: String,
    pub grid: String,
}

pub struct ParetoView {
    pub run_id: i64,
    pub label: String,
    pub step: i64,
    pub kl: String,
    pub gold: String,
    pub archive: String,
}

#[derive(Template)]
#[template(path = "compare.html")]
struct ComparePage {
    title: String,
    sweep: Option<SweepView>,
    /// Hidden inputs that keep the selection in the options form.
    hidden: Vec<(&'static str, String)>,
    query: String,
    run_count: usize,
    status_text: String,
    live: bool,
    x_options: Vec<(&'static str, &'static str, bool)>,
    log_x: bool,
    smooth: String,
    seeds: bool,
    diff: bool,
    overoptimization: String,
    ood: String,
    legend: Vec<LegendItem>,
    table: SummaryTable,
    columns: &'static [&'static str],
    pareto: Vec<ParetoView>,
}

async fn render(
    state: &AppState,
    selection: Selection,
    q: &[(String, String)],
    sweep: Option<SweepView>,
) -> PageResult {
    let (opts, diff) = options(q);
    let runs = load(state, &selection).await?;
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
    let figure = compare::overoptimization(&runs, &opts);
    let title = match &sweep {
        Some(s) => format!("Sweep {}", s.id),
        None => "Compare runs".to_string(),
    };
    let hidden = match &selection {
        Selection::Sweep(id) => vec![("sweep", id.to_string())],
        Selection::Runs(ids) => {
            vec![("runs", ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))]
        }
    };
    let page_data = ComparePage {
        title,
        sweep,
        hidden: if matches!(selection, Selection::Sweep(_)) { Vec::new() } else { hidden },
        query: format!("{}&{}", selection.query(), options_query(&opts, diff)),
        run_count: runs.len(),
        status_text,
        live,
        x_options: XAxis::ALL.iter().map(|x| (x.as_str(), x.label(), *x == opts.x)).collect(),
        log_x: opts.log_x,
        smooth: num(Some(opts.smooth)),
        seeds: opts.aggregate_seeds,
        diff,
        overoptimization: figure.to_svg(),
        ood: compare::ood_mass(&runs, &opts).to_svg(),
        legend: legend_items(&figure),
        table: summary_table(&runs, diff),
        columns: &SUMMARY_COLUMNS,
        pareto: pareto_checkpoints(&runs)
            .into_iter()
            .map(|p| ParetoView {
                archive: format!("/api/runs/{}/checkpoints/{}/archive", p.run_id, p.step),
                run_id: p.run_id,
                label: p.label,
                step: p.step,
                kl: num(Some(p.kl)),
                gold: num(Some(p.gold)),
            })
            .collect(),
    };
    page(StatusCode::OK, &page_data)
}

async fn show(State(state): State<AppState>, RawQuery(query): RawQuery) -> PageResult {
    let q = pairs(query.as_deref().unwrap_or(""));
    let selection = Selection::from_query(&q)?;
    let sweep = match &selection {
        Selection::Sweep(id) => Some(sweep_view(&state, *id).await?),
        Selection::Runs(_) => None,
    };
    render(&state, selection, &q, sweep).await
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
    let q = pairs(query.as_deref().unwrap_or(""));
    render(&state, Selection::Sweep(id), &q, Some(sweep)).await
}

/// `/compare/charts/{overoptimization|ood}.{svg|png}?runs=…|sweep=…&x=…`
async fn chart(State(state): State<AppState>, Path(file): Path<String>, RawQuery(query): RawQuery) -> PageResult {
    let q = pairs(query.as_deref().unwrap_or(""));
    let (opts, _) = options(&q);
    let (name, ext) = file.rsplit_once('.').ok_or_else(|| Error::NotFound(format!("chart {file:?}")))?;
    let runs = load(&state, &Selection::from_query(&q)?).await?;
    let figure = match name {
        "overoptimization" => compare::overoptimization(&runs, &opts),
        "ood" => compare::ood_mass(&runs, &opts),
        other => return Err(Error::NotFound(format!("chart {other:?}")).into()),
    };
    figure_file(&figure, name, ext)
}

async fn summary_csv(State(state): State<AppState>, RawQuery(query): RawQuery) -> PageResult {
    let q = pairs(query.as_deref().unwrap_or(""));
    let (_, diff) = options(&q);
    let runs = load(&state, &Selection::from_query(&q)?).await?;
    Ok(csv_file("summary.csv", compare::summary_csv(&summary_table(&runs, diff))))
}

async fn series_csv(State(state): State<AppState>, RawQuery(query): RawQuery) -> PageResult {
    let q = pairs(query.as_deref().unwrap_or(""));
    let runs = load(&state, &Selection::from_query(&q)?).await?;
    Ok(csv_file("series.csv", compare::series_csv(&runs)))
}
