//! `goodhart sweep --config sweep.toml [--output-dir DIR] [--jobs N]`: expands the grid (see
//! `trainer::sweep`), trains the runs with at most N at once, then writes `sweep.csv` and the
//! figures (gold reward against sqrt(KL to π_init); OOD mass against step) as SVG and PNG.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, Context};
use trainer::error::FieldError;
use trainer::metric_names as names;
use trainer::metrics::{JsonlSink, Metrics};
use trainer::summary::{self, EvalPoint, RunSummary, SUMMARY_COLUMNS};
use trainer::sweep::SweepRun;

use crate::report::compare::{Aggregate, CompareRun, Comparison, Options};
use crate::report::{self, RunMeta};

#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// Sweep file, TOML or JSON: `[base]` run config keys and `[grid]` / `[[grid]]` value lists.
    #[arg(long)]
    pub config: PathBuf,
    /// One `<run name>/` per run, plus sweep.csv and the figures.
    #[arg(long, default_value = "runs/sweep")]
    pub output_dir: PathBuf,
    /// Keep a run whose directory already holds the same config.json and a summary.json
    /// (a sweep stopped half way continues where it was).
    #[arg(long)]
    pub reuse: bool,
    /// Runs trained at once. Each run then gets one CPU thread (`num_threads = 1` and
    /// RAYON_NUM_THREADS=1, unless set): for toy-sized models, parallel runs beat parallel threads.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
}

/// A finished run: its metrics and summary.
pub(super) struct Finished {
    pub run: SweepRun,
    pub steps: Vec<(u64, Metrics)>,
    pub summary: Option<RunSummary>,
    pub seconds: f64,
}

pub fn run(args: &SweepArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let format = args.config.extension().and_then(|e| e.to_str()).unwrap_or("toml");
    let mut runs = trainer::sweep::parse(&text, format)
        .map_err(|e| anyhow!("sweep {}: {}", args.config.display(), FieldError::join(&e)))?;
    if args.jobs == 0 {
        anyhow::bail!("--jobs must be >= 1");
    }
    if args.jobs > 1 {
        // Parallel runs already fill the cores: one worker thread each, unless the config says.
        for run in runs.iter_mut().filter(|r| r.config.num_threads == 0) {
            run.config.num_threads = 1;
        }
    }
    if args.jobs > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // Read by candle when its thread pool starts, which has not happened yet.
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    std::fs::create_dir_all(&args.output_dir).with_context(|| format!("creating {}", args.output_dir.display()))?;
    eprintln!("sweep: {} runs, {} at a time, into {}", runs.len(), args.jobs, args.output_dir.display());

    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<anyhow::Result<Finished>>>> = Mutex::new((0..runs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..args.jobs.min(runs.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(run) = runs.get(i) else { break };
                let result = train_one(run, &args.output_dir, args.reuse);
                match &result {
                    Ok(f) => eprintln!("  {} done in {:.1}s", run.name, f.seconds),
                    Err(e) => eprintln!("  {} failed: {e:#}", run.name),
                }
                results.lock().expect("no worker panics while holding the lock")[i] = Some(result);
            });
        }
    });
    let mut finished = Vec::new();
    let mut failures = Vec::new();
    for (run, result) in runs.iter().zip(results.into_inner().expect("workers joined")) {
        match result {
            Some(Ok(f)) => finished.push(f),
            Some(Err(e)) => failures.push(format!("{}: {e:#}", run.name)),
            None => failures.push(format!("{}: not run", run.name)),
        }
    }
    write_csv(&args.output_dir.join("sweep.csv"), &finished)?;
    write_figures(&args.output_dir, &finished)?;
    super::sweep_report::write(&args.output_dir, &finished)?;
    eprintln!(
        "sweep: {} of {} runs in {:.1}s; sweep.csv and figures in {}",
        finished.len(),
        runs.len(),
        started.elapsed().as_secs_f64(),
        args.output_dir.display()
    );
    if !failures.is_empty() {
        anyhow::bail!("{} run(s) failed:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

fn train_one(run: &SweepRun, output_dir: &Path, reuse: bool) -> anyhow::Result<Finished> {
    let dir = output_dir.join(&run.name);
    // `goodhart train --config <run>/config.json` reproduces the run on its own.
    let config_text = serde_json::to_string_pretty(&run.config).context("serializing the run config")?;
    if reuse && dir.join("summary.json").is_file() {
        // Compared as configs, not text: keys added to RunConfig since then take their defaults.
        let old = std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|text| trainer::config::RunConfig::parse(&text, "json").ok());
        if old.as_ref() == Some(&run.config) {
            let steps = JsonlSink::read(&dir.join("metrics.jsonl"))?;
            let summary = summary::write_run_summary(&dir)?;
            return Ok(Finished { run: run.clone(), steps, summary, seconds: 0.0 });
        }
    }
    // A sweep re-run starts each run afresh rather than appending to old metrics.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("config.json"), config_text)?;
    let started = Instant::now();
    let mut sink = JsonlSink::create(&dir.join("metrics.jsonl"))?;
    trainer::train::train_with(&run.config, &dir, false, &mut sink)?;
    let seconds = started.elapsed().as_secs_f64();
    let summary = summary::write_run_summary(&dir)?;
    let steps = JsonlSink::read(&dir.join("metrics.jsonl"))?;
    Ok(Finished { run: run.clone(), steps, summary, seconds })
}

/// `eval/ood_mass` at the first evaluation, its maximum, and its mean over the last 10% of
/// evaluations ("final", as for the gold reward).
pub(super) fn ood_stats(steps: &[(u64, Metrics)]) -> (Option<f64>, Option<f64>, Option<f64>) {
    let ood: Vec<f64> = steps.iter().filter_map(|(_, m)| m.get(names::EVAL_OOD_MASS).copied()).collect();
    let tail = &ood[ood.len() - ood.len().div_ceil(10)..];
    (
        ood.first().copied(),
        ood.iter().copied().reduce(f64::max),
        (!tail.is_empty()).then(|| tail.iter().sum::<f64>() / tail.len() as f64),
    )
}

/// The gold-reward-vs-sqrt(KL) and OOD-mass figures, drawn as the web pages draw them.
fn write_figures(dir: &Path, finished: &[Finished]) -> anyhow::Result<()> {
    let runs: Vec<CompareRun> = finished
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let stored = serde_json::to_value(&f.run.config).unwrap_or_default();
            let mut series: BTreeMap<String, report::Series> = BTreeMap::new();
            for (step, metrics) in &f.steps {
                for (name, value) in metrics {
                    let step = i64::try_from(*step).unwrap_or(i64::MAX);
                    series.entry(name.clone()).or_default().push((step, value.is_finite().then_some(*value)));
                }
            }
            CompareRun::new(RunMeta::new(i as i64, &stored), report::evals(&series), Vec::new())
        })
        .collect();
    let has_ood = runs.iter().any(|r| r.evals.iter().any(|e| e.ood.is_some()));
    // With several seeds of a configuration, also its mean and 95% band over them: over training
    // seeds on one problem (`mean_`), and over task seeds too (`task_mean_`) when those vary.
    let distinct =
        |key: fn(&Finished) -> u64| finished.iter().map(key).collect::<std::collections::HashSet<u64>>().len();
    let mut variants = vec![("", Aggregate::Runs)];
    if distinct(|f| f.run.config.seed) > 1 {
        variants.push(("mean_", Aggregate::Seeds));
    }
    if distinct(|f| f.run.config.task_seed) > 1 {
        variants.push(("task_mean_", Aggregate::Tasks));
    }
    for (prefix, aggregate) in variants {
        let comparison = Comparison::new(runs.clone(), Options { aggregate, ..Options::default() });
        let gold = comparison.overoptimization();
        let ood = comparison.ood_mass();
        for ext in ["svg", "png"] {
            gold.save(&dir.join(format!("{prefix}gold_vs_kl.{ext}")))?;
            if has_ood {
                ood.save(&dir.join(format!("{prefix}ood_mass.{ext}")))?;
            }
        }
    }
    Ok(())
}

fn write_csv(path: &Path, finished: &[Finished]) -> anyhow::Result<()> {
    // Checkpoints on the sweep-wide Pareto front: no other evaluation of the sweep has both
    // lower KL and higher gold reward.
    let all: Vec<(usize, EvalPoint)> = finished
        .iter()
        .enumerate()
        .flat_map(|(i, f)| summary::eval_points(&f.steps).into_iter().map(move |p| (i, p)))
        .collect();
    let front = summary::pareto_front(&all.iter().map(|(_, p)| *p).collect::<Vec<_>>());
    let on_front = |i: usize| all.iter().filter(|(j, p)| *j == i && front.contains(p)).count();

    // The config columns every sweep CSV has (the method, β and seed), then any other grid key.
    let fixed = trainer::config::fields::sweep_columns();
    let param_keys: Vec<String> = {
        let mut keys: Vec<String> = finished
            .iter()
            .flat_map(|f| f.run.params.keys().cloned())
            .filter(|k| !fixed.contains(&k.as_str()))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    };
    let mut header: Vec<String> = vec!["run".into()];
    header.extend(param_keys.iter().cloned());
    header.extend(fixed.iter().map(|k| k.to_string()));
    // Seam: the columns above describe the run's config (the sweep's own choice of keys); the
    // summary columns below, at full precision, come from `RunSummary::columns`, as in every
    // other table of a run summary; then what the sweep adds (OOD mass, its Pareto front, time).
    header.extend(SUMMARY_COLUMNS.iter().map(|c| c.key.to_string()));
    header.extend(
        ["start_ood_mass", "max_ood_mass", "final_ood_mass", "sweep_pareto_points", "seconds"].map(String::from),
    );
    let mut lines = vec![header.join(",")];
    for (i, f) in finished.iter().enumerate() {
        let c = &f.run.config;
        let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
        let s = f.summary.as_ref();
        let (start_ood, max_ood, final_ood) = ood_stats(&f.steps);
        let mut row: Vec<String> = vec![report::csv_field(&f.run.name)];
        row.extend(param_keys.iter().map(|k| f.run.params.get(k).map_or(String::new(), csv_value)));
        let config = serde_json::to_value(c).unwrap_or_default();
        row.extend(fixed.iter().map(|k| config.get(*k).map_or(String::new(), config_cell)));
        match s {
            Some(s) => row.extend(s.columns().into_iter().map(|(_, v)| v.csv())),
            None => row.extend(SUMMARY_COLUMNS.iter().map(|_| String::new())),
        }
        row.extend([
            num(start_ood),
            num(max_ood),
            num(final_ood),
            on_front(i).to_string(),
            format!("{:.2}", f.seconds),
        ]);
        lines.push(row.join(","));
    }
    std::fs::write(path, lines.join("\n") + "\n").with_context(|| format!("writing {}", path.display()))
}

/// A config value as its CSV cell: numbers as Rust prints them (`1`, not JSON's `1.0`).
fn config_cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => n.as_f64().map_or(String::new(), |f| f.to_string()),
        other => csv_value(other),
    }
}

fn csv_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => report::csv_field(s),
        other => report::csv_field(&other.to_string()),
    }
}
