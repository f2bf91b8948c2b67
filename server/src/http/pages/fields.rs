//! Every run config field as a form shows it: its group, input, default and help text; and a
//! posted form back to a config object. Blank inputs are left out, so the defaults (TRL's, or a
//! toy task's own) apply exactly as they would to a config file without the key.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};
use trainer::config::RunConfig;
use trainer::error::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Float,
    /// A whole number >= 0.
    Int,
    Bool,
    Choice(&'static [(&'static str, &'static str)]),
    /// A model directory under `--models-dir`.
    Model,
    /// A JSONL file under `--datasets-dir`.
    Dataset,
    Text,
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub group: Group,
    pub kind: Kind,
    pub help: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Task,
    Toy,
    Method,
    TrustRegion,
    Optimization,
    Logging,
}

impl Group {
    pub const ALL: [Group; 6] =
        [Self::Task, Self::Toy, Self::Method, Self::TrustRegion, Self::Optimization, Self::Logging];

    pub fn title(self) -> &'static str {
        match self {
            Self::Task => "Task, model and data",
            Self::Toy => "Toy task (task = toy-tree or toy-length)",
            Self::Method => "Method",
            Self::TrustRegion => "Trust region",
            Self::Optimization => "Optimization",
            Self::Logging => "Evaluation, checkpoints and threads",
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::Toy => "toy",
            Self::Method => "method",
            Self::TrustRegion => "trust-region",
            Self::Optimization => "optimization",
            Self::Logging => "logging",
        }
    }
}

const TASKS: &[(&str, &str)] = &[
    ("dataset", "dataset: an HF model and a JSONL dataset"),
    ("toy-tree", "toy-tree: exact metrics, no download"),
    ("toy-length", "toy-length: sampled metrics, no download"),
];
const LOSSES: &[(&str, &str)] =
    &[("sigmoid", "sigmoid (DPO)"), ("ipo", "ipo (IPO)"), ("kto", "kto (KTO, unpaired data)")];
const SCHEDULES: &[(&str, &str)] = &[
    ("linear", "linear"),
    ("cosine", "cosine"),
    ("constant_with_warmup", "constant_with_warmup"),
    ("constant", "constant (no warmup)"),
];
const SAMPLING: &[(&str, &str)] =
    &[("random", "random (reshuffled each epoch)"), ("sequential", "sequential (file order)")];
const DEVICES: &[(&str, &str)] = &[("cpu", "cpu"), ("cuda", "cuda (a --features cuda build)")];
const DTYPES: &[(&str, &str)] = &[("float32", "float32"), ("bfloat16", "bfloat16"), ("float16", "float16")];
const SAVE_STRATEGIES: &[(&str, &str)] = &[
    ("steps", "steps: every save_steps and at the end"),
    ("best", "best: also the best evaluation so far"),
    ("pareto", "pareto: also the (KL, metric) front of evaluations"),
];
const YES_NO: &[(&str, &str)] = &[("true", "yes"), ("false", "no")];

use Group::{Logging, Method, Optimization, Task, Toy, TrustRegion};
use Kind::{Bool, Choice, Dataset, Float, Int, Model, Text};

/// Every [`RunConfig`] field (a test checks none is missing).
pub const FIELDS: &[Field] = &[
    Field { name: "task", group: Task, kind: Choice(TASKS), help: "Built-in toy tasks need no model or dataset and have a known gold reward (SPEC §4)." },
    Field { name: "model_name_or_path", group: Task, kind: Model, help: "An HF model directory (config.json, model.safetensors, tokenizer.json) under the server's --models-dir." },
    Field { name: "random_init", group: Task, kind: Bool, help: "Start from a seeded random init of the model's config.json instead of its weights." },
    Field { name: "initializer_range", group: Task, kind: Float, help: "Standard deviation of the random init (transformers' initializer_range)." },
    Field { name: "dataset_path", group: Task, kind: Dataset, help: "JSONL in TRL's format, under --datasets-dir: {prompt, chosen, rejected}, or {prompt, completion, label} for KTO." },
    Field { name: "max_length", group: Task, kind: Int, help: "Longest prompt + completion in tokens; longer sequences keep their start." },
    Field { name: "max_prompt_length", group: Task, kind: Int, help: "Longest prompt in tokens; longer prompts keep their end. Blank: no limit." },
    Field { name: "eval_split_ratio", group: Task, kind: Float, help: "Fraction of the dataset's distinct prompts held out for evaluation (chosen by the seed, never trained on). 0: none." },
    Field { name: "eval_dataset_path", group: Task, kind: Dataset, help: "A separate dataset under --datasets-dir whose prompts are the evaluation set (instead of eval_split_ratio)." },
    Field { name: "reward_model_path", group: Task, kind: Model, help: "Optional gold reward model: an HF sequence-classification directory under --models-dir. Its score of the policy's samples is logged as eval/gold_reward." },
    Field { name: "toy_num_prompts", group: Toy, kind: Int, help: "Number of prompts P." },
    Field { name: "toy_alphabet_size", group: Toy, kind: Int, help: "Response alphabet size A (toy-tree) or content vocabulary (toy-length)." },
    Field { name: "toy_response_length", group: Toy, kind: Int, help: "Response length L (toy-tree) or most tokens generated (toy-length). toy-tree enumerates P·A^L responses." },
    Field { name: "toy_pairs_per_prompt", group: Toy, kind: Int, help: "Preference pairs sampled from π_init per prompt. Fewer pairs: more overoptimization." },
    Field { name: "toy_label_temperature", group: Toy, kind: Float, help: "Bradley–Terry label temperature T: P(y₁ ≻ y₂) = σ((r*(y₁) − r*(y₂)) / T). At T = 1 about 30% of labels disagree with r*." },
    Field { name: "toy_behaviour_temperature", group: Toy, kind: Float, help: "Temperature of the behaviour distribution π_init learns (toy-tree); sets the starting OOD mass." },
    Field { name: "toy_hidden_size", group: Toy, kind: Int, help: "Width of the toy policy." },
    Field { name: "toy_num_layers", group: Toy, kind: Int, help: "Depth of the toy policy." },
    Field { name: "toy_num_heads", group: Toy, kind: Int, help: "Attention heads; must divide toy_hidden_size into even head sizes." },
    Field { name: "task_seed", group: Toy, kind: Int, help: "Seeds the toy problem itself: gold reward, behaviour, π_init and preference data. Runs with one task_seed train on the same problem, so repeats over seed pair up." },
    Field { name: "toy_cache_dir", group: Toy, kind: Text, help: "Where π_init is cached: a directory inside the server's --data-dir. Blank: toy-cache." },
    Field { name: "loss_type", group: Method, kind: Choice(LOSSES), help: "TRL's loss_type: sigmoid is DPO, ipo is IPO (length-averaged), kto is KTO." },
    Field { name: "beta", group: Method, kind: Float, help: "β, the strength of the KL penalty to the reference. TRL's default 0.1." },
    Field { name: "precompute_ref_log_probs", group: Method, kind: Bool, help: "Compute the reference log-probs once before training (TRL's option); vanilla runs only, since a trust-region reference moves." },
    Field { name: "label_smoothing", group: Method, kind: Float, help: "Accepted as TRL 1.16 accepts it, and ignored (with a warning) as TRL ignores it for sigmoid and ipo: only its robust and EXO losses use it. Refused for kto (KTOConfig has no such key)." },
    Field { name: "desirable_weight", group: Method, kind: Float, help: "KTO: weight of desirable examples (ignored, with a warning, by sigmoid and ipo)." },
    Field { name: "undesirable_weight", group: Method, kind: Float, help: "KTO: weight of undesirable examples (ignored, with a warning, by sigmoid and ipo)." },
    Field { name: "sync_ref_model", group: TrustRegion, kind: Bool, help: "Move the reference during training: TR-DPO, TR-IPO, TR-KTO. Off: the reference is the initial policy." },
    Field { name: "ref_model_mixup_alpha", group: TrustRegion, kind: Float, help: "α in θ_ref ← α θ + (1 − α) θ_ref. TRL's default 0.6, the paper's choice for soft updates on large models; α = 1 replaces the reference (hard update). Sweep it over orders of magnitude (0.01 … 1)." },
    Field { name: "ref_model_sync_steps", group: TrustRegion, kind: Int, help: "τ: update the reference after every τ-th optimizer step. TRL's default 512, the paper's choice for hard updates on large models; soft updates use τ = 1." },
    Field { name: "learning_rate", group: Optimization, kind: Float, help: "AdamW learning rate. TRL's default 1e-6 suits pretrained models; the toy tasks bring their own." },
    Field { name: "max_steps", group: Optimization, kind: Int, help: "Optimizer steps to run. Blank: num_train_epochs passes over the data (toy tasks default to a fixed number)." },
    Field { name: "num_train_epochs", group: Optimization, kind: Float, help: "Passes over the data when max_steps is blank." },
    Field { name: "per_device_train_batch_size", group: Optimization, kind: Int, help: "Examples (pairs) per micro-batch." },
    Field { name: "gradient_accumulation_steps", group: Optimization, kind: Int, help: "Micro-batches per optimizer step." },
    Field { name: "max_grad_norm", group: Optimization, kind: Float, help: "Clip gradients to this global norm; 0 disables clipping." },
    Field { name: "warmup_steps", group: Optimization, kind: Float, help: "Linear warmup from 0: a number of steps, or a ratio of all steps when below 1 (transformers 5). The constant schedule ignores it." },
    Field { name: "lr_scheduler_type", group: Optimization, kind: Choice(SCHEDULES), help: "transformers' schedule: linear or cosine decay to 0 after warmup, constant_with_warmup, or constant (which ignores warmup_steps)." },
    Field { name: "weight_decay", group: Optimization, kind: Float, help: "AdamW's decoupled weight decay, on every weight but biases and norms (as transformers' Trainer)." },
    Field { name: "adam_beta1", group: Optimization, kind: Float, help: "AdamW β₁." },
    Field { name: "adam_beta2", group: Optimization, kind: Float, help: "AdamW β₂." },
    Field { name: "adam_epsilon", group: Optimization, kind: Float, help: "AdamW ε." },
    Field { name: "seed", group: Optimization, kind: Int, help: "The training seed: the data order (unless data_seed is set), evaluation sampling and a random_init. A toy task's problem comes from task_seed." },
    Field { name: "data_seed", group: Optimization, kind: Int, help: "Seeds the data order (random sampling) as in transformers: epoch e is torch.randperm seeded with data_seed + e. Blank: seed." },
    Field { name: "train_sampling_strategy", group: Optimization, kind: Choice(SAMPLING), help: "Data order. Blank: TRL's default for the loss, random for sigmoid and ipo, sequential for kto (which refuses random: its KL pairs are neighbours)." },
    Field { name: "dataloader_drop_last", group: Optimization, kind: Bool, help: "Drop the last, short batch of every epoch." },
    Field { name: "logging_steps", group: Logging, kind: Int, help: "Log training metrics every this many steps (averaged over the window)." },
    Field { name: "eval_steps", group: Logging, kind: Int, help: "Evaluate KL, gold reward and OOD mass every this many steps (toy tasks). Blank: never (dataset runs)." },
    Field { name: "save_steps", group: Logging, kind: Int, help: "Write a checkpoint every this many steps and at the end; 0: only at the end." },
    Field { name: "save_strategy", group: Logging, kind: Choice(SAVE_STRATEGIES), help: "Which checkpoints to keep besides the periodic ones: pareto keeps every evaluation on the front of (KL to π_init ↓, metric ↑), so the best policy at each distance can be downloaded. Default pareto with a gold reward (toy tasks, reward_model_path)." },
    Field { name: "metric_for_best_model", group: Logging, kind: Text, help: "The evaluation metric best and pareto rank by; default eval/gold_reward when there is one (transformers' name; eval/ is added to a bare name)." },
    Field { name: "greater_is_better", group: Logging, kind: Choice(YES_NO), help: "Whether a larger metric_for_best_model is better. Blank: yes, unless its name ends in loss." },
    Field { name: "save_total_limit", group: Logging, kind: Int, help: "Keep at most this many periodic checkpoints, the newest. Blank: all. The best and Pareto ones and the newest are kept whatever it says." },
    Field { name: "save_pareto_limit", group: Logging, kind: Int, help: "At most this many Pareto checkpoints: both ends of the front (π_init's KL, the peak) and those that spread most evenly between." },
    Field { name: "load_best_model_at_end", group: Logging, kind: Bool, help: "At the end, export the best evaluation's weights (the gold reward's peak by default) as final-model/, as transformers does. Needs save_strategy best or pareto." },
    Field { name: "early_stopping", group: Logging, kind: Bool, help: "Stop the run, as finished, once the overoptimization alarm says it is past its peak. The alarm itself runs whenever there is a gold reward." },
    Field { name: "early_stopping_patience", group: Logging, kind: Int, help: "Evaluations in a row below the running peak before the run counts as past it. Default 8: under 5% false alarms on a flat curve of 41 Monte Carlo evaluations." },
    Field { name: "early_stopping_threshold", group: Logging, kind: Float, help: "The least drop below the peak that counts, in the metric's units; Monte Carlo estimates must also drop by more than 2 standard errors of the difference." },
    Field { name: "num_threads", group: Logging, kind: Int, help: "Worker threads per micro-batch, at most the cores (or the server's --max-threads-per-run); 0: one per core." },
    Field { name: "max_new_tokens", group: Logging, kind: Int, help: "Tokens the policy samples per evaluation prompt (temperature 1) for KL, gold reward and length (dataset runs)." },
    Field { name: "device", group: Logging, kind: Choice(DEVICES), help: "Where the model trains: cpu, or cuda in a build with --features cuda (cuda:N through the API)." },
    Field { name: "bf16", group: Optimization, kind: Bool, help: "Mixed precision as transformers' bf16: bfloat16 matmuls and activations on float32 weights; norms, softmaxes and the loss stay float32. For GPUs: on the CPU it is slower." },
    Field { name: "fp16", group: Optimization, kind: Bool, help: "The same in float16, with dynamic loss scaling (an overflowing step is skipped and the scale halves). Not with bf16." },
    Field { name: "gradient_checkpointing", group: Optimization, kind: Bool, help: "Keep only each layer's input and recompute the layer in the backward pass: about half the memory at 6 layers, for one more policy forward pass per step." },
    Field { name: "export_dtype", group: Logging, kind: Choice(DTYPES), help: "Dtype of the exported checkpoint weights; the trained weights stay float32 (also with bf16/fp16), and a float32 copy is kept for resuming." },
];

/// The paper's methods by name: each fills `loss_type`, `sync_ref_model`, α and τ. Soft updates
/// use TRL's (and the paper's) α = 0.6 every step; hard updates replace the reference every
/// τ = 512 steps.
pub const PRESETS: &[Preset] = &[
    Preset::new("dpo", "DPO", "sigmoid", None),
    Preset::new("tr-dpo-soft", "TR-DPO soft (α = 0.6, τ = 1)", "sigmoid", Some((0.6, 1))),
    Preset::new("tr-dpo-hard", "TR-DPO hard (α = 1, τ = 512)", "sigmoid", Some((1.0, 512))),
    Preset::new("ipo", "IPO", "ipo", None),
    Preset::new("tr-ipo-soft", "TR-IPO soft (α = 0.6, τ = 1)", "ipo", Some((0.6, 1))),
    Preset::new("tr-ipo-hard", "TR-IPO hard (α = 1, τ = 512)", "ipo", Some((1.0, 512))),
    Preset::new("kto", "KTO", "kto", None),
    Preset::new("tr-kto-soft", "TR-KTO soft (α = 0.6, τ = 1)", "kto", Some((0.6, 1))),
    Preset::new("tr-kto-hard", "TR-KTO hard (α = 1, τ = 512)", "kto", Some((1.0, 512))),
];

#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub id: &'static str,
    pub label: &'static str,
    loss_type: &'static str,
    /// (α, τ) for a trust-region method.
    trust_region: Option<(f64, u64)>,
}

impl Preset {
    const fn new(
        id: &'static str,
        label: &'static str,
        loss_type: &'static str,
        trust_region: Option<(f64, u64)>,
    ) -> Self {
        Self { id, label, loss_type, trust_region }
    }

    /// The form values it stands for.
    pub fn values(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("loss_type", self.loss_type.to_string())];
        match self.trust_region {
            None => out.push(("sync_ref_model", "false".into())),
            Some((alpha, tau)) => out.extend([
                ("sync_ref_model", "true".into()),
                ("ref_model_mixup_alpha", crate::charts::number(alpha)),
                ("ref_model_sync_steps", tau.to_string()),
            ]),
        }
        out
    }
}

/// A form posted with a `method` preset: the preset's values go into the fields the user left
/// blank, so hand-edited fields win (without JavaScript, the only way to combine them).
pub fn apply_preset(form: &mut Vec<(String, String)>) {
    let chosen = form.iter().rev().find(|(k, _)| k == "method").map(|(_, v)| v.clone());
    let Some(preset) = chosen.and_then(|id| PRESETS.iter().find(|p| p.id == id)) else { return };
    for (key, value) in preset.values() {
        let set = form.iter().any(|(k, v)| k == key && !v.trim().is_empty());
        // An unticked checkbox sends nothing: the preset decides sync_ref_model unless ticked.
        if !set {
            form.retain(|(k, _)| k != key);
            form.push((key.to_string(), value));
        }
    }
}

pub fn field(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

/// Posted form values (the last value of each key) to a config object. Blank inputs are left
/// out; numbers that do not parse are reported by field, keeping the user's text for the form.
pub fn config_from_form(form: &[(String, String)]) -> (Value, Vec<FieldError>) {
    let values: BTreeMap<&str, &str> = form.iter().map(|(k, v)| (k.as_str(), v.trim())).collect();
    let mut config = Map::new();
    let mut errors = Vec::new();
    for f in FIELDS {
        let Some(&raw) = values.get(f.name) else { continue };
        if raw.is_empty() {
            continue;
        }
        let value = match f.kind {
            Float => match raw.parse::<f64>() {
                Ok(v) if v.is_finite() => Number::from_f64(v).map(Value::Number),
                _ => {
                    errors.push(FieldError::new(f.name, "must be a number"));
                    None
                }
            },
            Int => match raw.parse::<u64>() {
                Ok(v) => Some(Value::from(v)),
                Err(_) => {
                    errors.push(FieldError::new(f.name, "must be a whole number ≥ 0"));
                    None
                }
            },
            Bool => Some(Value::Bool(matches!(raw, "true" | "on" | "1"))),
            // A yes/no choice is a boolean that may be left unset.
            Choice(YES_NO) => Some(Value::Bool(raw == "true")),
            Choice(_) | Model | Dataset | Text => Some(Value::String(raw.to_string())),
        };
        if let Some(v) = value {
            config.insert(f.name.to_string(), v);
        }
    }
    (Value::Object(config), errors)
}

/// A stored config's values as form text (clone-with-edits), paths relative to their roots.
pub fn form_from_config(
    config: &Value,
    models_dir: &std::path::Path,
    datasets_dir: &std::path::Path,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(map) = config.as_object() else { return out };
    for (key, v) in map {
        let text = match v {
            Value::Null => continue,
            Value::String(s) => {
                let root = match key.as_str() {
                    "model_name_or_path" => Some(models_dir),
                    "dataset_path" => Some(datasets_dir),
                    _ => None,
                };
                let relative = root.and_then(|r| r.canonicalize().ok()).and_then(|r| {
                    std::path::Path::new(s).strip_prefix(r).ok().map(|p| p.to_string_lossy().into_owned())
                });
                relative.unwrap_or_else(|| s.clone())
            }
            Value::Bool(b) => b.to_string(),
            other => other.to_string(),
        };
        out.insert(key.clone(), text);
    }
    out
}

/// What a blank input means: TRL's default, and a toy task's own where it differs.
pub fn default_text(name: &str) -> String {
    fn text(v: Option<&Value>) -> String {
        match v {
            None | Some(Value::Null) => "unset".into(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        }
    }
    let defaults = serde_json::to_value(RunConfig::default()).unwrap_or_default();
    let mut out = format!("default {}", text(defaults.get(name)));
    for task in ["toy-tree", "toy-length"] {
        let toy = RunConfig::from_json_value(serde_json::json!({ "task": task }))
            .ok()
            .and_then(|c| serde_json::to_value(c).ok())
            .unwrap_or_default();
        if toy.get(name) != defaults.get(name) && name != "task" {
            out.push_str(&format!("; {task}: {}", text(toy.get(name))));
        }
    }
    out
}

/// Directories under `root` that hold a `config.json`, and `*.jsonl` files under `root`
/// (one level down), as names relative to it.
pub fn choices(root: &std::path::Path, kind: Kind) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut out: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| match kind {
            Model => e.path().join("config.json").is_file(),
            Dataset => e.path().is_file() && e.path().extension().is_some_and(|x| x == "jsonl"),
            _ => false,
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_config_field_is_on_the_form() {
        let all = serde_json::to_value(RunConfig::default()).unwrap();
        for key in all.as_object().unwrap().keys() {
            assert!(field(key).is_some(), "{key} is missing from the form");
        }
        assert_eq!(FIELDS.len(), all.as_object().unwrap().len());
    }

    #[test]
    fn blank_inputs_are_left_out_and_bad_numbers_are_named() {
        let form: Vec<(String, String)> = [
            ("task", "toy-tree"),
            ("beta", " 0.2 "),
            ("learning_rate", ""),
            ("max_steps", "ten"),
            ("sync_ref_model", "true"),
            ("action", "launch"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (config, errors) = config_from_form(&form);
        assert_eq!(config, json!({"task": "toy-tree", "beta": 0.2, "sync_ref_model": true}));
        assert_eq!(errors, vec![FieldError::new("max_steps", "must be a whole number ≥ 0")]);
    }

    #[test]
    fn a_method_preset_fills_the_fields_left_blank_and_hand_edits_win() {
        let mut form: Vec<(String, String)> =
            [("method", "tr-ipo-hard"), ("ref_model_sync_steps", "64"), ("loss_type", "")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        apply_preset(&mut form);
        let (config, errors) = config_from_form(&form);
        assert!(errors.is_empty());
        assert_eq!(
            config,
            json!({"loss_type": "ipo", "sync_ref_model": true, "ref_model_mixup_alpha": 1.0, "ref_model_sync_steps": 64})
        );
        assert_eq!(PRESETS.len(), 9, "DPO, IPO, KTO × vanilla, TR soft, TR hard");
    }

    #[test]
    fn defaults_name_the_toy_tasks_own() {
        assert_eq!(default_text("beta"), "default 0.1");
        assert!(default_text("learning_rate").contains("toy-tree: 0.00003"), "{}", default_text("learning_rate"));
    }
}
