//! Comparing runs (a sweep, or any selection): the overoptimization chart (gold reward along
//! the distance from π_init, one path per run, faceted by loss), OOD mass against step, the
//! summary table, the Pareto front of checkpoints, and their CSVs.

use std::collections::BTreeSet;

use serde_json::Value;
use trainer::config::LossType;
use trainer::summary::{self, EvalPoint, MeanCi, RunSummary};

use super::{csv_field, Eval, RunMeta};
use crate::charts::colour::{self, FIXED_REFERENCE};
use crate::charts::downsample::downsample;
use crate::charts::{number, Axis, Band, Dash, Figure, Hover, LegendEntry, Line, LineKind, Marker, Panel, Shape};
use plotters::style::RGBColor;

/// Points a drawn line keeps (the SVG must stay small for dozens of runs); the extremes and
/// the peak are always among them.
const LINE_POINTS: usize = 400;
/// Hover targets per line, besides the peak.
const HOVERS_PER_LINE: usize = 24;
/// Bins along the x axis when seeds are aggregated.
const BINS: usize = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XAxis {
    Step,
    Kl,
    #[default]
    SqrtKl,
}

impl XAxis {
    pub const ALL: [XAxis; 3] = [Self::Step, Self::Kl, Self::SqrtKl];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Step => "step",
            Self::Kl => "kl",
            Self::SqrtKl => "sqrt_kl",
        }
    }

    /// The axis label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Step => "step",
            Self::Kl => "KL(π_θ ‖ π_init) (nats)",
            Self::SqrtKl => "sqrt(KL(π_θ ‖ π_init))",
        }
    }

    /// The name in tooltips.
    fn short(self) -> &'static str {
        match self {
            Self::Step => "step",
            Self::Kl => "KL",
            Self::SqrtKl => "sqrt(KL)",
        }
    }

    fn of(self, e: &Eval) -> Option<f64> {
        match self {
            Self::Step => Some(e.step as f64),
            Self::Kl => e.kl,
            Self::SqrtKl => e.kl.map(|k| k.max(0.0).sqrt()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub x: XAxis,
    pub log_x: bool,
    /// Exponential moving average weight in [0, 1): 0 draws the raw data alone.
    pub smooth: f64,
    /// One mean line with a 95% band per configuration, over its seeds.
    pub aggregate_seeds: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { x: XAxis::SqrtKl, log_x: false, smooth: 0.0, aggregate_seeds: false }
    }
}

/// One run with what comparing it needs.
#[derive(Debug, Clone)]
pub struct CompareRun {
    pub meta: RunMeta,
    pub evals: Vec<Eval>,
    pub checkpoints: Vec<i64>,
    pub summary: Option<RunSummary>,
}

impl CompareRun {
    pub fn new(meta: RunMeta, evals: Vec<Eval>, checkpoints: Vec<i64>) -> Self {
        let summary = super::summarize(&evals, &checkpoints);
        Self { meta, evals, checkpoints, summary }
    }
}

/// Runs by loss type, in the order DPO, IPO, KTO; one panel each.
fn facets(runs: &[CompareRun]) -> Vec<(LossType, Vec<&CompareRun>)> {
    [LossType::Sigmoid, LossType::Ipo, LossType::Kto]
        .into_iter()
        .map(|loss| (loss, runs.iter().filter(|r| r.meta.config.loss_type == loss).collect::<Vec<_>>()))
        .filter(|(_, members)| !members.is_empty())
        .collect()
}

fn facet_title(loss: LossType) -> String {
    let name = super::loss_name(loss);
    format!("{name} and TR-{name}")
}

/// The line patterns on the chart, explained.
fn dash_legend(runs: &[&CompareRun]) -> Vec<LegendEntry> {
    let mut out = Vec::new();
    if runs.iter().any(|r| r.meta.alpha().is_none()) {
        out.push(LegendEntry { label: "fixed reference".into(), colour: FIXED_REFERENCE, dash: Dash::Solid });
    }
    let dashes: BTreeSet<Dash> = runs.iter().filter(|r| r.meta.alpha().is_some()).map(|r| r.meta.dash()).collect();
    for dash in dashes {
        out.push(LegendEntry { label: dash.describe().into(), colour: RGBColor(110, 110, 110), dash });
    }
    out
}

/// Gold reward against the chosen x axis, one path per run (or per configuration, with seeds
/// aggregated), a panel per loss type, Pareto-optimal checkpoints marked.
pub fn overoptimization(runs: &[CompareRun], opts: &Options) -> Figure {
    let front = pareto_checkpoints(runs);
    let facets = facets(runs);
    let x = Axis { label: opts.x.label().into(), log: opts.log_x };
    let mut panels: Vec<Panel> = facets
        .iter()
        .map(|(loss, members)| {
            let (lines, bands) = lines(members, opts, |e| Some((opts.x.of(e)?, e.gold?)), (opts.x.short(), "gold"));
            let markers = front
                .iter()
                .filter(|p| members.iter().any(|r| r.meta.id == p.run_id))
                .filter_map(|p| {
                    let e = Eval { step: p.step, kl: Some(p.kl), kl_ref: None, gold: Some(p.gold), ood: None };
                    Some(Marker {
                        key: format!("run-{}", p.run_id),
                        x: opts.x.of(&e)?,
                        y: p.gold,
                        colour: RGBColor(200, 30, 30),
                        shape: Shape::Cross,
                        text: format!(
                            "Pareto-optimal checkpoint · {} · step {} · KL {} · gold {}",
                            p.label,
                            p.step,
                            number(p.kl),
                            number(p.gold)
                        ),
                    })
                })
                .collect();
            Panel {
                title: facet_title(*loss),
                x: x.clone(),
                y: Axis::new("gold reward"),
                bands,
                lines,
                markers,
                legend: Vec::new(),
                empty_note: "no evaluations logged yet".into(),
            }
        })
        .collect();
    if let Some(last) = panels.last_mut() {
        last.legend = dash_legend(&runs.iter().collect::<Vec<_>>());
    }
    if panels.is_empty() {
        panels.push(Panel {
            x,
            y: Axis::new("gold reward"),
            empty_note: "no runs to compare".into(),
            ..Panel::default()
        });
    }
    let against = if opts.x == XAxis::Step { "step" } else { "distance from π_init" };
    let width = if panels.len() > 1 { 1200 } else { 1000 };
    Figure { title: format!("Gold reward against {against}"), size: (width, 540), panels, colour_bar: true }
}

/// Out-of-domain probability mass against step.
pub fn ood_mass(runs: &[CompareRun], opts: &Options) -> Figure {
    let all: Vec<&CompareRun> = runs.iter().collect();
    let step_opts = Options { x: XAxis::Step, log_x: false, ..opts.clone() };
    let (lines, bands) = lines(&all, &step_opts, |e| Some((e.step as f64, e.ood?)), ("step", "OOD mass"));
    Figure {
        title: "Out-of-domain probability mass".into(),
        size: (1000, 460),
        panels: vec![Panel {
            title: String::new(),
            x: Axis::new("step"),
            y: Axis::new("eval/ood_mass"),
            bands,
            lines,
            markers: Vec::new(),
            legend: dash_legend(&all),
            empty_note: "no OOD mass logged (toy-tree runs log it)".into(),
        }],
        colour_bar: true,
    }
}

/// The lines (and, with seeds aggregated, bands) of `members`, with `xy` reading an evaluation.
fn lines(
    members: &[&CompareRun],
    opts: &Options,
    xy: impl Fn(&Eval) -> Option<(f64, f64)>,
    names: (&str, &str),
) -> (Vec<Line>, Vec<Band>) {
    let track = |r: &CompareRun| -> Vec<(i64, f64, f64)> {
        let points: Vec<(i64, f64, f64)> = r
            .evals
            .iter()
            .filter_map(|e| xy(e).map(|(x, y)| (e.step, x, y)))
            .filter(|(_, x, y)| x.is_finite() && y.is_finite())
            .collect();
        // A path in KL is a trajectory: both coordinates are noisy and smoothed together.
        ema(&points, opts.smooth, opts.x != XAxis::Step)
    };
    let raw = |r: &CompareRun| -> Vec<(i64, f64, f64)> {
        r.evals
            .iter()
            .filter_map(|e| xy(e).map(|(x, y)| (e.step, x, y)))
            .filter(|(_, x, y)| x.is_finite() && y.is_finite())
            .collect()
    };
    let mut out = Vec::new();
    let mut bands = Vec::new();
    if !opts.aggregate_seeds {
        for r in members {
            out.extend(run_lines(&r.meta, &raw(r), &track(r), opts.smooth > 0.0, names));
        }
        return (out, bands);
    }
    for group in seed_groups(members) {
        if group.len() == 1 {
            out.extend(run_lines(&group[0].meta, &raw(group[0]), &track(group[0]), opts.smooth > 0.0, names));
            continue;
        }
        let tracks: Vec<Vec<(i64, f64, f64)>> = group.iter().map(|r| track(r)).collect();
        let (line, band) = aggregate(group[0], group.len(), &tracks, names);
        out.extend(line);
        bands.extend(band);
    }
    (out, bands)
}

/// A run's line (downsampled, with hover targets) and, when smoothed, its raw data faint.
fn run_lines(
    meta: &RunMeta,
    raw: &[(i64, f64, f64)],
    smoothed: &[(i64, f64, f64)],
    show_raw: bool,
    (x_name, y_name): (&str, &str),
) -> Vec<Line> {
    if smoothed.is_empty() {
        return Vec::new();
    }
    let label = meta.label();
    let main = downsample(smoothed, LINE_POINTS, |p| Some(p.2));
    let mut hover_at: Vec<usize> = (0..HOVERS_PER_LINE).map(|i| i * (main.len() - 1) / (HOVERS_PER_LINE - 1)).collect();
    if let Some(peak) = (0..main.len()).max_by(|&a, &b| main[a].2.total_cmp(&main[b].2)) {
        hover_at.push(peak);
    }
    hover_at.sort_unstable();
    hover_at.dedup();
    let hover = hover_at
        .into_iter()
        .map(|i| {
            let (step, x, y) = main[i];
            let x_text = if x_name == "step" { String::new() } else { format!(" · {x_name} {}", number(x)) };
            Hover { x, y, text: format!("{label} · step {step}{x_text} · {y_name} {}", number(y)) }
        })
        .collect();
    let mut lines = Vec::new();
    if show_raw {
        lines.push(Line {
            key: meta.key(),
            label: format!("{label} (raw)"),
            kind: LineKind::Raw,
            colour: meta.colour(),
            dash: meta.dash(),
            points: downsample(raw, LINE_POINTS, |p| Some(p.2)).into_iter().map(|(_, x, y)| (x, y)).collect(),
            hover: Vec::new(),
        });
    }
    lines.push(Line {
        key: meta.key(),
        label,
        kind: LineKind::Main,
        colour: meta.colour(),
        dash: meta.dash(),
        points: main.into_iter().map(|(_, x, y)| (x, y)).collect(),
        hover,
    });
    lines
}

/// Runs that differ only in their seed, in the order they first appear.
fn seed_groups<'a>(members: &[&'a CompareRun]) -> Vec<Vec<&'a CompareRun>> {
    let mut groups: Vec<(String, Vec<&CompareRun>)> = Vec::new();
    for r in members {
        let mut params = r.meta.params.clone();
        params.remove("seed");
        let key = Value::Object(params).to_string();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(r),
            None => groups.push((key, vec![r])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// The mean over seeds with its 95% confidence band, binned along x: each seed's points are
/// averaged within a bin, then the bin's seeds are averaged. A bin that fewer than half the
/// seeds reach is left out: its mean would be of a different subset of seeds than its
/// neighbours', and its band (t with one or two degrees of freedom) would swamp the chart.
fn aggregate(
    first: &CompareRun,
    seeds: usize,
    tracks: &[Vec<(i64, f64, f64)>],
    (x_name, y_name): (&str, &str),
) -> (Option<Line>, Option<Band>) {
    let xs = tracks.iter().flatten().map(|p| p.1);
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| (l.min(x), h.max(x)));
    if lo > hi {
        return (None, None);
    }
    let bin_of = |x: f64| {
        if hi > lo {
            (((x - lo) / (hi - lo)) * BINS as f64).floor().min(BINS as f64 - 1.0) as usize
        } else {
            0
        }
    };
    // Per bin: each seed's mean (x, y).
    let mut per_bin: Vec<Vec<(f64, f64)>> = vec![Vec::new(); BINS];
    for track in tracks {
        let mut sums = vec![(0.0, 0.0, 0usize); BINS];
        for &(_, x, y) in track {
            let s = &mut sums[bin_of(x)];
            (s.0, s.1, s.2) = (s.0 + x, s.1 + y, s.2 + 1);
        }
        for (bin, (sx, sy, n)) in sums.into_iter().enumerate() {
            if n > 0 {
                per_bin[bin].push((sx / n as f64, sy / n as f64));
            }
        }
    }
    let mut base = first.meta.clone();
    base.params.remove("seed");
    let label = format!("{} · mean of {seeds} seeds", base.short_label());
    let key = format!("group-{}", first.meta.id);
    let (mut points, mut band, mut hover) = (Vec::new(), Vec::new(), Vec::new());
    let min_seeds = if seeds >= 2 { seeds.div_ceil(2).max(2) } else { 1 };
    for values in per_bin.iter().filter(|v| !v.is_empty() && v.len() >= min_seeds) {
        let x = values.iter().map(|v| v.0).sum::<f64>() / values.len() as f64;
        let Some(y) = MeanCi::of(&values.iter().map(|v| v.1).collect::<Vec<_>>()) else { continue };
        points.push((x, y.mean));
        let mut text = format!("{label} · {x_name} {} · {y_name} {}", number(x), number(y.mean));
        if y.half_width.is_finite() {
            band.push((x, y.mean - y.half_width, y.mean + y.half_width));
            text.push_str(&format!(" ± {} (95%, {} seeds)", number(y.half_width), y.n));
        }
        hover.push(Hover { x, y: y.mean, text });
    }
    let line = Line {
        key: key.clone(),
        label,
        kind: LineKind::Main,
        colour: first.meta.colour(),
        dash: first.meta.dash(),
        points,
        hover,
    };
    let band = (!band.is_empty()).then(|| Band { key, colour: first.meta.colour(), points: band });
    (Some(line), band)
}

/// Exponential moving average of y (and of x when `both`), debiased at the start like
/// TensorBoard's smoothing. `weight` 0 returns the points unchanged.
pub fn ema(points: &[(i64, f64, f64)], weight: f64, both: bool) -> Vec<(i64, f64, f64)> {
    if weight <= 0.0 {
        return points.to_vec();
    }
    let w = weight.min(0.999);
    let (mut ax, mut ay, mut debias) = (0.0, 0.0, 1.0);
    points
        .iter()
        .map(|&(step, x, y)| {
            ax = w * ax + (1.0 - w) * x;
            ay = w * ay + (1.0 - w) * y;
            debias *= w;
            let norm = 1.0 - debias;
            (step, if both { ax / norm } else { x }, ay / norm)
        })
        .collect()
}

/// A checkpoint that no other checkpoint of the comparison beats on both KL (lower) and gold
/// reward (higher).
#[derive(Debug, Clone, PartialEq)]
pub struct ParetoCheckpoint {
    pub run_id: i64,
    pub label: String,
    pub step: i64,
    pub kl: f64,
    pub gold: f64,
}

/// The Pareto front over every run's evaluations at its checkpoint steps, by KL.
pub fn pareto_checkpoints(runs: &[CompareRun]) -> Vec<ParetoCheckpoint> {
    let candidates: Vec<(&CompareRun, EvalPoint)> = runs
        .iter()
        .flat_map(|r| {
            super::eval_points(&r.evals)
                .into_iter()
                .filter(|p| r.checkpoints.contains(&(p.step as i64)))
                .map(move |p| (r, p))
        })
        .collect();
    let points: Vec<EvalPoint> = candidates.iter().map(|(_, p)| *p).collect();
    summary::pareto_front(&points)
        .into_iter()
        .filter_map(|p| {
            let (run, _) = candidates.iter().find(|(_, c)| *c == p)?;
            Some(ParetoCheckpoint {
                run_id: run.meta.id,
                label: run.meta.label(),
                step: p.step as i64,
                kl: p.kl,
                gold: p.gold,
            })
        })
        .collect()
}

/// The summary columns after the parameters.
pub const SUMMARY_COLUMNS: [&str; 12] = [
    "start gold",
    "peak gold",
    "peak step",
    "KL at peak",
    "final gold",
    "drop",
    "drop / rise",
    "fit a",
    "fit b",
    "fit d*",
    "fit R*",
    "fit R²",
];

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryTable {
    /// Config keys shown: all of them, or those whose values differ between the runs.
    pub params: Vec<String>,
    pub rows: Vec<SummaryRow>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub run_id: i64,
    pub method: String,
    pub colour: String,
    pub params: Vec<String>,
    /// One per [`SUMMARY_COLUMNS`]; empty when unknown.
    pub cells: Vec<String>,
}

fn plain(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.as_f64().map_or_else(|| n.to_string(), number),
        Some(other) => other.to_string(),
    }
}

pub fn summary_table(runs: &[CompareRun], diff_only: bool) -> SummaryTable {
    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.meta.params.keys()).collect();
    let params: Vec<String> = keys
        .into_iter()
        .filter(|k| !diff_only || runs.iter().any(|r| r.meta.params.get(*k) != runs[0].meta.params.get(*k)))
        .cloned()
        .collect();
    let rows = runs
        .iter()
        .map(|r| {
            let s = r.summary.as_ref();
            let num = |v: Option<f64>| v.map(number).unwrap_or_default();
            let fit = s.and_then(|s| s.fit);
            SummaryRow {
                run_id: r.meta.id,
                method: r.meta.method(),
                colour: r.meta.colour_hex(),
                params: params.iter().map(|k| plain(r.meta.params.get(k))).collect(),
                cells: vec![
                    num(s.map(|s| s.start_gold)),
                    num(s.map(|s| s.peak_gold)),
                    s.map(|s| s.peak_step.to_string()).unwrap_or_default(),
                    num(s.map(|s| s.peak_kl)),
                    num(s.map(|s| s.final_gold)),
                    num(s.map(|s| s.drop)),
                    num(s.and_then(|s| s.drop_fraction)),
                    num(fit.map(|f| f.a)),
                    num(fit.map(|f| f.b)),
                    num(fit.and_then(|f| f.d_star)),
                    num(fit.and_then(|f| f.r_star)),
                    num(fit.map(|f| f.r_squared)),
                ],
            }
        })
        .collect();
    SummaryTable { params, rows }
}

pub fn summary_csv(table: &SummaryTable) -> String {
    let mut header: Vec<String> = vec!["run".into(), "method".into()];
    header.extend(table.params.iter().cloned());
    header.extend(SUMMARY_COLUMNS.iter().map(|c| c.replace(' ', "_")));
    let mut out = header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(",") + "\n";
    for row in &table.rows {
        let mut cells = vec![row.run_id.to_string(), row.method.clone()];
        cells.extend(row.params.iter().cloned());
        cells.extend(row.cells.iter().cloned());
        out.push_str(&(cells.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",") + "\n"));
    }
    out
}

/// Every evaluation series of every run at full resolution: `run,step,metric,value`.
pub fn series_csv(runs: &[CompareRun]) -> String {
    let mut out = String::from("run,step,metric,value\n");
    for r in runs {
        for e in &r.evals {
            for (name, value) in super::EVAL_METRICS.iter().zip([e.kl, e.kl_ref, e.gold, e.ood]) {
                if let Some(v) = value {
                    out.push_str(&format!("{},{},{name},{v}\n", r.meta.id, e.step));
                }
            }
        }
    }
    out
}

/// The colour-bar-free legend a page shows next to a figure: one entry per line key.
pub fn legend_items(figure: &Figure) -> Vec<LegendItem> {
    let mut out: Vec<LegendItem> = Vec::new();
    for line in figure.panels.iter().flat_map(|p| &p.lines).filter(|l| l.kind == LineKind::Main) {
        if !out.iter().any(|i| i.key == line.key) {
            out.push(LegendItem {
                key: line.key.clone(),
                label: line.label.clone(),
                colour: colour::hex(line.colour),
                dasharray: line.dash.dasharray().unwrap_or_default(),
            });
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
pub struct LegendItem {
    pub key: String,
    pub label: String,
    pub colour: String,
    pub dasharray: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A run whose gold reward rises and falls along KL.
    fn run(id: i64, loss: &str, alpha: Option<f64>, seed: u64, evals: usize) -> CompareRun {
        let mut config = json!({"task": "toy-tree", "loss_type": loss, "seed": seed});
        if let Some(a) = alpha {
            config["sync_ref_model"] = json!(true);
            config["ref_model_mixup_alpha"] = json!(a);
            config["ref_model_sync_steps"] = json!(1);
        }
        let evals = (0..evals)
            .map(|i| {
                let kl = i as f64 * 0.01 * (1.0 + seed as f64 * 0.1);
                let d = kl.sqrt();
                Eval {
                    step: i as i64 * 25,
                    kl: Some(kl),
                    kl_ref: None,
                    gold: Some(1.0 + d * (0.5 - 0.4 * (d + 1e-9).ln())),
                    ood: Some(0.1 + kl * 0.01),
                }
            })
            .collect();
        CompareRun::new(RunMeta::new(id, &config), evals, vec![250, 500])
    }

    #[test]
    fn the_chart_has_one_path_per_run_in_a_panel_per_loss() {
        let runs =
            vec![run(1, "sigmoid", None, 1, 40), run(2, "sigmoid", Some(0.1), 1, 40), run(3, "ipo", Some(0.6), 1, 40)];
        let fig = overoptimization(&runs, &Options::default());
        assert_eq!(fig.panels.len(), 2);
        assert_eq!(fig.panels[0].title, "DPO and TR-DPO");
        assert_eq!(fig.panels[0].lines.iter().filter(|l| l.kind == LineKind::Main).count(), 2);
        assert_eq!(fig.panels[1].lines.len(), 1);
        assert!(fig.colour_bar);
        let svg = fig.to_svg();
        assert_eq!(svg.matches("class=\"run-line\"").count(), 3);
        assert!(!fig.panels[1].legend.is_empty(), "the last panel explains the dash patterns");
    }

    #[test]
    fn smoothing_keeps_the_raw_data_faint_underneath() {
        let runs = vec![run(1, "sigmoid", None, 1, 40)];
        let fig = overoptimization(&runs, &Options { smooth: 0.8, ..Options::default() });
        let kinds: Vec<LineKind> = fig.panels[0].lines.iter().map(|l| l.kind).collect();
        assert_eq!(kinds, vec![LineKind::Raw, LineKind::Main]);
        assert_ne!(fig.panels[0].lines[0].points, fig.panels[0].lines[1].points);
    }

    #[test]
    fn seeds_aggregate_into_a_mean_with_a_band() {
        let runs: Vec<CompareRun> = (1..=3).map(|s| run(s as i64, "sigmoid", Some(0.1), s, 40)).collect();
        let fig = overoptimization(&runs, &Options { aggregate_seeds: true, ..Options::default() });
        let panel = &fig.panels[0];
        assert_eq!(panel.lines.len(), 1, "three seeds, one mean line");
        assert!(panel.lines[0].label.contains("mean of 3 seeds"), "{}", panel.lines[0].label);
        assert_eq!(panel.bands.len(), 1);
        assert!(panel.bands[0].points.iter().all(|(_, lo, hi)| lo <= hi));
        assert!(panel.bands[0].points.iter().any(|(_, lo, hi)| hi > lo), "seeds differ, so the band has width");
    }

    #[test]
    fn the_ema_is_debiased_and_zero_weight_is_the_identity() {
        let points: Vec<(i64, f64, f64)> = (0..5).map(|i| (i, i as f64, 2.0)).collect();
        assert_eq!(ema(&points, 0.0, true), points);
        let smoothed = ema(&points, 0.9, false);
        assert!(smoothed.iter().all(|p| (p.2 - 2.0).abs() < 1e-12), "a constant stays constant from the start");
        assert_eq!(smoothed[3].1, 3.0, "x untouched when only y is smoothed");
    }

    #[test]
    fn long_runs_are_downsampled_but_keep_their_peak() {
        let runs = vec![run(1, "sigmoid", None, 1, 2000)];
        let fig = overoptimization(&runs, &Options::default());
        let line = &fig.panels[0].lines[0];
        assert!(line.points.len() <= LINE_POINTS);
        let peak = runs[0].summary.as_ref().unwrap().peak_gold;
        assert!(line.points.iter().any(|p| p.1 == peak));
    }

    #[test]
    fn the_pareto_front_only_holds_checkpoints_and_the_diff_only_table_only_differing_params() {
        let runs = vec![run(1, "sigmoid", None, 1, 40), run(2, "sigmoid", Some(0.1), 1, 40)];
        let front = pareto_checkpoints(&runs);
        assert!(!front.is_empty());
        assert!(front.iter().all(|p| p.step == 250 || p.step == 500));
        let table = summary_table(&runs, true);
        assert_eq!(table.params, vec!["ref_model_mixup_alpha", "ref_model_sync_steps", "sync_ref_model"]);
        assert!(summary_table(&runs, false).params.len() > table.params.len());
        let csv = summary_csv(&table);
        assert!(csv.starts_with("run,method,ref_model_mixup_alpha"), "{csv}");
        assert_eq!(csv.lines().count(), 3);
        assert!(series_csv(&runs).contains("\n2,25,eval/gold_reward,"));
    }
}
