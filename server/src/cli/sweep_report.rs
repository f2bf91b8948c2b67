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
use trainer::summary::MeanCi;

use super::sweep::{ood_stats, Finished};
use crate::report::paired::paired;
use crate::report::{csv_field, RunMeta};

/// One run's scalar outcomes, in the order of [`STAT_NAMES`].
fn run_stats(f: &Finished) -> Option<[f64; 10]> {
    let s = f.summary.as_ref()?;
    let (start_ood, max_ood, final_ood) = ood_stats(&f.steps);
    Some([
        s.start_gold,
        s.peak_gold,
        s.peak_step as f64,
        s.peak_kl,
        s.final_gold,
        s.drop,
        s.final_kl,
        start_ood.unwrap_or(f64::NAN),
        max_ood.unwrap_or(f64::NAN),
        final_ood.unwrap_or(f64::NAN),
    ])
}

const STAT_NAMES: [&str; 10] = [
    "start gold",
    "peak gold",
    "peak step",
    "KL at peak",
    "final gold",
    "drop",
    "final KL",
    "start OOD",
    "max OOD",
    "final OOD",
];
/// The columns of the paired table: indices into [`STAT_NAMES`].
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
    if groups.iter().all(|g| g.runs.len() < 2) {
        return Ok(());
    }
    let mut md = String::from(
        "Mean ± 95% CI over seeds (Student's t). \"final\" is the mean of the last 10% of evaluations.\n\n",
    );
    md.push_str(&format!("| variant | seeds | {} |\n", STAT_NAMES.join(" | ")));
    md.push_str(&format!("|---|---|{}\n", "---|".repeat(STAT_NAMES.len())));
    let mut csv = vec![format!(
        "variant,seeds,{}",
        STAT_NAMES.iter().map(|n| format!("{n} mean,{n} ci95")).collect::<Vec<_>>().join(",")
    )];
    for g in &groups {
        let stats: Vec<[f64; 10]> = g.runs.iter().filter_map(|f| run_stats(f)).collect();
        let cols: Vec<Option<MeanCi>> =
            (0..STAT_NAMES.len()).map(|i| MeanCi::of(&stats.iter().map(|s| s[i]).collect::<Vec<_>>())).collect();
        let cell = |c: &Option<MeanCi>| c.map_or("–".to_string(), |c| format!("{c:.3}"));
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
        PAIRED.map(|i| format!("Δ {}", STAT_NAMES[i])).join(" | "),
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
