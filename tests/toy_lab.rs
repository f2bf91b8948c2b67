//! The toy lab as a user drives it: `goodhart train` on the default toy-tree config shows
//! overoptimization, and `goodhart sweep` trains a grid and writes its table, figures and
//! seed report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `goodhart` with its π_init cache inside `cache`, so tests never share or race on one.
fn goodhart(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_goodhart")).env("GOODHART_CACHE_DIR", cache).args(args).output().unwrap()
}

fn series(metrics: &Path, name: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| Some((v["step"].as_u64()?, v[name].as_f64()?)))
        .collect()
}

#[test]
fn the_default_toy_tree_dpo_run_ends_at_least_a_fifth_of_its_rise_below_its_peak() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let config = repo().join("examples/toy-tree-dpo.toml");
    let res =
        goodhart(dir.path(), &["train", "--config", config.to_str().unwrap(), "--output-dir", out.to_str().unwrap()]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));

    let gold = series(&out.join("metrics.jsonl"), "eval/gold_reward");
    let kl = series(&out.join("metrics.jsonl"), "eval/kl_init");
    assert!(gold.len() > 10, "too few evaluations: {}", gold.len());
    let start = gold[0].1;
    let (peak_at, peak) = gold.iter().copied().fold((0, f64::NEG_INFINITY), |b, p| if p.1 > b.1 { p } else { b });
    let end = gold.last().unwrap().1;
    let rise = peak - start;
    assert!(rise > 0.0, "the gold reward never rose above its start {start}");
    assert!(
        peak - end >= 0.2 * rise,
        "start {start}, peak {peak} at step {peak_at}, end {end}: drop < 20% of the rise"
    );
    // ...while the policy keeps moving away from π_init.
    let kl_at = |step: u64| kl.iter().find(|(s, _)| *s == step).unwrap().1;
    assert!(kl.last().unwrap().1 > kl_at(peak_at), "KL to π_init did not keep growing after the peak");
}

#[test]
fn a_sweep_over_two_seeds_writes_its_table_figures_and_seed_report_and_reuses_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = dir.path().join("sweep.toml");
    std::fs::write(
        &sweep,
        "[base]\ntask = \"toy-tree\"\nmax_steps = 40\neval_steps = 10\nlearning_rate = 1e-3\n\
         [[grid]]\nseed = [1, 2]\nsync_ref_model = false\n\
         [[grid]]\nseed = [1, 2]\nsync_ref_model = true\nref_model_sync_steps = 1\nref_model_mixup_alpha = [0.1, 0.6]\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let args = ["sweep", "--config", sweep.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--jobs", "2"];
    let res = goodhart(dir.path(), &args);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));

    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 1 + 6, "{csv}");
    // Run names hold commas: every row must still have the header's number of fields.
    let fields = |row: &str| {
        row.chars().fold((1, false), |(n, quoted), c| match c {
            '"' => (n, !quoted),
            ',' if !quoted => (n + 1, quoted),
            _ => (n, quoted),
        })
    };
    assert!(rows.iter().all(|r| fields(r).0 == fields(rows[0]).0), "{csv}");
    assert!(
        rows[0].contains("peak_gold")
            && rows[0].contains("rl_fit_a")
            && rows[0].contains("bon_fit_d_star")
            && rows[0].contains("final_ood_mass")
    );
    for f in ["gold_vs_kl", "ood_mass", "mean_gold_vs_kl", "mean_ood_mass"] {
        for ext in ["svg", "png"] {
            let path = out.join(format!("{f}.{ext}"));
            assert!(std::fs::metadata(&path).is_ok_and(|m| m.len() > 1000), "{} missing or empty", path.display());
        }
    }
    let svg = std::fs::read_to_string(out.join("gold_vs_kl.svg")).unwrap();
    assert!(svg.contains("TR-DPO α=0.6 τ=1 · task 42 seed 2"), "the chart lacks a run");

    let report = std::fs::read_to_string(out.join("seeds.md")).unwrap();
    for line in ["| DPO | 2 |", "| TR-DPO α=0.1 τ=1 | 2 |", "| TR-DPO α=0.6 τ=1 | 2 |"] {
        assert!(report.contains(line), "seeds.md lacks {line:?}:\n{report}");
    }
    // The paired table: each TR variant against vanilla on both seeds.
    assert_eq!(report.matches(" of 2 |").count(), 2, "{report}");

    // Run again with --reuse: nothing retrains, the outputs are rebuilt from the run directories.
    let first_run = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path().join("metrics.jsonl"))
        .find(|p| p.is_file())
        .expect("a run directory with metrics.jsonl");
    let before = std::fs::metadata(&first_run).unwrap().modified().unwrap();
    let res = goodhart(dir.path(), &[&args[..], &["--reuse"]].concat());
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(stderr.matches("done in 0.0s").count(), 6, "{stderr}");
    assert_eq!(std::fs::metadata(&first_run).unwrap().modified().unwrap(), before);
    assert_eq!(std::fs::read_to_string(out.join("sweep.csv")).unwrap().lines().count(), 7);
}
