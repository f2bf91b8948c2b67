//! The trust region's effect, read where it can be: each TR variant minus its vanilla twin (same
//! loss and every other parameter) on the same problem and training seed (`task_seed`, `seed`),
//! so that what differs between problems cancels. Mean ± 95% CI of each difference over the
//! pairs, and on how many pairs the TR run's drop from its peak was smaller. The compare page and
//! `goodhart sweep`'s `seeds.md` both use it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use trainer::config::fields::{role, Role};
use trainer::config::LossType;
use trainer::summary::MeanCi;

use super::RunMeta;

/// One TR variant against its vanilla twin.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired<const K: usize> {
    /// "TR-DPO α=0.1 τ=1", with any other differing parameter.
    pub label: String,
    pub loss: LossType,
    /// One of the variant's runs, to style its row and marks like the variant's lines.
    pub example: i64,
    /// Pairs found.
    pub n: usize,
    /// TR minus vanilla, per statistic.
    pub deltas: [Option<MeanCi>; K],
    /// Pairs on which the statistic at `better_at` was smaller for the TR run.
    pub better: usize,
}

/// A TR variant as it is gathered: its label, loss, parameters besides the method, and runs.
type Variant<'a, const K: usize> = (String, LossType, BTreeMap<String, String>, Vec<(&'a RunMeta, [f64; K])>);

/// Pairs every TR run with the vanilla run of the same loss, parameters, `task_seed` and `seed`.
/// `stats` are each run's statistics, `better_at` the index of the one where smaller is better
/// (the drop from the peak). Variants without any pair are left out.
pub fn paired<const K: usize>(runs: &[(&RunMeta, [f64; K])], better_at: usize) -> Vec<Paired<K>> {
    let rest = |m: &RunMeta| -> BTreeMap<String, String> {
        m.params
            .iter()
            // The method keys make the variant, and seeds and bookkeeping change nothing it
            // computes: the rest must match for two runs to pair.
            .filter(|(k, _)| !matches!(role(k), Some(Role::Method | Role::Seed | Role::Bookkeeping)))
            .map(|(k, v)| (k.clone(), canonical(v)))
            .collect()
    };
    // Parameters besides the method that differ between the TR runs: they join the label.
    let differing: BTreeSet<String> = {
        let all: Vec<BTreeMap<String, String>> = runs.iter().map(|(m, _)| rest(m)).collect();
        let keys: BTreeSet<&String> = all.iter().flat_map(|r| r.keys()).collect();
        keys.into_iter().filter(|k| all.iter().any(|r| r.get(*k) != all[0].get(*k))).cloned().collect()
    };
    let pair_key = |m: &RunMeta| (m.config.task_seed, m.config.seed);
    let mut variants: Vec<Variant<'_, K>> = Vec::new();
    for &(meta, stats) in runs.iter().filter(|(m, _)| m.config.trust_region().is_some()) {
        let r = rest(meta);
        let mut label = meta.short_label();
        for k in &differing {
            if let Some(v) = r.get(k) {
                label.push_str(&format!(" {k}={v}"));
            }
        }
        match variants.iter_mut().find(|(l, ..)| *l == label) {
            Some((.., members)) => members.push((meta, stats)),
            None => variants.push((label, meta.config.loss_type, r, vec![(meta, stats)])),
        }
    }
    let mut out = Vec::new();
    for (label, loss, r, members) in variants {
        let twins: Vec<&(&RunMeta, [f64; K])> = runs
            .iter()
            .filter(|(m, _)| m.config.trust_region().is_none() && m.config.loss_type == loss && rest(m) == r)
            .collect();
        let diffs: Vec<[f64; K]> = members
            .iter()
            .filter_map(|(m, tr)| {
                let (_, vanilla) = twins.iter().find(|(v, _)| pair_key(v) == pair_key(m))?;
                Some(std::array::from_fn(|i| tr[i] - vanilla[i]))
            })
            .collect();
        if diffs.is_empty() {
            continue;
        }
        out.push(Paired {
            label,
            loss,
            example: members[0].0.id,
            n: diffs.len(),
            deltas: std::array::from_fn(|i| MeanCi::of(&diffs.iter().map(|d| d[i]).collect::<Vec<_>>())),
            better: diffs.iter().filter(|d| d[better_at] < 0.0).count(),
        });
    }
    out
}

fn canonical(v: &Value) -> String {
    match v {
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |f| format!("{f}")),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn meta(id: i64, alpha: Option<f64>, task_seed: u64, seed: u64) -> RunMeta {
        let mut c = json!({"task": "toy-tree", "loss_type": "sigmoid", "task_seed": task_seed, "seed": seed});
        if let Some(a) = alpha {
            c["sync_ref_model"] = json!(true);
            c["ref_model_mixup_alpha"] = json!(a);
            c["ref_model_sync_steps"] = json!(1);
        }
        RunMeta::new(id, &c)
    }

    #[test]
    fn tr_runs_pair_with_vanilla_on_the_same_task_and_training_seed_only() {
        let metas = [
            meta(1, None, 1, 1),
            meta(2, None, 1, 2),
            meta(3, None, 2, 1),
            meta(4, Some(0.1), 1, 1),
            meta(5, Some(0.1), 1, 2),
            meta(6, Some(0.1), 3, 1), // no vanilla run on task 3
        ];
        // Statistics: [final gold, drop]; vanilla has drop 1.0, TR 0.5 (task 1, seed 1) and 1.5.
        let stats: [[f64; 2]; 6] = [[0.0, 1.0], [0.0, 1.0], [9.0, 9.0], [0.2, 0.5], [0.1, 1.5], [5.0, 5.0]];
        let runs: Vec<(&RunMeta, [f64; 2])> = metas.iter().zip(stats).collect();
        let rows = paired(&runs, 1);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!((row.label.as_str(), row.n, row.better), ("TR-DPO α=0.1 τ=1", 2, 1));
        let drop = row.deltas[1].unwrap();
        assert!((drop.mean - 0.0).abs() < 1e-12, "(-0.5 + 0.5) / 2");
        assert!((row.deltas[0].unwrap().mean - 0.15).abs() < 1e-12);
    }
}
