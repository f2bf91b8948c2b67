//! Built-in toy tasks with a known gold reward (SPEC §4): everything generated from the seed,
//! nothing downloaded. A task builds the model, its initial policy π_init (by SFT, cached) and
//! its preference data, and brings an [`Evaluator`] that measures KL to π_init and gold reward.

pub mod toy_length;
pub mod toy_tree;

use candle_core::Device;
use rand::Rng;

use crate::config::{RunConfig, Task};
use crate::error::{Error, Result};
use crate::metrics::MetricSink;
use crate::model::ModelConfig;
use crate::sft::SftStep;
use crate::train::{Evaluator, Setup};

/// What a toy task hands the training loop.
pub struct TaskSetup {
    pub setup: Setup,
    pub evaluator: Box<dyn Evaluator>,
}

impl std::fmt::Debug for TaskSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSetup").field("setup", &self.setup).finish_non_exhaustive()
    }
}

/// Builds the toy task the config names (π_init comes from the cache when present).
pub fn build(cfg: &RunConfig, device: &Device) -> Result<TaskSetup> {
    build_reporting(cfg, device, &mut crate::metrics::MemorySink::default())
}

/// [`build`], reporting π_init's SFT steps to the run's sink (`sft/loss`, `sft/kl_behaviour`).
pub fn build_reporting(cfg: &RunConfig, device: &Device, sink: &mut dyn MetricSink) -> Result<TaskSetup> {
    cfg.validate().map_err(Error::Config)?;
    // SFT takes minutes for a new task_seed: a cancel or a shutdown must not wait for it.
    let mut progress = |step: &SftStep, max_steps: u64| {
        sink.sft(step.step, max_steps, &step.metrics())?;
        if sink.should_stop() {
            return Err(Error::StoppedBeforeTraining);
        }
        Ok(())
    };
    let mut task = match cfg.task {
        Task::ToyTree => toy_tree::build(cfg, device, &mut progress)?,
        Task::ToyLength => toy_length::build(cfg, device, &mut progress)?,
        Task::Dataset => return Err(Error::model("task \"dataset\" is not a toy task")),
    };
    // π_init was fitted in float32; only the run's own training uses bf16/fp16.
    task.setup.model = task.setup.model.with_compute_dtype(cfg.compute_dtype());
    Ok(task)
}

/// A small Llama for the toy tasks: the vocabulary is the task's, the sizes come from the config.
pub fn toy_model_config(cfg: &RunConfig, vocab_size: usize, max_positions: usize) -> Result<ModelConfig> {
    ModelConfig::from_hf_json(&serde_json::json!({
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": cfg.toy_hidden_size,
        "intermediate_size": 3 * cfg.toy_hidden_size,
        "num_hidden_layers": cfg.toy_num_layers,
        "num_attention_heads": cfg.toy_num_heads,
        "max_position_embeddings": max_positions,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": false,
    }))
}

/// Draws an index from unnormalised probabilities.
pub(crate) fn sample_index(probs: &[f64], rng: &mut impl Rng) -> usize {
    let total: f64 = probs.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, p) in probs.iter().enumerate() {
        if u < *p {
            return i;
        }
        u -= p;
    }
    probs.iter().rposition(|&p| p > 0.0).unwrap_or(0)
}

pub(crate) fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
