//! Toy-tree timings for BENCHMARKS.md: one exact evaluation, and a default run without SFT.
//!
//!     RAYON_NUM_THREADS=1 cargo run --release -p trainer --example toy_tree_bench [-- REPEATS]
//!
//! π_init comes from the cache (`$GOODHART_CACHE_DIR`); the first call builds it and reports how
//! long SFT took. The run is timed from building the task (cache load) to the last step.

use std::time::Instant;

use candle_core::Device;
use trainer::config::RunConfig;
use trainer::eval::EvalWeights;
use trainer::metrics::MemorySink;
use trainer::train::train_with;

/// This process's CPU seconds (user + system) from /proc (Linux), so that numbers taken on a
/// busy machine still say what the work itself cost; `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn cpu_note(start: Option<f64>, count: usize) -> String {
    match (start, cpu_seconds()) {
        (Some(a), Some(b)) => format!(", {:.1} ms CPU each", (b - a) * 1e3 / count as f64),
        _ => String::new(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> trainer::Result<()> {
    let repeats: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let cfg = RunConfig::parse("task = \"toy-tree\"\n", "toml").map_err(trainer::Error::Config)?;
    println!("threads: {}", candle_core::utils::get_num_threads());

    let t = Instant::now();
    let mut task = trainer::tasks::build(&cfg, &Device::Cpu)?;
    println!("task build (SFT or cache load): {:.2} s", t.elapsed().as_secs_f64());

    // Exact evaluation: π_init's tree is cached after the first call, so each later call is one
    // forward over the P·A^(L−1) prefixes plus the float64 sums (the reference is π_init).
    let setup = &task.setup;
    let weights =
        EvalWeights { model: &setup.model, policy: &setup.initial, reference: &setup.initial, initial: &setup.initial };
    task.evaluator.evaluate(0, weights)?;
    let cpu = cpu_seconds();
    let evals: Vec<f64> = (0..50)
        .map(|i| {
            let t = Instant::now();
            task.evaluator.evaluate(i, weights).map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<trainer::Result<_>>()?;
    println!("exact evaluation: median {:.1} ms wall over 50{}", median(evals), cpu_note(cpu, 50));

    let mut runs = Vec::new();
    let cpu = cpu_seconds();
    for _ in 0..repeats {
        let dir = tempfile_dir();
        let t = Instant::now();
        // The task's build (π_init from the cache) is part of the run, as before.
        let mut sink = MemorySink::default();
        train_with(&cfg, &dir, false, &mut sink)?;
        runs.push(t.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "default toy-tree DPO run (2,000 steps, 81 exact evaluations, SFT cached): median {:.1} s wall over {repeats} \
         ({runs:.1?}){}",
        median(runs.clone()),
        cpu_note(cpu, repeats).replace("ms CPU each", "ms CPU per run")
    );
    Ok(())
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("toy-tree-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
