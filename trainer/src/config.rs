//! The run config: one struct, TRL's key names and defaults, every error reported by field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, FieldError, Result};
use crate::model::registry::{self, ModelKind};

pub mod fields;

/// The most optimizer steps a run may ask for: 2^53, the largest integer that JSON readers
/// (JavaScript's numbers, SQLite's REAL) hold exactly, so the count is shown as it was sent.
pub const MAX_STEPS: u64 = 1 << 53;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LossType {
    /// DPO: `-log σ(β Δ)`.
    #[default]
    Sigmoid,
    /// IPO: `(Δ̄ - 1/(2β))²` on length-averaged log-probs.
    Ipo,
    /// KTO on unpaired `{prompt, completion, label}` data.
    Kto,
}

impl LossType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sigmoid => "sigmoid",
            Self::Ipo => "ipo",
            Self::Kto => "kto",
        }
    }
}

/// transformers' `lr_scheduler_type`s that Goodhart implements (`get_scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedulerType {
    /// The learning rate throughout; `warmup_steps` is ignored, as transformers ignores it.
    Constant,
    /// Linear warmup from 0, then constant.
    ConstantWithWarmup,
    /// Linear warmup, then linear decay to 0 at the last step.
    #[default]
    Linear,
    /// Linear warmup, then half a cosine down to 0 at the last step.
    Cosine,
}

impl LrSchedulerType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::ConstantWithWarmup => "constant_with_warmup",
            Self::Linear => "linear",
            Self::Cosine => "cosine",
        }
    }
}

/// transformers' `train_sampling_strategy`: the order the training set is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplingStrategy {
    /// A fresh `torch.randperm` each epoch, seeded with `data_seed + epoch` (DPO's default).
    Random,
    /// File order (KTO's default and only order: its mismatched pairs are fixed neighbours).
    Sequential,
}

/// The floating-point type of the weights a checkpoint exports (`model.safetensors` and
/// `config.json`'s `torch_dtype`). The trained weights are float32 whatever `bf16`/`fp16` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExportDtype {
    #[default]
    Float32,
    Bfloat16,
    Float16,
}

impl ExportDtype {
    /// The name transformers uses (`torch_dtype` in config.json).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Float32 => "float32",
            Self::Bfloat16 => "bfloat16",
            Self::Float16 => "float16",
        }
    }

    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::Float32 => candle_core::DType::F32,
            Self::Bfloat16 => candle_core::DType::BF16,
            Self::Float16 => candle_core::DType::F16,
        }
    }
}

impl std::str::FromStr for ExportDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "float32" => Ok(Self::Float32),
            "bfloat16" => Ok(Self::Bfloat16),
            "float16" => Ok(Self::Float16),
            other => Err(format!("unknown dtype {other:?}: use float32, bfloat16 or float16")),
        }
    }
}

/// Which checkpoints a run writes and keeps (transformers' `save_strategy`, with a Pareto front
/// added). Every strategy writes the periodic `save_steps` checkpoints and the last one, which a
/// resumed run continues from; see [`crate::retention`] for what each keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SaveStrategy {
    /// Only the periodic checkpoints (transformers' default).
    #[default]
    Steps,
    /// Also the evaluation with the best `metric_for_best_model` so far.
    Best,
    /// Also every evaluation on the front of (KL to π_init ↓, `metric_for_best_model` ↑) so far,
    /// at most `save_pareto_limit` of them, spanning the front.
    Pareto,
}

impl SaveStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Steps => "steps",
            Self::Best => "best",
            Self::Pareto => "pareto",
        }
    }
}

/// Where a run's model, initial policy and data come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// An HF model directory and a JSONL preference dataset (`model_name_or_path`, `dataset_path`).
    #[default]
    Dataset,
    /// Built-in toy task with every response enumerable: exact KL and gold reward (SPEC §4).
    ToyTree,
    /// Built-in toy task with variable-length responses: Monte Carlo metrics (SPEC §4).
    ToyLength,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dataset => "dataset",
            Self::ToyTree => "toy-tree",
            Self::ToyLength => "toy-length",
        }
    }

    pub fn is_toy(self) -> bool {
        self != Self::Dataset
    }

    /// Keys a toy task sets when the config leaves them out (each key's [`fields::Toy`]).
    fn default_overrides(self) -> Vec<(&'static str, Value)> {
        fields::toy_defaults(self)
    }
}

/// Everything a run needs. Keys are TRL's (`DPOConfig`/`KTOConfig`/`TrainingArguments`) where
/// TRL has one, with TRL's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    // --- task, model, data
    /// `dataset` (default), or a built-in toy task that needs no model or dataset path.
    pub task: Task,
    /// HF model directory: `config.json`, `model.safetensors` (or a sharded index) and `tokenizer.json`.
    pub model_name_or_path: Option<PathBuf>,
    /// Start from a seeded random init of the directory's `config.json` instead of its weights.
    pub random_init: bool,
    /// Standard deviation of the random init (transformers' `initializer_range`).
    pub initializer_range: f64,
    /// A dataset file (JSON Lines or Parquet) of TRL's types: `{prompt, chosen, rejected}`,
    /// `{chosen, rejected}` with an implicit prompt (Anthropic-HH), or `{prompt, completion,
    /// label}` for KTO; each standard (text) or conversational (lists of `{role, content}`).
    pub dataset_path: Option<PathBuf>,
    /// A separate evaluation dataset, in the same format: its prompts are the held-out prompts.
    pub eval_dataset_path: Option<PathBuf>,
    /// Fraction of `dataset_path`'s distinct prompts held out for evaluation (never trained on),
    /// chosen by `seed`; 0 holds out nothing.
    pub eval_split_ratio: f64,
    /// Longest prompt + completion, in tokens; longer sequences keep their start.
    pub max_length: Option<usize>,
    /// Longest prompt, in tokens; longer prompts keep their end.
    pub max_prompt_length: Option<usize>,
    /// Gold reward model: an HF sequence-classification directory (`*ForSequenceClassification`)
    /// that scores the policy's samples at every evaluation (`eval/gold_reward`).
    pub reward_model_path: Option<PathBuf>,
    /// Tokens the policy generates per evaluation prompt (sampled at temperature 1).
    pub max_new_tokens: usize,

    // --- method
    pub loss_type: LossType,
    pub beta: f64,
    /// DPO's conservative label smoothing ε (`sigmoid` only).
    pub label_smoothing: f64,
    pub desirable_weight: f64,
    pub undesirable_weight: f64,

    // --- trust region
    /// Move the reference during training (TR-DPO/TR-IPO/TR-KTO).
    pub sync_ref_model: bool,
    /// α in `θ_ref ← α θ + (1 − α) θ_ref`.
    pub ref_model_mixup_alpha: f64,
    /// τ: update the reference after every τ-th optimizer step.
    pub ref_model_sync_steps: u64,
    /// Compute the reference log-probs of the whole dataset once before training (TRL's option):
    /// no reference forward pass per step. Only for a reference that never moves.
    pub precompute_ref_log_probs: bool,

    // --- optimization
    pub learning_rate: f64,
    /// Optimizer steps to run; when unset, `num_train_epochs` passes over the data.
    pub max_steps: Option<u64>,
    pub num_train_epochs: f64,
    pub per_device_train_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    /// Clip gradients to this global norm; 0 disables clipping.
    pub max_grad_norm: f64,
    /// Linear warmup from 0: a number of optimizer steps, or a ratio of them when below 1
    /// (transformers 5's `warmup_steps`).
    pub warmup_steps: f64,
    pub lr_scheduler_type: LrSchedulerType,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// The training seed: data order, sampling at evaluation, and the init of a `random_init`
    /// model. A toy task's problem comes from `task_seed` instead.
    pub seed: u64,
    /// Seeds the data order (`train_sampling_strategy = "random"`); unset, `seed` does.
    pub data_seed: Option<u64>,
    /// `random` or `sequential`; unset, TRL's default for the loss: `random` for DPO and IPO,
    /// `sequential` for KTO (which refuses any other).
    pub train_sampling_strategy: Option<SamplingStrategy>,
    /// Drop the last, short batch of every epoch.
    pub dataloader_drop_last: bool,
    /// Worker threads that split each micro-batch (data parallelism); 0 = one per core. candle's
    /// own threads inside each op are set with `RAYON_NUM_THREADS`/`CANDLE_NUM_THREADS`.
    pub num_threads: usize,
    /// Where the model trains: `cpu` (default), `cuda` or `cuda:N` (a build with `--features cuda`).
    pub device: String,
    /// Labels a worker must have to claim the run (`requires = {gpu = "h100"}`; see
    /// `goodhart worker --labels`). Empty: any worker.
    pub requires: BTreeMap<String, String>,
    /// Mixed precision as transformers' `bf16`: bfloat16 matmuls and activations, float32
    /// weights, optimizer state, norms, softmaxes and loss.
    pub bf16: bool,
    /// The same in float16, with dynamic loss scaling (steps whose gradients overflow are
    /// skipped and the scale halves, as torch's `GradScaler` does).
    pub fp16: bool,
    /// Keep only each layer's input during the forward pass and recompute the layer during the
    /// backward pass: activation memory of one layer instead of all, for about one more
    /// forward pass of time (transformers' `gradient_checkpointing`).
    pub gradient_checkpointing: bool,

    // --- bookkeeping
    pub logging_steps: u64,
    /// Write `checkpoint-<step>/` every this many optimizer steps (and at the end); 0 = only at the end.
    pub save_steps: u64,
    pub eval_steps: Option<u64>,
    /// `steps`, `best` or `pareto` (default `pareto` when the run has a gold reward: a toy task or
    /// `reward_model_path`; else `steps`).
    pub save_strategy: SaveStrategy,
    /// The evaluation metric `best` and `pareto` rank by (default `eval/gold_reward` when the run
    /// has a gold reward); a name without `eval/` gets it, as transformers prefixes `eval_`.
    pub metric_for_best_model: Option<String>,
    /// Whether a larger `metric_for_best_model` is better; unset: yes, unless its name ends in "loss".
    pub greater_is_better: Option<bool>,
    /// At most this many periodic checkpoints are kept, the newest (unset: all). The best and
    /// Pareto checkpoints are bounded by their own rule, and the newest checkpoint is always kept.
    pub save_total_limit: Option<u64>,
    /// At most this many Pareto checkpoints (`save_strategy = "pareto"`): the two ends of the
    /// front, the lowest KL and the best metric, and the points that spread most evenly between.
    pub save_pareto_limit: u64,
    /// Weights in checkpoints' `model.safetensors`: `float32`, `bfloat16` or `float16`.
    pub export_dtype: ExportDtype,
    /// At the end, export the best evaluation's weights (`metric_for_best_model`; the peak of
    /// the gold reward by default) as the final model, `final-model/`, as transformers loads the
    /// best model at the end. Needs `save_strategy` `best` or `pareto`, which keep those weights.
    pub load_best_model_at_end: bool,

    // --- overoptimization alarm (see `overopt`); detection runs whenever there is a gold reward
    /// Stop the run, as finished, once it is past its peak (the alarm fired). Needs a gold reward.
    pub early_stopping: bool,
    /// Evaluations in a row whose `metric_for_best_model` is below its running peak before the
    /// run counts as past its peak. The default, 8, keeps false alarms on a flat curve of 41
    /// Monte Carlo evaluations under 5%.
    pub early_stopping_patience: u64,
    /// The least drop below the peak that counts, in the metric's units (Monte Carlo estimates
    /// must also drop by more than 2 standard errors of the difference).
    pub early_stopping_threshold: f64,

    // --- toy tasks (SPEC §4); ignored by `task = "dataset"`
    /// Number of prompts P.
    pub toy_num_prompts: usize,
    /// Response alphabet size A (toy-tree) or content vocabulary (toy-length).
    pub toy_alphabet_size: usize,
    /// Response length L (toy-tree), or the most tokens generated (toy-length).
    pub toy_response_length: usize,
    /// Preference pairs sampled from π_init per prompt.
    pub toy_pairs_per_prompt: usize,
    /// Bradley–Terry label temperature T: `P(y₁ ≻ y₂) = σ((r*(y₁) − r*(y₂)) / T)`.
    pub toy_label_temperature: f64,
    /// Temperature of the behaviour distribution π_init is trained on (toy-tree).
    pub toy_behaviour_temperature: f64,
    /// Model width, depth and heads of the toy policy.
    pub toy_hidden_size: usize,
    pub toy_num_layers: usize,
    pub toy_num_heads: usize,
    /// Seeds a toy task's problem: the gold reward, the behaviour distribution, π_init and the
    /// preference data. Runs that share it (and the task's other keys) train on the same problem,
    /// so runs over `seed` at one `task_seed` are repeats of one experiment.
    pub task_seed: u64,
    /// Where π_init is cached; default `$GOODHART_CACHE_DIR`, else `<temp dir>/goodhart-cache`.
    pub toy_cache_dir: Option<PathBuf>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            model_name_or_path: None,
            random_init: false,
            initializer_range: 0.02,
            dataset_path: None,
            eval_dataset_path: None,
            eval_split_ratio: 0.0,
            max_length: Some(1024),
            max_prompt_length: None,
            reward_model_path: None,
            max_new_tokens: 64,
            loss_type: LossType::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            sync_ref_model: false,
            ref_model_mixup_alpha: 0.6,
            ref_model_sync_steps: 512,
            precompute_ref_log_probs: false,
            learning_rate: 1e-6,
            max_steps: None,
            num_train_epochs: 3.0,
            per_device_train_batch_size: 8,
            gradient_accumulation_steps: 1,
            max_grad_norm: 1.0,
            warmup_steps: 0.0,
            lr_scheduler_type: LrSchedulerType::Linear,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            seed: 42,
            data_seed: None,
            train_sampling_strategy: None,
            dataloader_drop_last: false,
            num_threads: 0,
            device: "cpu".into(),
            requires: BTreeMap::new(),
            bf16: false,
            fp16: false,
            gradient_checkpointing: false,
            logging_steps: 1,
            save_steps: 500,
            eval_steps: None,
            save_strategy: SaveStrategy::Steps,
            metric_for_best_model: None,
            greater_is_better: None,
            save_total_limit: None,
            save_pareto_limit: 8,
            export_dtype: ExportDtype::Float32,
            load_best_model_at_end: false,
            early_stopping: false,
            early_stopping_patience: 8,
            early_stopping_threshold: 0.0,
            task: Task::Dataset,
            toy_num_prompts: 8,
            toy_alphabet_size: 6,
            toy_response_length: 4,
            toy_pairs_per_prompt: 32,
            toy_label_temperature: 1.0,
            toy_behaviour_temperature: 0.2,
            toy_hidden_size: 64,
            toy_num_layers: 2,
            toy_num_heads: 4,
            task_seed: 42,
            toy_cache_dir: None,
        }
    }
}

impl RunConfig {
    /// Parses a JSON object; a wrong type or unknown key is reported with the field's name.
    /// A toy `task` first fills the keys it has defaults for (see [`Task`]) where they are absent.
    pub fn from_json_value(value: Value) -> Result<Self, Vec<FieldError>> {
        Self::from_json_value_on(value, Machine::This)
    }

    /// [`Self::from_json_value`], checked for `machine`: a web node that queues runs for workers
    /// elsewhere leaves out what only the training machine can answer.
    pub fn from_json_value_on(mut value: Value, machine: Machine) -> Result<Self, Vec<FieldError>> {
        if let Some(map) = value.as_object_mut() {
            let task =
                map.get("task").cloned().and_then(|t| serde_json::from_value::<Task>(t).ok()).unwrap_or_default();
            for (key, default) in task.default_overrides() {
                map.entry(key).or_insert(default);
            }
            // With a gold reward, the policies worth keeping are the ones on its front.
            let has_gold = task.is_toy() || map.get("reward_model_path").is_some_and(|p| !p.is_null());
            if has_gold {
                map.entry("save_strategy").or_insert(Value::from("pareto"));
                map.entry("metric_for_best_model").or_insert(Value::from(crate::metric_names::EVAL_GOLD_REWARD));
            }
        }
        let as_field_error = |e: serde_path_to_error::Error<serde_json::Error>| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let field =
                if path == "." { unknown_field_name(&inner).unwrap_or_else(|| "(config)".into()) } else { path };
            FieldError::new(field, strip_position(&inner))
        };
        // serde stops at the first bad key; trying each key on its own reports all of them.
        if let Value::Object(map) = &value {
            let errors: Vec<FieldError> = map
                .iter()
                .filter_map(|(key, v)| {
                    let single = Value::Object(serde_json::Map::from_iter([(key.clone(), v.clone())]));
                    serde_path_to_error::deserialize::<_, Self>(single).err().map(as_field_error)
                })
                .collect();
            if !errors.is_empty() {
                return Err(errors);
            }
        }
        let config: Self = serde_path_to_error::deserialize(value).map_err(|e| vec![as_field_error(e)])?;
        config.validate_on(machine)?;
        Ok(config)
    }

    /// Parses TOML or JSON text (`format` is a file extension: `toml` or `json`).
    pub fn parse(text: &str, format: &str) -> Result<Self, Vec<FieldError>> {
        let value: Value = match format {
            "json" => serde_json::from_str(text)
                .map_err(|e| vec![FieldError::new("(config)", format!("malformed JSON: {e}"))])?,
            "toml" => {
                let table: toml::Table = toml::from_str(text)
                    .map_err(|e| vec![FieldError::new("(config)", format!("malformed TOML: {}", e.message()))])?;
                serde_json::to_value(table)
                    .map_err(|e| vec![FieldError::new("(config)", format!("malformed TOML: {e}"))])?
            }
            other => {
                return Err(vec![FieldError::new(
                    "(config)",
                    format!("unknown config format {other:?}: use .toml or .json"),
                )])
            }
        };
        Self::from_json_value(value)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let format = path.extension().and_then(|e| e.to_str()).unwrap_or("toml");
        Self::parse(&text, format).map_err(Error::Config)
    }

    /// Every problem at once, each naming its field and the allowed range: first every key's
    /// [`fields::Range`], then the rules that tie keys together, then what this machine can train.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.validate_on(Machine::This)
    }

    /// [`Self::validate`], with this machine's checks ([`Self::check_machine`]) only on
    /// [`Machine::This`].
    pub fn validate_on(&self, machine: Machine) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        fields::check_ranges(self, false, &mut errors);
        let mut check = |ok: bool, field: &str, message: &str| {
            if !ok {
                errors.push(FieldError::new(field, message));
            }
        };
        let finite = |v: f64| v.is_finite();
        check(
            self.label_smoothing == 0.0 || self.loss_type != LossType::Kto,
            "label_smoothing",
            "KTO has no label smoothing (TRL's KTOConfig has no such key)",
        );
        check(
            self.max_steps.is_none_or(|s| s <= MAX_STEPS),
            "max_steps",
            &format!("must be <= 2^53 ({MAX_STEPS}), the largest step count every JSON reader keeps exact"),
        );
        check(
            self.max_steps.is_some() || (finite(self.num_train_epochs) && self.num_train_epochs > 0.0),
            "num_train_epochs",
            "must be > 0",
        );
        check(
            self.loss_type != LossType::Kto || self.per_device_train_batch_size != 1,
            "per_device_train_batch_size",
            "KTO needs >= 2: its KL estimate pairs each example with another one of its batch (TRL refuses 1 too)",
        );
        check(
            self.loss_type != LossType::Kto || self.train_sampling_strategy != Some(SamplingStrategy::Random),
            "train_sampling_strategy",
            "KTO needs \"sequential\": its mismatched pairs are neighbours in a fixed-order batch (TRL refuses \
             \"random\" too)",
        );
        check(
            finite(self.warmup_steps)
                && self.warmup_steps >= 0.0
                && (self.warmup_steps < 1.0 || self.warmup_steps.fract() == 0.0),
            "warmup_steps",
            "must be a whole number of steps, or a ratio of the steps in [0, 1)",
        );
        check(
            !(self.precompute_ref_log_probs && self.sync_ref_model),
            "precompute_ref_log_probs",
            "cannot be used with sync_ref_model: the trust-region reference moves during training, so its \
             log-probs cannot be computed in advance",
        );
        check(!(self.bf16 && self.fp16), "fp16", "cannot be combined with bf16: choose one compute dtype");
        check(
            match (self.max_prompt_length, self.max_length) {
                (Some(p), Some(m)) => p < m,
                _ => true,
            },
            "max_prompt_length",
            "must be < max_length",
        );
        check(
            self.eval_split_ratio == 0.0 || self.eval_dataset_path.is_none(),
            "eval_split_ratio",
            "must be 0 when eval_dataset_path names the evaluation set",
        );
        if let Err(message) = DeviceSpec::parse(&self.device) {
            errors.push(FieldError::new("device", message));
        }
        for (key, value) in &self.requires {
            if let Err(message) = check_label(key, value) {
                errors.push(FieldError::new("requires", message));
            }
        }
        self.validate_saving(&mut errors);
        if self.task.is_toy() {
            self.validate_toy(&mut errors);
        } else {
            self.validate_paths(&mut errors);
        }
        if errors.is_empty() && machine == Machine::This {
            errors.extend(self.check_machine());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// What only the machine that trains the run can answer: whether this build has its device,
    /// whether its `num_threads` fit this machine's cores, whether it fits this machine's memory.
    /// A worker checks them when it claims a run that a web node queued ([`Machine::Any`]).
    pub fn check_machine(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Err(message) = DeviceSpec::parse(&self.device).and_then(DeviceSpec::available) {
            errors.push(FieldError::new("device", message));
        }
        let max_threads = crate::workers::max_threads();
        if self.num_threads > max_threads {
            errors.push(FieldError::new(
                "num_threads",
                format!(
                    "must be <= {max_threads}, the worker threads a run may use here (the cores, or the server's \
                     --max-threads-per-run); 0 uses one per core"
                ),
            ));
        }
        if errors.is_empty() {
            if let Some(machine) = crate::memory::machine_bytes() {
                errors.extend(crate::memory::bounds(&self.memory_shape(), machine));
            }
        }
        errors
    }

    /// Checkpoint keys: what `best` and `pareto` rank by, and that the run evaluates at all.
    fn validate_saving(&self, errors: &mut Vec<FieldError>) {
        if self.metric_for_best_model.as_deref().is_some_and(|m| m.trim().is_empty() || m.trim() == "eval/") {
            errors.push(FieldError::new(
                "metric_for_best_model",
                "must name an evaluation metric, e.g. eval/gold_reward",
            ));
        }
        if self.early_stopping && !(self.has_gold_reward() && self.metric_for_best_model.is_some()) {
            errors.push(FieldError::new(
                "early_stopping",
                "needs a gold reward to tell when the run is past its peak (a toy task or reward_model_path); \
                 this run has none",
            ));
        }
        if self.load_best_model_at_end && self.save_strategy == SaveStrategy::Steps {
            errors.push(FieldError::new(
                "load_best_model_at_end",
                "needs save_strategy \"best\" or \"pareto\", which keep the best evaluation's weights",
            ));
        }
        let strategy = self.save_strategy.as_str();
        if self.save_strategy != SaveStrategy::Steps {
            if self.metric_for_best_model.is_none() {
                errors.push(FieldError::new(
                    "save_strategy",
                    format!(
                        "{strategy:?} ranks evaluations by metric_for_best_model, which is unset: this run has no \
                         gold reward (set reward_model_path, or name another eval/ metric)"
                    ),
                ));
            }
            if !self.evaluates() {
                errors.push(FieldError::new(
                    "save_strategy",
                    format!("{strategy:?} keeps evaluated policies, and this run never evaluates: set eval_steps"),
                ));
            }
        }
    }

    /// The run measures its policy during training (`eval/*`): toy tasks always do; a dataset run
    /// with `eval_steps` or a gold reward model.
    pub fn evaluates(&self) -> bool {
        self.task.is_toy() || self.eval_steps.is_some() || self.reward_model_path.is_some()
    }

    /// The run scores its policy with a gold reward: a toy task's, or `reward_model_path`.
    pub fn has_gold_reward(&self) -> bool {
        self.task.is_toy() || self.reward_model_path.is_some()
    }

    /// The metric `best` and `pareto` rank by, as logged (`eval/…`), and whether larger is better.
    pub fn best_metric(&self) -> Option<(String, bool)> {
        let name = self.metric_for_best_model.as_deref()?.trim();
        let name = if name.starts_with("eval/") { name.to_string() } else { format!("eval/{name}") };
        let greater = self.greater_is_better.unwrap_or(!name.ends_with("loss"));
        Some((name, greater))
    }

    fn validate_paths(&self, errors: &mut Vec<FieldError>) {
        let mut check = |ok: bool, field: &str, message: &str| {
            if !ok {
                errors.push(FieldError::new(field, message));
            }
        };
        match &self.model_name_or_path {
            None => check(false, "model_name_or_path", "is required"),
            // A random init needs only the config.
            Some(p) => {
                if let Some(e) = registry::unusable(p, ModelKind::CausalLm, self.random_init) {
                    check(false, "model_name_or_path", &e);
                }
            }
        }
        if let Some(p) = &self.reward_model_path {
            if let Some(e) = registry::unusable(p, ModelKind::SequenceClassification, false) {
                check(false, "reward_model_path", &e);
            }
        }
        match &self.dataset_path {
            None => check(false, "dataset_path", "is required"),
            Some(p) => check(p.is_file(), "dataset_path", &format!("{} does not exist", p.display())),
        }
        if let Some(p) = &self.eval_dataset_path {
            check(p.is_file(), "eval_dataset_path", &format!("{} does not exist", p.display()));
        }
    }

    fn validate_toy(&self, errors: &mut Vec<FieldError>) {
        let task = self.task.as_str();
        let mut check = |ok: bool, field: &str, message: String| {
            if !ok {
                errors.push(FieldError::new(field, message));
            }
        };
        check(
            self.model_name_or_path.is_none(),
            "model_name_or_path",
            format!("must be unset: task {task:?} builds its own model"),
        );
        check(self.dataset_path.is_none(), "dataset_path", format!("must be unset: task {task:?} generates its data"));
        check(
            self.reward_model_path.is_none(),
            "reward_model_path",
            format!("must be unset: task {task:?} has its own gold reward"),
        );
        check(
            self.eval_dataset_path.is_none() && self.eval_split_ratio == 0.0,
            "eval_split_ratio",
            format!("must be unset: task {task:?} evaluates on its own prompts"),
        );
        fields::check_ranges(self, true, errors);
        let mut check = |ok: bool, field: &str, message: String| {
            if !ok {
                errors.push(FieldError::new(field, message));
            }
        };
        if self.task == Task::ToyTree {
            // Exact metrics enumerate A^L responses per prompt: keep that a table, not a universe.
            let responses = (self.toy_alphabet_size as f64).powi(self.toy_response_length as i32);
            check(
                responses * self.toy_num_prompts as f64 <= 1_000_000.0,
                "toy_response_length",
                format!(
                    "toy-tree enumerates toy_num_prompts × toy_alphabet_size^toy_response_length responses; \
                     {responses} per prompt is too many (at most 1,000,000 in all)"
                ),
            );
        }
        check(
            self.toy_num_heads >= 1 && self.toy_hidden_size.is_multiple_of(self.toy_num_heads),
            "toy_num_heads",
            "must be >= 1 and divide toy_hidden_size".into(),
        );
        check(
            self.toy_num_heads == 0 || (self.toy_hidden_size / self.toy_num_heads).is_multiple_of(2),
            "toy_num_heads",
            "toy_hidden_size / toy_num_heads must be even (rotary embeddings)".into(),
        );
    }

    /// Keys this config sets that TRL 1.16 accepts but ignores for this run, each named, as the
    /// run reports them before it starts. They are ignored here too, so the run stays TRL's.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let loss = self.loss_type.as_str();
        if self.label_smoothing != 0.0 && self.loss_type != LossType::Kto {
            out.push(format!(
                "`label_smoothing` is ignored: TRL 1.16 uses it only for the robust, exo_pair, aot and aot_unpaired \
                 losses, not for loss_type {loss:?}"
            ));
        }
        if self.warmup_steps != 0.0 && self.lr_scheduler_type == LrSchedulerType::Constant {
            out.push(
                "`warmup_steps` is ignored: lr_scheduler_type \"constant\" has no warmup in transformers (use \
                 \"constant_with_warmup\")"
                    .into(),
            );
        }
        if self.loss_type != LossType::Kto {
            for (key, value) in
                [("desirable_weight", self.desirable_weight), ("undesirable_weight", self.undesirable_weight)]
            {
                if value != 1.0 {
                    out.push(format!("`{key}` is ignored: only KTO weighs examples, not loss_type {loss:?}"));
                }
            }
        }
        if self.data_seed.is_some() && self.sampling_strategy() == SamplingStrategy::Sequential {
            out.push(
                "`data_seed` is ignored: the data is read in order (train_sampling_strategy \"sequential\")".into(),
            );
        }
        out
    }

    /// `train_sampling_strategy`, or TRL's default for the loss.
    pub fn sampling_strategy(&self) -> SamplingStrategy {
        self.train_sampling_strategy.unwrap_or(match self.loss_type {
            LossType::Kto => SamplingStrategy::Sequential,
            LossType::Sigmoid | LossType::Ipo => SamplingStrategy::Random,
        })
    }

    /// The seed of the data order: `data_seed`, else `seed` (accelerate's `SeedableRandomSampler`).
    pub fn data_order_seed(&self) -> u64 {
        self.data_seed.unwrap_or(self.seed)
    }

    /// Warmup steps of a run of `total_steps` (transformers' `get_warmup_steps`): `warmup_steps`
    /// itself, or a ratio of the total when below 1, rounded up.
    pub fn warmup_steps_for(&self, total_steps: u64) -> u64 {
        if self.warmup_steps >= 1.0 {
            self.warmup_steps as u64
        } else {
            (total_steps as f64 * self.warmup_steps).ceil() as u64
        }
    }

    /// What the memory estimate reads from this config ([`crate::memory`]).
    pub fn memory_shape(&self) -> crate::memory::RunShape<'_> {
        use crate::memory::ModelSource;
        let model = match (&self.model_name_or_path, self.task.is_toy()) {
            (_, true) => ModelSource::Toy {
                vocab_size: self.toy_alphabet_size,
                max_positions: self.toy_response_length + 1,
                hidden_size: self.toy_hidden_size,
                num_layers: self.toy_num_layers,
                num_heads: self.toy_num_heads,
            },
            (Some(dir), false) => ModelSource::Dir(dir),
            (None, false) => ModelSource::Unknown,
        };
        crate::memory::RunShape {
            model,
            per_device_train_batch_size: self.per_device_train_batch_size,
            // A GPU run takes the whole micro-batch on one worker (see `data_parallel::micro_batch_grads`).
            workers: if self.device == "cpu" { crate::workers::worker_threads(self.num_threads) } else { 1 },
            evaluates: self.eval_steps.is_some() || self.reward_model_path.is_some(),
            max_new_tokens: self.max_new_tokens,
            max_length: self.max_length,
            mixed_precision: self.bf16 || self.fp16,
            gradient_checkpointing: self.gradient_checkpointing,
            moving_reference: self.sync_ref_model,
            unpaired: self.loss_type == LossType::Kto,
            reward_model_path: self.reward_model_path.as_deref(),
        }
    }

    /// How the reference moves during training (α, τ), or `None` when it stays the initial
    /// policy. The one place the rule is derived: the loop and the reports both call it.
    pub fn trust_region(&self) -> Option<crate::trust_region::TrustRegion> {
        self.sync_ref_model.then_some(crate::trust_region::TrustRegion {
            mixup_alpha: self.ref_model_mixup_alpha,
            sync_steps: self.ref_model_sync_steps,
        })
    }

    /// The dtype the policy computes in (`bf16`, `fp16`, else float32).
    pub fn compute_dtype(&self) -> candle_core::DType {
        match (self.bf16, self.fp16) {
            (true, _) => candle_core::DType::BF16,
            (false, true) => candle_core::DType::F16,
            (false, false) => candle_core::DType::F32,
        }
    }

    /// The candle device `device` names (checked by [`Self::validate`]).
    pub fn candle_device(&self) -> Result<candle_core::Device> {
        let spec = DeviceSpec::parse(&self.device)
            .and_then(DeviceSpec::available)
            .map_err(|m| Error::Config(vec![FieldError::new("device", m)]))?;
        Ok(match spec {
            DeviceSpec::Cpu => candle_core::Device::Cpu,
            DeviceSpec::Cuda(ordinal) => candle_core::Device::new_cuda(ordinal)?,
        })
    }
}

/// Which machine a config is checked for (see [`RunConfig::validate_on`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// This one trains it: the checks include [`RunConfig::check_machine`].
    This,
    /// Another one will (a web node that trains nothing queues runs for its workers): only what
    /// holds wherever the run trains.
    Any,
}

/// The characters a label's name or value may hold, as the OpenAPI schema states it: a letter or
/// digit, then up to 62 letters, digits, `.`, `_` or `-` (a Kubernetes label value's rule).
pub const LABEL_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$";

fn is_label(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && text.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Why `name = value` is no label, if it is not one.
pub fn check_label(name: &str, value: &str) -> Result<(), String> {
    let rule = "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit";
    if !is_label(name) {
        return Err(format!("the label name {name:?} must be {rule}"));
    }
    if !is_label(value) {
        return Err(format!("the value {value:?} of label {name:?} must be {rule}"));
    }
    Ok(())
}

/// Labels written as `gpu=h100,zone=eu` (what `goodhart worker --labels` and the run form take;
/// spaces around the parts are ignored), or why not.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err(format!("{part:?} is not name=value (write labels as gpu=h100,zone=eu)"));
        };
        let (name, value) = (name.trim(), value.trim());
        check_label(name, value)?;
        if labels.insert(name.to_string(), value.to_string()).is_some() {
            return Err(format!("the label {name:?} is given twice"));
        }
    }
    Ok(labels)
}

/// Whether a worker with `labels` may claim a run that `requires` these: it has every one, with
/// the same value (the queue's claim asks the same in SQL).
pub fn labels_satisfy(labels: &BTreeMap<String, String>, requires: &BTreeMap<String, String>) -> bool {
    requires.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Labels as [`parse_labels`] reads them: `gpu=h100,zone=eu`.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Whether `name` is a device this build can train on (`cpu`, `cuda`, `cuda:N`; CUDA only in a
/// `--features cuda` build), as the `device` key is checked: what `goodhart worker --device` takes.
pub fn check_device(name: &str) -> Result<(), String> {
    DeviceSpec::parse(name).and_then(DeviceSpec::available).map(|_| ())
}

/// The `device` key, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    fn parse(name: &str) -> Result<Self, String> {
        match name {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => name
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("{name:?} is not a device: use \"cpu\", \"cuda\" or \"cuda:N\"")),
        }
    }

    /// Whether this build can use the device at all (not whether the GPU is there).
    fn available(self) -> Result<Self, String> {
        match self {
            Self::Cuda(_) if !cfg!(feature = "cuda") => {
                Err("this goodhart was built without CUDA: rebuild with `cargo build --release --features cuda`".into())
            }
            spec => Ok(spec),
        }
    }
}

/// serde's "unknown field `foo`, expected ..." names the key only inside the message.
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    fn base() -> Value {
        let dir = env!("CARGO_MANIFEST_DIR");
        json!({
            "model_name_or_path": format!("{dir}/../../shared/reference/trl-parity/tiny-llama"),
            "dataset_path": format!("{dir}/../../shared/reference/trl-parity/pairs.jsonl"),
        })
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = base();
        v[key] = value;
        v
    }

    #[test]
    fn a_minimal_config_gets_trl_defaults() {
        let c = RunConfig::from_json_value(base()).unwrap();
        assert_eq!(c.beta, 0.1);
        assert_eq!(c.ref_model_mixup_alpha, 0.6);
        assert_eq!(c.ref_model_sync_steps, 512);
        assert_eq!(c.loss_type, LossType::Sigmoid);
    }

    #[test]
    fn out_of_range_values_name_their_field_and_range() {
        for (key, value, needle) in [
            ("ref_model_mixup_alpha", json!(1.5), "[0, 1]"),
            ("ref_model_mixup_alpha", json!(-0.1), "[0, 1]"),
            ("ref_model_sync_steps", json!(0), ">= 1"),
            ("beta", json!(0.0), "> 0"),
            ("beta", json!(-1.0), "> 0"),
            ("learning_rate", json!(0.0), "> 0"),
            ("per_device_train_batch_size", json!(0), ">= 1"),
            ("max_steps", json!(0), ">= 1"),
        ] {
            let errors = RunConfig::from_json_value(with(key, value)).unwrap_err();
            assert_eq!(fields(&errors), vec![key], "{key}");
            assert!(errors[0].message.contains(needle), "{key}: {}", errors[0].message);
        }
    }

    #[test]
    fn an_unknown_key_is_named() {
        let errors = RunConfig::from_json_value(with("betaa", json!(0.1))).unwrap_err();
        assert_eq!(fields(&errors), vec!["betaa"]);
        assert!(errors[0].message.contains("unknown field"));
    }

    #[test]
    fn a_wrong_type_is_named() {
        let errors = RunConfig::from_json_value(with("beta", json!("high"))).unwrap_err();
        assert_eq!(fields(&errors), vec!["beta"]);
        let errors = RunConfig::from_json_value(with("loss_type", json!("hinge"))).unwrap_err();
        assert_eq!(fields(&errors), vec!["loss_type"]);
    }

    #[test]
    fn every_wrong_type_and_unknown_key_is_reported_at_once() {
        let mut v = with("beta", json!("high"));
        v["betaa"] = json!(0.1);
        v["max_steps"] = json!(-3);
        let errors = RunConfig::from_json_value(v).unwrap_err();
        let mut names = fields(&errors);
        names.sort_unstable();
        assert_eq!(names, vec!["beta", "betaa", "max_steps"]);
    }

    #[test]
    fn missing_paths_are_reported_together() {
        let mut v = with("model_name_or_path", json!("/nonexistent/model"));
        v["dataset_path"] = json!("/nonexistent/data.jsonl");
        let errors = RunConfig::from_json_value(v).unwrap_err();
        assert_eq!(fields(&errors), vec!["model_name_or_path", "dataset_path"]);
    }

    #[test]
    fn toml_and_json_parse_to_the_same_config() {
        let dir = env!("CARGO_MANIFEST_DIR");
        let toml = format!(
            "model_name_or_path = \"{dir}/../../shared/reference/trl-parity/tiny-llama\"\n\
             dataset_path = \"{dir}/../../shared/reference/trl-parity/pairs.jsonl\"\n\
             beta = 0.2\nsync_ref_model = true\nref_model_mixup_alpha = 0.5\nref_model_sync_steps = 4\n"
        );
        let mut json = base();
        json["beta"] = json!(0.2);
        json["sync_ref_model"] = json!(true);
        json["ref_model_mixup_alpha"] = json!(0.5);
        json["ref_model_sync_steps"] = json!(4);
        assert_eq!(RunConfig::parse(&toml, "toml").unwrap(), RunConfig::from_json_value(json).unwrap());
    }

    #[test]
    fn a_toy_task_needs_no_paths_and_brings_its_own_defaults() {
        let c = RunConfig::parse("task = \"toy-tree\"\n", "toml").unwrap();
        assert_eq!(c.task, Task::ToyTree);
        assert_eq!((c.toy_num_prompts, c.toy_alphabet_size, c.toy_response_length), (8, 6, 4));
        assert_eq!((c.max_steps, c.eval_steps, c.per_device_train_batch_size), (Some(2000), Some(25), 32));
        assert_eq!(c.learning_rate, 3e-5);
        // A key the config sets wins over the task's default.
        let c = RunConfig::parse("task = \"toy-tree\"\nlearning_rate = 1e-4\nmax_steps = 7\n", "toml").unwrap();
        assert_eq!((c.learning_rate, c.max_steps), (1e-4, Some(7)));
        let c = RunConfig::parse("task = \"toy-length\"\n", "toml").unwrap();
        assert_eq!((c.toy_num_prompts, c.toy_pairs_per_prompt, c.max_steps), (16, 64, Some(1000)));
    }

    #[test]
    fn toy_task_keys_are_validated_by_name() {
        let errors = RunConfig::from_json_value(json!({
            "task": "toy-tree", "model_name_or_path": "/m", "toy_alphabet_size": 1, "toy_label_temperature": 0.0,
        }))
        .unwrap_err();
        assert_eq!(fields(&errors), vec!["model_name_or_path", "toy_alphabet_size", "toy_label_temperature"]);
        let errors =
            RunConfig::from_json_value(json!({"task": "toy-tree", "toy_alphabet_size": 32, "toy_response_length": 8}))
                .unwrap_err();
        assert_eq!(fields(&errors), vec!["toy_response_length"]);
        let errors = RunConfig::from_json_value(json!({"task": "toy-forest"})).unwrap_err();
        assert_eq!(fields(&errors), vec!["task"]);
    }

    #[test]
    fn precomputed_reference_log_probs_are_refused_when_the_reference_moves() {
        let mut v = with("precompute_ref_log_probs", json!(true));
        assert!(RunConfig::from_json_value(v.clone()).is_ok());
        v["sync_ref_model"] = json!(true);
        let errors = RunConfig::from_json_value(v).unwrap_err();
        assert_eq!(fields(&errors), vec!["precompute_ref_log_probs"]);
        assert!(errors[0].message.contains("sync_ref_model"), "{}", errors[0].message);
    }

    #[test]
    fn a_model_of_an_unsupported_architecture_is_refused_naming_its_model_type() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            json!({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}).to_string(),
        )
        .unwrap();
        let errors = RunConfig::from_json_value(with("model_name_or_path", json!(dir.path()))).unwrap_err();
        assert_eq!(fields(&errors), vec!["model_name_or_path"]);
        assert!(errors[0].message.contains("unsupported model_type \"mistral\""), "{}", errors[0].message);
        let errors = RunConfig::from_json_value(with("reward_model_path", json!(dir.path()))).unwrap_err();
        assert_eq!(fields(&errors), vec!["reward_model_path"]);
        assert!(errors[0].message.contains("\"mistral\""), "{}", errors[0].message);
    }

    #[test]
    fn a_config_without_weights_is_enough_only_for_a_random_init() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = base()["model_name_or_path"].as_str().unwrap().to_string();
        std::fs::copy(format!("{fixture}/config.json"), dir.path().join("config.json")).unwrap();
        let errors = RunConfig::from_json_value(with("model_name_or_path", json!(dir.path()))).unwrap_err();
        assert_eq!(fields(&errors), vec!["model_name_or_path"]);
        assert!(errors[0].message.contains("model.safetensors"), "{}", errors[0].message);
        let mut v = with("model_name_or_path", json!(dir.path()));
        v["random_init"] = json!(true);
        assert!(RunConfig::from_json_value(v).is_ok());
    }

    #[test]
    fn a_policy_checkpoint_is_not_a_reward_model() {
        let policy = base()["model_name_or_path"].clone();
        let errors = RunConfig::from_json_value(with("reward_model_path", policy)).unwrap_err();
        assert_eq!(fields(&errors), vec!["reward_model_path"]);
        assert!(errors[0].message.contains("not a reward model"), "{}", errors[0].message);
    }

    #[test]
    fn the_export_dtype_takes_transformers_names() {
        assert_eq!(RunConfig::from_json_value(base()).unwrap().export_dtype, ExportDtype::Float32);
        let c = RunConfig::from_json_value(with("export_dtype", json!("bfloat16"))).unwrap();
        assert_eq!((c.export_dtype, c.export_dtype.as_str()), (ExportDtype::Bfloat16, "bfloat16"));
        let errors = RunConfig::from_json_value(with("export_dtype", json!("fp8"))).unwrap_err();
        assert_eq!(fields(&errors), vec!["export_dtype"]);
        assert_eq!("float16".parse::<ExportDtype>(), Ok(ExportDtype::Float16));
        assert!("half".parse::<ExportDtype>().unwrap_err().contains("bfloat16"));
    }

    #[test]
    fn the_eval_split_is_a_fraction_and_excludes_an_eval_file() {
        for ratio in [json!(-0.1), json!(1.0)] {
            let errors = RunConfig::from_json_value(with("eval_split_ratio", ratio)).unwrap_err();
            assert_eq!(fields(&errors), vec!["eval_split_ratio"]);
        }
        let mut both = with("eval_split_ratio", json!(0.1));
        both["eval_dataset_path"] = base()["dataset_path"].clone();
        let errors = RunConfig::from_json_value(both).unwrap_err();
        assert_eq!(fields(&errors), vec!["eval_split_ratio"]);
        assert!(errors[0].message.contains("eval_dataset_path"), "{}", errors[0].message);
        let errors =
            RunConfig::from_json_value(with("eval_dataset_path", json!("/nonexistent/eval.jsonl"))).unwrap_err();
        assert_eq!(fields(&errors), vec!["eval_dataset_path"]);
        let errors = RunConfig::from_json_value(json!({"task": "toy-tree", "eval_split_ratio": 0.2})).unwrap_err();
        assert_eq!(fields(&errors), vec!["eval_split_ratio"]);
        assert_eq!(RunConfig::from_json_value(with("eval_split_ratio", json!(0.05))).unwrap().eval_split_ratio, 0.05);
    }

    #[test]
    fn kto_refuses_a_batch_of_one_and_random_order_as_trl_does() {
        let mut v = with("loss_type", json!("kto"));
        v["per_device_train_batch_size"] = json!(1);
        let errors = RunConfig::from_json_value(v).unwrap_err();
        assert_eq!(fields(&errors), vec!["per_device_train_batch_size"]);
        assert!(errors[0].message.contains("KTO"), "{}", errors[0].message);
        let mut v = with("loss_type", json!("kto"));
        v["train_sampling_strategy"] = json!("random");
        let errors = RunConfig::from_json_value(v).unwrap_err();
        assert_eq!(fields(&errors), vec!["train_sampling_strategy"]);
        let kto = RunConfig::from_json_value(with("loss_type", json!("kto"))).unwrap();
        assert_eq!(kto.sampling_strategy(), SamplingStrategy::Sequential);
        assert_eq!(RunConfig::from_json_value(base()).unwrap().sampling_strategy(), SamplingStrategy::Random);
        assert!(RunConfig::from_json_value(with("per_device_train_batch_size", json!(1))).is_ok(), "DPO may use 1");
    }

    #[test]
    fn warmup_steps_is_a_count_or_a_ratio_below_one() {
        let c = RunConfig::from_json_value(with("warmup_steps", json!(3))).unwrap();
        assert_eq!(c.warmup_steps_for(100), 3);
        let c = RunConfig::from_json_value(with("warmup_steps", json!(0.25))).unwrap();
        assert_eq!((c.warmup_steps_for(100), c.warmup_steps_for(10)), (25, 3));
        for bad in [json!(2.5), json!(-1)] {
            let errors = RunConfig::from_json_value(with("warmup_steps", bad)).unwrap_err();
            assert_eq!(fields(&errors), vec!["warmup_steps"]);
        }
    }

    #[test]
    fn keys_trl_ignores_are_named_in_warnings() {
        assert!(RunConfig::from_json_value(base()).unwrap().warnings().is_empty());
        let c = RunConfig::from_json_value(with("label_smoothing", json!(0.1))).unwrap();
        assert!(c.warnings().iter().any(|w| w.starts_with("`label_smoothing` is ignored")), "{:?}", c.warnings());
        let mut v = with("lr_scheduler_type", json!("constant"));
        v["warmup_steps"] = json!(10);
        let c = RunConfig::from_json_value(v).unwrap();
        assert!(c.warnings().iter().any(|w| w.starts_with("`warmup_steps` is ignored")), "{:?}", c.warnings());
        let c = RunConfig::from_json_value(with("desirable_weight", json!(2.0))).unwrap();
        assert!(c.warnings().iter().any(|w| w.starts_with("`desirable_weight` is ignored")));
        let mut v = with("loss_type", json!("kto"));
        v["data_seed"] = json!(3);
        v["desirable_weight"] = json!(2.0);
        let c = RunConfig::from_json_value(v).unwrap();
        assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
        assert!(c.warnings()[0].starts_with("`data_seed` is ignored"));
        // KTOConfig has no label_smoothing at all: refused, as TRL refuses an unknown key.
        let mut v = with("loss_type", json!("kto"));
        v["label_smoothing"] = json!(0.1);
        assert_eq!(fields(&RunConfig::from_json_value(v).unwrap_err()), vec!["label_smoothing"]);
    }

    #[test]
    fn the_schedule_takes_transformers_names() {
        let c = RunConfig::from_json_value(with("lr_scheduler_type", json!("constant_with_warmup"))).unwrap();
        assert_eq!(c.lr_scheduler_type, LrSchedulerType::ConstantWithWarmup);
        assert_eq!(c.lr_scheduler_type.as_str(), "constant_with_warmup");
        let errors = RunConfig::from_json_value(with("lr_scheduler_type", json!("polynomial"))).unwrap_err();
        assert_eq!(fields(&errors), vec!["lr_scheduler_type"]);
    }

    #[test]
    fn a_run_with_a_gold_reward_keeps_its_pareto_front_by_default() {
        let toy = RunConfig::from_json_value(json!({"task": "toy-tree"})).unwrap();
        assert_eq!(toy.save_strategy, SaveStrategy::Pareto);
        assert_eq!(toy.best_metric(), Some(("eval/gold_reward".to_string(), true)));
        assert_eq!((toy.save_pareto_limit, toy.save_total_limit, toy.task_seed), (8, None, 42));
        let plain = RunConfig::from_json_value(base()).unwrap();
        assert_eq!((plain.save_strategy, plain.best_metric()), (SaveStrategy::Steps, None));
        // transformers' conventions: a bare name gets the prefix, a loss is better smaller.
        let c =
            RunConfig::from_json_value(json!({"task": "toy-tree", "metric_for_best_model": "kl_ref_loss"})).unwrap();
        assert_eq!(c.best_metric(), Some(("eval/kl_ref_loss".to_string(), false)));
    }

    #[test]
    fn keeping_evaluated_policies_needs_a_metric_and_evaluations() {
        let errors = RunConfig::from_json_value(with("save_strategy", json!("pareto"))).unwrap_err();
        assert_eq!(fields(&errors), vec!["save_strategy", "save_strategy"]);
        assert!(errors[0].message.contains("metric_for_best_model"), "{}", errors[0].message);
        assert!(errors[1].message.contains("eval_steps"), "{}", errors[1].message);
        let mut v = with("save_strategy", json!("best"));
        v["metric_for_best_model"] = json!("eval/kl_ref");
        v["eval_steps"] = json!(10);
        assert!(RunConfig::from_json_value(v).is_ok());
        for (key, value) in [("save_pareto_limit", json!(1)), ("save_total_limit", json!(0))] {
            let errors = RunConfig::from_json_value(json!({"task": "toy-tree", key: value})).unwrap_err();
            assert_eq!(fields(&errors), vec![key]);
        }
        let errors = RunConfig::from_json_value(json!({"task": "toy-tree", "save_strategy": "epoch"})).unwrap_err();
        assert_eq!(fields(&errors), vec!["save_strategy"]);
    }

    #[test]
    fn early_stopping_needs_a_gold_reward_and_load_best_model_at_end_kept_weights() {
        let toy = RunConfig::from_json_value(json!({"task": "toy-tree"})).unwrap();
        assert_eq!((toy.early_stopping, toy.early_stopping_patience, toy.early_stopping_threshold), (false, 8, 0.0));
        assert!(!toy.load_best_model_at_end);
        assert!(RunConfig::from_json_value(json!({"task": "toy-tree", "early_stopping": true})).is_ok());
        let errors = RunConfig::from_json_value(with("early_stopping", json!(true))).unwrap_err();
        assert_eq!(fields(&errors), vec!["early_stopping"]);
        assert!(errors[0].message.contains("gold reward"), "{}", errors[0].message);
        for (key, value) in [("early_stopping_patience", json!(0)), ("early_stopping_threshold", json!(-0.1))] {
            let errors = RunConfig::from_json_value(json!({"task": "toy-tree", key: value})).unwrap_err();
            assert_eq!(fields(&errors), vec![key]);
        }
        let errors = RunConfig::from_json_value(
            json!({"task": "toy-tree", "save_strategy": "steps", "load_best_model_at_end": true}),
        )
        .unwrap_err();
        assert_eq!(fields(&errors), vec!["load_best_model_at_end"]);
    }

    #[test]
    fn malformed_text_is_an_error_not_a_panic() {
        assert!(RunConfig::parse("beta = = 1", "toml").is_err());
        assert!(RunConfig::parse("{\"beta\": ", "json").is_err());
    }

    #[test]
    fn the_device_is_cpu_by_default_and_a_bad_name_is_refused_by_field() {
        assert_eq!(RunConfig::default().candle_device().unwrap().location(), candle_core::DeviceLocation::Cpu);
        let errors = RunConfig::from_json_value(json!({"task": "toy-tree", "device": "tpu"})).unwrap_err();
        assert_eq!(fields(&errors), vec!["device"]);
        assert!(errors[0].message.contains("\"cuda:N\""), "{}", errors[0].message);
        let cuda = RunConfig::from_json_value(json!({"task": "toy-tree", "device": "cuda:1"}));
        if cfg!(feature = "cuda") {
            assert_eq!(cuda.unwrap().device, "cuda:1");
        } else {
            assert!(cuda.unwrap_err()[0].message.contains("--features cuda"));
        }
    }

    #[test]
    fn a_run_requires_worker_labels_written_in_toml_or_as_name_value_text() {
        let config =
            RunConfig::parse("task = \"toy-tree\"\nrequires = {gpu = \"h100\", zone = \"eu-1\"}", "toml").unwrap();
        let expected = BTreeMap::from([("gpu".to_string(), "h100".to_string()), ("zone".into(), "eu-1".into())]);
        assert_eq!(config.requires, expected);
        assert_eq!(parse_labels(" gpu = h100 , zone=eu-1,").unwrap(), expected);
        assert_eq!(labels_text(&expected), "gpu=h100,zone=eu-1");
        let needs = |text: &str| parse_labels(text).unwrap();
        assert!(labels_satisfy(&expected, &needs("")) && labels_satisfy(&expected, &needs("gpu=h100")));
        assert!(labels_satisfy(&expected, &needs("zone=eu-1,gpu=h100")));
        assert!(!labels_satisfy(&expected, &needs("gpu=a100")) && !labels_satisfy(&expected, &needs("gpu=h100,x=y")));
        assert!(!labels_satisfy(&BTreeMap::new(), &needs("gpu=h100")));
        assert!(RunConfig::default().requires.is_empty(), "no requirement: any worker");
    }

    #[test]
    fn a_malformed_label_is_refused_naming_requires_and_the_rule() {
        let errors =
            RunConfig::from_json_value(json!({"task": "toy-tree", "requires": {"gpu": "h100 sxm"}})).unwrap_err();
        assert_eq!(fields(&errors), vec!["requires"]);
        assert!(
            errors[0].message.contains("\"h100 sxm\"") && errors[0].message.contains("letters, digits"),
            "{errors:?}"
        );
        let errors = RunConfig::from_json_value(json!({"task": "toy-tree", "requires": {"": "x"}})).unwrap_err();
        assert_eq!(fields(&errors), vec!["requires"]);
        assert!(parse_labels("gpu").unwrap_err().contains("name=value"));
        assert!(parse_labels("gpu=a,gpu=b").unwrap_err().contains("twice"));
        assert!(parse_labels(&format!("gpu={}", "x".repeat(64))).is_err(), "63 characters at most");
    }

    #[test]
    fn a_config_queued_for_another_machine_skips_this_machines_checks() {
        let elsewhere = json!({"task": "toy-tree", "device": "cuda:1", "num_threads": 100_000});
        let config = RunConfig::from_json_value_on(elsewhere.clone(), Machine::Any).unwrap();
        let here = RunConfig::from_json_value(elsewhere);
        if cfg!(feature = "cuda") {
            assert_eq!(fields(&here.unwrap_err()), vec!["num_threads"]);
        } else {
            assert_eq!(fields(&here.unwrap_err()), vec!["device", "num_threads"]);
        }
        assert_eq!(fields(&config.check_machine()), fields(&config.validate().unwrap_err()));
        let errors = RunConfig::from_json_value_on(json!({"task": "toy-tree", "device": "tpu"}), Machine::Any);
        assert_eq!(fields(&errors.unwrap_err()), vec!["device"], "the device's name is checked anywhere");
    }
}
