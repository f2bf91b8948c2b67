//! `goodhart bench kernels` (the fused kernels against the composed ops), `goodhart bench eval`
//! (one evaluation both ways: the trainer's sampler against candle-transformers) and `goodhart
//! bench scale` (the memory plan of a TR-DPO run at the paper's scale and, where it fits, step
//! times on the GPU). `scripts/check-cuda.sh` runs them on the GPU machine; all also run on the
//! CPU.

use anyhow::{bail, Context};
use trainer::bench::{
    bench_memory_plan, gpu_memory, median, peer_model_config, run_trainer_step_with, time_evaluation,
};
use trainer::memory::human_bytes;

#[derive(Debug, clap::Args)]
pub struct KernelBenchArgs {
    #[arg(long, default_value = "cuda")]
    pub device: String,
}

/// The checks of `trainer::model::kernel_check` (the `cuda_*` tests) on `--device`.
pub fn kernels(args: &KernelBenchArgs) -> anyhow::Result<()> {
    if std::env::var("GOODHART_FUSED_OPS").is_ok_and(|v| v == "0") {
        bail!("GOODHART_FUSED_OPS=0 turns the fused kernels off: there would be nothing to check");
    }
    let run = trainer::config::RunConfig { device: args.device.clone(), ..Default::default() };
    let device = run.candle_device().context("--device")?;
    let checks = trainer::model::kernel_check::all(&device)?;
    let mut failed = 0;
    for c in &checks {
        println!(
            "{}: {} {} {}: values {:.2e}, gradients {:.2e} relative (tolerance {:.0e})",
            if c.passed() { "PASS" } else { "FAIL" },
            c.kernel,
            c.case,
            c.dtype,
            c.values,
            c.gradients,
            c.tolerance
        );
        failed += usize::from(!c.passed());
    }
    println!("{} kernel checks on {}: {} passed, {failed} failed", checks.len(), args.device, checks.len() - failed);
    if failed > 0 {
        bail!("{failed} fused kernel checks failed on {}", args.device);
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct EvalBenchArgs {
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// A Llama (`tiny`, `small`) or Qwen2-shaped preset: candle-transformers covers these.
    #[arg(long, default_value = "small")]
    pub config: String,
    #[arg(long, value_enum, default_value = "float32")]
    pub dtype: trainer::config::ExportDtype,
    #[arg(long, default_value_t = 64)]
    pub prompts: usize,
    #[arg(long, default_value_t = 16)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Evaluations per side, alternating.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

pub fn eval(args: &EvalBenchArgs) -> anyhow::Result<()> {
    let run = trainer::config::RunConfig { device: args.device.clone(), ..Default::default() };
    let device = run.candle_device().context("--device")?;
    let cfg = peer_model_config(&args.config).with_context(|| format!("--config: unknown config {:?}", args.config))?;
    let mut t = time_evaluation(
        &args.config,
        &cfg,
        &device,
        args.dtype.dtype(),
        args.prompts,
        args.prompt_len,
        args.new_tokens,
        args.repeats,
    )?;
    println!("{}", serde_json::to_string(&t)?);
    let (own, ct) = (median(&mut t.trainer_ms), median(&mut t.candle_transformers_ms));
    println!(
        "evaluation of {} prompts x {} new tokens ({}, {}, policy + pi_init on {}): trainer's sampler + training-path scoring {own:.0} ms, \
         candle-transformers sampling + scoring {ct:.0} ms (median of {}; ratio {:.2}); |log pi_theta - log pi_init| at \
         step 0: {:.1e} vs {:.1e}",
        args.prompts,
        args.new_tokens,
        args.config,
        args.dtype.as_str(),
        args.device,
        args.repeats,
        ct / own,
        t.trainer_max_abs_log_ratio,
        t.candle_transformers_max_abs_log_ratio,
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ScaleBenchArgs {
    #[arg(long, default_value = "cuda")]
    pub device: String,
    #[arg(long, value_delimiter = ',', default_value = "pythia-1.4b,pythia-2.8b")]
    pub configs: Vec<String>,
    #[arg(long, value_enum, default_value = "bfloat16")]
    pub dtype: trainer::config::ExportDtype,
    /// Gradient checkpointing (what the plan assumes by default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub gradient_checkpointing: bool,
    /// The GPU memory to plan against, in GiB: the device's own when it is a GPU; with
    /// `--device cpu` (a plan only), an H200's 140.4 GiB.
    #[arg(long)]
    pub gpu_memory_gib: Option<f64>,
    /// Only print the plans.
    #[arg(long)]
    pub plan_only: bool,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
}

/// An H200's memory as the driver reports it (143,771 MiB).
const H200_BYTES: u64 = 143_771 << 20;

pub fn scale(args: &ScaleBenchArgs) -> anyhow::Result<()> {
    let run = trainer::config::RunConfig { device: args.device.clone(), ..Default::default() };
    let device = run.candle_device().context("--device")?;
    let total = match (args.gpu_memory_gib, gpu_memory(&device)) {
        (Some(gib), _) => (gib * f64::from(1u32 << 30)) as u64,
        (None, Some((_, total))) => total,
        (None, None) => H200_BYTES,
    };
    let dtype = args.dtype.dtype();
    for config in &args.configs {
        let cfg = peer_model_config(config).with_context(|| format!("--configs: unknown config {config:?}"))?;
        let plan = bench_memory_plan(&cfg, "cuda", dtype, args.gradient_checkpointing)?;
        let fits = plan.total() <= total;
        println!(
            "{}",
            serde_json::json!({"config": config, "plan": plan, "plan_total": plan.total(), "gpu_bytes": total, "fits": fits})
        );
        println!(
            "{config} ({} parameters), TR-DPO in {} with{} gradient checkpointing: the plan needs {} of {} ({plan}): {}",
            plan.num_parameters,
            args.dtype.as_str(),
            if args.gradient_checkpointing { "" } else { "out" },
            human_bytes(plan.total()),
            human_bytes(total),
            if fits { "fits" } else { "does NOT fit" },
        );
        if args.plan_only || !fits {
            continue;
        }
        let report = run_trainer_step_with(
            config,
            &cfg,
            &device,
            dtype,
            args.gradient_checkpointing,
            1,
            args.warmup,
            args.steps,
            &mut || {},
        )?;
        let mut totals: Vec<f64> = report.steps.iter().map(|s| s.total).collect();
        let step = median(&mut totals);
        let tokens = 2 * trainer::bench::PAIRS * (trainer::bench::PROMPT_LEN + trainer::bench::COMPLETION_LEN);
        println!(
            "{}",
            serde_json::json!({"config": config, "dtype": args.dtype.as_str(), "median_ms": step, "tokens_per_s": tokens as f64 / step * 1e3,
                               "peak_gpu_bytes": report.peak_gpu_bytes, "steps": args.steps, "first_loss": report.first_loss, "last_loss": report.last_loss})
        );
        println!(
            "{config} on {}: TR-DPO step median {step:.1} ms over {} steps after {} warm-up ({tokens} tokens: {:.0} tokens/s), \
             peak GPU memory {} (plan {}); loss {:.5} -> {:.5}",
            args.device,
            args.steps,
            args.warmup,
            tokens as f64 / step * 1e3,
            report.peak_gpu_bytes.map_or_else(|| "n/a".to_string(), human_bytes),
            human_bytes(plan.total()),
            report.first_loss,
            report.last_loss,
        );
    }
    Ok(())
}
