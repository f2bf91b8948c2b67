//! `/runs/{id}`: status, progress and ETA (the place in the queue before it starts, π_init's SFT
//! before its first step), config, the error of a failed run, the overoptimization summary with
//! both fits, the charts (each also at `/runs/{id}/charts/<chart>.svg|png`, which the page's
//! script fetches again as new metrics arrive), the run's Pareto front and its checkpoints with
//! their downloads, and cancel, retry (from the last checkpoint, or start over) and clone. The
//! script also keeps the buttons, badges and tables in step with the run, without a reload.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use super::{bytes, figure_file, num, page, see_other, when, PageResult};
use crate::charts::colour::hex;
use crate::db::{self, runs::Run, runs::RunStatus};
use crate::http::auth::Identity;
use crate::http::error::Error;
use crate::http::runs::{find, parse_id, RetryFrom};
use crate::http::security::CsrfToken;
use crate::http::workers::{live_slots, workers, WorkerView};
use crate::http::AppState;
use crate::report::compare::fit_cell;
use crate::report::run::{figure, RunChart};
use crate::report::runs::{estimate, RunRow};
use crate::report::style::{Style, Styles};
use crate::report::{self, duration, Series};
use trainer::metric_names as names;
use trainer::summary::{FitForm, RunSummary};
use trainer::tasks::toy_tree::SFT_TARGET_KL;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/runs/{id}", get(show))
        .route("/runs/{id}/charts/{file}", get(chart))
        .route("/runs/{id}/cancel", post(cancel))
        .route("/runs/{id}/retry", post(retry))
}

pub struct ChartView {
    pub slug: &'static str,
    pub title: &'static str,
    pub svg: String,
}

pub struct CheckpointView {
    pub step: i64,
    pub kl: String,
    pub gold: String,
    /// Why it is kept: "peak", "Pareto front", "periodic", "last".
    pub why: String,
    pub size: String,
    pub archive: String,
    /// The weights alone (`model.safetensors`), when recorded.
    pub weights: Option<String>,
}

pub struct ParetoView {
    pub step: i64,
    pub kl: String,
    pub gold: String,
    pub peak: bool,
    pub archive: Option<String>,
}

pub struct SummaryItem {
    pub name: &'static str,
    pub value: String,
    /// A longer explanation (hover), or why the value should not be taken at face value.
    pub title: String,
    pub warning: bool,
}

impl SummaryItem {
    fn plain(name: &'static str, value: String) -> Self {
        Self { name, value, title: String::new(), warning: false }
    }
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    id: i64,
    label: String,
    method: String,
    colour: String,
    status: &'static str,
    live: bool,
    cancellable: bool,
    retryable: bool,
    /// The step a retry resumes from (the last recorded checkpoint).
    resume_step: Option<i64>,
    cancel_requested: bool,
    total_steps: i64,
    percent: Option<u32>,
    progress_text: String,
    /// What a queued run waits for: "a free trainer", or a worker with the labels it requires.
    waits_for: String,
    /// A queued run that no live worker can take.
    no_worker: Option<NoWorker>,
    error: String,
    /// Why a finished run ended before its last step.
    status_reason: String,
    /// The overoptimization alarm: "past peak since step N (KL x)" and its explanation, or empty.
    past_peak: String,
    past_peak_title: String,
    /// What the alarm watches, or why there is none.
    overopt_note: String,
    /// The peak's checkpoint, when its weights were kept: (step, archive link).
    best_policy: Option<(i64, String)>,
    sweep: Option<i64>,
    parent: Option<i64>,
    created: String,
    /// The user who launched it.
    launched_by: Option<String>,
    /// The worker training it, or that trained it.
    worker: Option<String>,
    summary: Vec<SummaryItem>,
    charts: Vec<ChartView>,
    pareto: Vec<ParetoView>,
    checkpoints: Vec<CheckpointView>,
    config: Vec<(String, String)>,
    toml: String,
    csrf: String,
}

/// No live worker can take a queued run: the labels it requires (`gpu=h100`; empty: none), and
/// how many workers are live.
struct NoWorker {
    labels: String,
    live: usize,
}

/// Whether none of the live `workers` can take a queued run that requires `requires`.
fn no_worker(workers: &[WorkerView], requires: &BTreeMap<String, String>) -> Option<NoWorker> {
    let live: Vec<&WorkerView> = workers.iter().filter(|w| w.live).collect();
    let taken = live.iter().any(|w| trainer::config::labels_satisfy(&w.labels, requires));
    (!taken).then(|| NoWorker { labels: trainer::config::labels_text(requires), live: live.len() })
}

/// Every metric the charts read, by name.
async fn chart_series(state: &AppState, run: &Run) -> Result<BTreeMap<String, Series>, Error> {
    let mut names: Vec<String> = RunChart::ALL
        .iter()
        .flat_map(|c| c.metrics())
        .chain(report::EVAL_METRICS.iter())
        .map(|s| (*s).to_string())
        .collect();
    names.sort();
    names.dedup();
    let mut read = state.ended_runs.series(&state.pool, std::slice::from_ref(run), &names).await?;
    Ok(read.remove(&run.id).map(|s| (*s).clone()).unwrap_or_default())
}

/// The styles of the run's sweep (or the run alone): its colour and dash as the sweep shows them.
async fn style_of(state: &AppState, run: &Run, meta: &report::RunMeta) -> Result<Style, Error> {
    let siblings = match run.sweep_id {
        Some(sweep) => db::runs::list(&state.pool, None, Some(sweep), db::runs::Sort::Oldest).await?,
        None => Vec::new(),
    };
    let metas: Vec<report::RunMeta> = siblings.iter().map(|r| report::RunMeta::new(r.id, &r.config_json())).collect();
    let styles = Styles::for_runs(metas.iter().chain(metas.is_empty().then_some(meta)));
    Ok(styles.of(meta))
}

/// The overoptimization summary, with units, and both fits: "no peak yet" until the curve turns
/// down, and a warning where a fit's optimum is not the observed one.
fn summary_items(s: &RunSummary) -> Vec<SummaryItem> {
    let mut out = vec![
        SummaryItem::plain("start gold reward", num(Some(s.start_gold))),
        SummaryItem::plain("peak gold reward", format!("{} at step {}", num(Some(s.peak_gold)), s.peak_step)),
        SummaryItem::plain(
            "KL to π_init at the peak",
            format!("{} nats (d = {} √nats)", num(Some(s.peak_kl)), num(Some(s.peak_d()))),
        ),
        SummaryItem::plain("final gold reward", num(Some(s.final_gold))),
        SummaryItem::plain("drop (peak − final)", num(Some(s.drop))),
    ];
    if !s.peaked {
        out.push(SummaryItem {
            name: "peak",
            value: "no peak yet".into(),
            title: "the gold reward has not turned down beyond noise since its highest evaluation".into(),
            warning: false,
        });
    }
    for (name, form) in [("RL fit (Gao et al.)", FitForm::Rl), ("best-of-n fit (Gao et al.)", FitForm::BestOfN)] {
        let cell = fit_cell(s, form);
        out.push(SummaryItem { name, value: cell.text, title: cell.title, warning: cell.warning });
    }
    out
}

/// What the overoptimization alarm watches on this run, or why it has none.
fn overopt_note(
    cfg: &trainer::config::RunConfig,
    evals: &[report::Eval],
    series: &BTreeMap<String, Series>,
    past: bool,
    finished: bool,
) -> String {
    let patience = cfg.early_stopping_patience;
    let stops = if cfg.early_stopping { "; early_stopping stops the run when it fires" } else { "" };
    if !cfg.has_gold_reward() {
        let mut note = "No overoptimization alarm: this run has no gold reward (set reward_model_path to a judge), \
                        and without one nothing measured here says when the policy passed its best. The proxies \
                        chart shows the held-out implicit reward against KL to π_init: proxies the policy itself \
                        optimizes, not evidence of quality."
            .to_string();
        note.push_str(&proxy_warning(series));
        return note;
    }
    if past {
        return match (cfg.early_stopping, finished) {
            (true, true) => "Past its peak: early_stopping ended the run when the alarm fired.".to_string(),
            (true, false) => "Past its peak: early_stopping ends the run now.".to_string(),
            (false, _) => "Past its peak; early_stopping is off, so the run goes on.".to_string(),
        };
    }
    match evals.iter().rev().find(|e| e.peak_step.is_some()) {
        Some(e) => format!(
            "Not past its peak: the best gold reward so far is at step {} (KL {}); the alarm fires after {patience} \
             evaluations in a row below it by more than 2 standard errors{stops}.",
            e.peak_step.unwrap_or_default(),
            num(e.peak_kl),
        ),
        None => format!(
            "The alarm watches the gold reward from the first evaluation: it fires after {patience} evaluations in a \
             row below its peak{stops}."
        ),
    }
}

/// " The held-out chosen log-probability fell … while the margin grew …", when it did between the
/// first and the latest evaluation: the pattern the overoptimization literature reads as the
/// policy pushing probability off both answers.
fn proxy_warning(series: &BTreeMap<String, Series>) -> String {
    let ends = |name: &str| -> Option<(f64, f64)> {
        let values: Vec<f64> = series.get(name)?.iter().filter_map(|(_, v)| *v).filter(|v| v.is_finite()).collect();
        Some((*values.first()?, *values.last()?)).filter(|_| values.len() >= 2)
    };
    match (ends(names::EVAL_LOGPS_CHOSEN), ends(names::EVAL_REWARDS_MARGINS)) {
        (Some((c0, c1)), Some((m0, m1))) if c1 < c0 && m1 > m0 => format!(
            " ⚠ The held-out chosen log-probability fell from {} to {} nats while the margin grew from {} to {}: \
             the policy is pushing probability off the preferred answers too, a sign (not proof) of \
             overoptimization.",
            num(Some(c0)),
            num(Some(c1)),
            num(Some(m0)),
            num(Some(m1))
        ),
        _ => String::new(),
    }
}

async fn show(State(state): State<AppState>, csrf: CsrfToken, Path(id): Path<String>) -> PageResult {
    let run = find(&state, &id).await?;
    let series = chart_series(&state, &run).await?;
    let evals = report::evals(&series);
    let checkpoints = db::checkpoints::list(&state.pool, run.id).await?;
    let steps: Vec<i64> = checkpoints.iter().map(|c| c.step).collect();
    let mut row = RunRow::new(&run, &evals, &steps);
    // Who could take a queued run: its place in the queue, and whether any live worker can.
    let workers = if row.status == RunStatus::Queued { workers(&state).await? } else { Vec::new() };
    if row.status == RunStatus::Queued {
        // Its place in the queue depends on every run in it.
        let everything = db::runs::list(&state.pool, None, None, db::runs::Sort::Oldest).await?;
        let mut rows: Vec<RunRow> =
            everything.iter().filter(|r| !r.status().is_terminal()).map(|r| RunRow::new(r, &[], &[])).collect();
        estimate(&mut rows, live_slots(&workers));
        if let Some(me) = rows.into_iter().find(|r| r.id() == run.id) {
            (row.queue_position, row.starts_in, row.eta) = (me.queue_position, me.starts_in, me.eta);
        }
    }
    let sft = if run.total_steps.is_none() && row.status == RunStatus::Running {
        db::metrics::latest_sft(&state.pool, &[run.id]).await?.remove(&run.id)
    } else {
        None
    };
    let meta = &row.meta;
    let status = row.status;
    let style = style_of(&state, &run, meta).await?;

    let mut checkpoint_views = Vec::with_capacity(checkpoints.len());
    for c in &checkpoints {
        let at = evals.iter().find(|e| e.step == c.step);
        let files = db::checkpoints::files(&state.pool, run.id, c.step).await?;
        let base = format!("/api/runs/{}/checkpoints/{}", run.id, c.step);
        let mut why = Vec::new();
        if let Some(s) = &row.summary {
            if s.peak_step as i64 == c.step {
                why.push("peak");
            }
            if s.pareto.iter().any(|p| p.step as i64 == c.step) {
                why.push("Pareto front");
            }
        }
        let save_steps = i64::try_from(meta.config.save_steps).unwrap_or(0);
        if save_steps > 0 && c.step > 0 && c.step % save_steps == 0 {
            why.push("every save_steps");
        }
        if Some(c.step) == run.total_steps {
            why.push("last step");
        }
        if why.is_empty() && Some(&c.step) == steps.last() {
            why.push("newest: a resume starts here");
        }
        checkpoint_views.push(CheckpointView {
            step: c.step,
            kl: num(at.and_then(|e| e.kl)),
            gold: num(at.and_then(|e| e.gold)),
            why: why.join(", "),
            size: bytes(c.bytes),
            archive: format!("{base}/archive"),
            weights: files
                .iter()
                .any(|f| f.name == "model.safetensors")
                .then(|| format!("{base}/files/model.safetensors")),
        });
    }
    let summary = row.summary.as_ref().map(summary_items).unwrap_or_default();
    let pareto = row
        .summary
        .as_ref()
        .map(|s| {
            s.pareto
                .iter()
                .map(|p| ParetoView {
                    step: p.step as i64,
                    kl: num(Some(p.kl)),
                    gold: num(Some(p.gold)),
                    peak: p.step == s.peak_step,
                    archive: p.checkpoint.then(|| format!("/api/runs/{}/checkpoints/{}/archive", run.id, p.step)),
                })
                .collect()
        })
        .unwrap_or_default();
    let stored = run.config_json();
    let config = stored
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        match v {
                            serde_json::Value::String(s) => s.clone(),
                            serde_json::Value::Null => "unset".into(),
                            other => other.to_string(),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // A run that requires labels waits for a worker that has them (`goodhart worker --labels`).
    let waits_for = match &meta.config.requires {
        labels if labels.is_empty() => "a free trainer".to_string(),
        labels => format!("a free worker labelled {}", trainer::config::labels_text(labels)),
    };
    let no_worker = if status == RunStatus::Queued { no_worker(&workers, &meta.config.requires) } else { None };
    let mut progress_text = match (status, run.total_steps) {
        (RunStatus::Queued, _) => match row.queue_position {
            Some(1) => format!("waiting for {waits_for}: next in the queue"),
            Some(n) => format!("waiting for {waits_for}: {} runs ahead in the queue", n - 1),
            None => format!("waiting for {waits_for}"),
        },
        (RunStatus::Running, None) => match &sft {
            Some((step, values)) => {
                let kl = values
                    .get(names::SFT_KL_BEHAVIOUR)
                    .map(|kl| format!(", KL(behaviour ‖ π) {} nats (stops at {})", num(Some(*kl)), SFT_TARGET_KL))
                    .unwrap_or_default();
                format!("building π_init: SFT step {step}{kl}")
            }
            None if meta.config.task.is_toy() => "starting: the toy task trains (or loads) its π_init first".into(),
            None => "starting".into(),
        },
        (_, None) => format!("step {}", run.step),
        (_, Some(total)) => format!("step {} of {total}", run.step),
    };
    match (status, row.starts_in, row.eta) {
        (RunStatus::Queued, Some(start), Some(end)) => {
            progress_text.push_str(&format!(" · starts in ~{}, ends in ~{}", duration(start), duration(end)));
        }
        (RunStatus::Running, _, Some(eta)) => progress_text.push_str(&format!(" · ETA {}", duration(eta))),
        _ => {}
    }
    let page_data = RunPage {
        id: run.id,
        label: meta.short_label(),
        method: meta.method(),
        colour: hex(style.colour),
        status: status.as_str(),
        live: !status.is_terminal(),
        cancellable: matches!(status, RunStatus::Queued | RunStatus::Running) && !run.cancel_requested(),
        retryable: matches!(status, RunStatus::Failed | RunStatus::Cancelled),
        resume_step: steps.last().copied(),
        cancel_requested: run.cancel_requested() && status == RunStatus::Running,
        total_steps: run.total_steps.unwrap_or(0),
        percent: row.progress.map(|p| (p * 100.0).round() as u32),
        progress_text,
        waits_for,
        no_worker,
        error: run.error.clone().unwrap_or_default(),
        status_reason: run.status_reason.clone().filter(|_| status == RunStatus::Finished).unwrap_or_default(),
        past_peak: row.past_peak.map(|p| p.badge()).unwrap_or_default(),
        past_peak_title: row.past_peak.map(|p| p.title()).unwrap_or_default(),
        best_policy: row
            .summary
            .as_ref()
            .map(|s| s.peak_step as i64)
            .filter(|step| steps.contains(step))
            .map(|step| (step, format!("/api/runs/{}/checkpoints/{step}/archive", run.id))),
        overopt_note: overopt_note(&meta.config, &evals, &series, row.past_peak.is_some(), status.is_terminal()),
        sweep: run.sweep_id,
        parent: run.parent_id,
        created: when(run.created_at),
        launched_by: run.launched_by.clone(),
        worker: run.worker.as_deref().map(crate::http::runs::public_worker),
        summary,
        charts: charts_in_order(meta.config.task.is_toy(), sft.is_some())
            .into_iter()
            .map(|c| ChartView {
                slug: c.slug(),
                title: c.title(),
                svg: figure(meta, style, &series, c, &steps).to_svg(),
            })
            .collect(),
        pareto,
        checkpoints: checkpoint_views,
        config,
        toml: toml::to_string(&meta.config).unwrap_or_default(),
        csrf: csrf.0,
    };
    page(StatusCode::OK, &page_data)
}

/// The charts a run page shows: π_init's SFT for toy tasks only, and first while it runs.
fn charts_in_order(toy: bool, building_initial_policy: bool) -> Vec<RunChart> {
    // Toy tasks have a gold reward; the held-out proxies are for runs on a dataset.
    let mut charts: Vec<RunChart> = RunChart::ALL
        .into_iter()
        .filter(|c| match c {
            RunChart::Sft => toy,
            RunChart::Proxies => !toy,
            _ => true,
        })
        .collect();
    if building_initial_policy {
        charts.sort_by_key(|c| *c != RunChart::Sft);
    }
    charts
}

/// `/runs/{id}/charts/<chart>.svg|png`
async fn chart(State(state): State<AppState>, Path((id, file)): Path<(String, String)>) -> PageResult {
    let run = find(&state, &id).await?;
    let (name, ext) = file.rsplit_once('.').ok_or_else(|| Error::NotFound(format!("chart {file:?}")))?;
    let chart = RunChart::parse(name).ok_or_else(|| Error::NotFound(format!("chart {name:?}")))?;
    let series = chart_series(&state, &run).await?;
    let meta = report::RunMeta::new(run.id, &run.config_json());
    let style = style_of(&state, &run, &meta).await?;
    let steps: Vec<i64> = db::checkpoints::list(&state.pool, run.id).await?.iter().map(|c| c.step).collect();
    figure_file(&figure(&meta, style, &series, chart, &steps), &format!("run-{}-{name}", run.id), ext)
}

async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> PageResult {
    let id = parse_id(&id, "run")?;
    state.queue.cancel(id).await?;
    Ok(see_other(&format!("/runs/{id}")))
}

/// The form's `from`: `checkpoint` (default) resumes this run, `start` makes a new one.
async fn retry(State(state): State<AppState>, who: Identity, Path(id): Path<String>, body: String) -> PageResult {
    let id = parse_id(&id, "run")?;
    let form = super::pairs(&body);
    let target = match RetryFrom::parse(super::value(&form, "from"))? {
        RetryFrom::Checkpoint => {
            crate::http::runs::resume_run(&state, id).await?;
            id
        }
        RetryFrom::Start => crate::http::runs::retry_run(&state, id, &who).await?,
    };
    Ok(see_other(&format!("/runs/{target}")))
}
