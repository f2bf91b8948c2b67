//! `goodhart bench …`: the benchmarks, kept apart from the product's modules (BENCHMARKS.md has
//! the commands and the numbers). One file per group: `gpu` (`device`, `kernels`, `eval`,
//! `scale`), `server`, `data` and `ui`; this one dispatches and holds `goodhart bench trainer`.
//! The measuring code they share with the trainer's tests lives in `trainer::bench`.
//!
//! `goodhart bench trainer`: median ms per TR-DPO step on the peer baseline's workload, run
//! interleaved with the PyTorch peer (`../shared/bench/peer/bench_plain.py`) when given one.
//! Every measurement is its own process, so peak RSS is per run; Goodhart and the peer
//! alternate (A B, then B A) so that the machine's slow and fast phases hit both alike.

mod data;
mod gpu;
mod scale_out;
mod server;
mod ui;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use trainer::bench::{compare_step_across_devices, median, peer_model_config, run_trainer_step, run_trdpo};

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Median ms per TR-DPO step (α = 0.6 every step, 8 pairs × 64 tokens, fp32) for the peer's
    /// `tiny` and `small` configs, phase by phase, the soft update alone, and peak RSS.
    Trainer(TrainerBenchArgs),
    /// One measurement in this process, printed as JSON (what `trainer` spawns).
    #[command(hide = true)]
    TrainerOnce(OnceArgs),
    /// One TR-DPO step on the CPU and on `--device` from the same weights and batch, compared
    /// (fails outside bf16 tolerance); then median ms per TR-DPO step on the device.
    Device(DeviceBenchArgs),
    /// The fused kernels against candle's composed ops on `--device` (values and gradients):
    /// the `cuda_*` tests of the trainer, from this binary.
    Kernels(gpu::KernelBenchArgs),
    /// One evaluation (64 prompts × 64 new tokens by default) through the trainer's own sampler
    /// and through candle-transformers, timed both ways.
    Eval(gpu::EvalBenchArgs),
    /// The memory plan of a TR-DPO run of Pythia-1.4B / -2.8B's shapes and, where it fits the
    /// GPU, TR-DPO step times, tokens/s and peak GPU memory.
    Scale(gpu::ScaleBenchArgs),
    /// The server's load benchmark: metric ingestion, metrics GET latency, SSE fan-out cost.
    Server(server::ServerBenchArgs),
    /// Scale-out on Postgres (and SQLite): ingestion from worker processes, claim latency, SSE
    /// fan-out across processes, the runs page with 10,000 runs.
    ScaleOut(scale_out::ScaleOutBenchArgs),
    /// One worker process of `scale-out` (what it spawns).
    #[command(hide = true)]
    ScaleOutWorker(scale_out::ScaleOutWorkerArgs),
    /// CPU steps per second of the training loop on generated HH-style data (~10M-parameter
    /// Llama, 512-token sequences).
    Data(data::DataBenchArgs),
    /// Render time of a sweep's compare page (48 runs × 2,000 evaluations) and its SVG size.
    Ui(ui::UiBenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct TrainerBenchArgs {
    #[arg(long, value_delimiter = ',', default_value = "tiny,small")]
    pub configs: Vec<String>,
    /// Processes per config (and per side when a peer is given).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// A copy of ../shared/bench/peer with its venv, to interleave with `bench_plain.py --mode trdpo`.
    #[arg(long)]
    pub peer_dir: Option<PathBuf>,
    /// The peer's Python (default: PEER_DIR/.venv/bin/python).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Also time each phase (policy forward, reference forward, loss + backward, AdamW, soft
    /// update) in a sequential version of the step with candle's intra-op threads.
    #[arg(long)]
    pub phases: bool,
}

#[derive(Debug, clap::Args)]
pub struct DeviceBenchArgs {
    /// `cuda` or `cuda:N` (a build with `--features cuda`); `cpu` checks the harness itself.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// The model the CPU/device comparison runs on.
    #[arg(long, default_value = "tiny")]
    pub check_config: String,
    /// Models to time on the device.
    #[arg(long, value_delimiter = ',', default_value = "tiny,small,pythia-160m")]
    pub configs: Vec<String>,
    /// Compute dtypes to check against the CPU's float32 step and to time (`bf16`/`fp16` runs
    /// compute in the half dtype on float32 weights).
    #[arg(long, value_delimiter = ',', default_value = "float32,bfloat16")]
    pub dtypes: Vec<trainer::config::ExportDtype>,
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The trainer's own step: examples split across worker threads, one candle thread each.
    Step,
    /// The step written out phase by phase, one worker, candle's own threads inside each op.
    Phases,
}

#[derive(Debug, clap::Args)]
pub struct OnceArgs {
    #[arg(long)]
    pub config: String,
    #[arg(long)]
    pub warmup: usize,
    #[arg(long)]
    pub steps: usize,
    #[arg(long, value_enum, default_value = "step")]
    pub mode: Mode,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// One process's result, Goodhart's or the peer's, in the same units.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measurement {
    step_ms: Vec<f64>,
    phase_median_ms: Vec<(String, f64)>,
    soft_update_ms: Vec<f64>,
    peak_rss_mb: f64,
    setup_rss_mb: f64,
    /// User + system CPU time per measured step (both threads): less sensitive than wall time
    /// to other load on the machine.
    cpu_ms_per_step: f64,
}

/// User + system CPU time of this process so far, in ms (from /proc/self/stat, 100 Hz ticks).
fn process_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    // After the name: state, ppid, pgrp, session, tty_nr, tpgid, flags, minflt, cminflt,
    // majflt, cmajflt, utime, stime.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    match (fields.get(11).and_then(|u| u.parse::<f64>().ok()), fields.get(12).and_then(|s| s.parse::<f64>().ok())) {
        (Some(u), Some(s)) => (u + s) * 10.0,
        _ => f64::NAN,
    }
}

fn proc_status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn once(args: &OnceArgs) -> anyhow::Result<()> {
    let cfg = peer_model_config(&args.config).with_context(|| format!("unknown config {:?}", args.config))?;
    let setup_rss_mb = proc_status_mb("VmRSS:");
    let mut cpu_before = f64::NAN;
    let on_warm = || cpu_before = process_cpu_ms();
    let report = match args.mode {
        Mode::Step => run_trainer_step(
            &args.config,
            &cfg,
            &Device::Cpu,
            DType::F32,
            args.threads,
            args.warmup,
            args.steps,
            on_warm,
        )?,
        Mode::Phases => run_trdpo(&args.config, &cfg, args.warmup, args.steps, on_warm)?,
    };
    let cpu_ms_per_step = (process_cpu_ms() - cpu_before) / args.steps.max(1) as f64;
    let col = |f: fn(&trainer::bench::StepTimes) -> f64| report.steps.iter().map(f).collect::<Vec<f64>>();
    let phases = [
        ("policy_fwd", median(&mut col(|s| s.policy_fwd))),
        ("ref_fwd", median(&mut col(|s| s.ref_fwd))),
        (if args.mode == Mode::Step { "fwd_bwd" } else { "loss_bwd" }, median(&mut col(|s| s.loss_bwd))),
        ("optim", median(&mut col(|s| s.optim))),
        ("soft_update", median(&mut col(|s| s.soft_update))),
    ];
    let m = Measurement {
        step_ms: col(|s| s.total),
        phase_median_ms: phases.iter().filter(|(_, v)| v.is_finite()).map(|(k, v)| ((*k).to_string(), *v)).collect(),
        soft_update_ms: col(|s| s.soft_update),
        peak_rss_mb: proc_status_mb("VmHWM:"),
        setup_rss_mb,
        cpu_ms_per_step,
    };
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

fn run_goodhart(args: &TrainerBenchArgs, config: &str, mode: Mode) -> anyhow::Result<Measurement> {
    let exe = std::env::current_exe()?;
    // The step splits the batch over `threads` workers of one candle thread each; the phase
    // breakdown runs one worker with `threads` candle threads inside each op.
    let intra_op = if mode == Mode::Step { 1 } else { args.threads }.to_string();
    let out = Command::new(exe)
        .args(["bench", "trainer-once", "--config", config, "--threads", &args.threads.to_string()])
        .args(["--warmup", &args.warmup.to_string(), "--steps", &args.steps.to_string()])
        .args(["--mode", if mode == Mode::Step { "step" } else { "phases" }])
        .env("RAYON_NUM_THREADS", &intra_op)
        .env("CANDLE_NUM_THREADS", &intra_op)
        .output()?;
    if !out.status.success() {
        bail!("goodhart bench run failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn run_peer(args: &TrainerBenchArgs, peer: &std::path::Path, config: &str) -> anyhow::Result<Measurement> {
    let python = args.python.clone().unwrap_or_else(|| peer.join(".venv/bin/python"));
    let out_file = std::env::temp_dir().join(format!("goodhart-peer-{}-{config}.json", std::process::id()));
    let threads = args.threads.to_string();
    let status = Command::new(&python)
        .current_dir(peer)
        .args(["bench_plain.py", "--config", config, "--mode", "trdpo", "--microbench-reps", "0"])
        .args(["--threads", &threads, "--warmup", &args.warmup.to_string(), "--steps", &args.steps.to_string()])
        .arg("--out")
        .arg(&out_file)
        .envs([("OMP_NUM_THREADS", &threads), ("MKL_NUM_THREADS", &threads)])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !status.status.success() {
        bail!("peer run failed: {}", String::from_utf8_lossy(&status.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out_file)?)?;
    std::fs::remove_file(&out_file).ok();
    let floats = |key: &str| -> Vec<f64> {
        v[key].as_array().map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect()).unwrap_or_default()
    };
    let phases = v["phase_median_ms"]
        .as_object()
        .map(|o| {
            o.iter().filter(|(k, _)| *k != "total").map(|(k, x)| (k.clone(), x.as_f64().unwrap_or(f64::NAN))).collect()
        })
        .unwrap_or_default();
    Ok(Measurement {
        step_ms: floats("step_samples_ms"),
        phase_median_ms: phases,
        soft_update_ms: floats("soft_update_samples_ms"),
        peak_rss_mb: v["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
        setup_rss_mb: v["rss_after_setup_mb"].as_f64().unwrap_or(f64::NAN),
        cpu_ms_per_step: v["rusage_per_step"]["user_cpu_ms"].as_f64().unwrap_or(f64::NAN)
            + v["rusage_per_step"]["sys_cpu_ms"].as_f64().unwrap_or(f64::NAN),
    })
}

fn summarize(name: &str, runs: &[Measurement]) {
    let mut pooled: Vec<f64> = runs.iter().flat_map(|m| m.step_ms.iter().copied()).collect();
    let (min, max) = pooled.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let med = median(&mut pooled);
    let per_rep: Vec<String> = runs.iter().map(|m| format!("{:.2}", median(&mut m.step_ms.clone()))).collect();
    let mut soft: Vec<f64> = runs.iter().flat_map(|m| m.soft_update_ms.iter().copied()).collect();
    let mut peak: Vec<f64> = runs.iter().map(|m| m.peak_rss_mb).collect();
    let mut grown: Vec<f64> = runs.iter().map(|m| m.peak_rss_mb - m.setup_rss_mb).collect();
    let mut cpu: Vec<f64> = runs.iter().map(|m| m.cpu_ms_per_step).collect();
    println!(
        "  {name:<9} step median {med:8.2} ms (min {min:.2}, max {max:.2}; per-process medians {})  CPU {:.1} ms/step  soft update {:.3} ms  peak RSS {:.0} MB (peak - setup {:.0} MB)",
        per_rep.join(", "),
        median(&mut cpu),
        median(&mut soft),
        median(&mut peak),
        median(&mut grown),
    );
    let phases: Vec<String> = runs[0]
        .phase_median_ms
        .iter()
        .map(|(k, _)| {
            let mut v: Vec<f64> =
                runs.iter().filter_map(|m| m.phase_median_ms.iter().find(|(n, _)| n == k).map(|p| p.1)).collect();
            format!("{k} {:.2}", median(&mut v))
        })
        .collect();
    println!("  {:<9} phases (ms, median of process medians): {}", "", phases.join(", "));
}

fn trainer_bench(args: &TrainerBenchArgs) -> anyhow::Result<()> {
    println!(
        "TR-DPO step, {} pairs x {} tokens, alpha {}, fp32, {} threads, {} warm-up + {} measured steps, {} processes per side",
        trainer::bench::PAIRS,
        trainer::bench::PROMPT_LEN + trainer::bench::COMPLETION_LEN,
        trainer::bench::ALPHA,
        args.threads,
        args.warmup,
        args.steps,
        args.repeats
    );
    for config in &args.configs {
        peer_model_config(config).with_context(|| format!("unknown config {config:?} (use tiny or small)"))?;
        let mut ours = Vec::new();
        let mut phased = Vec::new();
        let mut peers = Vec::new();
        for r in 0..args.repeats {
            // Alternate which side goes first, so drift in machine speed cancels.
            let peer_first = r % 2 == 1;
            if let (true, Some(dir)) = (peer_first, &args.peer_dir) {
                peers.push(run_peer(args, dir, config)?);
            }
            ours.push(run_goodhart(args, config, Mode::Step)?);
            if args.phases {
                phased.push(run_goodhart(args, config, Mode::Phases)?);
            }
            if let (false, Some(dir)) = (peer_first, &args.peer_dir) {
                peers.push(run_peer(args, dir, config)?);
            }
        }
        println!("{config}:");
        summarize("goodhart", &ours);
        if !phased.is_empty() {
            summarize("phased", &phased);
        }
        if !peers.is_empty() {
            summarize("pytorch", &peers);
            let mut ratios: Vec<f64> = ours
                .iter()
                .zip(&peers)
                .map(|(a, b)| median(&mut a.step_ms.clone()) / median(&mut b.step_ms.clone()))
                .collect();
            let (lo, hi) = ratios.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            println!(
                "  ratio goodhart/pytorch of interleaved process medians: median {:.2} (min {lo:.2}, max {hi:.2})",
                median(&mut ratios)
            );
        }
    }
    Ok(())
}

fn device_bench(args: &DeviceBenchArgs) -> anyhow::Result<()> {
    let run = trainer::config::RunConfig { device: args.device.clone(), ..Default::default() };
    let device = run.candle_device().context("--device")?;
    let check_cfg = peer_model_config(&args.check_config)
        .with_context(|| format!("--check-config: unknown config {:?}", args.check_config))?;
    let mut failed = Vec::new();
    for dtype in &args.dtypes {
        let cmp = compare_step_across_devices(&check_cfg, &device, dtype.dtype())?;
        println!("{}", serde_json::to_string(&cmp)?);
        let ok = cmp.within_tolerance();
        println!(
            "{}: one TR-DPO step ({}) on cpu in float32 and on {} in {}: loss {:.6} vs {:.6}, grad_norm {:.6} vs {:.6}, \
             max relative difference of gradients {:.2e}, of AdamW updates {:.2e}, of the reference's move {:.2e} \
             (tolerance {:.0e}{})",
            if ok { "PASS" } else { "FAIL" },
            args.check_config,
            args.device,
            dtype.as_str(),
            cmp.loss[0],
            cmp.loss[1],
            cmp.grad_norm[0],
            cmp.grad_norm[1],
            cmp.max_grad_rel_diff,
            cmp.max_update_rel_diff,
            cmp.max_reference_rel_diff,
            cmp.tolerance(),
            if cmp.is_half() { ", on the loss and gradients" } else { "" },
        );
        if !ok {
            failed.push(dtype.as_str());
        }
    }
    for config in &args.configs {
        let cfg = peer_model_config(config).with_context(|| format!("--configs: unknown config {config:?}"))?;
        for dtype in &args.dtypes {
            let report = run_trainer_step(config, &cfg, &device, dtype.dtype(), 1, args.warmup, args.steps, || {})?;
            let mut totals: Vec<f64> = report.steps.iter().map(|s| s.total).collect();
            let (lo, hi) = totals.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            println!(
                "{config} ({} parameters) on {}: TR-DPO step median {:.2} ms (min {lo:.2}, max {hi:.2}) over {} steps \
                 after {} warm-up; {} pairs x {} tokens, {}; loss {:.5} -> {:.5}",
                report.n_params,
                args.device,
                median(&mut totals),
                args.steps,
                args.warmup,
                trainer::bench::PAIRS,
                trainer::bench::PROMPT_LEN + trainer::bench::COMPLETION_LEN,
                dtype.as_str(),
                report.first_loss,
                report.last_loss,
            );
        }
    }
    if !failed.is_empty() {
        bail!("{} disagrees with the CPU beyond tolerance in {}", args.device, failed.join(", "));
    }
    Ok(())
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Trainer(args) => trainer_bench(&args),
        BenchCommand::Device(args) => device_bench(&args),
        BenchCommand::TrainerOnce(args) => once(&args),
        BenchCommand::Kernels(args) => gpu::kernels(&args),
        BenchCommand::Eval(args) => gpu::eval(&args),
        BenchCommand::Scale(args) => gpu::scale(&args),
        BenchCommand::Server(args) => server::run(&args),
        BenchCommand::ScaleOut(args) => scale_out::run(&args),
        BenchCommand::ScaleOutWorker(args) => scale_out::worker(&args),
        BenchCommand::Data(args) => data::run(&args),
        BenchCommand::Ui(args) => ui::run(&args),
    }
}
