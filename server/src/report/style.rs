//! How a page tells its runs apart, decided from the runs on it: colour by α (see
//! [`AlphaScale`]), dash pattern by τ, a marker for each combination of the other parameters
//! that differ between them (β, learning rate, …), and a facet per loss (drawn by the compare
//! figures). A run keeps its style wherever the same set of runs is shown; what the styles mean
//! is the figure's legend.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use plotters::style::RGBColor;
use serde_json::Value;

use super::RunMeta;
use crate::charts::colour::{AlphaScale, Dash, MarkShape, FIXED_REFERENCE};
use crate::charts::{number, LegendEntry};

/// Keys that never get a marker: α, τ and the loss have their own encodings, seeds are
/// repeats, and the rest do not change what is trained.
const NOT_MARKED: [&str; 20] = [
    "loss_type",
    "sync_ref_model",
    "ref_model_mixup_alpha",
    "ref_model_sync_steps",
    "seed",
    "task_seed",
    "toy_cache_dir",
    "num_threads",
    "device",
    "logging_steps",
    "save_steps",
    "save_strategy",
    "save_total_limit",
    "save_pareto_limit",
    "metric_for_best_model",
    "greater_is_better",
    "export_dtype",
    "eval_steps",
    "gradient_checkpointing",
    "precompute_ref_log_probs",
];

const GREY: RGBColor = RGBColor(110, 110, 110);

/// One run's look.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Style {
    pub colour: RGBColor,
    pub dash: Dash,
    pub marker: Option<MarkShape>,
}

#[derive(Debug, Clone)]
pub struct Styles {
    alpha: AlphaScale,
    /// The τ values of runs whose reference moves, ascending.
    taus: Vec<u64>,
    /// The parameters that get markers, and each combination of their values with its shape.
    marked: Vec<String>,
    combos: Vec<(Vec<String>, MarkShape)>,
    by_run: HashMap<i64, Style>,
    any_fixed: bool,
}

impl Styles {
    pub fn for_runs<'a>(metas: impl IntoIterator<Item = &'a RunMeta>) -> Self {
        let metas: Vec<&RunMeta> = metas.into_iter().collect();
        let alpha = AlphaScale::new(metas.iter().filter_map(|m| m.alpha()));
        let taus: Vec<u64> = metas.iter().filter_map(|m| m.tau()).collect::<BTreeSet<_>>().into_iter().collect();
        let marked: Vec<String> = differing(&metas);
        let mut combos: Vec<(Vec<String>, MarkShape)> = Vec::new();
        if !marked.is_empty() {
            let mut values: Vec<Vec<String>> = metas.iter().map(|m| combo(m, &marked)).collect();
            values.sort();
            values.dedup();
            for (i, v) in values.into_iter().enumerate() {
                combos.push((v, MarkShape::ALL[i % MarkShape::ALL.len()]));
            }
        }
        let mut styles = Self { alpha, taus, marked, combos, by_run: HashMap::new(), any_fixed: false };
        for m in &metas {
            let style = styles.compute(m);
            styles.by_run.insert(m.id, style);
            styles.any_fixed |= m.alpha().is_none();
        }
        styles
    }

    fn compute(&self, meta: &RunMeta) -> Style {
        let dash = match meta.tau() {
            None => Dash::Solid,
            Some(tau) if self.taus.len() <= Dash::BY_RANK.len() => {
                Dash::BY_RANK[self.taus.iter().position(|t| *t == tau).unwrap_or(0)]
            }
            tau => Dash::for_tau(tau),
        };
        let marker = (!self.marked.is_empty())
            .then(|| {
                let c = combo(meta, &self.marked);
                self.combos.iter().find(|(v, _)| *v == c).map(|(_, s)| *s)
            })
            .flatten();
        Style { colour: self.alpha.colour(meta.alpha()), dash, marker }
    }

    /// A run's style; one that was not among the runs is styled as if it had been.
    pub fn of(&self, meta: &RunMeta) -> Style {
        self.by_run.get(&meta.id).copied().unwrap_or_else(|| self.compute(meta))
    }

    /// α on the log scale with a colour bar (more than eight α values).
    pub fn colour_bar(&self) -> bool {
        !self.alpha.is_categorical()
    }

    /// What each colour, dash pattern and marker means.
    pub fn legend(&self) -> Vec<LegendEntry> {
        let mut out = Vec::new();
        if self.any_fixed {
            out.push(LegendEntry::line("fixed reference", FIXED_REFERENCE, Dash::Solid));
        }
        for (alpha, colour) in self.alpha.entries() {
            out.push(LegendEntry::line(format!("α = {}", number(alpha)), colour, Dash::Solid));
        }
        if self.taus.len() > 1 || self.taus.first().is_some_and(|t| *t != 1) {
            let mut seen = Vec::new();
            for &tau in &self.taus {
                let dash = self.compute_dash(tau);
                if seen.contains(&dash) {
                    continue;
                }
                seen.push(dash);
                let label = if self.taus.len() <= Dash::BY_RANK.len() {
                    format!("τ = {tau}")
                } else {
                    match dash {
                        Dash::Solid => "τ = 1".into(),
                        Dash::Dotted => "τ 2–10".into(),
                        Dash::Dashed => "τ 11–100".into(),
                        _ => "τ > 100".into(),
                    }
                };
                out.push(LegendEntry::line(label, GREY, dash));
            }
        }
        for (values, shape) in &self.combos {
            let label = self.marked.iter().zip(values).map(|(k, v)| format!("{} = {v}", short(k))).collect::<Vec<_>>();
            out.push(LegendEntry { label: label.join(", "), colour: GREY, dash: Dash::Solid, marker: Some(*shape) });
        }
        out
    }

    fn compute_dash(&self, tau: u64) -> Dash {
        if self.taus.len() <= Dash::BY_RANK.len() {
            Dash::BY_RANK[self.taus.iter().position(|t| *t == tau).unwrap_or(0)]
        } else {
            Dash::for_tau(Some(tau))
        }
    }
}

/// β and the learning rate by their symbols; other keys as they are.
fn short(key: &str) -> &str {
    match key {
        "beta" => "β",
        "learning_rate" => "lr",
        other => other,
    }
}

/// Parameters whose values differ between the runs, bar those with their own encoding.
fn differing(metas: &[&RunMeta]) -> Vec<String> {
    let keys: BTreeSet<&String> = metas.iter().flat_map(|m| m.params.keys()).collect();
    keys.into_iter()
        .filter(|k| !NOT_MARKED.contains(&k.as_str()))
        .filter(|k| {
            let values: BTreeSet<String> = metas.iter().map(|m| shown(m.params.get(*k))).collect();
            values.len() > 1
        })
        .cloned()
        .collect()
}

fn combo(meta: &RunMeta, keys: &[String]) -> Vec<String> {
    keys.iter().map(|k| shown(meta.params.get(k))).collect()
}

fn shown(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "unset".into(),
        Some(Value::Number(n)) => n.as_f64().map_or_else(|| n.to_string(), number),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The parameter values of runs, as the summary shows them: α and τ only where the reference
/// moves (a fixed reference has neither, whatever its config says).
pub fn shown_params(meta: &RunMeta) -> BTreeMap<String, String> {
    meta.params
        .iter()
        .map(|(k, v)| {
            let moves = meta.config.trust_region().is_some();
            let text = match k.as_str() {
                "ref_model_mixup_alpha" | "ref_model_sync_steps" if !moves => "—".to_string(),
                _ => plain(v),
            };
            (k.clone(), text)
        })
        .collect()
}

fn plain(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), number),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn meta(id: i64, alpha: Option<f64>, tau: u64, beta: f64) -> RunMeta {
        let mut config = json!({"task": "toy-tree", "beta": beta, "seed": id, "ref_model_mixup_alpha": 0.6});
        if let Some(a) = alpha {
            config["sync_ref_model"] = json!(true);
            config["ref_model_mixup_alpha"] = json!(a);
            config["ref_model_sync_steps"] = json!(tau);
        }
        RunMeta::new(id, &config)
    }

    #[test]
    fn a_four_value_alpha_sweep_gets_four_distinct_colours_and_taus_get_distinct_dashes() {
        let runs: Vec<RunMeta> =
            [0.01, 0.1, 0.6, 1.0].iter().enumerate().map(|(i, a)| meta(i as i64, Some(*a), 1, 0.1)).collect();
        let styles = Styles::for_runs(&runs);
        let colours: BTreeSet<String> = runs.iter().map(|r| crate::charts::colour::hex(styles.of(r).colour)).collect();
        assert_eq!(colours.len(), 4);
        assert!(!styles.colour_bar());
        assert!(runs.iter().all(|r| styles.of(r).marker.is_none()), "seeds alone get no markers");
        let legend: Vec<String> = styles.legend().into_iter().map(|e| e.label).collect();
        assert_eq!(legend, vec!["α = 0.01", "α = 0.1", "α = 0.6", "α = 1"]);
        let hard: Vec<RunMeta> = [1u64, 10, 100, 1000].iter().map(|t| meta(*t as i64, Some(1.0), *t, 0.1)).collect();
        let styles = Styles::for_runs(&hard);
        let dashes: BTreeSet<Dash> = hard.iter().map(|r| styles.of(r).dash).collect();
        assert_eq!(dashes.len(), 4);
    }

    #[test]
    fn runs_differing_only_in_beta_get_markers_and_vanilla_alpha_is_not_shown() {
        let runs = vec![meta(1, None, 1, 0.1), meta(2, None, 1, 0.3)];
        let styles = Styles::for_runs(&runs);
        let (a, b) = (styles.of(&runs[0]), styles.of(&runs[1]));
        assert_eq!(a.colour, b.colour, "both vanilla");
        assert!(a.marker.is_some() && b.marker.is_some() && a.marker != b.marker);
        assert!(styles.legend().iter().any(|e| e.label == "β = 0.3" && e.marker.is_some()));
        assert_eq!(shown_params(&runs[0])["ref_model_mixup_alpha"], "—");
        assert_eq!(shown_params(&meta(3, Some(0.1), 1, 0.1))["ref_model_mixup_alpha"], "0.1");
    }
}
