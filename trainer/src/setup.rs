//! Everything a run loads before its first step: the model, the initial policy, the data, and
//! the checks the data must pass. A toy task builds the same [`Setup`] in code ([`crate::tasks`]).

use std::path::PathBuf;

use candle_core::Device;

use crate::checkpoint;
use crate::config::{LossType, RunConfig, SamplingStrategy};
use crate::data::{self, Dataset, EvalSet, LoadOptions, TextTokenizer};
use crate::error::{Error, FieldError, Result};
use crate::eval::{eval_prompts, HeldOutPairs, PolicySampleEvaluator};
use crate::memory::{self, MemoryPlan};
use crate::model::{CausalLm, ModelConfig, ParamSet};

/// The examples in the shape the loss needs: KTO trains on unpaired examples (pairs are
/// split, each with a mismatched completion for its KL estimate); DPO and IPO need pairs.
pub fn dataset_for_loss(dataset: Dataset, cfg: &RunConfig) -> Result<Dataset> {
    match (cfg.loss_type, dataset) {
        (LossType::Kto, d) => {
            let mut examples = d.into_unpaired();
            data::assign_mismatched_completions(&mut examples, cfg.per_device_train_batch_size, cfg.max_length);
            Ok(Dataset::Unpaired(examples))
        }
        (_, Dataset::Paired(p)) => Ok(Dataset::Paired(p)),
        (other, Dataset::Unpaired(_)) => Err(Error::Config(vec![FieldError::new(
            "loss_type",
            format!(
                "{:?} needs paired {{prompt, chosen, rejected}} data; the dataset is unpaired (use \"kto\")",
                other.as_str()
            ),
        )])),
    }
}

/// Everything loaded before the first step: the architecture, the initial policy, the data.
#[derive(Debug)]
pub struct Setup {
    pub model: CausalLm,
    pub initial: ParamSet,
    pub data: Dataset,
    /// Held-out prompts and their rows (`eval_split_ratio` or `eval_dataset_path`), never trained on.
    pub eval: Option<EvalSet>,
    pub pad_token_id: u32,
    /// Copied into every checkpoint (tokenizer files).
    pub side_files: Vec<PathBuf>,
}

impl Setup {
    /// An HF model directory and a JSONL dataset, as named by the config. (A toy `task` builds
    /// its model, π_init and data in code instead: see [`crate::tasks`].)
    pub fn from_dataset(cfg: &RunConfig, device: &Device) -> Result<Self> {
        cfg.validate().map_err(Error::Config)?;
        let dir = cfg.model_name_or_path.as_deref().expect("validated: model_name_or_path is set");
        let model_config = ModelConfig::from_file(&dir.join("config.json"))?;
        // The data first: a bad row fails the run before the weights are read.
        let tokenizer = TextTokenizer::from_dir(dir, model_config.eos_token_id, model_config.pad_token_id)?;
        let dataset_path = cfg.dataset_path.as_deref().expect("validated: dataset_path is set");
        let options = LoadOptions {
            max_length: cfg.max_length,
            max_prompt_length: cfg.max_prompt_length,
            unpaired: cfg.loss_type == LossType::Kto,
            eval_split_ratio: cfg.eval_split_ratio,
            seed: cfg.seed,
        };
        let loaded = data::load(dataset_path, cfg.eval_dataset_path.as_deref(), &tokenizer, &options)?;
        let data = dataset_for_loss(loaded.train, cfg)?;
        // Refuse before loading any weights: a run that cannot fit fails now, not at step 1.
        let memory = MemoryPlan::for_run(&cfg.memory_shape(), &model_config, &data)?;
        // The plan counts host memory; on a GPU the weights live in device memory, which candle
        // does not report, so there the plan is only printed.
        if device.is_cpu() {
            memory.check(memory::available_bytes())?;
        }
        let initial = if cfg.random_init {
            ParamSet::random(&model_config, cfg.seed, cfg.initializer_range, device)?
        } else {
            ParamSet::load_hf_dir(dir, &model_config, device)?
        };
        let side_files = checkpoint::SIDE_FILES.iter().map(|f| dir.join(f)).filter(|p| p.is_file()).collect();
        Ok(Self {
            model: CausalLm::new(model_config, device).with_compute_dtype(cfg.compute_dtype()),
            initial,
            data,
            eval: loaded.eval,
            pad_token_id: tokenizer.pad_token_id,
            side_files,
        })
    }
}

/// TRL's KTOTrainer warns when the data has more examples of one label than of the other and
/// neither weight is in the range Eq. (8) of the KTO paper recommends; so does this run.
pub(crate) fn kto_weights_warning(cfg: &RunConfig, data: &Dataset) -> Option<String> {
    let Dataset::Unpaired(rows) = data else { return None };
    let desirable = rows.iter().filter(|r| r.label).count().max(1) as f64;
    let undesirable = (rows.len() as f64 - desirable).max(1.0);
    if cfg.loss_type != LossType::Kto || desirable == undesirable {
        return None;
    }
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let (lambda_d, lambda_u) = (cfg.desirable_weight, cfg.undesirable_weight);
    let desirable_range = (round(undesirable * lambda_u / desirable), round(undesirable * lambda_u / desirable * 1.33));
    let undesirable_range =
        (round(desirable * lambda_d / undesirable / 1.33), round(desirable * lambda_d / undesirable));
    let within = |(lo, hi): (f64, f64), v: f64| lo <= v && v <= hi;
    (!within(desirable_range, lambda_d) && !within(undesirable_range, lambda_u)).then(|| {
        format!(
            "the data has {desirable} desirable and {undesirable} undesirable examples, and the weights are outside \
             the range the KTO paper recommends (Eq. 8): set EITHER desirable_weight in [{}, {}] or \
             undesirable_weight in [{}, {}] (but not both), as TRL's KTOTrainer also warns",
            desirable_range.0, desirable_range.1, undesirable_range.0, undesirable_range.1
        )
    })
}

/// Refuses data the configured loader cannot make one batch of, and larger sets than
/// torch's `randperm` shuffles the way reproduced here.
pub(crate) fn check_data_size(cfg: &RunConfig, examples: usize) -> Result<()> {
    let batch = cfg.per_device_train_batch_size;
    if data::batches_per_epoch(examples, batch, cfg.dataloader_drop_last) == 0 {
        let message = format!(
            "the dataset has {examples} training examples, fewer than one batch of {batch}: {}",
            if cfg.dataloader_drop_last { "dataloader_drop_last drops it" } else { "nothing to train on" }
        );
        let field = if cfg.dataloader_drop_last { "dataloader_drop_last" } else { "dataset_path" };
        return Err(Error::Config(vec![FieldError::new(field, message)]));
    }
    if cfg.sampling_strategy() == SamplingStrategy::Random && examples >= data::TORCH_RANDPERM_MAX {
        return Err(Error::Config(vec![FieldError::new(
            "train_sampling_strategy",
            format!(
                "{examples} examples is more than torch's randperm shuffles with the algorithm reproduced here \
                 (fewer than {}); use \"sequential\" on a pre-shuffled file",
                data::TORCH_RANDPERM_MAX
            ),
        )]));
    }
    Ok(())
}

/// A dataset run's evaluator, when it evaluates (`eval_steps`, `reward_model_path`): policy
/// samples on the held-out prompts when the config holds some out (`eval_split_ratio`,
/// `eval_dataset_path`), else on the training prompts, with the held-out pairs' DPO metrics.
pub(crate) fn dataset_evaluator(cfg: &RunConfig, setup: &Setup) -> Result<Option<PolicySampleEvaluator>> {
    let prompts = match &setup.eval {
        Some(held_out) => eval_prompts(held_out.prompts.iter().map(|p| p.ids.clone())),
        None => eval_prompts(setup.data.prompts()),
    };
    let held_out = match setup.eval.as_ref().map(|e| &e.examples) {
        Some(Dataset::Paired(pairs)) => HeldOutPairs::new(pairs.clone(), cfg.beta, setup.pad_token_id),
        _ => None,
    };
    Ok(PolicySampleEvaluator::for_run(cfg, &setup.model, prompts)?.map(|e| e.with_held_out(held_out)))
}
