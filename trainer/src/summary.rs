//! A run's overoptimization summary (SPEC §3) from its logged evaluations: gold reward at the
//! start, at its peak and at the end, whether the curve has turned down yet, Gao et al.'s RL
//! and best-of-n fits of gold reward against d = sqrt(KL to π_init) (each with its error at the
//! observed peak and a warning when its optimum is not the observed one), and the Pareto front
//! of (low KL, high gold reward). A plain function of the metrics, so the CLI and the server
//! compute the same thing. Units: KL in nats, d in sqrt-nats (√nats).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metrics::{JsonlSink, Metrics};

/// The names the summary reads, under the short names callers already use.
use crate::metric_names::{EVAL_GOLD_REWARD, EVAL_GOLD_REWARD_SE, EVAL_KL_INIT};

/// One evaluation: step, KL to π_init, gold reward (and its standard error for Monte Carlo
/// estimates; none for exact ones).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: u64,
    pub kl: f64,
    pub gold: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gold_se: Option<f64>,
}

impl EvalPoint {
    pub fn new(step: u64, kl: f64, gold: f64) -> Self {
        Self { step, kl, gold, gold_se: None }
    }

    /// `d = sqrt(KL)`, in sqrt-nats.
    pub fn d(&self) -> f64 {
        self.kl.max(0.0).sqrt()
    }
}

/// Gao et al. (2023)'s two shapes of gold reward `R` (relative to the start) against
/// `d = sqrt(KL to π_init)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FitForm {
    /// RL: `R(d) = d (a − b ln d)`, peak at `d* = exp(a/b − 1)`, `R* = b d*`.
    Rl,
    /// Best-of-n: `R(d) = d (a − b d)`, peak at `d* = a / (2b)`, `R* = a² / (4b)`.
    BestOfN,
}

impl FitForm {
    pub const ALL: [FitForm; 2] = [Self::Rl, Self::BestOfN];

    pub fn name(self) -> &'static str {
        match self {
            Self::Rl => "RL form",
            Self::BestOfN => "best-of-n form",
        }
    }

    pub fn formula(self) -> &'static str {
        match self {
            Self::Rl => "R(d) = d (a − b ln d)",
            Self::BestOfN => "R(d) = d (a − b d)",
        }
    }

    /// The two features the fit is linear in: `R = a·f₁(d) − b·f₂(d)`.
    fn features(self, d: f64) -> (f64, f64) {
        match self {
            Self::Rl => (d, d * d.ln()),
            Self::BestOfN => (d, d * d),
        }
    }

    /// `R(d)` for coefficients `a`, `b`.
    pub fn eval(self, a: f64, b: f64, d: f64) -> f64 {
        if d <= 0.0 {
            return 0.0;
        }
        let (f1, f2) = self.features(d);
        a * f1 - b * f2
    }

    /// The fitted curve's interior maximum `(d*, R*)`, when it has one (`b > 0`).
    fn peak(self, a: f64, b: f64) -> Option<(f64, f64)> {
        // Also refuses a NaN b.
        if b.is_nan() || b <= 0.0 {
            return None;
        }
        let d = match self {
            Self::Rl => (a / b - 1.0).exp(),
            Self::BestOfN => a / (2.0 * b),
        };
        (d > 0.0 && d.is_finite()).then(|| (d, self.eval(a, b, d)))
    }
}

/// A least-squares fit of one form, and how it compares with the observed peak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaoFit {
    pub form: FitForm,
    pub a: f64,
    pub b: f64,
    /// The fitted curve's peak, sqrt-nats; `None` when it has none (`b ≤ 0`).
    pub d_star: Option<f64>,
    /// The fitted gold reward at `d_star`, relative to the start.
    pub r_star: Option<f64>,
    /// Fraction of the variance of R the fit explains (uncentred, as the model has no intercept).
    pub r_squared: f64,
    /// Fitted minus observed gold reward at the observed peak's `d`: how well the fit describes
    /// the part of the curve that matters. R² alone hides this when a late collapse dominates.
    pub peak_error: f64,
    /// Why this fit's optimum should not be read as the run's (it lies beyond the observed range,
    /// or far from the observed peak); `None` when it agrees with what was observed.
    pub warning: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub evaluations: usize,
    pub start_gold: f64,
    pub peak_gold: f64,
    pub peak_step: u64,
    /// KL to π_init at the peak, nats.
    pub peak_kl: f64,
    /// The gold reward's standard error at the peak (Monte Carlo evaluations only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_se: Option<f64>,
    /// The observed curve has turned down: its peak lies before the last 10% of evaluations, and
    /// their mean is below it by more than noise (2 standard errors of the difference, and 1% of
    /// the rise). Until then the run has "no peak yet" and no fitted optimum is shown as its own.
    pub peaked: bool,
    /// Mean over the last 10% of evaluations (at least one): late curves are noisy.
    pub final_gold: f64,
    pub final_kl: f64,
    /// `peak − start`.
    pub rise: f64,
    /// `peak − final`.
    pub drop: f64,
    /// `drop / rise`, when the gold reward rose at all.
    pub drop_fraction: Option<f64>,
    /// The RL form, then the best-of-n form (either missing when its features are collinear).
    pub fits: Vec<GaoFit>,
    /// Evaluations no other evaluation beats on both KL (lower) and gold reward (higher), by KL.
    pub pareto: Vec<ParetoPoint>,
}

impl RunSummary {
    pub fn fit(&self, form: FitForm) -> Option<&GaoFit> {
        self.fits.iter().find(|f| f.form == form)
    }

    /// sqrt(KL) at the peak, sqrt-nats.
    pub fn peak_d(&self) -> f64 {
        self.peak_kl.max(0.0).sqrt()
    }
}

/// One column of a run summary as tables and CSV files show it: `key` heads a CSV column,
/// `label` a table's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummaryColumn {
    pub key: &'static str,
    pub label: &'static str,
}

/// The value of one [`SummaryColumn`] for one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SummaryValue {
    /// `None` where the summary has none (no rise, no fit, no fitted peak).
    Number(Option<f64>),
    Step(u64),
    Flag(bool),
}

impl SummaryValue {
    /// Full precision, as CSV files carry it; blank where there is no value.
    pub fn csv(self) -> String {
        match self {
            Self::Number(v) => v.map(|v| format!("{v}")).unwrap_or_default(),
            Self::Step(s) => s.to_string(),
            Self::Flag(b) => b.to_string(),
        }
    }

    /// Rounded as every table shows a summary ([`display_number`]); blank where there is none.
    pub fn display(self) -> String {
        match self {
            Self::Number(v) => v.map(display_number).unwrap_or_default(),
            Self::Step(s) => s.to_string(),
            Self::Flag(b) => if b { "yes" } else { "no" }.to_string(),
        }
    }

    /// The value as a number (a step as its count, a flag as 0 or 1), for means over runs.
    pub fn as_f64(self) -> Option<f64> {
        match self {
            Self::Number(v) => v,
            Self::Step(s) => Some(s as f64),
            Self::Flag(b) => Some(f64::from(u8::from(b))),
        }
    }
}

/// Every column of a run summary, in the order of [`RunSummary::columns`]: the one list that
/// the sweep CSV, the compare table and its CSV, and the seed report take their columns from.
pub const SUMMARY_COLUMNS: [SummaryColumn; 22] = {
    const fn c(key: &'static str, label: &'static str) -> SummaryColumn {
        SummaryColumn { key, label }
    }
    [
        c("start_gold", "start gold"),
        c("peak_gold", "peak gold"),
        c("peak_step", "peak step"),
        c("peak_kl", "KL at peak (nats)"),
        c("final_gold", "final gold"),
        c("final_kl", "final KL (nats)"),
        c("rise", "rise"),
        c("drop", "drop"),
        c("drop_fraction", "drop / rise"),
        c("peaked", "peaked"),
        c("rl_fit_a", "RL fit: a"),
        c("rl_fit_b", "RL fit: b"),
        c("rl_fit_d_star", "RL fit: d* (√nats)"),
        c("rl_fit_r_star", "RL fit: R*"),
        c("rl_fit_peak_error", "RL fit: error at peak"),
        c("rl_fit_r_squared", "RL fit: R²"),
        c("bon_fit_a", "best-of-n fit: a"),
        c("bon_fit_b", "best-of-n fit: b"),
        c("bon_fit_d_star", "best-of-n fit: d* (√nats)"),
        c("bon_fit_r_star", "best-of-n fit: R*"),
        c("bon_fit_peak_error", "best-of-n fit: error at peak"),
        c("bon_fit_r_squared", "best-of-n fit: R²"),
    ]
};

/// The [`SummaryColumn`] of `key`. Panics on a key that is not one (a programming error).
pub fn summary_column(key: &str) -> SummaryColumn {
    SUMMARY_COLUMNS.iter().copied().find(|c| c.key == key).unwrap_or_else(|| panic!("no summary column {key:?}"))
}

impl RunSummary {
    /// Every column of the summary with its value, in the order of [`SUMMARY_COLUMNS`].
    pub fn columns(&self) -> Vec<(SummaryColumn, SummaryValue)> {
        use SummaryValue::{Flag, Number, Step};
        let mut values = vec![
            Number(Some(self.start_gold)),
            Number(Some(self.peak_gold)),
            Step(self.peak_step),
            Number(Some(self.peak_kl)),
            Number(Some(self.final_gold)),
            Number(Some(self.final_kl)),
            Number(Some(self.rise)),
            Number(Some(self.drop)),
            Number(self.drop_fraction),
            Flag(self.peaked),
        ];
        for form in [FitForm::Rl, FitForm::BestOfN] {
            let fit = self.fit(form);
            values.extend([
                Number(fit.map(|f| f.a)),
                Number(fit.map(|f| f.b)),
                Number(fit.and_then(|f| f.d_star)),
                Number(fit.and_then(|f| f.r_star)),
                Number(fit.map(|f| f.peak_error)),
                Number(fit.map(|f| f.r_squared)),
            ]);
        }
        SUMMARY_COLUMNS.iter().copied().zip(values).collect()
    }

    /// The value of the column `key` (see [`SUMMARY_COLUMNS`]).
    pub fn value(&self, key: &str) -> Option<SummaryValue> {
        self.columns().into_iter().find(|(c, _)| c.key == key).map(|(_, v)| v)
    }
}

/// How every table and chart shows a number: three significant digits, trailing zeros dropped,
/// scientific notation outside 1e-4..1e6. CSV files carry full precision instead.
pub fn display_number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    if !(-4..6).contains(&magnitude) {
        return format!("{v:.2e}");
    }
    let decimals = (2 - magnitude).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ParetoPoint {
    pub step: u64,
    pub kl: f64,
    pub gold: f64,
    /// A checkpoint was saved at this step.
    pub checkpoint: bool,
}

/// The evaluation points of a run's logged metrics (steps with both `eval/kl_init` and
/// `eval/gold_reward`), in step order.
pub fn eval_points(steps: &[(u64, Metrics)]) -> Vec<EvalPoint> {
    let mut points: Vec<EvalPoint> = steps
        .iter()
        .filter_map(|(step, m)| {
            Some(EvalPoint {
                step: *step,
                kl: *m.get(EVAL_KL_INIT)?,
                gold: *m.get(EVAL_GOLD_REWARD)?,
                gold_se: m.get(EVAL_GOLD_REWARD_SE).copied(),
            })
        })
        .collect();
    points.sort_by_key(|p| p.step);
    points.dedup_by_key(|p| p.step);
    points
}

/// `None` when the run logged no evaluation.
pub fn summarize(points: &[EvalPoint], checkpoint_steps: &[u64]) -> Option<RunSummary> {
    let first = points.first()?;
    let peak_at = (0..points.len()).fold(0, |best, i| if points[i].gold > points[best].gold { i } else { best });
    let peak = &points[peak_at];
    let tail_start = points.len() - points.len().div_ceil(10);
    let tail = &points[tail_start..];
    let final_gold = tail.iter().map(|p| p.gold).sum::<f64>() / tail.len() as f64;
    let final_kl = tail.iter().map(|p| p.kl).sum::<f64>() / tail.len() as f64;
    let rise = peak.gold - first.gold;
    let drop = peak.gold - final_gold;
    // The noise of `peak − final`: the peak's standard error and that of the tail's mean.
    let tail_se = (tail.iter().map(|p| p.gold_se.unwrap_or(0.0).powi(2)).sum::<f64>()).sqrt() / tail.len() as f64;
    let drop_se = (peak.gold_se.unwrap_or(0.0).powi(2) + tail_se.powi(2)).sqrt();
    let peaked = peak_at < tail_start && drop > (2.0 * drop_se).max(0.01 * rise.abs()).max(1e-12);
    let fit_points: Vec<(f64, f64)> = points.iter().map(|p| (p.d(), p.gold - first.gold)).collect();
    let observed = ObservedPeak {
        d: peak.d(),
        r: rise,
        se: peak.gold_se.unwrap_or(0.0),
        rise: rise.max(0.0),
        d_max: points.iter().map(EvalPoint::d).fold(0.0, f64::max),
        peaked,
    };
    let fits = FitForm::ALL.iter().filter_map(|&form| fit_gao(form, &fit_points, &observed)).collect();
    Some(RunSummary {
        evaluations: points.len(),
        start_gold: first.gold,
        peak_gold: peak.gold,
        peak_step: peak.step,
        peak_kl: peak.kl,
        peak_se: peak.gold_se,
        peaked,
        final_gold,
        final_kl,
        rise,
        drop,
        drop_fraction: (rise > 0.0).then(|| drop / rise),
        fits,
        pareto: pareto_front(points)
            .into_iter()
            .map(|p| ParetoPoint {
                step: p.step,
                kl: p.kl,
                gold: p.gold,
                checkpoint: checkpoint_steps.contains(&p.step),
            })
            .collect(),
    })
}

/// What a fit is judged against.
#[derive(Debug, Clone, Copy)]
pub struct ObservedPeak {
    /// sqrt(KL) at the observed peak.
    pub d: f64,
    /// The observed peak's gold reward relative to the start.
    pub r: f64,
    /// Its standard error (0 for exact evaluations).
    pub se: f64,
    /// How far the gold reward rose (0 if it never did).
    pub rise: f64,
    /// The largest d evaluated.
    pub d_max: f64,
    /// The observed curve has turned down.
    pub peaked: bool,
}

/// Summarizes a run directory (`metrics.jsonl`, `checkpoint-<step>/`) into its `summary.json`.
/// Returns `None`, writing nothing, when the run logged no evaluation.
pub fn write_run_summary(dir: &Path) -> Result<Option<RunSummary>> {
    let steps = JsonlSink::read(&dir.join("metrics.jsonl"))?;
    let mut checkpoints = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let name = entry.map_err(|e| Error::io(dir, e))?.file_name();
        if let Some(step) = name.to_str().and_then(|n| n.strip_prefix("checkpoint-")).and_then(|s| s.parse().ok()) {
            checkpoints.push(step);
        }
    }
    let Some(summary) = summarize(&eval_points(&steps), &checkpoints) else { return Ok(None) };
    let path = dir.join("summary.json");
    let text = serde_json::to_string_pretty(&summary).map_err(|source| Error::Json { path: path.clone(), source })?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    Ok(Some(summary))
}

/// Least squares of `form` over `(d, R)` points (points at `d = 0` carry no information: both
/// features vanish), judged against the observed peak. `None` when the features are collinear.
pub fn fit_gao(form: FitForm, points: &[(f64, f64)], observed: &ObservedPeak) -> Option<GaoFit> {
    let (mut s11, mut s12, mut s22, mut s1r, mut s2r, mut srr) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for &(d, r) in points.iter().filter(|(d, r)| *d > 0.0 && d.is_finite() && r.is_finite()) {
        let (f1, f2) = form.features(d);
        let f2 = -f2;
        s11 += f1 * f1;
        s12 += f1 * f2;
        s22 += f2 * f2;
        s1r += f1 * r;
        s2r += f2 * r;
        srr += r * r;
    }
    let det = s11 * s22 - s12 * s12;
    if det.abs() <= 1e-12 * (s11 * s22).max(f64::MIN_POSITIVE) {
        return None;
    }
    let a = (s22 * s1r - s12 * s2r) / det;
    let b = (s11 * s2r - s12 * s1r) / det;
    let residual = srr - a * s1r - b * s2r;
    let peak = form.peak(a, b);
    let peak_error = form.eval(a, b, observed.d) - observed.r;
    Some(GaoFit {
        form,
        a,
        b,
        d_star: peak.map(|p| p.0),
        r_star: peak.map(|p| p.1),
        r_squared: if srr > 0.0 { 1.0 - residual / srr } else { 1.0 },
        peak_error,
        warning: fit_warning(peak, observed),
    })
}

/// Why a fitted peak `(d*, R*)` is not the run's: beyond the observed range (an extrapolation),
/// or more than max(2 standard errors, 20% of the rise) from the observed peak's gold reward, or
/// more than 20% from its d.
fn fit_warning(peak: Option<(f64, f64)>, observed: &ObservedPeak) -> Option<String> {
    let Some((d, r)) = peak else {
        return observed.peaked.then(|| "the fit has no peak, but the observed curve turned down".to_string());
    };
    if d > observed.d_max {
        return Some(format!(
            "d* = {d:.3} √nats lies beyond the observed range (d ≤ {:.3}): an extrapolation",
            observed.d_max
        ));
    }
    if !observed.peaked {
        return None;
    }
    let tolerance = (2.0 * observed.se).max(0.2 * observed.rise);
    let (dr, dd) = (r - observed.r, d - observed.d);
    let mut reasons = Vec::new();
    if dr.abs() > tolerance {
        let what =
            if observed.se > 0.0 && 2.0 * observed.se >= 0.2 * observed.rise { "2 SE" } else { "20% of the rise" };
        reasons.push(format!("R* is {dr:+.3} from the observed peak's (more than {what}, {tolerance:.3})"));
    }
    if dd.abs() > 0.2 * observed.d {
        reasons.push(format!("d* is {dd:+.3} √nats from the observed peak's {:.3} (more than 20%)", observed.d));
    }
    (!reasons.is_empty()).then(|| format!("the fitted peak disagrees with the observed one: {}", reasons.join("; ")))
}

/// Points not dominated by another with lower-or-equal KL and higher-or-equal gold reward (one
/// strictly), sorted by KL.
pub fn pareto_front(points: &[EvalPoint]) -> Vec<EvalPoint> {
    let mut sorted: Vec<EvalPoint> =
        points.iter().copied().filter(|p| p.kl.is_finite() && p.gold.is_finite()).collect();
    // By KL, and at equal KL the best gold reward first, so it alone survives.
    sorted.sort_by(|x, y| x.kl.total_cmp(&y.kl).then(y.gold.total_cmp(&x.gold)));
    let mut front: Vec<EvalPoint> = Vec::new();
    for p in sorted {
        if front.last().is_none_or(|best| p.gold > best.gold) {
            front.push(p);
        }
    }
    front
}

/// A mean over independent runs (typically seeds) with the half-width of its 95% confidence
/// interval, from Student's t with n − 1 degrees of freedom.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanCi {
    pub mean: f64,
    /// NaN for a single value: one run says nothing about the spread.
    pub half_width: f64,
    pub n: usize,
}

impl MeanCi {
    /// `None` without any finite value; non-finite values are left out.
    pub fn of(values: &[f64]) -> Option<Self> {
        let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        let n = v.len();
        if n == 0 {
            return None;
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let half_width = if n < 2 {
            f64::NAN
        } else {
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            t_975(n - 1) * (var / n as f64).sqrt()
        };
        Some(Self { mean, half_width, n })
    }
}

impl MeanCi {
    /// "mean ± half-width" in the one rounding of tables ([`display_number`]); the mean alone
    /// for a single value.
    pub fn display(&self) -> String {
        if self.half_width.is_finite() {
            format!("{} ± {}", display_number(self.mean), display_number(self.half_width))
        } else {
            display_number(self.mean)
        }
    }
}

impl std::fmt::Display for MeanCi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = f.precision().unwrap_or(3);
        if self.half_width.is_finite() {
            write!(f, "{:.p$} ± {:.p$}", self.mean, self.half_width)
        } else {
            write!(f, "{:.p$}", self.mean)
        }
    }
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom (two-sided 95%).
fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        // Cornish–Fisher expansion around the normal quantile; within 1e-3 beyond 30.
        _ => {
            let (z, d) = (1.959_964_f64, df as f64);
            z + (z.powi(3) + z) / (4.0 * d) + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * d * d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mean_ci_uses_students_t_and_needs_two_values_for_a_width() {
        // 1, 2, 3, 4, 5: mean 3, sd sqrt(2.5), t(4) = 2.776.
        let ci = MeanCi::of(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!((ci.mean, ci.n), (3.0, 5));
        assert!((ci.half_width - 2.776 * (2.5f64 / 5.0).sqrt()).abs() < 1e-12);
        assert_eq!(format!("{ci:.2}"), "3.00 ± 1.96");
        let one = MeanCi::of(&[2.0, f64::NAN]).unwrap();
        assert!(one.half_width.is_nan());
        assert_eq!(one.to_string(), "2.000");
        assert!(MeanCi::of(&[]).is_none());
        // The large-df expansion meets the table's last entry and tends to the normal quantile.
        assert!((t_975(30) - 2.042).abs() < 2e-3 && (t_975(31) - 2.040).abs() < 2e-3);
        assert!((t_975(100_000) - 1.95996).abs() < 1e-4);
    }

    fn point(step: u64, kl: f64, gold: f64) -> EvalPoint {
        EvalPoint::new(step, kl, gold)
    }

    /// Judged against nothing in particular: the fits' coefficients alone.
    fn unjudged() -> ObservedPeak {
        ObservedPeak { d: 1.0, r: 0.0, se: 0.0, rise: 0.0, d_max: f64::INFINITY, peaked: false }
    }

    #[test]
    fn both_gao_forms_recover_a_known_optimum_from_exact_points() {
        let (a, b) = (1.3, 0.8);
        for form in FitForm::ALL {
            let points: Vec<(f64, f64)> = (1..40).map(|i| i as f64 * 0.1).map(|d| (d, form.eval(a, b, d))).collect();
            let fit = fit_gao(form, &points, &unjudged()).unwrap();
            assert!((fit.a - a).abs() < 1e-9 && (fit.b - b).abs() < 1e-9, "{fit:?}");
            let d_star = match form {
                FitForm::Rl => (a / b - 1.0f64).exp(),
                FitForm::BestOfN => a / (2.0 * b),
            };
            assert!((fit.d_star.unwrap() - d_star).abs() < 1e-9, "{form:?}");
            let r_star = form.eval(a, b, d_star);
            assert!((fit.r_star.unwrap() - r_star).abs() < 1e-9);
            // The optimum is a maximum: nearby d give less.
            assert!(form.eval(a, b, d_star * 0.9) < r_star && form.eval(a, b, d_star * 1.1) < r_star);
            assert!((fit.r_squared - 1.0).abs() < 1e-9);
        }
        assert_eq!(FitForm::BestOfN.peak(1.3, 0.8).unwrap().1, 1.3 * 1.3 / (4.0 * 0.8));
    }

    #[test]
    fn the_gao_fit_recovers_known_coefficients_under_noise() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (a, b) = (0.9, 0.5);
        let points: Vec<(f64, f64)> = (1..400)
            .map(|i| i as f64 * 0.01)
            .map(|d| (d, d * (a - b * d.ln()) + 0.01 * (rng.random::<f64>() - 0.5)))
            .collect();
        let fit = fit_gao(FitForm::Rl, &points, &unjudged()).unwrap();
        assert!((fit.a - a).abs() < 0.01 && (fit.b - b).abs() < 0.01, "{fit:?}");
    }

    /// A run whose evaluations follow `r(d)` at d = 0, 0.05, … with KL = d².
    fn along(n: usize, r: impl Fn(f64) -> f64) -> Vec<EvalPoint> {
        (0..n).map(|i| i as f64 * 0.05).enumerate().map(|(i, d)| point(i as u64 * 25, d * d, 1.0 + r(d))).collect()
    }

    #[test]
    fn a_curve_on_the_rl_form_agrees_with_its_fit_and_peaks_where_the_fit_says() {
        // d* = exp(0.9/0.5 − 1) ≈ 2.23; evaluated up to d = 4.
        let s = summarize(&along(81, |d| FitForm::Rl.eval(0.9, 0.5, d)), &[]).unwrap();
        assert!(s.peaked);
        let rl = s.fit(FitForm::Rl).unwrap();
        assert!(rl.warning.is_none(), "{:?}", rl.warning);
        assert!(rl.peak_error.abs() < 1e-9);
        assert!((rl.d_star.unwrap() - s.peak_d()).abs() < 0.05, "{} vs {}", rl.d_star.unwrap(), s.peak_d());
        assert!(s.fit(FitForm::BestOfN).is_some(), "both forms are fitted");
    }

    #[test]
    fn a_curve_that_has_not_turned_down_has_no_peak_yet() {
        // Still rising at the last evaluation; the RL fit extrapolates a peak far beyond it.
        let s = summarize(&along(21, |d| FitForm::Rl.eval(0.9, 0.2, d)), &[]).unwrap();
        assert!(!s.peaked, "{s:?}");
        let rl = s.fit(FitForm::Rl).unwrap();
        assert!(rl.d_star.unwrap() > 1.0, "d* = {:?}", rl.d_star);
        assert!(rl.warning.as_deref().unwrap().contains("extrapolation"), "{:?}", rl.warning);
        // Flat at the end but within noise: still no peak.
        let mut noisy = along(21, |d| d.min(0.5));
        for p in &mut noisy {
            p.gold_se = Some(0.1);
        }
        noisy[15].gold += 0.05;
        assert!(!summarize(&noisy, &[]).unwrap().peaked, "a bump within 2 SE is not a peak");
    }

    #[test]
    fn a_fit_dominated_by_a_late_collapse_warns_that_its_peak_is_not_the_observed_one() {
        // Rises to 0.11 at d ≈ 1.35, then collapses far below the start (the default toy run's shape).
        let s = summarize(
            &along(51, |d| if d <= 1.35 { 0.11 * (1.0 - (d - 1.35).powi(2) / 1.8) } else { 0.11 - 2.0 * (d - 1.35) }),
            &[],
        )
        .unwrap();
        assert!(s.peaked);
        let rl = s.fit(FitForm::Rl).unwrap();
        assert!(rl.warning.as_deref().unwrap().contains("disagrees"), "{rl:?}");
        assert!(rl.peak_error.abs() > 0.02, "the error at the observed peak shows it: {}", rl.peak_error);
    }

    #[test]
    fn a_curve_without_a_peak_has_no_fitted_optimum() {
        let points: Vec<(f64, f64)> = (1..20).map(|i| i as f64 * 0.1).map(|d| (d, d * (1.0 + 0.5 * d.ln()))).collect();
        let fit = fit_gao(FitForm::Rl, &points, &unjudged()).unwrap();
        assert!(fit.b < 0.0 && fit.d_star.is_none() && fit.r_star.is_none());
    }

    #[test]
    fn the_pareto_front_keeps_only_undominated_points() {
        let points = [
            point(0, 0.0, 0.0),
            point(1, 1.0, 2.0),
            point(2, 2.0, 1.5), // dominated by step 1
            point(3, 3.0, 3.0),
            point(4, 3.0, 2.5),  // same KL, lower gold
            point(5, 0.5, -1.0), // dominated by step 0
            point(6, 5.0, 3.0),  // equal gold at higher KL: dominated
        ];
        let steps: Vec<u64> = pareto_front(&points).iter().map(|p| p.step).collect();
        assert_eq!(steps, vec![0, 1, 3]);
    }

    #[test]
    fn the_summary_reports_peak_drop_and_a_tail_mean_final() {
        // Rises to 2.0 at step 3, then ends at 1.0 for the last 10% (2 of 20 points).
        let mut points: Vec<EvalPoint> =
            (0..20).map(|i| point(i * 10, i as f64, if i == 3 { 2.0 } else { 1.5 })).collect();
        points[0].gold = 0.0;
        points[18].gold = 1.0;
        points[19].gold = 1.0;
        let s = summarize(&points, &[30]).unwrap();
        assert_eq!((s.start_gold, s.peak_gold, s.peak_step, s.peak_kl), (0.0, 2.0, 30, 3.0));
        assert_eq!(s.final_gold, 1.0);
        assert_eq!(s.final_kl, 18.5);
        assert_eq!((s.rise, s.drop), (2.0, 1.0));
        assert_eq!(s.drop_fraction, Some(0.5));
        assert!(s.pareto.iter().any(|p| p.step == 30 && p.checkpoint));
        assert!(s.peaked, "the tail is clearly below the peak");
        assert!(summarize(&[], &[]).is_none());
    }

    #[test]
    fn every_summary_column_has_one_value_with_full_precision_in_csv_and_one_rounding_on_display() {
        let mut points: Vec<EvalPoint> =
            (0..20).map(|i| point(i * 10, i as f64 * 0.1, 1.0 + (i as f64 * 0.3).sin())).collect();
        points[19].gold = 0.123_456_789;
        let s = summarize(&points, &[]).unwrap();
        let columns = s.columns();
        assert_eq!(columns.len(), SUMMARY_COLUMNS.len());
        let keys: Vec<&str> = columns.iter().map(|(c, _)| c.key).collect();
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), keys.len(), "{keys:?}");
        assert_eq!(s.value("peak_step"), Some(SummaryValue::Step(s.peak_step)));
        assert_eq!(s.value("final_gold").unwrap().csv(), format!("{}", s.final_gold));
        assert_eq!(SummaryValue::Number(Some(0.123_456_789)).csv(), "0.123456789");
        assert_eq!(SummaryValue::Number(Some(0.123_456_789)).display(), "0.123");
        assert_eq!(SummaryValue::Number(None).display(), "");
        assert_eq!(summary_column("peak_kl").label, "KL at peak (nats)");
        assert_eq!(display_number(1234.4), "1234");
        assert_eq!(display_number(1.5e-7), "1.50e-7");
    }

    #[test]
    fn eval_points_ignore_training_only_steps() {
        let with =
            |kl: f64, gold: f64| Metrics::from([(EVAL_KL_INIT.to_string(), kl), (EVAL_GOLD_REWARD.to_string(), gold)]);
        let steps = vec![(0, with(0.0, 1.0)), (1, Metrics::from([("loss".to_string(), 0.7)])), (25, with(0.5, 1.2))];
        assert_eq!(eval_points(&steps), vec![point(0, 0.0, 1.0), point(25, 0.5, 1.2)]);
    }
}
