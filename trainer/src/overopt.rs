//! The overoptimization alarm: says, while a run trains, when its gold reward has passed its
//! peak as the policy keeps drifting from π_init.
//!
//! At every evaluation the detector compares `metric_for_best_model` (the gold reward by
//! default) with the running peak, the best evaluation so far. An evaluation counts as *below*
//! the peak when it is lower by more than `early_stopping_threshold` and, where the metric is a
//! Monte Carlo estimate with a standard error (`<metric>_se`, e.g. `eval/gold_reward_se`), by
//! more than 2 standard errors of the difference. Once `early_stopping_patience` evaluations in a
//! row are below it, the run is *past its peak*: the alarm fires. A new peak clears it.
//!
//! The running peak is the maximum of noisy values, so it sits above the true level of a flat
//! curve, and a 2-SE test against it fires more often than 2.3% of the time per evaluation. The
//! patience is what bounds false alarms: at the default of 8, a flat curve of 41 Monte Carlo
//! evaluations (a toy-length run) raises one in under 5% of runs (see the tests, which measure
//! it). Exact evaluations have no noise, and there the alarm fires exactly `patience`
//! evaluations after the peak of a curve that then only falls.
//!
//! Detection runs whenever the run has a gold reward (a toy task or `reward_model_path`); it
//! only stops the run with `early_stopping = true`. The state is plain data carried in
//! `trainer_state.json`, so a resumed run remembers its peak.

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::metric_names::{OVEROPT_ALARM_STEP, OVEROPT_PAST_PEAK, OVEROPT_PEAK_KL, OVEROPT_PEAK_STEP};
use crate::metrics::Metrics;

/// How many standard errors of the difference an evaluation must be below the peak.
pub const SE_MULTIPLE: f64 = 2.0;

/// When an evaluation is below the peak, and for how long before the alarm fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// `early_stopping_patience`: evaluations in a row below the peak.
    pub patience: u64,
    /// `early_stopping_threshold`: the least drop that counts, in the metric's units.
    pub threshold: f64,
}

/// One evaluation as the detector sees it; `value` is oriented so that larger is better.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub step: u64,
    pub value: f64,
    /// Standard error of `value`; 0 for exact evaluations.
    pub se: f64,
    /// KL to π_init, in nats.
    pub kl: f64,
}

/// The alarm: the run is past the peak it reached at `peak_step`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// The evaluation at which it fired.
    pub step: u64,
    pub peak_step: u64,
    /// KL to π_init at the peak, in nats.
    pub peak_kl: f64,
}

impl Alarm {
    /// The reason a run stopped by `early_stopping` finishes with.
    pub fn stop_reason(&self) -> String {
        format!(
            "stopped: past its peak at step {} (peak at step {}, KL to π_init {:.3} nats)",
            self.step, self.peak_step, self.peak_kl
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    /// The best evaluation so far (the earliest among equals).
    pub peak: Option<Evaluation>,
    /// Evaluations in a row below the peak, up to the latest.
    pub below: u64,
    /// Set once `below` reaches the patience; cleared by a new peak.
    pub alarm: Option<Alarm>,
}

impl Detector {
    /// Records an evaluation; answers the alarm if this evaluation fired it.
    pub fn observe(&mut self, rule: &Rule, e: Evaluation) -> Option<Alarm> {
        if !(e.value.is_finite() && e.kl.is_finite()) {
            return None;
        }
        let se = if e.se.is_finite() { e.se.max(0.0) } else { 0.0 };
        let e = Evaluation { se, ..e };
        let Some(peak) = self.peak.filter(|p| e.value <= p.value) else {
            *self = Self { peak: Some(e), below: 0, alarm: None };
            return None;
        };
        if is_below(rule, &peak, &e) {
            self.below += 1;
        } else {
            self.below = 0;
        }
        if self.alarm.is_none() && self.below >= rule.patience {
            self.alarm = Some(Alarm { step: e.step, peak_step: peak.step, peak_kl: peak.kl });
            return self.alarm;
        }
        None
    }

    /// The `overopt/*` metrics of the state after an evaluation.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics::new();
        let Some(peak) = self.peak else { return m };
        m.insert(OVEROPT_PAST_PEAK.into(), if self.alarm.is_some() { 1.0 } else { 0.0 });
        m.insert(OVEROPT_PEAK_STEP.into(), peak.step as f64);
        m.insert(OVEROPT_PEAK_KL.into(), peak.kl);
        if let Some(alarm) = self.alarm {
            m.insert(OVEROPT_ALARM_STEP.into(), alarm.step as f64);
        }
        m
    }
}

/// `e` is below `peak` by more than the threshold and by more than 2 standard errors of the
/// difference (which is 0 for exact evaluations).
fn is_below(rule: &Rule, peak: &Evaluation, e: &Evaluation) -> bool {
    let drop = peak.value - e.value;
    drop > rule.threshold && drop > SE_MULTIPLE * (peak.se.powi(2) + e.se.powi(2)).sqrt()
}

/// What a run watches: its rule and metric. `None` without a gold reward (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    pub rule: Rule,
    /// The metric as logged (`eval/…`), and whether larger is better.
    pub metric: String,
    pub greater_is_better: bool,
}

impl Watch {
    pub fn from_config(cfg: &RunConfig) -> Option<Self> {
        if !cfg.has_gold_reward() {
            return None;
        }
        let (metric, greater_is_better) = cfg.best_metric()?;
        Some(Self {
            rule: Rule { patience: cfg.early_stopping_patience.max(1), threshold: cfg.early_stopping_threshold },
            metric,
            greater_is_better,
        })
    }

    /// Feeds one evaluation's metrics to the detector and adds the `overopt/*` metrics to them;
    /// answers the alarm if this evaluation fired it. An evaluation without the metric or KL to
    /// π_init is skipped.
    pub fn evaluated(&self, detector: &mut Detector, step: u64, metrics: &mut Metrics) -> Option<Alarm> {
        let (Some(&value), Some(&kl)) = (metrics.get(&self.metric), metrics.get(crate::metric_names::EVAL_KL_INIT))
        else {
            return None;
        };
        let se = metrics.get(&format!("{}_se", self.metric)).copied().unwrap_or(0.0);
        let value = if self.greater_is_better { value } else { -value };
        let fired = detector.observe(&self.rule, Evaluation { step, value, se, kl });
        metrics.extend(detector.metrics());
        fired
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    const DEFAULT: Rule = Rule { patience: 8, threshold: 0.0 };

    /// The detector over a series of (value, se) at evaluations every 25 steps, KL growing with
    /// the step; answers the step of the first alarm.
    fn first_alarm(rule: &Rule, series: &[(f64, f64)]) -> Option<(u64, Alarm)> {
        let mut d = Detector::default();
        series.iter().enumerate().find_map(|(i, &(value, se))| {
            let step = 25 * i as u64;
            d.observe(rule, Evaluation { step, value, se, kl: 0.01 * step as f64 }).map(|a| (i as u64, a))
        })
    }

    /// `n` Monte Carlo evaluations of a curve `mean(i)`, each with standard error `se`.
    fn noisy(rng: &mut impl Rng, n: usize, se: f64, mean: impl Fn(usize) -> f64) -> Vec<(f64, f64)> {
        // Box–Muller: a standard normal from two uniforms.
        let mut normal = || {
            let (u, v): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        (0..n).map(|i| (mean(i) + se * normal(), se)).collect()
    }

    #[test]
    fn a_flat_monte_carlo_curve_raises_no_alarm_on_20_seeds_and_under_5_percent_of_many() {
        // toy-length's defaults: 41 evaluations (1,000 steps, every 25), gold reward SE ≈ 0.1.
        let false_alarms = |seeds: std::ops::Range<u64>| {
            seeds
                .filter(|&seed| {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    first_alarm(&DEFAULT, &noisy(&mut rng, 41, 0.1, |_| 4.0)).is_some()
                })
                .count()
        };
        assert_eq!(false_alarms(0..20), 0, "20 seeds of a flat curve");
        let many = 4000;
        let rate = false_alarms(1000..1000 + many) as f64 / many as f64;
        assert!(rate < 0.05, "false-alarm rate {rate} over {many} flat curves");
        // The rule is what keeps it there: without the 2-SE term most flat curves would alarm.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let without_se = (0..200)
            .filter(|_| {
                let series: Vec<(f64, f64)> =
                    noisy(&mut rng, 41, 0.1, |_| 4.0).iter().map(|&(v, _)| (v, 0.0)).collect();
                first_alarm(&DEFAULT, &series).is_some()
            })
            .count();
        assert!(without_se > 100, "ignoring the noise alarms on {without_se} of 200 flat curves");
    }

    #[test]
    fn a_peaked_curve_fires_within_patience_evaluations_after_its_peak() {
        // Exact evaluations: exactly `patience` evaluations after the peak at index 9.
        let peaked = |i: usize| if i <= 9 { 0.2 * i as f64 } else { 1.8 - 0.1 * (i - 9) as f64 };
        let exact: Vec<(f64, f64)> = (0..81).map(|i| (peaked(i), 0.0)).collect();
        let (at, alarm) = first_alarm(&DEFAULT, &exact).expect("the alarm fires");
        assert_eq!((at, alarm.peak_step, alarm.step), (9 + 8, 225, 425));
        assert!((alarm.peak_kl - 2.25).abs() < 1e-12);
        // With Monte Carlo noise it waits until the drop clears 2 SE of the difference, then
        // `patience` evaluations more: never before the peak plus the patience.
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (at, alarm) = first_alarm(&DEFAULT, &noisy(&mut rng, 81, 0.05, peaked)).expect("fires");
            assert!((7..=11).contains(&(alarm.peak_step / 25)), "seed {seed}: the peak found near 9: {alarm:?}");
            assert!(at >= alarm.peak_step / 25 + 8 && at <= 9 + 8 + 3, "seed {seed}: alarm at evaluation {at}");
        }
    }

    #[test]
    fn a_run_that_never_peaks_never_fires() {
        let rising: Vec<(f64, f64)> = (0..81).map(|i| ((i as f64).sqrt(), 0.0)).collect();
        assert_eq!(first_alarm(&Rule { patience: 1, threshold: 0.0 }, &rising), None);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let noisy_rise = noisy(&mut rng, 41, 0.1, |i| 0.05 * i as f64);
        assert_eq!(first_alarm(&DEFAULT, &noisy_rise), None);
    }

    #[test]
    fn the_threshold_ignores_small_drops_and_a_new_peak_clears_the_alarm() {
        let rule = Rule { patience: 2, threshold: 0.5 };
        let small_drops = [(1.0, 0.0), (0.7, 0.0), (0.6, 0.0), (0.55, 0.0)];
        assert_eq!(first_alarm(&rule, &small_drops), None, "each drop is under the threshold");
        let mut d = Detector::default();
        let at =
            |d: &mut Detector, step: u64, value: f64| d.observe(&rule, Evaluation { step, value, se: 0.0, kl: 1.0 });
        at(&mut d, 0, 1.0);
        at(&mut d, 25, 0.4);
        assert!(at(&mut d, 50, 0.3).is_some(), "two evaluations below by more than 0.5");
        assert_eq!(d.metrics()[OVEROPT_PAST_PEAK], 1.0);
        assert_eq!(d.metrics()[OVEROPT_ALARM_STEP], 50.0);
        assert!(at(&mut d, 75, 0.2).is_none(), "fires once");
        at(&mut d, 100, 1.1);
        assert_eq!(
            (d.alarm, d.below, d.metrics()[OVEROPT_PAST_PEAK], d.metrics()[OVEROPT_PEAK_STEP]),
            (None, 0, 0.0, 100.0)
        );
        assert!(!d.metrics().contains_key(OVEROPT_ALARM_STEP));
    }

    #[test]
    fn a_metric_where_smaller_is_better_and_its_standard_error_are_read_by_name() {
        let watch =
            Watch { rule: Rule { patience: 1, threshold: 0.0 }, metric: "eval/loss".into(), greater_is_better: false };
        let mut d = Detector::default();
        let evaluation = |loss: f64, se: f64| -> Metrics {
            [("eval/loss".to_string(), loss), ("eval/loss_se".to_string(), se), ("eval/kl_init".to_string(), 0.5)]
                .into_iter()
                .collect()
        };
        let mut m = evaluation(1.0, 0.1);
        assert!(watch.evaluated(&mut d, 0, &mut m).is_none());
        assert_eq!((m[OVEROPT_PAST_PEAK], m[OVEROPT_PEAK_STEP], m[OVEROPT_PEAK_KL]), (0.0, 0.0, 0.5));
        assert!(watch.evaluated(&mut d, 25, &mut evaluation(1.2, 0.1)).is_none(), "within 2 SE of the difference");
        assert!(watch.evaluated(&mut d, 50, &mut evaluation(1.4, 0.1)).is_some(), "0.4 > 2·√0.02 ≈ 0.28");
        let mut without_kl: Metrics = [("eval/loss".to_string(), 9.0)].into_iter().collect();
        assert!(watch.evaluated(&mut d, 75, &mut without_kl).is_none() && !without_kl.contains_key(OVEROPT_PAST_PEAK));
    }
}
