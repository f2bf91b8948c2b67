//! What a sweep over several seeds says: each variant's mean ± 95% CI over its runs (training
//! seeds and task seeds), the paired difference of each trust-region variant from vanilla on the
//! same `task_seed` and `seed` (same task, π_init, data and data order, so the task's own variance
//! cancels; [`crate::report::paired`]). Written as `seeds.md` (tables to paste) and `seeds.csv`;
//! the mean figures are drawn with the others (`mean_*.svg`, `task_mean_*.svg`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;
use trainer::config::fields::{role, Role};
use trainer::summary::{summary_column, MeanCi};

use super::sweep::{ood_stats, Finished};
use crate::report::paired::paired;
use crate::report::{csv_field, RunMeta};

/// The run-summary columns the report averages over seeds ([`trainer::summary::SUMMARY_COLUMNS`]' keys); the OOD
/// mass's start, maximum and final value follow them.
const SUMMARY_KEYS: [&str; 7] = ["start_gold", "peak_gold", "peak_step", "peak_kl", "final_gold", "drop", "final_kl"];
const OOD_NAMES: [&str; 3] = ["start OOD", "max OOD", "final OOD"];

/// One run's scalar outcomes, in the order of [`stat_names`].
fn run_stats(f: &Finished) -> Option<[f64; 10]> {
    let s = f.summary.as_ref()?;
    let (start_ood, max_ood, final_ood) = ood_stats(&f.steps);
    let mut stats = [f64::NAN; 10];
    for (slot, key) in stats.iter_mut().zip(SUMMARY_KEYS) {
        *slot = s.value(key).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    }
    for (slot, v) in stats[SUMMARY_KEYS.len()..].iter_mut().zip([start_ood, max_ood, final_ood]) {
        *slot = v.unwrap_or(f64::NAN);
    }
    Some(stats)
}

/// The columns' names: the summary columns' labels, then [`OOD_NAMES`].
fn stat_names() -> Vec<&'static str> {
    SUMMARY_KEYS.iter().map(|k| summary_column(k).label).chain(OOD_NAMES).collect()
}
/// The columns of the paired table: indices into [`stat_names`].
const PAIRED: [usize; 6] = [1, 4, 5, 8, 9, 6];

/// A variant: the runs that differ only in their seeds.
struct Group<'a> {
    label: String,
    runs: Vec<&'a Finished>,
}

fn groups(finished: &[Finished]) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    for f in finished {
        let rest: BTreeMap<String, Value> = f
            .run
            .params
            .iter()
            // The method and the seeds make the variant's label and its repeats; anything else
            // that varies joins the label.
            .filter(|(k, _)| !matches!(role(k), Some(Role::Method | Role::Seed)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let meta = RunMeta { id: 0, config: f.run.config.clone(), params: serde_json::Map::new() };
        let mut label = meta.short_label();
        for (k, v) in &rest {
            label.push_str(&format!(" {k}={v}"));
        }
        match out.iter_mut().find(|g| g.label == label) {
            Some(g) => g.runs.push(f),
            None => out.push(Group { label, runs: vec![f] }),
        }
    }
    out
}

/// Writes the report when some variant ran with more than one seed; otherwise does nothing.
pub fn write(dir: &Path, finished: &[Finished]) -> anyhow::Result<()> {
    let groups = groups(finished);
    let stat_names = stat_names();
    if groups.iter().all(|g| g.runs.len() < 2) {
        return Ok(());
    }
    let mut md = String::from(
        "Mean ± 95% CI over seeds (Student's t). \"final\" is the mean of the last 10% of evaluations.\n\n",
    );
    md.push_str(&format!("| variant | seeds | {} |\n", stat_names.join(" | ")));
    md.push_str(&format!("|---|---|{}\n", "---|".repeat(stat_names.len())));
    let mut csv = vec![format!(
        "variant,seeds,{}",
        stat_names.iter().map(|n| format!("{n} mean,{n} ci95")).collect::<Vec<_>>().join(",")
    )];
    for g in &groups {
        let stats: Vec<[f64; 10]> = g.runs.iter().filter_map(|f| run_stats(f)).collect();
        let cols: Vec<Option<MeanCi>> =
            (0..stat_names.len()).map(|i| MeanCi::of(&stats.iter().map(|s| s[i]).collect::<Vec<_>>())).collect();
        let cell = |c: &Option<MeanCi>| c.map_or("–".to_string(), |c| c.display());
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            g.label,
            stats.len(),
            cols.iter().map(cell).collect::<Vec<_>>().join(" | ")
        ));
        let num = |c: &Option<MeanCi>| c.map_or(",".to_string(), |c| format!("{},{}", c.mean, c.half_width));
        let label = csv_field(&g.label);
        csv.push(format!("{label},{},{}", stats.len(), cols.iter().map(num).collect::<Vec<_>>().join(",")));
    }

    md.push_str(
        "\nTrust region minus vanilla, same loss, task_seed and seed (same task, π_init, data and data order), \
         mean ± 95% CI over the pairs; ",
    );
    md.push_str("\"better\" counts the pairs on which the TR run's drop from its peak was smaller.\n\n");
    md.push_str(&format!(
        "| variant | pairs | {} | better |\n|---|---|{}---|\n",
        PAIRED.map(|i| format!("Δ {}", stat_names[i])).join(" | "),
        "---|".repeat(PAIRED.len())
    ));
    let metas: Vec<RunMeta> =
        finished.iter().map(|f| RunMeta::new(0, &serde_json::to_value(&f.run.config).unwrap_or_default())).collect();
    let stats: Vec<(&RunMeta, [f64; 6])> =
        finished.iter().zip(&metas).filter_map(|(f, m)| run_stats(f).map(|s| (m, PAIRED.map(|i| s[i])))).collect();
    // The drop is PAIRED's third column.
    for row in paired(&stats, 2) {
        let cells: Vec<String> = row.deltas.iter().map(|d| d.map_or("–".into(), |c| format!("{c:+.3}"))).collect();
        md.push_str(&format!("| {} | {} | {} | {} of {} |\n", row.label, row.n, cells.join(" | "), row.better, row.n));
    }
    std::fs::write(dir.join("seeds.md"), md).with_context(|| format!("writing {}", dir.join("seeds.md").display()))?;
    std::fs::write(dir.join("seeds.csv"), csv.join("\n") + "\n")?;
    Ok(())
}
