//! Comparing runs (a sweep, or any selection): the overoptimization chart (gold reward along
//! the distance from π_init, one path per run, faceted by loss), OOD mass against step, the
//! summary table, each run's best policy and the Pareto fronts of evaluations (marking which
//! have weights to download), the paired TR-minus-vanilla analysis with its forest plot, and
//! their CSVs. Runs toggled off are left out of all of it, but keep their place in the styles, so
//! nothing changes colour when a run is hidden.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use trainer::config::LossType;
use trainer::metric_names as names;
use trainer::summary::{self, summary_column, EvalPoint, FitForm, MeanCi, RunSummary, SummaryValue, SUMMARY_COLUMNS};

use super::paired::{paired, Paired};
use super::style::{shown_params, Styles};
use super::{csv_field, Eval, RunMeta};
use crate::charts::colour::{self, Dash};
use crate::charts::downsample::downsample;
use crate::charts::{number, Axis, Band, Figure, Hover, LegendEntry, Line, LineKind, Marker, Panel, Shape};
use plotters::style::RGBColor;

/// Points a drawn line keeps (the SVG must stay small for dozens of runs); the extremes and
/// the peak are always among them.
const LINE_POINTS: usize = 400;
/// Hover targets per line, besides the peak.
const HOVERS_PER_LINE: usize = 24;
/// Bins along the x axis when seeds are aggregated.
const BINS: usize = 30;
/// Fewer seeds than this make a 95% Student-t band too wide to read (t = 12.7 with two).
const FEW_SEEDS: usize = 3;
const FRONT_COLOUR: RGBColor = RGBColor(200, 30, 30);
const NOT_KEPT: RGBColor = RGBColor(120, 120, 120);

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

    /// The axis label, with its unit.
    pub fn label(self) -> &'static str {
        match self {
            Self::Step => "step",
            Self::Kl => "KL(π_θ ‖ π_init) (nats)",
            Self::SqrtKl => "d = sqrt(KL(π_θ ‖ π_init)) (√nats)",
        }
    }

    /// The name in tooltips.
    fn short(self) -> &'static str {
        match self {
            Self::Step => "step",
            Self::Kl => "KL (nats)",
            Self::SqrtKl => "d (√nats)",
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

/// Which runs share a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aggregate {
    /// One line per run.
    #[default]
    Runs,
    /// Runs that differ only in their training `seed`: repeats on one problem.
    Seeds,
    /// Also across `task_seed`: different problems on one curve, only when asked for.
    Tasks,
}

impl Aggregate {
    pub const ALL: [Aggregate; 3] = [Self::Runs, Self::Seeds, Self::Tasks];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runs => "runs",
            Self::Seeds => "seeds",
            Self::Tasks => "tasks",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Runs => "each run",
            Self::Seeds => "mean over seeds, same task (± 95%)",
            Self::Tasks => "mean over seeds and tasks (± 95%)",
        }
    }

    /// The config keys whose values a line averages over.
    fn over(self) -> &'static [&'static str] {
        match self {
            Self::Runs => &[],
            Self::Seeds => &["seed"],
            Self::Tasks => &["seed", "task_seed"],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    pub x: XAxis,
    pub log_x: bool,
    /// Smoothing weight in [0, 1): 0 draws the raw data alone (see [`smooth`]).
    pub smooth: f64,
    pub aggregate: Aggregate,
    /// Keys (`run-N`, `group-N`) toggled off.
    pub hidden: BTreeSet<String>,
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

    fn has_weights(&self, step: i64) -> bool {
        self.checkpoints.contains(&step)
    }
}

/// Runs being compared, their styles and the page's options.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub runs: Vec<CompareRun>,
    pub styles: Styles,
    pub opts: Options,
    /// Indices into `runs` of the runs that share a line, in the order they first appear.
    groups: Vec<Vec<usize>>,
}

/// A toggle of the page's legend: one run, or one aggregated group.
#[derive(Debug, Clone, PartialEq)]
pub struct LegendItem {
    pub key: String,
    pub label: String,
    pub colour: String,
    pub dasharray: String,
    pub shown: bool,
}

impl Comparison {
    pub fn new(runs: Vec<CompareRun>, opts: Options) -> Self {
        let styles = Styles::for_runs(runs.iter().map(|r| &r.meta));
        let over = opts.aggregate.over();
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, r) in runs.iter().enumerate() {
            if over.is_empty() {
                groups.push((String::new(), vec![i]));
                continue;
            }
            let mut params = r.meta.params.clone();
            for k in over {
                params.remove(*k);
            }
            params.remove("toy_cache_dir");
            let key = Value::Object(params).to_string();
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, g)) => g.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        let groups = groups.into_iter().map(|(_, g)| g).collect();
        Self { runs, styles, opts, groups }
    }

    /// The key the toggles use for a run: its own, or its group's when lines are aggregated.
    pub fn key_of(&self, run: &CompareRun) -> String {
        match self.groups().into_iter().find(|g| g.iter().any(|r| r.meta.id == run.meta.id)) {
            Some(g) if g.len() > 1 => group_key(g[0]),
            _ => run.meta.key(),
        }
    }

    /// The runs toggled on.
    pub fn visible(&self) -> Vec<&CompareRun> {
        let hidden = &self.opts.hidden;
        if hidden.is_empty() {
            return self.runs.iter().collect();
        }
        self.groups()
            .into_iter()
            .filter(|g| {
                let key = if g.len() > 1 { group_key(g[0]) } else { g[0].meta.key() };
                !hidden.contains(&key)
            })
            .flatten()
            .collect()
    }

    /// Runs that share a line, in the order they first appear (each run alone unless aggregated).
    fn groups(&self) -> Vec<Vec<&CompareRun>> {
        self.groups.iter().map(|g| g.iter().map(|&i| &self.runs[i]).collect()).collect()
    }

    /// One toggle per line the chart can draw, shown or hidden.
    pub fn legend_items(&self) -> Vec<LegendItem> {
        self.groups()
            .into_iter()
            .map(|g| {
                let style = self.styles.of(&g[0].meta);
                let (key, label) = if g.len() > 1 {
                    (group_key(g[0]), group_label(g[0], g.len(), self.opts.aggregate))
                } else {
                    (g[0].meta.key(), g[0].meta.label())
                };
                LegendItem {
                    shown: !self.opts.hidden.contains(&key),
                    key,
                    label,
                    colour: colour::hex(style.colour),
                    dasharray: style.dash.dasharray().unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Gold reward against the chosen x axis, one path per visible run (or per group), a panel
    /// per loss type; each run's peak and the Pareto fronts marked, filled where the weights
    /// can be downloaded and hollow where they were not kept.
    pub fn overoptimization(&self) -> Figure {
        let opts = &self.opts;
        let fronts = self.fronts();
        let x = Axis { label: opts.x.label().into(), log: opts.log_x };
        let mut panels: Vec<Panel> = self
            .facets()
            .into_iter()
            .map(|(loss, members)| {
                let (lines, bands) =
                    self.lines(&members, |e| Some((opts.x.of(e)?, e.gold?)), (opts.x.short(), "gold"), None);
                let mut markers = Vec::new();
                if opts.aggregate == Aggregate::Runs {
                    markers.extend(members.iter().filter_map(|r| self.peak_marker(r)));
                    markers.extend(members.iter().filter_map(|r| self.alarm_marker(r)));
                }
                for point in fronts.iter().flat_map(|f| &f.points) {
                    let Some(run) = members.iter().find(|r| r.meta.id == point.run_id) else { continue };
                    let e = Eval { step: point.step, kl: Some(point.kl), gold: Some(point.gold), ..Eval::default() };
                    let Some(at) = opts.x.of(&e) else { continue };
                    let (shape, colour, kept) = if point.downloadable {
                        (Shape::Cross, FRONT_COLOUR, "downloadable")
                    } else {
                        (Shape::Ring, NOT_KEPT, "weights not kept")
                    };
                    markers.push(Marker {
                        key: self.key_of(run),
                        x: at,
                        y: point.gold,
                        colour,
                        shape,
                        text: format!(
                            "Pareto front · {} · step {} · KL {} nats · gold {} · {kept}",
                            point.label,
                            point.step,
                            number(point.kl),
                            number(point.gold)
                        ),
                    });
                }
                Panel {
                    title: facet_title(loss),
                    x: x.clone(),
                    y: Axis::new("gold reward"),
                    bands,
                    lines,
                    markers,
                    empty_note: "no evaluations logged yet".into(),
                    ..Panel::default()
                }
            })
            .collect();
        if panels.is_empty() {
            panels.push(Panel {
                x,
                y: Axis::new("gold reward"),
                empty_note: "no runs to compare".into(),
                ..Panel::default()
            });
        }
        let mut legend = self.styles.legend();
        legend.extend([
            LegendEntry {
                marker: None,
                ..LegendEntry::line("✕ Pareto front, downloadable", FRONT_COLOUR, Dash::Solid)
            },
            LegendEntry::line("○ front, weights not kept", NOT_KEPT, Dash::Solid),
            LegendEntry::line("▲ past its peak: the alarm fired", super::ALARM_COLOUR, Dash::Solid),
        ]);
        let against = if opts.x == XAxis::Step { "step" } else { "distance from π_init" };
        let width = if panels.len() > 1 { 1200 } else { 1000 };
        Figure {
            title: format!("Gold reward against {against}"),
            size: (width, 580),
            panels,
            colour_bar: self.styles.colour_bar(),
            legend,
        }
    }

    /// A run's peak: filled in its colour when its weights (or those within one evaluation) can
    /// be downloaded, hollow otherwise.
    fn peak_marker(&self, run: &CompareRun) -> Option<Marker> {
        let best = self.best_policy(run)?;
        let e = Eval { step: best.peak_step, kl: Some(best.kl), gold: Some(best.gold), ..Eval::default() };
        let style = self.styles.of(&run.meta);
        let kept = match best.checkpoint {
            Some(step) if step == best.peak_step => "its weights are downloadable".to_string(),
            Some(step) => format!("weights kept at step {step}, one evaluation away"),
            None => "weights not kept".to_string(),
        };
        Some(Marker {
            key: self.key_of(run),
            x: self.opts.x.of(&e)?,
            y: best.gold,
            colour: style.colour,
            shape: if best.checkpoint.is_some() { Shape::Circle } else { Shape::Ring },
            text: format!(
                "peak · {} · step {} · KL {} nats · gold {} · {kept}",
                run.meta.label(),
                best.peak_step,
                number(best.kl),
                number(best.gold)
            ),
        })
    }

    /// Where a run's overoptimization alarm fired: its evaluation at the alarm step, while the run
    /// is past its peak.
    fn alarm_marker(&self, run: &CompareRun) -> Option<Marker> {
        let past = super::PastPeak::of(&run.evals)?;
        let at = run.evals.iter().find(|e| e.step == past.alarm_step)?;
        Some(Marker {
            key: self.key_of(run),
            x: self.opts.x.of(at)?,
            y: at.gold?,
            colour: super::ALARM_COLOUR,
            shape: Shape::Triangle,
            text: format!(
                "alarm · {} · past its peak at step {} · peak at step {}, KL {} nats · gold here {}",
                run.meta.label(),
                past.alarm_step,
                past.peak_step,
                number(past.peak_kl),
                number(at.gold?)
            ),
        })
    }

    /// How many runs are past their peak, and at what KL, for each method, α and τ.
    pub fn past_peak_counts(&self) -> Vec<PastPeakCount> {
        let mut groups: BTreeMap<(String, String, String), Vec<Option<super::PastPeak>>> = BTreeMap::new();
        for r in self.visible().into_iter().filter(|r| r.meta.config.has_gold_reward()) {
            let key = (
                r.meta.method(),
                r.meta.alpha().map(number).unwrap_or_default(),
                r.meta.tau().map(|t| t.to_string()).unwrap_or_default(),
            );
            groups.entry(key).or_default().push(super::PastPeak::of(&r.evals));
        }
        groups
            .into_iter()
            .map(|((method, alpha, tau), alarms)| {
                let mut kls: Vec<f64> = alarms.iter().flatten().map(|p| p.peak_kl).collect();
                kls.sort_by(f64::total_cmp);
                let kl = match kls.as_slice() {
                    [] => String::new(),
                    [one] => number(*one),
                    [lo, .., hi] => format!("{} (range {} – {})", number(kls[kls.len() / 2]), number(*lo), number(*hi)),
                };
                PastPeakCount { method, alpha, tau, past: kls.len(), runs: alarms.len(), peak_kl: kl }
            })
            .collect()
    }

    /// Out-of-domain probability mass against step; a probability, so its bands stay in [0, 1].
    pub fn ood_mass(&self) -> Figure {
        let all = self.visible();
        let (lines, bands) =
            self.lines(&all, |e| Some((e.step as f64, e.ood?)), ("step", "OOD mass"), Some((0.0, 1.0)));
        Figure {
            title: "Out-of-domain probability mass".into(),
            size: (1000, 500),
            panels: vec![Panel {
                title: String::new(),
                x: Axis::new("step"),
                y: Axis::new(names::EVAL_OOD_MASS),
                bands,
                lines,
                empty_note: "no OOD mass logged (toy-tree runs log it)".into(),
                ..Panel::default()
            }],
            colour_bar: self.styles.colour_bar(),
            legend: self.styles.legend(),
        }
    }

    /// Visible runs by loss type, in the order DPO, IPO, KTO; one panel each.
    fn facets(&self) -> Vec<(LossType, Vec<&CompareRun>)> {
        let visible = self.visible();
        [LossType::Sigmoid, LossType::Ipo, LossType::Kto]
            .into_iter()
            .map(|loss| (loss, visible.iter().copied().filter(|r| r.meta.config.loss_type == loss).collect::<Vec<_>>()))
            .filter(|(_, members)| !members.is_empty())
            .collect()
    }

    /// The lines (and, aggregated, bands) of `members`, with `xy` reading an evaluation;
    /// `clip` bounds the bands (probabilities stay in [0, 1]).
    fn lines(
        &self,
        members: &[&CompareRun],
        xy: impl Fn(&Eval) -> Option<(f64, f64)>,
        names: (&str, &str),
        clip: Option<(f64, f64)>,
    ) -> (Vec<Line>, Vec<Band>) {
        let raw = |r: &CompareRun| -> Vec<(i64, f64, f64)> {
            r.evals
                .iter()
                .filter_map(|e| xy(e).map(|(x, y)| (e.step, x, y)))
                .filter(|(_, x, y)| x.is_finite() && y.is_finite())
                .collect()
        };
        let track = |r: &CompareRun| smooth(&raw(r), self.opts.smooth);
        let mut out = Vec::new();
        let mut bands = Vec::new();
        for group in self.groups() {
            let key = group_key(group[0]);
            let group: Vec<&CompareRun> =
                group.into_iter().filter(|r| members.iter().any(|m| m.meta.id == r.meta.id)).collect();
            if group.is_empty() {
                continue;
            }
            let style = self.styles.of(&group[0].meta);
            if group.len() == 1 {
                let r = group[0];
                let lines =
                    run_lines(&r.meta, self.key_of(r), style, &raw(r), &track(r), self.opts.smooth > 0.0, names);
                out.extend(lines);
                continue;
            }
            let tracks: Vec<Vec<(i64, f64, f64)>> = group.iter().map(|r| track(r)).collect();
            let label = group_label(group[0], group.len(), self.opts.aggregate);
            let (line, band) = aggregate(&key, &label, style, &tracks, names, clip);
            out.extend(line);
            bands.extend(band);
        }
        (out, bands)
    }

    /// Notes for the bands: groups averaged over fewer than three runs.
    pub fn band_notes(&self) -> Vec<String> {
        if self.opts.aggregate == Aggregate::Runs {
            return Vec::new();
        }
        let few: Vec<String> = self
            .groups()
            .into_iter()
            .filter(|g| g.len() > 1 && g.len() < FEW_SEEDS)
            .map(|g| format!("{} (n = {})", group_label(g[0], g.len(), self.opts.aggregate), g.len()))
            .collect();
        if few.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "With fewer than {FEW_SEEDS} runs a 95% Student-t band is very wide (t = 12.7 for two): read these bands \
             as a sign of spread only: {}.",
            few.join("; ")
        )]
    }

    /// Each visible run's best evaluation and the checkpoint that holds it.
    pub fn best_policies(&self) -> Vec<BestPolicy> {
        self.visible().into_iter().filter_map(|r| self.best_policy(r)).collect()
    }

    fn best_policy(&self, run: &CompareRun) -> Option<BestPolicy> {
        let s = run.summary.as_ref()?;
        let steps: Vec<i64> = run.evals.iter().filter(|e| e.kl.is_some() && e.gold.is_some()).map(|e| e.step).collect();
        let at = steps.binary_search(&(s.peak_step as i64)).ok()?;
        // The peak's own weights, else the nearest evaluation either side that has them.
        let checkpoint = [Some(at), at.checked_sub(1), Some(at + 1)]
            .into_iter()
            .flatten()
            .filter_map(|i| steps.get(i).copied())
            .find(|step| run.has_weights(*step));
        Some(BestPolicy {
            run_id: run.meta.id,
            label: run.meta.label(),
            colour: colour::hex(self.styles.of(&run.meta).colour),
            peak_step: s.peak_step as i64,
            kl: s.peak_kl,
            gold: s.peak_gold,
            checkpoint,
        })
    }

    /// The Pareto front of every visible run's evaluations, one per problem (toy task and its
    /// `task_seed`, or model and data): a front across different problems compares nothing.
    pub fn fronts(&self) -> Vec<Front> {
        let mut by_problem: BTreeMap<String, Vec<&CompareRun>> = BTreeMap::new();
        for r in self.visible() {
            by_problem.entry(problem(&r.meta)).or_default().push(r);
        }
        let short: Vec<String> = by_problem.values().map(|runs| problem_name(&runs[0].meta)).collect();
        by_problem
            .into_iter()
            .enumerate()
            .map(|(i, (problem, runs))| {
                // The short name, unless another problem here has the same one.
                let name =
                    if short.iter().filter(|s| **s == short[i]).count() > 1 { problem } else { short[i].clone() };
                // A point on the front of all the runs is on its own run's front: those few are
                // the candidates, not every evaluation.
                let candidates: Vec<(&CompareRun, EvalPoint)> = runs
                    .iter()
                    .flat_map(|r| {
                        let own = r.summary.as_ref().map_or(&[][..], |s| s.pareto.as_slice());
                        own.iter().map(move |p| (*r, EvalPoint::new(p.step, p.kl, p.gold)))
                    })
                    .collect();
                let points: Vec<EvalPoint> = candidates.iter().map(|(_, p)| *p).collect();
                let front = summary::pareto_front(&points)
                    .into_iter()
                    .filter_map(|p| {
                        let (run, _) = candidates.iter().find(|(_, c)| *c == p)?;
                        Some(FrontPoint {
                            run_id: run.meta.id,
                            label: run.meta.label(),
                            step: p.step as i64,
                            kl: p.kl,
                            gold: p.gold,
                            downloadable: run.has_weights(p.step as i64),
                        })
                    })
                    .collect();
                Front { problem: name, points: front }
            })
            .collect()
    }

    /// The summary of the visible runs; `diff_only` keeps the parameters whose shown values
    /// differ (α and τ are shown only where the reference moves).
    pub fn summary_table(&self, diff_only: bool) -> SummaryTable {
        let runs = self.visible();
        let shown: Vec<BTreeMap<String, String>> = runs.iter().map(|r| shown_params(&r.meta)).collect();
        let keys: BTreeSet<&String> = shown.iter().flat_map(|p| p.keys()).collect();
        let params: Vec<String> = keys
            .into_iter()
            .filter(|k| !diff_only || shown.iter().any(|p| p.get(*k) != shown[0].get(*k)))
            .cloned()
            .collect();
        let rows = runs
            .iter()
            .zip(&shown)
            .map(|(r, p)| SummaryRow {
                run_id: r.meta.id,
                method: r.meta.method(),
                colour: colour::hex(self.styles.of(&r.meta).colour),
                params: params.iter().map(|k| p.get(k).cloned().unwrap_or_default()).collect(),
                cells: summary_cells(r.summary.as_ref()),
                csv: summary_csv_cells(r.summary.as_ref()),
            })
            .collect();
        SummaryTable { params, rows }
    }

    /// TR minus vanilla on the same (task_seed, seed), per TR variant, over the visible runs.
    pub fn paired(&self) -> Vec<Paired<4>> {
        let visible = self.visible();
        let stats: Vec<(&RunMeta, [f64; 4])> = visible
            .iter()
            .filter_map(|r| {
                let s = r.summary.as_ref()?;
                let ood = final_ood(&r.evals).unwrap_or(f64::NAN);
                Some((&r.meta, [s.final_gold, s.drop, ood, s.final_kl]))
            })
            .collect();
        paired(&stats, 1)
    }

    /// The paired differences as a forest plot: one panel per statistic, a row per TR variant
    /// with its mean and 95% interval, and the zero line of "no effect".
    pub fn forest(&self) -> Figure {
        let rows = self.paired();
        let labels: Vec<String> = rows.iter().map(|r| format!("{} (n = {})", r.label, r.n)).collect();
        let panels = PAIRED_STATS
            .iter()
            .enumerate()
            .map(|(i, stat)| {
                let mut lines = Vec::new();
                let mut markers = Vec::new();
                for (y, row) in rows.iter().enumerate() {
                    let Some(ci) = row.deltas[i] else { continue };
                    let meta = self.runs.iter().find(|r| r.meta.id == row.example).map(|r| &r.meta);
                    let colour = meta.map_or(colour::FIXED_REFERENCE, |m| self.styles.of(m).colour);
                    let key = format!("paired-{y}");
                    if ci.half_width.is_finite() {
                        lines.push(Line {
                            key: key.clone(),
                            label: format!("{}: Δ {stat} 95% CI", row.label),
                            kind: LineKind::Main,
                            colour,
                            dash: Dash::Solid,
                            marker: None,
                            points: vec![(ci.mean - ci.half_width, y as f64), (ci.mean + ci.half_width, y as f64)],
                            hover: Vec::new(),
                        });
                    }
                    markers.push(Marker {
                        key,
                        x: ci.mean,
                        y: y as f64,
                        colour,
                        shape: Shape::Circle,
                        text: format!("{} · Δ {stat} {ci:+.3} (95% CI, n = {})", row.label, ci.n),
                    });
                }
                if !rows.is_empty() {
                    lines.push(Line {
                        key: "zero".into(),
                        label: "no difference".into(),
                        kind: LineKind::Fit,
                        colour: RGBColor(120, 120, 120),
                        dash: Dash::Dashed,
                        marker: None,
                        points: vec![(0.0, -0.5), (0.0, rows.len() as f64 - 0.5)],
                        hover: Vec::new(),
                    });
                }
                Panel {
                    title: format!("Δ {stat}"),
                    x: Axis::new(format!("TR − vanilla, {}", PAIRED_UNITS[i])),
                    y: Axis::new(""),
                    lines,
                    markers,
                    empty_note: "no TR run with a vanilla twin".into(),
                    y_categories: if i == 0 { labels.clone() } else { vec![String::new(); labels.len()] },
                    ..Panel::default()
                }
            })
            .collect();
        let height = 140 + 34 * rows.len().max(1) as u32;
        Figure {
            title: "Trust region minus vanilla, paired on the same task and seed (mean, 95% CI)".into(),
            size: (1200, height.max(260)),
            panels,
            colour_bar: false,
            legend: Vec::new(),
        }
    }
}

/// The paired statistics, in the order of [`Paired::deltas`].
pub const PAIRED_STATS: [&str; 4] = ["final gold", "drop", "final OOD", "final KL"];
const PAIRED_UNITS: [&str; 4] = ["gold reward", "gold reward", "probability", "nats"];

/// `eval/ood_mass` over the last 10% of evaluations, as "final" means for the gold reward.
fn final_ood(evals: &[Eval]) -> Option<f64> {
    let ood: Vec<f64> = evals.iter().filter_map(|e| e.ood).collect();
    let tail = &ood[ood.len() - ood.len().div_ceil(10)..];
    (!tail.is_empty()).then(|| tail.iter().sum::<f64>() / tail.len() as f64)
}

fn group_key(first: &CompareRun) -> String {
    format!("group-{}", first.meta.id)
}

fn group_label(first: &CompareRun, n: usize, aggregate: Aggregate) -> String {
    let what = if aggregate == Aggregate::Tasks { "seeds and task seeds" } else { "seeds" };
    let task = if aggregate == Aggregate::Seeds && first.meta.config.task.is_toy() {
        format!(" · task {}", first.meta.config.task_seed)
    } else {
        String::new()
    };
    format!("{}{task} · mean of {n} runs over {what}", first.meta.short_label())
}

fn facet_title(loss: LossType) -> String {
    let name = super::loss_name(loss);
    format!("{name} and TR-{name}")
}

/// A problem as people name it: "toy-tree · task seed 42", or "model on data".
fn problem_name(meta: &RunMeta) -> String {
    let c = &meta.config;
    if c.task.is_toy() {
        format!("{} · task seed {}", c.task.as_str(), c.task_seed)
    } else {
        let file = |p: &Option<std::path::PathBuf>| {
            p.as_ref().and_then(|p| p.file_name()).map_or(String::new(), |n| n.to_string_lossy().into_owned())
        };
        format!("{} on {}", file(&c.model_name_or_path), file(&c.dataset_path))
    }
}

/// What makes two runs the same problem: the task, its seed and parameters, or the model and
/// data. Their Pareto fronts can be compared; others' cannot.
fn problem(meta: &RunMeta) -> String {
    let c = &meta.config;
    if c.task.is_toy() {
        let toy: Vec<String> = meta
            .params
            .iter()
            .filter(|(k, _)| k.starts_with("toy_") && *k != "toy_cache_dir")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{} task seed {} {}", c.task.as_str(), c.task_seed, toy.join(" "))
    } else {
        let path = |p: &Option<std::path::PathBuf>| p.as_ref().map_or(String::new(), |p| p.display().to_string());
        format!("{} on {} (rewards {})", path(&c.model_name_or_path), path(&c.dataset_path), path(&c.reward_model_path))
    }
}

/// A run's line (downsampled, with hover targets) and, when smoothed, its raw data faint.
fn run_lines(
    meta: &RunMeta,
    key: String,
    style: super::style::Style,
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
            key: key.clone(),
            label: format!("{label} (raw)"),
            kind: LineKind::Raw,
            colour: style.colour,
            dash: style.dash,
            marker: None,
            points: downsample(raw, LINE_POINTS, |p| Some(p.2)).into_iter().map(|(_, x, y)| (x, y)).collect(),
            hover: Vec::new(),
        });
    }
    lines.push(Line {
        key,
        label,
        kind: LineKind::Main,
        colour: style.colour,
        dash: style.dash,
        marker: style.marker,
        points: main.into_iter().map(|(_, x, y)| (x, y)).collect(),
        hover,
    });
    lines
}

/// The mean over a group's runs with its 95% confidence band, binned along x: each run's points
/// are averaged within a bin, then the bin's runs are averaged. A bin that fewer than half the
/// runs reach is left out: its mean would be of a different subset than its neighbours', and its
/// band (t with one or two degrees of freedom) would swamp the chart. `clip` bounds the band.
fn aggregate(
    key: &str,
    label: &str,
    style: super::style::Style,
    tracks: &[Vec<(i64, f64, f64)>],
    (x_name, y_name): (&str, &str),
    clip: Option<(f64, f64)>,
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
    let runs = tracks.len();
    let (mut points, mut band, mut hover) = (Vec::new(), Vec::new(), Vec::new());
    let min_runs = if runs >= 2 { runs.div_ceil(2).max(2) } else { 1 };
    let (floor, ceiling) = clip.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
    for values in per_bin.iter().filter(|v| !v.is_empty() && v.len() >= min_runs) {
        let x = values.iter().map(|v| v.0).sum::<f64>() / values.len() as f64;
        let Some(y) = MeanCi::of(&values.iter().map(|v| v.1).collect::<Vec<_>>()) else { continue };
        points.push((x, y.mean));
        let mut text = format!("{label} · {x_name} {} · {y_name} {}", number(x), number(y.mean));
        if y.half_width.is_finite() {
            let (lo, hi) = ((y.mean - y.half_width).max(floor), (y.mean + y.half_width).min(ceiling));
            band.push((x, lo, hi));
            text.push_str(&format!(" (95%: {} … {}, n = {})", number(lo), number(hi), y.n));
        }
        hover.push(Hover { x, y: y.mean, text });
    }
    let line = Line {
        key: key.to_string(),
        label: label.to_string(),
        kind: LineKind::Main,
        colour: style.colour,
        dash: style.dash,
        marker: style.marker,
        points,
        hover,
    };
    let band = (!band.is_empty()).then(|| Band { key: key.to_string(), colour: style.colour, points: band });
    (Some(line), band)
}

/// Smooths y along the steps, leaving x alone, so a path keeps every position it reached. A
/// symmetric exponential kernel (`weight` per step away, like a forward and a backward EMA) whose
/// half-width shrinks to zero at the ends and at the highest point: those keep their raw values,
/// so the endpoints never move, and the peak stays where it is, and the highest (every smoothed
/// value is an average of raw values, none above the peak). `weight` 0 changes nothing.
pub fn smooth(points: &[(i64, f64, f64)], weight: f64) -> Vec<(i64, f64, f64)> {
    let n = points.len();
    if weight <= 0.0 || n < 3 {
        return points.to_vec();
    }
    let w = weight.min(0.99);
    // Beyond this many steps the kernel's weight is under 2%.
    let reach = ((0.02f64).ln() / w.ln()).ceil().clamp(1.0, 200.0) as usize;
    let peak = (0..n).max_by(|&a, &b| points[a].2.total_cmp(&points[b].2)).unwrap_or(0);
    let pins = [0, peak, n - 1];
    let powers: Vec<f64> = (0..=reach).map(|k| w.powi(k as i32)).collect();
    (0..n)
        .map(|i| {
            let to_pin = pins.iter().map(|&p| i.abs_diff(p)).min().unwrap_or(0);
            let h = to_pin.min(reach);
            let (mut sum, mut total) = (0.0, 0.0);
            for j in i - h..=i + h {
                let k = powers[i.abs_diff(j)];
                sum += k * points[j].2;
                total += k;
            }
            (points[i].0, points[i].1, sum / total)
        })
        .collect()
}

/// A checkpoint's place on a front: the weights of `run_id` at `step`, if kept.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontPoint {
    pub run_id: i64,
    pub label: String,
    pub step: i64,
    pub kl: f64,
    pub gold: f64,
    /// The run kept this evaluation's weights.
    pub downloadable: bool,
}

/// The evaluations of one problem that no other evaluation of it beats on both KL (lower) and
/// gold reward (higher), by KL.
#[derive(Debug, Clone, PartialEq)]
pub struct Front {
    pub problem: String,
    pub points: Vec<FrontPoint>,
}

/// A run's best evaluation (its gold reward peak) and the checkpoint that holds it: at the peak,
/// or within one evaluation of it.
#[derive(Debug, Clone, PartialEq)]
pub struct BestPolicy {
    pub run_id: i64,
    pub label: String,
    pub colour: String,
    pub peak_step: i64,
    pub kl: f64,
    pub gold: f64,
    pub checkpoint: Option<i64>,
}

/// The run-summary columns the table shows ([`trainer::summary::SUMMARY_COLUMNS`]' keys),
/// before its two fit columns; the CSV has every column.
const TABLE_KEYS: [&str; 7] =
    ["start_gold", "peak_gold", "peak_step", "peak_kl", "final_gold", "drop", "drop_fraction"];

/// The table's headings after the parameters: [`TABLE_KEYS`]' labels, then one cell per fit.
pub fn summary_headings() -> Vec<&'static str> {
    let mut headings: Vec<&'static str> = TABLE_KEYS.iter().map(|k| summary_column(k).label).collect();
    headings.extend(["RL fit: d* (√nats), R*, error at peak", "best-of-n fit: d* (√nats), R*, error at peak"]);
    headings
}

/// The alarm's count for one method, α and τ (blank where the reference does not move).
#[derive(Debug, Clone, PartialEq)]
pub struct PastPeakCount {
    pub method: String,
    pub alpha: String,
    pub tau: String,
    /// Runs past their peak, of `runs` with a gold reward.
    pub past: usize,
    pub runs: usize,
    /// KL to π_init at the peak of those past it, in nats: the median and range.
    pub peak_kl: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryTable {
    /// Config keys shown: all of them, or those whose values differ between the runs.
    pub params: Vec<String>,
    pub rows: Vec<SummaryRow>,
}

/// A table cell: its text, and a longer explanation (a warning, or what a blank means).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cell {
    pub text: String,
    pub title: String,
    pub warning: bool,
}

impl Cell {
    fn text(text: String) -> Self {
        Self { text, ..Self::default() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub run_id: i64,
    pub method: String,
    pub colour: String,
    pub params: Vec<String>,
    /// One per [`summary_headings`].
    pub cells: Vec<Cell>,
    /// One per [`SUMMARY_COLUMNS`], at full precision.
    pub csv: Vec<String>,
}

fn summary_cells(s: Option<&RunSummary>) -> Vec<Cell> {
    let Some(s) = s else { return vec![Cell::default(); TABLE_KEYS.len() + FitForm::ALL.len()] };
    let mut cells: Vec<Cell> =
        TABLE_KEYS.iter().map(|k| Cell::text(s.value(k).map(SummaryValue::display).unwrap_or_default())).collect();
    for form in FitForm::ALL {
        cells.push(fit_cell(s, form));
    }
    cells
}

/// One fit in one cell: "no peak yet" until the curve turns down; its optimum otherwise, with
/// its error at the observed peak, and a warning when the two disagree.
pub fn fit_cell(s: &RunSummary, form: FitForm) -> Cell {
    let Some(fit) = s.fit(form) else { return Cell::text("—".into()) };
    let details = format!(
        "{}: a = {}, b = {}, R² {}, fitted minus observed at the observed peak (d = {} √nats): {}",
        form.formula(),
        number(fit.a),
        number(fit.b),
        number(fit.r_squared),
        number(s.peak_d()),
        number(fit.peak_error)
    );
    if !s.peaked {
        return Cell {
            text: "no peak yet".into(),
            title: format!("The observed curve has not turned down. {details}"),
            warning: false,
        };
    }
    let optimum = match (fit.d_star, fit.r_star) {
        (Some(d), Some(r)) => format!("d* {} (KL {} nats), R* {}", number(d), number(d * d), number(r)),
        _ => "no peak in the fit".into(),
    };
    Cell {
        text: format!("{optimum}; error at peak {}", signed(fit.peak_error)),
        title: match &fit.warning {
            Some(w) => format!("{w}. {details}"),
            None => details,
        },
        warning: fit.warning.is_some(),
    }
}

fn signed(v: f64) -> String {
    if v >= 0.0 {
        format!("+{}", number(v))
    } else {
        number(v)
    }
}

fn summary_csv_cells(s: Option<&RunSummary>) -> Vec<String> {
    match s {
        Some(s) => s.columns().into_iter().map(|(_, v)| v.csv()).collect(),
        None => vec![String::new(); SUMMARY_COLUMNS.len()],
    }
}

pub fn summary_csv(table: &SummaryTable) -> String {
    let mut header: Vec<String> = vec!["run".into(), "method".into()];
    header.extend(table.params.iter().cloned());
    header.extend(SUMMARY_COLUMNS.iter().map(|c| c.key.to_string()));
    let mut out = header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(",") + "\n";
    for row in &table.rows {
        let mut cells = vec![row.run_id.to_string(), row.method.clone()];
        cells.extend(row.params.iter().cloned());
        cells.extend(row.csv.iter().cloned());
        out.push_str(&(cells.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",") + "\n"));
    }
    out
}

/// The paired table as CSV: variant, pairs, then mean and 95% half-width of each difference.
pub fn paired_csv(rows: &[Paired<4>]) -> String {
    let mut out = String::from("variant,pairs,better");
    for stat in PAIRED_STATS {
        let name = stat.replace(' ', "_");
        out.push_str(&format!(",delta_{name}_mean,delta_{name}_ci95"));
    }
    out.push('\n');
    for r in rows {
        out.push_str(&format!("{},{},{}", csv_field(&r.label), r.n, r.better));
        for d in &r.deltas {
            match d {
                Some(ci) => out.push_str(&format!(",{},{}", ci.mean, ci.half_width)),
                None => out.push_str(",,"),
            }
        }
        out.push('\n');
    }
    out
}

/// Every evaluation series of the visible runs at full resolution: `run,step,metric,value`.
pub fn series_csv(runs: &[&CompareRun]) -> String {
    let mut out = String::from("run,step,metric,value\n");
    for r in runs {
        for e in &r.evals {
            for (name, value) in super::EVAL_METRICS.iter().zip(e.values()) {
                if let Some(v) = value {
                    out.push_str(&format!("{},{},{name},{v}\n", r.meta.id, e.step));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A run whose gold reward rises and falls along KL.
    fn run(id: i64, loss: &str, alpha: Option<f64>, seed: u64, evals: usize) -> CompareRun {
        let mut config = json!({
            "task": "toy-tree", "loss_type": loss, "seed": seed, "task_seed": 42,
            "sync_ref_model": false, "ref_model_mixup_alpha": 0.6, "ref_model_sync_steps": 512,
        });
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
                    gold: Some(1.0 + d * (0.5 - 0.4 * (d + 1e-9).ln())),
                    ood: Some(0.1 + kl * 0.01),
                    ..Eval::default()
                }
            })
            .collect();
        CompareRun::new(RunMeta::new(id, &config), evals, vec![250, 500])
    }

    fn compare(runs: Vec<CompareRun>, opts: Options) -> Comparison {
        Comparison::new(runs, opts)
    }

    #[test]
    fn the_chart_has_one_path_per_run_in_a_panel_per_loss_and_the_legend_below() {
        let runs =
            vec![run(1, "sigmoid", None, 1, 40), run(2, "sigmoid", Some(0.1), 1, 40), run(3, "ipo", Some(0.6), 1, 40)];
        let fig = compare(runs, Options::default()).overoptimization();
        assert_eq!(fig.panels.len(), 2);
        assert_eq!(fig.panels[0].title, "DPO and TR-DPO");
        assert_eq!(fig.panels[0].lines.iter().filter(|l| l.kind == LineKind::Main).count(), 2);
        assert_eq!(fig.panels[1].lines.len(), 1);
        assert!(!fig.colour_bar, "two α values: categorical colours, named in the legend");
        assert!(fig.legend.iter().any(|e| e.label == "α = 0.1"));
        let svg = fig.to_svg();
        assert_eq!(svg.matches("class=\"run-line\"").count(), 3);
    }

    /// Marks `run`'s evaluations from `alarm` on as past the peak at `peak`.
    fn alarmed(mut run: CompareRun, peak: i64, alarm: i64) -> CompareRun {
        let peak_kl = run.evals.iter().find(|e| e.step == peak).and_then(|e| e.kl);
        for e in &mut run.evals {
            let past = e.step >= alarm;
            (e.past_peak, e.peak_step, e.peak_kl) = (Some(f64::from(u8::from(past))), Some(peak as f64), peak_kl);
            e.alarm_step = past.then_some(alarm as f64);
        }
        run
    }

    #[test]
    fn each_runs_alarm_is_marked_on_the_chart_and_counted_per_alpha_and_tau() {
        let runs = vec![
            alarmed(run(1, "sigmoid", None, 1, 40), 225, 425),
            alarmed(run(2, "sigmoid", None, 2, 40), 250, 450),
            alarmed(run(3, "sigmoid", Some(0.1), 1, 40), 900, 10_000),
        ];
        let c = compare(runs, Options::default());
        let fig = c.overoptimization();
        let alarms: Vec<&Marker> = fig.panels[0].markers.iter().filter(|m| m.shape == Shape::Triangle).collect();
        assert_eq!(alarms.len(), 2, "run 3 never fired");
        assert_eq!(alarms[0].key, "run-1");
        let at = c.runs[0].evals.iter().find(|e| e.step == 425).unwrap();
        assert_eq!((alarms[0].x, alarms[0].y), (at.kl.unwrap().sqrt(), at.gold.unwrap()));
        assert!(alarms[0].text.starts_with("alarm · run 1"), "{}", alarms[0].text);
        assert!(fig.legend.iter().any(|e| e.label.starts_with("▲ past its peak")));
        assert!(fig.to_svg().contains("past its peak at step 425"));

        let counts = c.past_peak_counts();
        assert_eq!(counts.len(), 2);
        let vanilla = counts.iter().find(|p| p.alpha.is_empty()).unwrap();
        assert_eq!((vanilla.method.as_str(), vanilla.past, vanilla.runs), ("DPO", 2, 2));
        assert!(vanilla.peak_kl.contains("range"), "{}", vanilla.peak_kl);
        let tr = counts.iter().find(|p| p.alpha == "0.1").unwrap();
        assert_eq!((tr.tau.as_str(), tr.past, tr.runs, tr.peak_kl.as_str()), ("1", 0, 1, ""));
    }

    #[test]
    fn hidden_runs_leave_the_axes_the_table_and_the_downloads_but_keep_their_colours() {
        let runs =
            vec![run(1, "sigmoid", None, 1, 40), run(2, "sigmoid", Some(0.1), 1, 40), run(3, "ipo", Some(0.6), 1, 40)];
        let all = compare(runs.clone(), Options::default());
        let hidden = compare(runs, Options { hidden: ["run-3".to_string()].into(), ..Options::default() });
        assert_eq!(hidden.overoptimization().panels.len(), 1, "IPO's panel goes with its only run");
        assert_eq!(hidden.summary_table(false).rows.len(), 2);
        assert_eq!(series_csv(&hidden.visible()).lines().filter(|l| l.starts_with("3,")).count(), 0);
        let colour =
            |c: &Comparison| c.summary_table(false).rows.iter().find(|r| r.run_id == 2).unwrap().colour.clone();
        assert_eq!(colour(&all), colour(&hidden));
        assert!(!hidden.legend_items().iter().find(|i| i.key == "run-3").unwrap().shown);
    }

    #[test]
    fn smoothing_never_moves_the_endpoints_or_the_peak() {
        let points: Vec<(i64, f64, f64)> = (0..50)
            .map(|i| (i * 10, i as f64 * 0.1, (i as f64 * 0.3).sin() + if i == 20 { 3.0 } else { 0.0 }))
            .collect();
        for weight in [0.5, 0.8, 0.99] {
            let s = smooth(&points, weight);
            assert_eq!(s.len(), points.len());
            assert_eq!((s[0], s[49]), (points[0], points[49]), "ends stay put");
            assert_eq!(s[20], points[20], "the peak keeps its x and its value");
            assert!(s.iter().all(|p| p.2 <= points[20].2), "and stays the highest");
            assert!(s.iter().zip(&points).all(|(a, b)| a.1 == b.1), "x is never smoothed");
            assert_ne!(s[10].2, points[10].2, "the rest is smoothed");
        }
        assert_eq!(smooth(&points, 0.0), points);
    }

    #[test]
    fn seeds_aggregate_within_a_task_and_tasks_only_when_asked() {
        let mut runs: Vec<CompareRun> = (1..=3).map(|s| run(s as i64, "sigmoid", Some(0.1), s, 40)).collect();
        let mut other_task = run(4, "sigmoid", Some(0.1), 1, 40);
        other_task.meta.params.insert("task_seed".into(), json!(7));
        other_task.meta.config.task_seed = 7;
        runs.push(other_task);
        let seeds = compare(runs.clone(), Options { aggregate: Aggregate::Seeds, ..Options::default() });
        let fig = seeds.overoptimization();
        let labels: Vec<&str> = fig.panels[0].lines.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(labels.len(), 2, "{labels:?}");
        assert!(labels[0].contains("mean of 3 runs over seeds"), "{labels:?}");
        assert_eq!(fig.panels[0].bands.len(), 1);
        assert!(seeds.band_notes().is_empty(), "three seeds");
        let tasks = compare(runs, Options { aggregate: Aggregate::Tasks, ..Options::default() });
        assert_eq!(tasks.overoptimization().panels[0].lines.len(), 1, "all four on one curve");
    }

    #[test]
    fn probability_bands_stay_between_zero_and_one_and_two_seeds_get_a_note() {
        let mut runs: Vec<CompareRun> = (1..=2).map(|s| run(s as i64, "sigmoid", Some(0.1), s, 40)).collect();
        for (i, r) in runs.iter_mut().enumerate() {
            for e in &mut r.evals {
                e.ood = Some(if i == 0 { 0.01 } else { 0.99 });
            }
        }
        let c = compare(runs, Options { aggregate: Aggregate::Seeds, ..Options::default() });
        let band = &c.ood_mass().panels[0].bands[0];
        assert!(band.points.iter().all(|(_, lo, hi)| *lo >= 0.0 && *hi <= 1.0), "{:?}", band.points);
        assert!(c.band_notes()[0].contains("n = 2"), "{:?}", c.band_notes());
    }

    #[test]
    fn the_front_is_over_evaluations_and_marks_which_have_weights() {
        let runs = vec![run(1, "sigmoid", None, 1, 40), run(2, "sigmoid", Some(0.1), 1, 40)];
        let c = compare(runs, Options::default());
        let fronts = c.fronts();
        assert_eq!(fronts.len(), 1, "one problem");
        let points = &fronts[0].points;
        assert!(points.len() > 2 && points.iter().any(|p| !p.downloadable));
        assert!(points.iter().all(|p| p.downloadable == (p.step == 250 || p.step == 500)));
        let best = c.best_policies();
        assert_eq!(best.len(), 2);
        let table = c.summary_table(true);
        assert_eq!(table.params, vec!["ref_model_mixup_alpha", "ref_model_sync_steps", "sync_ref_model"]);
        assert_eq!(table.rows[0].params[0], "—", "a fixed reference has no α");
        let csv = summary_csv(&table);
        assert!(csv.starts_with("run,method,ref_model_mixup_alpha"), "{csv}");
        assert_eq!(csv.lines().count(), 3);
    }

    #[test]
    fn the_paired_analysis_has_a_row_and_a_forest_mark_per_tr_variant() {
        let runs: Vec<CompareRun> = (1..=3)
            .flat_map(|s| [run(s as i64, "sigmoid", None, s, 40), run(10 + s as i64, "sigmoid", Some(0.1), s, 40)])
            .collect();
        let c = compare(runs, Options::default());
        let rows = c.paired();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].n, 3);
        let forest = c.forest();
        assert_eq!(forest.panels.len(), 4);
        assert_eq!(forest.panels[0].markers.len(), 1);
        assert!(forest.to_svg().contains("TR-DPO α=0.1 τ=1 (n = 3)"));
        assert!(paired_csv(&rows).lines().nth(1).unwrap().starts_with("TR-DPO α=0.1 τ=1,3,"));
    }

    #[test]
    fn long_runs_are_downsampled_but_keep_their_peak() {
        let runs = vec![run(1, "sigmoid", None, 1, 2000)];
        let c = compare(runs, Options::default());
        let fig = c.overoptimization();
        let line = &fig.panels[0].lines[0];
        assert!(line.points.len() <= LINE_POINTS);
        let peak = c.runs[0].summary.as_ref().unwrap().peak_gold;
        assert!(line.points.iter().any(|p| p.1 == peak));
    }
}
