//! One run's charts: loss; rewards/margins and accuracies; KL to π_init and to the reference;
//! gold reward; OOD mass; and the gold-reward-vs-sqrt(KL) path with its Gao fit and peak.

use std::collections::BTreeMap;

use plotters::style::RGBColor;

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
}

impl RunChart {
    pub const ALL: [RunChart; 6] = [Self::Path, Self::Gold, Self::Kl, Self::Loss, Self::Rewards, Self::Ood];

    /// Its name in URLs and element ids.
    pub fn slug(self) -> &'static str {
        match self {
            Self::Loss => "loss",
            Self::Rewards => "rewards",
            Self::Kl => "kl",
            Self::Gold => "gold",
            Self::Ood => "ood",
            Self::Path => "path",
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
        }
    }

    /// The metrics it reads.
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Self::Loss => &["loss"],
            Self::Rewards => {
                &["rewards/margins", "eval/init_rewards/margins", "rewards/accuracies", "eval/init_rewards/accuracies"]
            }
            Self::Kl => &["eval/kl_init", "eval/kl_ref"],
            Self::Gold => &["eval/gold_reward"],
            Self::Ood => &["eval/ood_mass"],
            Self::Path => &["eval/kl_init", "eval/gold_reward"],
        }
    }
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
            legend.push(LegendEntry { label: label.into(), colour, dash });
        }
    }
    if legend.len() < 2 {
        legend.clear();
    }
    Panel {
        title: String::new(),
        x: Axis::new("step"),
        y: Axis::new(y_label),
        bands: Vec::new(),
        lines,
        markers: Vec::new(),
        legend,
        empty_note: empty_note.into(),
    }
}

pub fn figure(meta: &RunMeta, series: &BTreeMap<String, Series>, chart: RunChart) -> Figure {
    let own = (meta.colour(), meta.dash());
    let panels = match chart {
        RunChart::Loss => {
            vec![step_panel(meta, series, "loss", &[("loss", "loss", own.0, own.1)], "no steps logged yet")]
        }
        RunChart::Rewards => vec![
            step_panel(
                meta,
                series,
                "rewards/margins",
                &[
                    ("rewards/margins", "against the reference", own.0, own.1),
                    ("eval/init_rewards/margins", "against π_init", SECONDARY, Dash::Dashed),
                ],
                "no steps logged yet",
            ),
            step_panel(
                meta,
                series,
                "rewards/accuracies",
                &[
                    ("rewards/accuracies", "against the reference", own.0, own.1),
                    ("eval/init_rewards/accuracies", "against π_init", SECONDARY, Dash::Dashed),
                ],
                "no steps logged yet",
            ),
        ],
        RunChart::Kl => vec![step_panel(
            meta,
            series,
            "KL (nats)",
            &[
                ("eval/kl_init", "KL to π_init", own.0, own.1),
                ("eval/kl_ref", "KL to the reference", SECONDARY, Dash::Dashed),
            ],
            NO_EVALS,
        )],
        RunChart::Gold => {
            let mut panel =
                step_panel(meta, series, "eval/gold_reward", &[("eval/gold_reward", "gold", own.0, own.1)], NO_EVALS);
            let evals = super::evals(series);
            if let Some(s) = super::summarize(&evals, &[]) {
                panel.markers.push(peak_marker(meta, s.peak_step as f64, s.peak_gold, &s));
            }
            vec![panel]
        }
        RunChart::Ood => {
            vec![step_panel(meta, series, "eval/ood_mass", &[("eval/ood_mass", "OOD mass", own.0, own.1)], NO_EVALS)]
        }
        RunChart::Path => vec![path_panel(meta, series)],
    };
    Figure { title: chart.title().into(), size: SIZE, panels, colour_bar: false }
}

fn peak_marker(meta: &RunMeta, x: f64, y: f64, s: &trainer::summary::RunSummary) -> Marker {
    Marker {
        key: meta.key(),
        x,
        y,
        colour: RGBColor(230, 60, 40),
        shape: Shape::Circle,
        text: format!(
            "peak · run {} · step {} · sqrt(KL) {} · gold {}",
            meta.id,
            s.peak_step,
            number(s.peak_kl.max(0.0).sqrt()),
            number(s.peak_gold)
        ),
    }
}

/// Gold reward along sqrt(KL to π_init), the Gao et al. RL-form fit and the peak.
fn path_panel(meta: &RunMeta, series: &BTreeMap<String, Series>) -> Panel {
    let evals = super::evals(series);
    let points: Vec<(i64, f64, f64)> =
        super::eval_points(&evals).iter().map(|p| (p.step as i64, p.kl.max(0.0).sqrt(), p.gold)).collect();
    let mut panel = Panel {
        title: String::new(),
        x: Axis::new("sqrt(KL(π_θ ‖ π_init))"),
        y: Axis::new("gold reward"),
        empty_note: NO_EVALS.into(),
        ..Panel::default()
    };
    if points.is_empty() {
        return panel;
    }
    let kept = downsample(&points, LINE_POINTS, |p| Some(p.2));
    let hover = hover_indices(kept.len())
        .map(|i| {
            let (step, d, g) = kept[i];
            Hover {
                x: d,
                y: g,
                text: format!("run {} · step {step} · sqrt(KL) {} · gold {}", meta.id, number(d), number(g)),
            }
        })
        .collect();
    panel.lines.push(Line {
        key: meta.key(),
        label: meta.label(),
        kind: LineKind::Main,
        colour: meta.colour(),
        dash: meta.dash(),
        points: kept.iter().map(|p| (p.1, p.2)).collect(),
        hover,
    });
    panel.legend.push(LegendEntry { label: meta.short_label(), colour: meta.colour(), dash: meta.dash() });
    let Some(s) = super::summarize(&evals, &[]) else { return panel };
    if let Some(fit) = s.fit {
        let d_max = points.iter().map(|p| p.1).fold(0.0, f64::max);
        let curve: Vec<(f64, f64)> = (1..=80)
            .map(|i| d_max * i as f64 / 80.0)
            .map(|d| (d, s.start_gold + d * (fit.a - fit.b * d.ln())))
            .collect();
        let grey = RGBColor(120, 120, 120);
        panel.lines.push(Line {
            key: format!("{}-fit", meta.key()),
            label: format!(
                "Gao fit: R(d) = d ({} − {} ln d), R² {}",
                number(fit.a),
                number(fit.b),
                number(fit.r_squared)
            ),
            kind: LineKind::Fit,
            colour: grey,
            dash: Dash::Dashed,
            points: curve,
            hover: Vec::new(),
        });
        panel.legend.push(LegendEntry {
            label: format!("Gao fit (R² {})", number(fit.r_squared)),
            colour: grey,
            dash: Dash::Dashed,
        });
        if let (Some(d), Some(r)) = (fit.d_star, fit.r_star) {
            if d <= d_max * 1.5 {
                panel.markers.push(Marker {
                    key: format!("{}-fit", meta.key()),
                    x: d,
                    y: s.start_gold + r,
                    colour: grey,
                    shape: Shape::Triangle,
                    text: format!("fitted optimum · d* {} · R* {}", number(d), number(r)),
                });
            }
        }
    }
    panel.markers.push(peak_marker(meta, s.peak_kl.max(0.0).sqrt(), s.peak_gold, &s));
    panel
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
        ]
        .into()
    }

    #[test]
    fn the_path_chart_has_the_run_the_fit_and_the_peak() {
        let meta = RunMeta::new(7, &json!({"task": "toy-tree"}));
        let fig = figure(&meta, &series(), RunChart::Path);
        let panel = &fig.panels[0];
        assert_eq!(panel.lines.iter().map(|l| l.kind).collect::<Vec<_>>(), vec![LineKind::Main, LineKind::Fit]);
        assert!(panel.markers.iter().any(|m| m.text.starts_with("peak · run 7")));
        let svg = fig.to_svg();
        assert!(svg.contains("class=\"fit-line\""));
        assert!(svg.contains("<title>run 7 · step 25 · sqrt(KL) "), "tooltips name run, step, x and y");
    }

    #[test]
    fn every_run_chart_renders_with_and_without_data() {
        let meta = RunMeta::new(7, &json!({}));
        for chart in RunChart::ALL {
            let full = figure(&meta, &series(), chart).to_svg();
            assert!(full.contains(chart.title()), "{}", chart.slug());
            let empty = figure(&meta, &BTreeMap::new(), chart).to_svg();
            assert!(empty.contains("no "), "{} says it has no data", chart.slug());
            assert_eq!(RunChart::parse(chart.slug()), Some(chart));
        }
        let kl = figure(&meta, &series(), RunChart::Kl);
        assert_eq!(kl.panels[0].lines.len(), 2);
        assert_eq!(kl.panels[0].legend.len(), 2);
    }
}
