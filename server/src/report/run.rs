//! One run's charts: loss; rewards/margins and accuracies; KL to π_init and to the reference;
//! gold reward; OOD mass; π_init's SFT; and the gold-reward-vs-sqrt(KL) path with both Gao fits,
//! the peak and the run's Pareto front (filled where the weights were kept).

use std::collections::BTreeMap;

use plotters::style::RGBColor;
use trainer::metric_names as names;
use trainer::summary::{FitForm, RunSummary};

use super::style::Style;
use super::{RunMeta, Series};
use crate::charts::colour::SECONDARY;
use crate::charts::downsample::downsample;
use crate::charts::{number, Axis, Dash, Figure, Hover, LegendEntry, Line, LineKind, Marker, Panel, Shape};

const LINE_POINTS: usize = 500;
const HOVERS_PER_LINE: usize = 60;
const SIZE: (u32, u32) = (720, 400);
const NO_EVALS: &str = "no evaluations logged yet (toy tasks evaluate every eval_steps)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunChart {
    Loss,
    Rewards,
    Kl,
    Gold,
    Ood,
    Path,
    /// Held-out implicit reward against KL to π_init: the overoptimization proxies of a run
    /// without a gold reward.
    Proxies,
    Sft,
}

impl RunChart {
    pub const ALL: [RunChart; 8] =
        [Self::Path, Self::Gold, Self::Kl, Self::Loss, Self::Rewards, Self::Proxies, Self::Ood, Self::Sft];

    /// Its name in URLs and element ids.
    pub fn slug(self) -> &'static str {
        match self {
            Self::Loss => "loss",
            Self::Rewards => "rewards",
            Self::Kl => "kl",
            Self::Gold => "gold",
            Self::Ood => "ood",
            Self::Path => "path",
            Self::Proxies => "proxies",
            Self::Sft => "sft",
        }
    }

    pub fn parse(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.slug() == slug)
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Loss => "Training loss",
            Self::Rewards => "Implicit rewards",
            Self::Kl => "KL to π_init and to the reference",
            Self::Gold => "Gold reward",
            Self::Ood => "Out-of-domain probability mass",
            Self::Path => "Gold reward against sqrt(KL to π_init)",
            Self::Proxies => "Proxies, not the gold reward: held-out implicit reward against KL to π_init",
            Self::Sft => "π_init's SFT (before training)",
        }
    }

    /// The metrics it reads.
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Self::Loss => &["loss"],
            Self::Rewards => &[
                names::REWARDS_MARGINS,
                names::EVAL_INIT_REWARDS_MARGINS,
                names::REWARDS_ACCURACIES,
                names::EVAL_INIT_REWARDS_ACCURACIES,
            ],
            Self::Kl => &[names::EVAL_KL_INIT, names::EVAL_KL_REF],
            Self::Gold => &[names::EVAL_GOLD_REWARD],
            Self::Ood => &[names::EVAL_OOD_MASS],
            Self::Path => &[names::EVAL_KL_INIT, names::EVAL_GOLD_REWARD, names::EVAL_GOLD_REWARD_SE],
            Self::Proxies => &[
                names::EVAL_KL_INIT,
                names::EVAL_REWARDS_MARGINS,
                names::EVAL_REWARDS_MARGINS_SE,
                names::EVAL_REWARDS_ACCURACIES,
                names::EVAL_LOGPS_CHOSEN,
            ],
            Self::Sft => &[names::SFT_LOSS, names::SFT_KL_BEHAVIOUR],
        }
    }
}

/// A metric against KL to π_init, joined by step, as a line of this run.
fn kl_panel(meta: &RunMeta, series: &BTreeMap<String, Series>, name: &str, y_label: &str, colour: RGBColor) -> Panel {
    let kl: BTreeMap<i64, f64> = series
        .get(names::EVAL_KL_INIT)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|&(s, v)| Some((s, v?)))
        .collect();
    let points: Vec<(i64, f64, f64)> = series
        .get(name)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|&(s, v)| Some((s, *kl.get(&s)?, v?)))
        .filter(|p| p.1.is_finite() && p.2.is_finite())
        .collect();
    let mut panel = Panel {
        title: String::new(),
        x: Axis::new("KL(π_θ ‖ π_init) (nats)"),
        y: Axis::new(y_label),
        empty_note: "no held-out pairs scored: set eval_split_ratio or eval_dataset_path, and eval_steps".into(),
        ..Panel::default()
    };
    if points.is_empty() {
        return panel;
    }
    let hover = hover_indices(points.len())
        .map(|i| {
            let (step, kl, v) = points[i];
            Hover {
                x: kl,
                y: v,
                text: format!("run {} · step {step} · KL {} nats · {name} {}", meta.id, number(kl), number(v)),
            }
        })
        .collect();
    panel.lines.push(Line {
        key: format!("{}-{}", meta.key(), name.replace('/', "-")),
        label: format!("run {} · {name}", meta.id),
        kind: LineKind::Main,
        colour,
        dash: Dash::Solid,
        marker: None,
        points: points.iter().map(|p| (p.1, p.2)).collect(),
        hover,
    });
    panel
}

/// A metric against step as a line of this run.
fn step_line(meta: &RunMeta, series: Option<&Series>, name: &str, colour: RGBColor, dash: Dash) -> Option<Line> {
    let points: Vec<(i64, f64)> =
        series?.iter().filter_map(|&(s, v)| Some((s, v?))).filter(|p| p.1.is_finite()).collect();
    if points.is_empty() {
        return None;
    }
    let points = downsample(&points, LINE_POINTS, |p| Some(p.1));
    let hover = hover_indices(points.len())
        .map(|i| {
            let (step, v) = points[i];
            Hover { x: step as f64, y: v, text: format!("run {} · step {step} · {name} {}", meta.id, number(v)) }
        })
        .collect();
    Some(Line {
        key: format!("{}-{}", meta.key(), name.replace('/', "-")),
        label: format!("run {} · {name}", meta.id),
        kind: LineKind::Main,
        colour,
        dash,
        marker: None,
        points: points.into_iter().map(|(s, v)| (s as f64, v)).collect(),
        hover,
    })
}

fn hover_indices(len: usize) -> impl Iterator<Item = usize> {
    let n = len.min(HOVERS_PER_LINE);
    let mut at: Vec<usize> = (0..n).map(move |i| if n > 1 { i * (len - 1) / (n - 1) } else { 0 }).collect();
    at.dedup();
    at.into_iter()
}

fn step_panel(
    meta: &RunMeta,
    series: &BTreeMap<String, Series>,
    y_label: &str,
    metrics: &[(&str, &str, RGBColor, Dash)],
    empty_note: &str,
) -> Panel {
    let mut lines = Vec::new();
    let mut legend = Vec::new();
    for &(name, label, colour, dash) in metrics {
        if let Some(line) = step_line(meta, series.get(name), name, colour, dash) {
            lines.push(line);
            legend.push(LegendEntry::line(label, colour, dash));
        }
    }
    if legend.len() < 2 {
        legend.clear();
    }
    Panel {
        title: String::new(),
        x: Axis::new("step"),
        y: Axis::new(y_label),
        lines,
        legend,
        empty_note: empty_note.into(),
        ..Panel::default()
    }
}

/// One of the run's charts, in its `style`; `kept` are its checkpoint steps (the Pareto points
/// with weights).
pub fn figure(
    meta: &RunMeta,
    style: Style,
    series: &BTreeMap<String, Series>,
    chart: RunChart,
    kept: &[i64],
) -> Figure {
    let own = (style.colour, style.dash);
    let panels = match chart {
        RunChart::Loss => {
            vec![step_panel(meta, series, "loss", &[("loss", "loss", own.0, own.1)], "no steps logged yet")]
        }
        RunChart::Rewards => vec![
            step_panel(
                meta,
                series,
                names::REWARDS_MARGINS,
                &[
                    (names::REWARDS_MARGINS, "against the reference", own.0, own.1),
                    (names::EVAL_INIT_REWARDS_MARGINS, "against π_init", SECONDARY, Dash::Dashed),
                ],
                "no steps logged yet",
            ),
            step_panel(
                meta,
                series,
                names::REWARDS_ACCURACIES,
                &[
                    (names::REWARDS_ACCURACIES, "against the reference", own.0, own.1),
                    (names::EVAL_INIT_REWARDS_ACCURACIES, "against π_init", SECONDARY, Dash::Dashed),
                ],
                "no steps logged yet",
            ),
        ],
        RunChart::Kl => vec![step_panel(
            meta,
            series,
            "KL (nats)",
            &[
                (names::EVAL_KL_INIT, "KL to π_init (nats)", own.0, own.1),
                (names::EVAL_KL_REF, "KL to the reference (nats)", SECONDARY, Dash::Dashed),
            ],
            NO_EVALS,
        )],
        RunChart::Gold => {
            let mut panel = step_panel(
                meta,
                series,
                names::EVAL_GOLD_REWARD,
                &[(names::EVAL_GOLD_REWARD, "gold", own.0, own.1)],
                NO_EVALS,
            );
            let evals = super::evals(series);
            if let Some(s) = super::summarize(&evals, kept) {
                panel.markers.push(peak_marker(meta, s.peak_step as f64, s.peak_gold, &s, kept));
            }
            vec![panel]
        }
        RunChart::Ood => {
            vec![step_panel(
                meta,
                series,
                names::EVAL_OOD_MASS,
                &[(names::EVAL_OOD_MASS, "OOD mass", own.0, own.1)],
                NO_EVALS,
            )]
        }
        RunChart::Path => vec![path_panel(meta, style, series, kept)],
        RunChart::Proxies => vec![
            kl_panel(meta, series, names::EVAL_REWARDS_MARGINS, "held-out implicit-reward margin", own.0),
            kl_panel(meta, series, names::EVAL_REWARDS_ACCURACIES, "held-out implicit-reward accuracy", own.0),
            kl_panel(meta, series, names::EVAL_LOGPS_CHOSEN, "held-out chosen log-prob (nats)", own.0),
        ],
        RunChart::Sft => vec![sft_panel(meta, series, own.0)],
    };
    Figure { title: chart.title().into(), size: SIZE, panels, colour_bar: false, legend: Vec::new() }
}

/// π_init's SFT loss and KL(behaviour ‖ π) against the SFT step, log scale.
fn sft_panel(meta: &RunMeta, series: &BTreeMap<String, Series>, colour: RGBColor) -> Panel {
    let note = if meta.config.task.is_toy() {
        "no SFT step reported yet"
    } else {
        "no π_init SFT: a dataset run starts from the model's own weights"
    };
    let mut panel = step_panel(
        meta,
        series,
        "nats (log)",
        &[
            (names::SFT_LOSS, "SFT loss (cross-entropy)", colour, Dash::Solid),
            (names::SFT_KL_BEHAVIOUR, "KL(behaviour ‖ π)", SECONDARY, Dash::Dashed),
        ],
        note,
    );
    panel.x = Axis::new("SFT step");
    panel.y = Axis { label: "nats".into(), log: true };
    panel
}

fn peak_marker(meta: &RunMeta, x: f64, y: f64, s: &RunSummary, kept: &[i64]) -> Marker {
    let has_weights = kept.contains(&(s.peak_step as i64));
    Marker {
        key: meta.key(),
        x,
        y,
        colour: RGBColor(230, 60, 40),
        shape: if has_weights { Shape::Circle } else { Shape::Ring },
        text: format!(
            "peak · run {} · step {} · d {} √nats (KL {} nats) · gold {} · {}",
            meta.id,
            s.peak_step,
            number(s.peak_d()),
            number(s.peak_kl),
            number(s.peak_gold),
            if has_weights { "weights kept: download it below" } else { "weights not kept" }
        ),
    }
}

/// Gold reward along d = sqrt(KL to π_init), both Gao et al. fits, the peak and the run's own
/// Pareto front. A fitted optimum is drawn only once the observed curve has turned down, and its
/// tooltip says when it disagrees with the observed peak.
fn path_panel(meta: &RunMeta, style: Style, series: &BTreeMap<String, Series>, kept: &[i64]) -> Panel {
    let evals = super::evals(series);
    let points: Vec<(i64, f64, f64)> =
        super::eval_points(&evals).iter().map(|p| (p.step as i64, p.d(), p.gold)).collect();
    let mut panel = Panel {
        title: String::new(),
        x: Axis::new("d = sqrt(KL(π_θ ‖ π_init)) (√nats)"),
        y: Axis::new("gold reward"),
        empty_note: NO_EVALS.into(),
        ..Panel::default()
    };
    if points.is_empty() {
        return panel;
    }
    let kept_points = downsample(&points, LINE_POINTS, |p| Some(p.2));
    let hover = hover_indices(kept_points.len())
        .map(|i| {
            let (step, d, g) = kept_points[i];
            Hover {
                x: d,
                y: g,
                text: format!(
                    "run {} · step {step} · d {} √nats (KL {} nats) · gold {}",
                    meta.id,
                    number(d),
                    number(d * d),
                    number(g)
                ),
            }
        })
        .collect();
    panel.lines.push(Line {
        key: meta.key(),
        label: meta.label(),
        kind: LineKind::Main,
        colour: style.colour,
        dash: style.dash,
        marker: None,
        points: kept_points.iter().map(|p| (p.1, p.2)).collect(),
        hover,
    });
    panel.legend.push(LegendEntry::line(meta.short_label(), style.colour, style.dash));
    let Some(s) = super::summarize(&evals, kept) else { return panel };
    let d_max = points.iter().map(|p| p.1).fold(0.0, f64::max);
    for (form, dash) in [(FitForm::Rl, Dash::Dashed), (FitForm::BestOfN, Dash::Dotted)] {
        let Some(fit) = s.fit(form) else { continue };
        let grey = RGBColor(110, 110, 110);
        let curve: Vec<(f64, f64)> =
            (1..=80).map(|i| d_max * i as f64 / 80.0).map(|d| (d, s.start_gold + form.eval(fit.a, fit.b, d))).collect();
        let name = match form {
            FitForm::Rl => "RL fit",
            FitForm::BestOfN => "best-of-n fit",
        };
        let summary = format!("{name} (R² {}, error at peak {})", number(fit.r_squared), number(fit.peak_error));
        panel.lines.push(Line {
            key: format!("{}-fit-{}", meta.key(), form.name().replace(' ', "-")),
            label: format!("{} {}, a = {}, b = {}: {summary}", name, form.formula(), number(fit.a), number(fit.b)),
            kind: LineKind::Fit,
            colour: grey,
            dash,
            marker: None,
            points: curve,
            hover: Vec::new(),
        });
        panel.legend.push(LegendEntry::line(summary, grey, dash));
        // A fitted optimum is the run's only once the curve has turned down, and then with its caveat.
        if let (true, Some(d), Some(r)) = (s.peaked, fit.d_star, fit.r_star) {
            if d <= d_max {
                let caveat = fit.warning.as_ref().map(|w| format!(" · ⚠ {w}")).unwrap_or_default();
                panel.markers.push(Marker {
                    key: format!("{}-fit", meta.key()),
                    x: d,
                    y: s.start_gold + r,
                    colour: grey,
                    shape: Shape::Triangle,
                    text: format!(
                        "{name}'s optimum · d* {} √nats (KL {} nats) · R* {}{caveat}",
                        number(d),
                        number(d * d),
                        number(r)
                    ),
                });
            }
        }
    }
    for p in &s.pareto {
        if p.step == s.peak_step {
            continue;
        }
        panel.markers.push(Marker {
            key: meta.key(),
            x: p.kl.max(0.0).sqrt(),
            y: p.gold,
            colour: style.colour,
            shape: if p.checkpoint { Shape::Circle } else { Shape::Ring },
            text: format!(
                "Pareto front · step {} · KL {} nats · gold {} · {}",
                p.step,
                number(p.kl),
                number(p.gold),
                if p.checkpoint { "weights kept" } else { "weights not kept" }
            ),
        });
    }
    panel.markers.push(peak_marker(meta, s.peak_d(), s.peak_gold, &s, kept));
    if let Some(past) = super::PastPeak::of(&evals) {
        if let Some((kl, gold)) = evals.iter().find(|e| e.step == past.alarm_step).and_then(|e| Some((e.kl?, e.gold?)))
        {
            panel.markers.push(Marker {
                key: format!("{}-alarm", meta.key()),
                x: kl.max(0.0).sqrt(),
                y: gold,
                colour: super::ALARM_COLOUR,
                shape: Shape::Triangle,
                text: format!(
                    "alarm · run {} · past its peak at step {} · peak at step {}, KL {} nats",
                    meta.id,
                    past.alarm_step,
                    past.peak_step,
                    number(past.peak_kl)
                ),
            });
            panel.legend.push(LegendEntry::line("▲ past its peak: the alarm fired", super::ALARM_COLOUR, Dash::Solid));
        }
    }
    if !s.peaked {
        panel.legend.push(LegendEntry::line(
            "no peak yet: the fits' optima are not shown",
            RGBColor(110, 110, 110),
            Dash::Solid,
        ));
    }
    panel
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn style(meta: &RunMeta) -> Style {
        super::super::style::Styles::for_runs([meta]).of(meta)
    }

    fn series() -> BTreeMap<String, Series> {
        let evals: Vec<i64> = (0..=40).map(|i| i * 25).collect();
        let kl = |s: i64| s as f64 / 200.0;
        let gold = |s: i64| {
            let d = kl(s).sqrt();
            1.0 + d * (0.6 - 0.5 * (d + 1e-12).ln())
        };
        [
            ("loss".to_string(), (1..=1000).map(|s| (s, Some(0.69 - s as f64 * 1e-4))).collect()),
            ("eval/kl_init".to_string(), evals.iter().map(|&s| (s, Some(kl(s)))).collect()),
            ("eval/kl_ref".to_string(), evals.iter().map(|&s| (s, Some(kl(s) / 2.0))).collect()),
            ("eval/gold_reward".to_string(), evals.iter().map(|&s| (s, Some(gold(s)))).collect()),
            (names::EVAL_REWARDS_MARGINS.to_string(), evals.iter().map(|&s| (s, Some(s as f64 / 100.0))).collect()),
            (
                names::EVAL_REWARDS_ACCURACIES.to_string(),
                evals.iter().map(|&s| (s, Some(0.5 + s as f64 / 2500.0))).collect(),
            ),
            (names::EVAL_LOGPS_CHOSEN.to_string(), evals.iter().map(|&s| (s, Some(-5.0 - s as f64 / 100.0))).collect()),
        ]
        .into()
    }

    #[test]
    fn the_path_chart_marks_where_the_alarm_fired() {
        let meta = RunMeta::new(7, &json!({"task": "toy-tree"}));
        let mut with_alarm = series();
        let steps: Vec<i64> = (0..=40).map(|i| i * 25).collect();
        let metric = |f: &dyn Fn(i64) -> Option<f64>| steps.iter().map(|&s| (s, f(s))).collect::<Series>();
        with_alarm.insert("overopt/past_peak".into(), metric(&|s| Some(if s >= 700 { 1.0 } else { 0.0 })));
        with_alarm.insert("overopt/peak_step".into(), metric(&|_| Some(500.0)));
        with_alarm.insert("overopt/peak_kl".into(), metric(&|_| Some(2.5)));
        with_alarm.insert("overopt/alarm_step".into(), metric(&|s| (s >= 700).then_some(700.0)));
        let alarm = |series: &BTreeMap<String, Series>| -> Vec<Marker> {
            let fig = figure(&meta, style(&meta), series, RunChart::Path, &[]);
            fig.panels[0].markers.iter().filter(|m| m.text.starts_with("alarm")).cloned().collect()
        };
        let marked = alarm(&with_alarm);
        assert_eq!(marked.len(), 1);
        assert_eq!(marked[0].x, (700.0f64 / 200.0).sqrt(), "at the alarm's evaluation");
        assert!(marked[0].text.contains("past its peak at step 700 · peak at step 500"), "{}", marked[0].text);
        assert!(alarm(&series()).is_empty(), "no alarm, no marker");
    }

    #[test]
    fn the_proxies_chart_draws_the_held_out_implicit_reward_against_kl_to_pi_init() {
        let meta = RunMeta::new(7, &json!({}));
        let fig = figure(&meta, style(&meta), &series(), RunChart::Proxies, &[]);
        assert_eq!(fig.panels.len(), 3);
        for panel in &fig.panels {
            assert_eq!(panel.x.label, "KL(π_θ ‖ π_init) (nats)");
            assert_eq!(panel.lines[0].points.len(), 41);
        }
        assert_eq!(fig.panels[0].lines[0].points[40], (1000.0 / 200.0, 10.0), "(KL, margin) joined by step");
        assert!(fig.title.starts_with("Proxies, not the gold reward"));
    }

    #[test]
    fn the_path_chart_has_the_run_the_fit_and_the_peak() {
        let meta = RunMeta::new(7, &json!({"task": "toy-tree"}));
        let fig = figure(&meta, style(&meta), &series(), RunChart::Path, &[500]);
        let panel = &fig.panels[0];
        assert_eq!(
            panel.lines.iter().map(|l| l.kind).collect::<Vec<_>>(),
            vec![LineKind::Main, LineKind::Fit, LineKind::Fit],
            "the run and both Gao forms"
        );
        assert!(panel.markers.iter().any(|m| m.text.starts_with("peak · run 7")));
        assert!(fig.to_svg().contains("√nats"), "d has its unit");
        let svg = fig.to_svg();
        assert!(svg.contains("class=\"fit-line\""));
        assert!(svg.contains("<title>run 7 · step 25 · d "), "tooltips name run, step, x and y");
    }

    #[test]
    fn every_run_chart_renders_with_and_without_data() {
        let meta = RunMeta::new(7, &json!({}));
        for chart in RunChart::ALL {
            let full = figure(&meta, style(&meta), &series(), chart, &[]).to_svg();
            assert!(full.contains(chart.title()), "{}", chart.slug());
            let empty = figure(&meta, style(&meta), &BTreeMap::new(), chart, &[]).to_svg();
            assert!(empty.contains("no "), "{} says it has no data", chart.slug());
            assert_eq!(RunChart::parse(chart.slug()), Some(chart));
        }
        let kl = figure(&meta, style(&meta), &series(), RunChart::Kl, &[]);
        assert_eq!(kl.panels[0].lines.len(), 2);
        assert_eq!(kl.panels[0].legend.len(), 2);
    }
}
