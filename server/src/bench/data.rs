//! `goodhart bench data`: CPU steps per second of the real training loop on an
//! Anthropic-HH-style dataset: a ~10M-parameter Llama (random init) with a byte-level BPE
//! tokenizer trained on the generated transcripts, every sequence cut to `--tokens` tokens.
//! Everything (data, tokenizer, model directory) is generated; nothing is downloaded.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::Device;
use serde_json::json;
use trainer::bench::median;
use trainer::config::RunConfig;
use trainer::data::synthetic::{self, LlamaShape};
use trainer::data::Dataset;
use trainer::metrics::{MetricSink, Metrics};
use trainer::train::{train_with, Setup};

#[derive(Debug, clap::Args)]
pub struct DataBenchArgs {
    /// HH-style preference pairs to generate.
    #[arg(long, default_value_t = 256)]
    pub rows: usize,
    /// Tokens per sequence (prompt + completion): `max_length`.
    #[arg(long, default_value_t = 512)]
    pub tokens: usize,
    /// Pairs per optimizer step (`per_device_train_batch_size`).
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Steps timed after the warm-up.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Worker threads (`num_threads`).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// `sigmoid` (DPO), `ipo` or `kto`.
    #[arg(long, default_value = "sigmoid")]
    pub loss_type: String,
    /// Move the reference every step (TR-DPO, α = 0.6).
    #[arg(long)]
    pub sync_ref_model: bool,
    /// Where the generated model and data go (default: a temporary directory).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Train with `gradient_checkpointing = true`.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Train with `bf16 = true` (mixed precision).
    #[arg(long)]
    pub bf16: bool,
}

/// ~10M parameters: 8.1M in 10 layers of width 256, 2.1M in the untied 4096-token embeddings.
const SHAPE: LlamaShape = LlamaShape {
    hidden_size: 256,
    intermediate_size: 688,
    num_hidden_layers: 10,
    num_attention_heads: 8,
    num_key_value_heads: 8,
    max_position_embeddings: 1024,
    min_vocab_size: 4096,
};

/// Records when each optimizer step ends.
struct StepClock {
    ends: Vec<Instant>,
}

impl MetricSink for StepClock {
    fn log(&mut self, _step: u64, _metrics: &Metrics) -> trainer::Result<()> {
        Ok(())
    }

    fn progress(&mut self, _step: u64, _total: u64) {
        self.ends.push(Instant::now());
    }
}

pub fn run(args: &DataBenchArgs) -> anyhow::Result<()> {
    if args.steps == 0 || args.rows == 0 {
        bail!("--steps and --rows must be at least 1");
    }
    let temp = tempfile::tempdir()?;
    let work = args.workdir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let started = Instant::now();
    // About one token per word with this tokenizer: a transcript of `tokens` words fills
    // `max_length` after truncation.
    let rows = synthetic::hh_rows(args.rows, args.tokens, 7);
    let dataset = work.join("hh.jsonl");
    synthetic::write_jsonl(&dataset, &rows)?;
    let model = work.join("model");
    let vocab = synthetic::write_model_dir(&model, &synthetic::texts_of(&rows), SHAPE.min_vocab_size, SHAPE, None)?;
    let cfg = RunConfig::from_json_value(json!({
        "model_name_or_path": model,
        "random_init": true,
        "dataset_path": dataset,
        "max_length": args.tokens,
        "loss_type": args.loss_type,
        "sync_ref_model": args.sync_ref_model,
        "ref_model_sync_steps": 1,
        "per_device_train_batch_size": args.batch_size,
        "max_steps": args.warmup + args.steps,
        "learning_rate": 1e-5,
        "save_steps": 0,
        "num_threads": args.threads,
        "gradient_checkpointing": args.gradient_checkpointing,
        "bf16": args.bf16,
    }))
    .map_err(|e| anyhow::anyhow!("bench config: {}", trainer::error::FieldError::join(&e)))?;
    let setup = Setup::from_config(&cfg, &Device::Cpu)?;
    let lengths: Vec<usize> = match &setup.data {
        Dataset::Paired(p) => {
            p.iter().flat_map(|e| [&e.chosen, &e.rejected]).map(|s| s.prompt.len() + s.completion.len()).collect()
        }
        Dataset::Unpaired(u) => u.iter().map(|e| e.sequence.prompt.len() + e.sequence.completion.len()).collect(),
    };
    let mean_len = lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64;
    let rows_per_step = match &setup.data {
        Dataset::Paired(_) => 2 * args.batch_size,
        Dataset::Unpaired(_) => 2 * args.batch_size, // each example and its KL (mismatched) row
    };
    println!(
        "bench data: {} parameters, vocab {} ({} trained), {} examples, mean {mean_len:.0} tokens per sequence \
         (max_length {}), batch {} ({rows_per_step} sequences per step), {} worker threads, loss {}{}{}{}; setup {:.1}s",
        setup.initial.num_parameters(),
        setup.model.config.vocab_size,
        vocab,
        setup.data.len(),
        args.tokens,
        args.batch_size,
        args.threads,
        args.loss_type,
        if args.sync_ref_model { " with TR (α 0.6 every step)" } else { "" },
        if args.gradient_checkpointing { ", gradient checkpointing" } else { "" },
        if args.bf16 { ", bf16" } else { "" },
        started.elapsed().as_secs_f64()
    );

    let out = work.join("run");
    let mut clock = StepClock { ends: Vec::new() };
    let start = Instant::now();
    train_with(&cfg, &setup, &out, false, &mut clock, None)?;
    let mut previous = start;
    let mut step_secs: Vec<f64> = clock
        .ends
        .iter()
        .map(|&end| {
            let d = end.duration_since(previous).as_secs_f64();
            previous = end;
            d
        })
        .skip(args.warmup)
        .collect();
    for (i, s) in step_secs.iter().enumerate() {
        println!("step {}: {s:.3}s", args.warmup + i + 1);
    }
    let med = median(&mut step_secs);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "median {med:.3}s per step = {:.4} steps/s = {:.0} tokens/s over {} timed steps; cores {}, load average {}",
        1.0 / med,
        rows_per_step as f64 * mean_len / med,
        step_secs.len(),
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    Ok(())
}
