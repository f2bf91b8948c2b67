//! `goodhart train --config run.toml [--output-dir DIR] [--resume]`

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use trainer::config::{ExportDtype, RunConfig};
use trainer::metric_names as names;
use trainer::metrics::{JsonlSink, MetricSink, Metrics};

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Run config, TOML or JSON (by extension), with TRL's key names.
    #[arg(long)]
    pub config: PathBuf,
    /// Where metrics.jsonl and checkpoint-<step>/ go.
    #[arg(long, default_value = "runs/latest")]
    pub output_dir: PathBuf,
    /// Continue from the latest checkpoint in the output directory.
    #[arg(long)]
    pub resume: bool,
    /// Weights in the checkpoints' model.safetensors: float32, bfloat16 or float16 (overrides
    /// the config's `export_dtype`).
    #[arg(long)]
    pub export_dtype: Option<ExportDtype>,
}

/// metrics.jsonl (and π_init's SFT steps in sft.jsonl) plus a progress bar with ETA.
struct CliSink {
    jsonl: JsonlSink,
    sft: Option<JsonlSink>,
    dir: std::path::PathBuf,
    bar: ProgressBar,
}

impl MetricSink for CliSink {
    fn log(&mut self, step: u64, metrics: &Metrics) -> trainer::Result<()> {
        if let Some(loss) = metrics.get(names::LOSS) {
            self.bar.set_message(format!("loss {loss:.4}"));
        }
        self.jsonl.log(step, metrics)
    }

    fn resumed_at(&mut self, step: u64) -> trainer::Result<()> {
        self.bar.println(format!("resuming from step {step}"));
        self.jsonl.resumed_at(step)
    }

    fn checkpoint_saved(&mut self, _step: u64, dir: &std::path::Path) -> trainer::Result<()> {
        self.bar.println(format!("saved {}", dir.display()));
        Ok(())
    }

    fn deleting_checkpoint(&mut self, step: u64) -> trainer::Result<()> {
        self.bar.println(format!("removing checkpoint-{step}: no longer on the front or among the kept ones"));
        Ok(())
    }

    fn sft(&mut self, step: u64, max_steps: u64, metrics: &Metrics) -> trainer::Result<()> {
        if step == 0 || self.sft.is_none() {
            self.sft = Some(JsonlSink::truncate(&self.dir.join("sft.jsonl"))?);
        }
        let kl =
            metrics.get(names::SFT_KL_BEHAVIOUR).map(|kl| format!(", KL(behaviour ‖ π) {kl:.4}")).unwrap_or_default();
        self.bar.set_message(format!("π_init SFT step {step} of at most {max_steps}{kl}"));
        self.sft.as_mut().expect("just opened").log(step, metrics)
    }

    fn progress(&mut self, step: u64, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(step);
    }

    fn memory_plan(&mut self, plan: &trainer::memory::MemoryPlan) {
        let total = trainer::memory::human_bytes(plan.total());
        // Shown even when stderr is not a terminal (where the bar and its println are hidden).
        self.bar.suspend(|| eprintln!("memory estimate: {total} = {plan}"));
    }

    fn warning(&mut self, message: &str) {
        self.bar.suspend(|| eprintln!("warning: {message}"));
    }
}

pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let mut cfg = RunConfig::load(&args.config).with_context(|| format!("config {}", args.config.display()))?;
    if let Some(dtype) = args.export_dtype {
        cfg.export_dtype = dtype;
    }
    std::fs::create_dir_all(&args.output_dir).with_context(|| format!("creating {}", args.output_dir.display()))?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {elapsed} < {eta}  {msg}")
            .expect("valid progress template"),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut sink = CliSink {
        jsonl: JsonlSink::create(&args.output_dir.join("metrics.jsonl"))?,
        sft: None,
        dir: args.output_dir.clone(),
        bar,
    };
    let outcome = trainer::train::train(&cfg, &args.output_dir, args.resume, &mut sink)?;
    sink.bar.finish();
    eprintln!(
        "finished {} of {} steps; metrics in {}",
        outcome.global_step,
        outcome.total_steps,
        args.output_dir.join("metrics.jsonl").display()
    );
    match (&outcome.finish_reason, outcome.past_peak) {
        (Some(reason), _) => eprintln!("{reason}"),
        (None, Some(alarm)) => eprintln!(
            "past its peak since step {} (KL to π_init {:.3} nats): the alarm fired at step {}",
            alarm.peak_step, alarm.peak_kl, alarm.step
        ),
        (None, None) => {}
    }
    if let Some(dir) = &outcome.final_model {
        eprintln!("final model (load_best_model_at_end: the best evaluation's weights): {}", dir.display());
    }
    // Runs with evaluations (the toy tasks) also get their overoptimization summary.
    if let Some(s) = trainer::summary::write_run_summary(&args.output_dir)? {
        eprintln!(
            "gold reward: start {:.3}, peak {:.3} at step {} (KL {:.3} nats){}, final {:.3}; summary in {}",
            s.start_gold,
            s.peak_gold,
            s.peak_step,
            s.peak_kl,
            if s.peaked { "" } else { " (no peak yet: still rising)" },
            s.final_gold,
            args.output_dir.join("summary.json").display()
        );
        let kept: Vec<String> =
            s.pareto.iter().filter(|p| p.checkpoint).map(|p| format!("checkpoint-{}", p.step)).collect();
        if !kept.is_empty() {
            eprintln!("Pareto front with weights: {}", kept.join(", "));
        }
    }
    Ok(())
}
