//! Built-in toy tasks with a known gold reward (SPEC §4): everything generated from the seed,
//! nothing downloaded. A task builds the model, its initial policy π_init (by SFT, cached) and
//! its preference data, and brings an [`Evaluator`](crate::eval::Evaluator) that measures KL to π_init and gold reward.

mod common;
pub mod toy_length;
pub mod toy_tree;

use candle_core::Device;

use crate::config::{RunConfig, Task};
use crate::error::{Error, Result};
use crate::metrics::MetricSink;
use crate::sft::SftStep;
pub use common::TaskSetup;

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
