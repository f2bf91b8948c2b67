//! What the pages, the sweep command and the benchmark show about runs: labels, colours,
//! overoptimization summaries, figures and tables. Computed from plain data (a run's config and
//! its metric series), never from the database or HTTP, so every caller shows the same thing.

pub mod compare;
pub mod paired;
pub mod run;
pub mod runs;
pub mod style;

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use trainer::config::{LossType, RunConfig};
use trainer::metric_names as names;
use trainer::summary::{self, EvalPoint, RunSummary};

/// One metric's points in step order; `None` for a non-finite value.
pub type Series = Vec<(i64, Option<f64>)>;

/// A CSV field: quoted (with inner quotes doubled) when it holds a comma, a quote or a newline.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A run as a chart or a table names it.
#[derive(Debug, Clone)]
pub struct RunMeta {
    pub id: i64,
    pub config: RunConfig,
    /// Every config key as stored: the parameters the summary table compares.
    pub params: Map<String, Value>,
}

impl RunMeta {
    /// From a stored config; a config this version cannot read shows as the defaults.
    pub fn new(id: i64, stored: &Value) -> Self {
        let mut config: RunConfig = serde_json::from_value(stored.clone()).unwrap_or_default();
        let params = stored.as_object().cloned().unwrap_or_default();
        // Stored before `task_seed` existed: the problem came from `seed`.
        if !params.contains_key("task_seed") {
            config.task_seed = config.seed;
        }
        Self { id, config, params }
    }

    /// α when the reference moves.
    pub fn alpha(&self) -> Option<f64> {
        self.config.trust_region().map(|tr| tr.mixup_alpha)
    }

    /// τ when the reference moves.
    pub fn tau(&self) -> Option<u64> {
        self.config.trust_region().map(|tr| tr.sync_steps)
    }

    pub fn loss_name(&self) -> &'static str {
        loss_name(self.config.loss_type)
    }

    /// "DPO", "TR-DPO soft" (α < 1) or "TR-DPO hard" (α = 1: the reference is replaced).
    pub fn method(&self) -> String {
        match self.alpha() {
            None => self.loss_name().to_string(),
            Some(a) if a >= 1.0 => format!("TR-{} hard", self.loss_name()),
            Some(_) => format!("TR-{} soft", self.loss_name()),
        }
    }

    /// "TR-DPO α=0.1 τ=1" or "DPO".
    pub fn short_label(&self) -> String {
        match (self.alpha(), self.tau()) {
            (Some(a), Some(t)) => format!("TR-{} α={} τ={t}", self.loss_name(), crate::charts::number(a)),
            _ => self.loss_name().to_string(),
        }
    }

    /// "run 12 · TR-DPO α=0.1 τ=1 · seed 3" (and its task seed, for a toy task).
    pub fn label(&self) -> String {
        if self.config.task.is_toy() {
            format!(
                "run {} · {} · task {} seed {}",
                self.id,
                self.short_label(),
                self.config.task_seed,
                self.config.seed
            )
        } else {
            format!("run {} · {} · seed {}", self.id, self.short_label(), self.config.seed)
        }
    }

    /// The key of this run's lines in figures (`data-key`).
    pub fn key(&self) -> String {
        format!("run-{}", self.id)
    }
}

pub fn loss_name(loss: LossType) -> &'static str {
    match loss {
        LossType::Sigmoid => "DPO",
        LossType::Ipo => "IPO",
        LossType::Kto => "KTO",
    }
}

/// One evaluation of a run (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Eval {
    pub step: i64,
    pub kl: Option<f64>,
    pub kl_ref: Option<f64>,
    pub gold: Option<f64>,
    /// The gold reward's standard error (Monte Carlo evaluations).
    pub gold_se: Option<f64>,
    pub ood: Option<f64>,
    /// The overoptimization alarm's state after this evaluation (`overopt/*`; see
    /// `trainer::overopt`): logged only by runs with a gold reward.
    pub past_peak: Option<f64>,
    pub peak_step: Option<f64>,
    pub peak_kl: Option<f64>,
    pub alarm_step: Option<f64>,
}

impl Eval {
    /// The values of [`EVAL_METRICS`], in its order.
    pub fn values(&self) -> [Option<f64>; 9] {
        [
            self.kl,
            self.kl_ref,
            self.gold,
            self.gold_se,
            self.ood,
            self.past_peak,
            self.peak_step,
            self.peak_kl,
            self.alarm_step,
        ]
    }
}

/// The metrics evaluations log, as [`evals`] reads them.
pub const EVAL_METRICS: [&str; 9] = [
    names::EVAL_KL_INIT,
    names::EVAL_KL_REF,
    names::EVAL_GOLD_REWARD,
    names::EVAL_GOLD_REWARD_SE,
    names::EVAL_OOD_MASS,
    names::OVEROPT_PAST_PEAK,
    names::OVEROPT_PEAK_STEP,
    names::OVEROPT_PEAK_KL,
    names::OVEROPT_ALARM_STEP,
];

/// The steps at which any evaluation metric was logged, with what was logged there.
pub fn evals(series: &BTreeMap<String, Series>) -> Vec<Eval> {
    let mut by_step: BTreeMap<i64, Eval> = BTreeMap::new();
    for (i, name) in EVAL_METRICS.iter().enumerate() {
        for &(step, value) in series.get(*name).map_or(&[][..], Vec::as_slice) {
            let e = by_step.entry(step).or_insert(Eval { step, ..Eval::default() });
            let slot = match i {
                0 => &mut e.kl,
                1 => &mut e.kl_ref,
                2 => &mut e.gold,
                3 => &mut e.gold_se,
                4 => &mut e.ood,
                5 => &mut e.past_peak,
                6 => &mut e.peak_step,
                7 => &mut e.peak_kl,
                _ => &mut e.alarm_step,
            };
            *slot = value;
        }
    }
    by_step.into_values().collect()
}

/// The overoptimization alarm's triangle on the charts: orange, apart from the runs' colours
/// (black, viridis), the Pareto front's red and the fits' grey.
pub const ALARM_COLOUR: plotters::style::RGBColor = plotters::style::RGBColor(230, 100, 0);

/// A run past its peak: the overoptimization alarm fired at `alarm_step` and no later
/// evaluation has beaten the peak since.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PastPeak {
    pub alarm_step: i64,
    pub peak_step: i64,
    /// KL to π_init at the peak, in nats.
    pub peak_kl: f64,
}

impl PastPeak {
    /// What the latest evaluation that logged the alarm says; `None` while the run is not past
    /// its peak, or never watched it (no gold reward).
    pub fn of(evals: &[Eval]) -> Option<Self> {
        let last = evals.iter().rev().find(|e| e.past_peak.is_some())?;
        if last.past_peak? < 0.5 {
            return None;
        }
        Some(Self { alarm_step: last.alarm_step? as i64, peak_step: last.peak_step? as i64, peak_kl: last.peak_kl? })
    }

    /// The badge: "past peak since step N (KL x)", N the peak's step and x its KL in nats.
    pub fn badge(&self) -> String {
        format!("past peak since step {} (KL {:.2})", self.peak_step, self.peak_kl)
    }

    /// The badge's explanation.
    pub fn title(&self) -> String {
        format!(
            "The alarm fired at step {}: the gold reward stayed below its peak at step {} (KL to π_init {:.3} nats) \
             for early_stopping_patience evaluations, by more than early_stopping_threshold and 2 standard errors",
            self.alarm_step, self.peak_step, self.peak_kl
        )
    }
}

/// The overoptimization summary (start/peak/final gold reward, drop, Gao fit, Pareto front) of
/// the evaluations with both KL and gold reward; `None` before the first.
pub fn summarize(evals: &[Eval], checkpoint_steps: &[i64]) -> Option<RunSummary> {
    let points = eval_points(evals);
    let steps: Vec<u64> = checkpoint_steps.iter().filter_map(|s| u64::try_from(*s).ok()).collect();
    summary::summarize(&points, &steps)
}

pub fn eval_points(evals: &[Eval]) -> Vec<EvalPoint> {
    evals
        .iter()
        .filter_map(|e| {
            Some(EvalPoint { step: u64::try_from(e.step).ok()?, kl: e.kl?, gold: e.gold?, gold_se: e.gold_se })
        })
        .filter(|p| p.kl.is_finite() && p.gold.is_finite())
        .collect()
}

/// A duration as "1h 02m", "3m 05s" or "12s".
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return String::new();
    }
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_run_is_named_by_its_method_and_trust_region() {
        let vanilla = RunMeta::new(1, &json!({"task": "toy-tree", "loss_type": "ipo"}));
        assert_eq!((vanilla.method(), vanilla.alpha(), vanilla.tau()), ("IPO".to_string(), None, None));
        let soft =
            RunMeta::new(2, &json!({"sync_ref_model": true, "ref_model_mixup_alpha": 0.1, "ref_model_sync_steps": 1}));
        assert_eq!(soft.method(), "TR-DPO soft");
        assert_eq!(soft.label(), "run 2 · TR-DPO α=0.1 τ=1 · seed 42");
        let hard = RunMeta::new(
            3,
            &json!({"task": "toy-tree", "sync_ref_model": true, "ref_model_mixup_alpha": 1.0, "ref_model_sync_steps": 100, "task_seed": 7}),
        );
        assert_eq!(hard.method(), "TR-DPO hard");
        assert_eq!(hard.label(), "run 3 · TR-DPO α=1 τ=100 · task 7 seed 42");
        let before_the_split = RunMeta::new(4, &json!({"task": "toy-tree", "seed": 3}));
        assert_eq!(before_the_split.config.task_seed, 3, "a run stored before task_seed drew its task from seed");
    }

    #[test]
    fn evaluations_join_their_metrics_by_step() {
        let series: BTreeMap<String, Series> = [
            ("eval/kl_init".to_string(), vec![(0, Some(0.0)), (25, Some(0.5))]),
            ("eval/gold_reward".to_string(), vec![(0, Some(1.0)), (25, Some(1.2))]),
            ("loss".to_string(), vec![(1, Some(0.7))]),
        ]
        .into();
        let e = evals(&series);
        assert_eq!(e.len(), 2);
        assert_eq!((e[1].step, e[1].kl, e[1].gold, e[1].ood), (25, Some(0.5), Some(1.2), None));
        let s = summarize(&e, &[25]).unwrap();
        assert_eq!((s.peak_step, s.peak_gold), (25, 1.2));
    }

    #[test]
    fn a_run_is_past_its_peak_while_its_latest_alarm_says_so() {
        let at = |step: i64, past: f64| Eval {
            step,
            kl: Some(0.1 * step as f64),
            gold: Some(1.0),
            past_peak: Some(past),
            peak_step: Some(225.0),
            peak_kl: Some(1.8123),
            alarm_step: (past > 0.0).then_some(425.0),
            ..Eval::default()
        };
        assert_eq!(PastPeak::of(&[at(0, 0.0), at(400, 0.0)]), None);
        let past = PastPeak::of(&[at(0, 0.0), at(425, 1.0), at(450, 1.0)]).unwrap();
        assert_eq!(past, PastPeak { alarm_step: 425, peak_step: 225, peak_kl: 1.8123 });
        assert_eq!(past.badge(), "past peak since step 225 (KL 1.81)");
        assert!(past.title().contains("fired at step 425"), "{}", past.title());
        assert_eq!(PastPeak::of(&[at(425, 1.0), at(450, 0.0)]), None, "a new peak cleared it");
        let without_gold = [Eval { step: 0, kl: Some(0.0), ..Eval::default() }];
        assert_eq!(PastPeak::of(&without_gold), None, "no gold reward, no alarm");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(12.4), "12s");
        assert_eq!(duration(185.0), "3m 05s");
        assert_eq!(duration(3720.0), "1h 02m");
    }
}
