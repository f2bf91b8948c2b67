//! Which checkpoints a run keeps. Three kinds, any checkpoint possibly more than one:
//!
//! - **periodic**: every `save_steps`, the last step, and where the run stopped on request;
//!   `save_total_limit` keeps the newest of them;
//! - **best** (`save_strategy = "best"`): the evaluation with the best `metric_for_best_model`
//!   so far;
//! - **Pareto** (`save_strategy = "pareto"`): the evaluations on the front of (KL to π_init ↓,
//!   metric ↑) so far. An evaluation is saved when nothing before it beats it on both; a Pareto
//!   checkpoint is deleted once a later evaluation does, unless it is also periodic. At most
//!   `save_pareto_limit` are kept: the front's two ends (the lowest KL, usually π_init at step 0,
//!   and the best metric, the run's peak) and the points that spread most evenly between them.
//!
//! The newest checkpoint is always kept, as it is where a resumed run continues. The state is
//! plain data that travels in `trainer_state.json`, so a resumed run keeps deleting what its
//! earlier self would have.

use serde::{Deserialize, Serialize};

use crate::config::{RunConfig, SaveStrategy};

/// One evaluation as retention sees it: the metric is oriented so that larger is better.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub step: u64,
    pub kl: f64,
    pub metric: f64,
}

impl Scored {
    /// No worse on either axis and not the same point.
    fn dominates(&self, other: &Scored) -> bool {
        self.kl <= other.kl && self.metric >= other.metric && (self.kl < other.kl || self.metric > other.metric)
    }
}

/// A checkpoint directory retention accounts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub step: u64,
    /// Written by `save_steps`, at the last step or on a stop request.
    pub periodic: bool,
}

/// What the config says to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub strategy: SaveStrategy,
    pub total_limit: Option<usize>,
    pub pareto_limit: usize,
}

impl Policy {
    pub fn from_config(cfg: &RunConfig) -> Self {
        Self {
            strategy: cfg.save_strategy,
            total_limit: cfg.save_total_limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            pareto_limit: usize::try_from(cfg.save_pareto_limit).unwrap_or(usize::MAX).max(2),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    /// Every evaluation so far that no other beats on both axes, by KL (so the metric rises too).
    pub front: Vec<Scored>,
    /// The best metric so far (the lowest KL among equals).
    pub best: Option<Scored>,
    /// The checkpoints on disk, by step.
    pub checkpoints: Vec<Kept>,
}

impl Retention {
    /// Records an evaluation; answers whether its weights should be saved.
    pub fn evaluated(&mut self, policy: &Policy, point: Scored) -> bool {
        if !(point.kl.is_finite() && point.metric.is_finite()) {
            return false;
        }
        match policy.strategy {
            SaveStrategy::Steps => false,
            SaveStrategy::Best => {
                let better =
                    self.best.is_none_or(|b| point.metric > b.metric || (point.metric == b.metric && point.kl < b.kl));
                if better {
                    self.best = Some(point);
                }
                better
            }
            SaveStrategy::Pareto => {
                if self.front.iter().any(|p| p.dominates(&point) || (p.kl == point.kl && p.metric == point.metric)) {
                    return false;
                }
                if self.best.is_none_or(|b| point.metric > b.metric) {
                    self.best = Some(point);
                }
                self.front.retain(|p| !point.dominates(p));
                let at = self.front.partition_point(|p| p.kl < point.kl);
                self.front.insert(at, point);
                // Saved unless the front is full and this point spreads it least.
                let mut candidates = self.pareto_with_weights();
                candidates.push(point);
                candidates.sort_by(|a, b| a.kl.total_cmp(&b.kl));
                spanning(&candidates, policy.pareto_limit).iter().any(|p| p.step == point.step)
            }
        }
    }

    /// Records a checkpoint written at `step`; answers the steps whose checkpoints are no longer
    /// kept, to delete (never `step` itself).
    pub fn saved(&mut self, policy: &Policy, step: u64, periodic: bool) -> Vec<u64> {
        match self.checkpoints.iter_mut().find(|k| k.step == step) {
            Some(k) => k.periodic |= periodic,
            None => {
                self.checkpoints.push(Kept { step, periodic });
                self.checkpoints.sort_by_key(|k| k.step);
            }
        }
        let keep = self.keep(policy);
        let (kept, dropped): (Vec<Kept>, Vec<Kept>) =
            self.checkpoints.iter().partition(|k| keep.contains(&k.step) || k.step == step);
        self.checkpoints = kept;
        dropped.into_iter().map(|k| k.step).collect()
    }

    /// The steps of the checkpoints to keep.
    fn keep(&self, policy: &Policy) -> Vec<u64> {
        let mut keep: Vec<u64> = Vec::new();
        let periodic: Vec<u64> = self.checkpoints.iter().filter(|k| k.periodic).map(|k| k.step).collect();
        let first_kept = policy.total_limit.map_or(0, |n| periodic.len().saturating_sub(n));
        keep.extend(&periodic[first_kept..]);
        keep.extend(self.checkpoints.last().map(|k| k.step));
        match policy.strategy {
            SaveStrategy::Steps => {}
            SaveStrategy::Best => keep.extend(self.best.map(|b| b.step)),
            SaveStrategy::Pareto => {
                keep.extend(spanning(&self.pareto_with_weights(), policy.pareto_limit).iter().map(|p| p.step));
            }
        }
        keep
    }

    /// The front's points that have a checkpoint, by KL.
    fn pareto_with_weights(&self) -> Vec<Scored> {
        self.front.iter().copied().filter(|p| self.checkpoints.iter().any(|k| k.step == p.step)).collect()
    }

    /// Steps of checkpoint directories found beside the checkpoint this state was restored
    /// from that it does not keep: deleted, or about to be, when a crash interrupted the run.
    pub fn strays(&self, on_disk: &[u64]) -> Vec<u64> {
        on_disk.iter().copied().filter(|s| !self.checkpoints.iter().any(|k| k.step == *s)).collect()
    }
}

/// At most `limit` points of a front sorted by KL: both ends, then those that leave the most even
/// spread. The interior point whose neighbours are closest together (KL and metric each scaled
/// by the front's range, as NSGA-II's crowding distance) goes first, until `limit` remain.
pub fn spanning(front: &[Scored], limit: usize) -> Vec<Scored> {
    let mut kept = front.to_vec();
    let limit = limit.max(2);
    let range = |f: fn(&Scored) -> f64| {
        let (lo, hi) = kept.iter().map(f).fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
        if hi > lo {
            hi - lo
        } else {
            1.0
        }
    };
    let (kl_range, metric_range) = (range(|p| p.kl), range(|p| p.metric));
    while kept.len() > limit {
        let crowding = |i: usize| {
            (kept[i + 1].kl - kept[i - 1].kl) / kl_range + (kept[i + 1].metric - kept[i - 1].metric) / metric_range
        };
        let most_crowded =
            (1..kept.len() - 1).min_by(|&a, &b| crowding(a).total_cmp(&crowding(b))).expect("more than two points");
        kept.remove(most_crowded);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pareto(limit: usize) -> Policy {
        Policy { strategy: SaveStrategy::Pareto, total_limit: None, pareto_limit: limit }
    }

    fn at(step: u64, kl: f64, metric: f64) -> Scored {
        Scored { step, kl, metric }
    }

    /// Runs the loop's protocol over evaluations every `every` steps with periodic saves every
    /// `save_steps`; answers the checkpoints kept at the end.
    fn run(policy: &Policy, evals: &[Scored], save_steps: u64) -> (Retention, Vec<u64>) {
        let mut r = Retention::default();
        let mut on_disk: Vec<u64> = Vec::new();
        let last = evals.last().unwrap().step;
        for &e in evals {
            let wanted = r.evaluated(policy, e);
            let periodic = (e.step.is_multiple_of(save_steps) && e.step > 0) || e.step == last;
            if wanted || periodic {
                let doomed = r.saved(policy, e.step, periodic);
                on_disk.push(e.step);
                on_disk.retain(|s| !doomed.contains(s));
            }
        }
        on_disk.sort_unstable();
        assert_eq!(on_disk, r.checkpoints.iter().map(|k| k.step).collect::<Vec<_>>(), "state matches the disk");
        (r, on_disk)
    }

    /// Gold reward rises to a peak at step 225 and collapses while KL keeps growing.
    fn overoptimizing() -> Vec<Scored> {
        (0..=80)
            .map(|i| {
                let step = i * 25;
                let kl = 0.02 * step as f64;
                let d = kl.sqrt();
                at(step, kl, 1.6 + d * (0.35 - 0.6 * (d + 1e-12).ln()))
            })
            .collect()
    }

    #[test]
    fn no_dominated_pareto_checkpoint_is_kept_and_periodic_ones_are() {
        let evals = overoptimizing();
        let (r, kept) = run(&pareto(100), &evals, 500);
        for &step in &kept {
            let e = evals.iter().find(|e| e.step == step).unwrap();
            let dominated = evals.iter().any(|o| o.dominates(e));
            assert!(
                !dominated || step.is_multiple_of(500) || step == 2000,
                "step {step} is dominated and not periodic"
            );
        }
        for periodic in [500, 1000, 1500, 2000] {
            assert!(kept.contains(&periodic), "periodic {periodic} kept: {kept:?}");
        }
        // Every front point has its weights, the peak among them.
        let peak = evals.iter().max_by(|a, b| a.metric.total_cmp(&b.metric)).unwrap();
        assert!(kept.contains(&peak.step) && kept.contains(&0), "{kept:?}");
        assert_eq!(r.front.last().unwrap().step, peak.step);
        for p in &r.front {
            assert!(kept.contains(&p.step), "front point {} kept", p.step);
        }
    }

    #[test]
    fn a_pareto_checkpoint_goes_once_a_later_evaluation_dominates_it_unless_it_is_periodic() {
        // The trust region pulls KL back down at step 20 while the gold reward still rises.
        let evals = [at(0, 0.0, 1.0), at(10, 1.0, 1.2), at(20, 0.5, 1.3), at(30, 2.0, 1.1)];
        let (r, kept) = run(&pareto(8), &evals, 1000);
        assert_eq!(kept, vec![0, 20, 30], "10 is dominated by 20; 30 is the newest");
        assert_eq!(r.front.iter().map(|p| p.step).collect::<Vec<_>>(), vec![0, 20]);
        let (_, kept) = run(&pareto(8), &evals, 10);
        assert_eq!(kept, vec![0, 10, 20, 30], "periodic checkpoints stay");
    }

    #[test]
    fn the_pareto_limit_keeps_both_ends_and_spans_the_front() {
        // A front that never turns: every evaluation is on it.
        let evals: Vec<Scored> = (0..=40).map(|i| at(i * 10, i as f64 * 0.1, (i as f64).sqrt())).collect();
        let (r, kept) = run(&pareto(5), &evals, 1_000_000);
        let pareto: Vec<u64> = kept.iter().copied().filter(|s| *s != 400).collect();
        assert!(pareto.len() <= 5, "{kept:?}");
        assert!(kept.contains(&0) && kept.contains(&400), "both ends: {kept:?}");
        // Spread: no two kept points are as close as neighbouring evaluations.
        let gaps: Vec<u64> = kept.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g >= 50), "evenly spread, not bunched: {kept:?}");
        assert_eq!(r.front.len(), 41, "the front itself is remembered whole");
    }

    #[test]
    fn the_newest_checkpoint_is_always_kept_and_save_total_limit_rotates_periodic_ones() {
        let policy = Policy { strategy: SaveStrategy::Pareto, total_limit: Some(2), pareto_limit: 3 };
        let (_, kept) = run(&policy, &overoptimizing(), 250);
        assert!(kept.contains(&2000) && kept.contains(&1750), "the two newest periodic: {kept:?}");
        assert!(!kept.contains(&1000) && !kept.contains(&500), "older periodic ones rotate out: {kept:?}");
        let steps_only = Policy { strategy: SaveStrategy::Steps, total_limit: Some(1), pareto_limit: 8 };
        let (_, kept) = run(&steps_only, &overoptimizing(), 250);
        assert_eq!(kept, vec![2000]);
    }

    #[test]
    fn best_keeps_the_best_metric_so_far() {
        let policy = Policy { strategy: SaveStrategy::Best, total_limit: None, pareto_limit: 8 };
        let (r, kept) = run(&policy, &overoptimizing(), 1_000_000);
        let peak = overoptimizing().into_iter().max_by(|a, b| a.metric.total_cmp(&b.metric)).unwrap();
        assert_eq!(r.best.unwrap().step, peak.step);
        assert_eq!(kept, vec![peak.step, 2000]);
    }

    #[test]
    fn a_dominated_or_repeated_evaluation_is_not_saved() {
        let mut r = Retention::default();
        let p = pareto(8);
        assert!(r.evaluated(&p, at(0, 0.0, 1.0)));
        assert!(!r.evaluated(&p, at(10, 0.5, 0.9)), "more KL, less metric");
        assert!(!r.evaluated(&p, at(20, 0.0, 1.0)), "the same point again");
        assert!(r.evaluated(&p, at(30, 0.5, 1.2)));
        assert!(!r.evaluated(&p, at(40, 0.1, f64::NAN)), "a non-finite metric");
        assert!(!Retention::default().evaluated(&Policy { strategy: SaveStrategy::Steps, ..p }, at(0, 0.0, 1.0)));
    }

    #[test]
    fn strays_are_the_directories_the_state_does_not_keep() {
        let mut r = Retention::default();
        let p = pareto(8);
        r.evaluated(&p, at(0, 0.0, 1.0));
        r.saved(&p, 0, false);
        r.evaluated(&p, at(25, 0.1, 1.1));
        r.saved(&p, 25, false);
        assert_eq!(r.strays(&[0, 10, 25]), vec![10]);
    }
}
