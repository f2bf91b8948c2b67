//! One description of each [`RunConfig`] key: its group, label, help, kind, range, TRL default
//! and toy default. The run form, the sweep page, [`RunConfig::validate`]'s ranges, the sweep
//! CSV's config columns and the OpenAPI schema are all read from [`FIELDS`]; a test checks that
//! every key `RunConfig` serializes has exactly one entry here, and no entry lacks a key.
//!
//! TRL's default is `RunConfig::default()`'s value (read, not repeated, by [`Field::trl_default`]);
//! a toy task's own default is written here, in [`Field::toy`].

use serde_json::{Map, Value};

use super::{RunConfig, Task};
use crate::error::FieldError;

/// Where a key sits on the form.
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

/// The value a key takes (JSON type, and the input the form shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Float,
    /// A whole number >= 0.
    Int,
    Bool,
    /// One of these `(value, label)`s; [`YES_NO`] is a boolean that may be left unset.
    Choice(&'static [(&'static str, &'static str)]),
    /// A model directory (the server's `--models-dir`).
    Model,
    /// A dataset file (the server's `--datasets-dir`).
    Dataset,
    Text,
    /// Names to values, `{gpu = "h100"}`: the form takes them as `gpu=h100,zone=eu`
    /// ([`super::parse_labels`]).
    Labels,
}

/// The numbers a key accepts; [`RunConfig::validate`] checks it and names it in its message
/// (`must be > 0`, `must be in [0, 1)`), and the OpenAPI schema states it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: Option<f64>,
    /// `min` itself is refused.
    pub min_exclusive: bool,
    pub max: Option<f64>,
    /// `max` itself is refused.
    pub max_exclusive: bool,
    /// Said after the range in the error message (`" (0 disables clipping)"`).
    pub note: &'static str,
}

impl Range {
    /// `> min`
    pub const fn above(min: f64) -> Self {
        Self { min: Some(min), min_exclusive: true, max: None, max_exclusive: false, note: "" }
    }
    /// `>= min`
    pub const fn at_least(min: f64) -> Self {
        Self { min: Some(min), min_exclusive: false, max: None, max_exclusive: false, note: "" }
    }
    /// `[min, max]`
    pub const fn closed(min: f64, max: f64) -> Self {
        Self { min: Some(min), min_exclusive: false, max: Some(max), max_exclusive: false, note: "" }
    }
    /// `[min, max)`
    pub const fn below(min: f64, max: f64) -> Self {
        Self { min: Some(min), min_exclusive: false, max: Some(max), max_exclusive: true, note: "" }
    }
    pub const fn note(self, note: &'static str) -> Self {
        Self { note, ..self }
    }

    pub fn contains(&self, v: f64) -> bool {
        v.is_finite()
            && self.min.is_none_or(|m| if self.min_exclusive { v > m } else { v >= m })
            && self.max.is_none_or(|m| if self.max_exclusive { v < m } else { v <= m })
    }

    /// `must be > 0`, `must be in [0, 1)`, with the note.
    pub fn message(&self) -> String {
        let range = match (self.min, self.max) {
            (Some(a), Some(b)) => format!(
                "in {}{a}, {b}{}",
                if self.min_exclusive { "(" } else { "[" },
                if self.max_exclusive { ")" } else { "]" }
            ),
            (Some(a), None) => format!("{} {a}", if self.min_exclusive { ">" } else { ">=" }),
            (None, Some(b)) => format!("{} {b}", if self.max_exclusive { "<" } else { "<=" }),
            (None, None) => "any number".into(),
        };
        format!("must be {range}{}", self.note)
    }
}

/// A default written in a const table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lit {
    Int(u64),
    Float(f64),
    Str(&'static str),
}

impl Lit {
    pub fn to_value(self) -> Value {
        match self {
            Self::Int(v) => Value::from(v),
            Self::Float(v) => Value::from(v),
            Self::Str(v) => Value::from(v),
        }
    }
}

/// A toy task's own defaults, where they differ from TRL's: TRL's suit fine-tuning a pretrained
/// model, not a 100k-parameter toy trained for thousands of steps (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Toy {
    pub tree: Option<Lit>,
    pub length: Option<Lit>,
}

impl Toy {
    const NONE: Toy = Toy { tree: None, length: None };
    const fn both(v: Lit) -> Toy {
        Toy { tree: Some(v), length: Some(v) }
    }
    const fn each(tree: Lit, length: Lit) -> Toy {
        Toy { tree: Some(tree), length: Some(length) }
    }
    const fn length(v: Lit) -> Toy {
        Toy { tree: None, length: Some(v) }
    }
}

/// What a key means to a sweep and its reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Defines the method a run is a variant of (DPO, TR-DPO α τ, ...): a sweep report's
    /// variants and pairs are told apart by these.
    Method,
    /// A seed: runs that differ only in these are repeats.
    Seed,
    /// Changes nothing the run computes (threads, logging, checkpoints).
    Bookkeeping,
    /// Anything else: the problem and the training.
    Training,
}

/// How the sweep page (`/sweeps/new`) offers a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Only through the page's TOML box.
    Toml,
    /// A field of the base config, as on the run form.
    Base,
    /// A set of check boxes named `param`, one per choice: the runs take each ticked one.
    Choices { param: &'static str },
    /// A list of values typed into the input `param`; trust-region keys vary in trust-region
    /// runs only.
    List { param: &'static str, label: &'static str, default: &'static str, help: &'static str },
}

/// One run config key.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub group: Group,
    /// A short human name (`β`, `α`); the form shows `name`.
    pub label: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// The accepted numbers, checked by [`RunConfig::validate`] (for toy keys, on toy tasks only).
    pub range: Option<Range>,
    /// A pattern the value must match, where a choice also takes other spellings (`cuda:N`).
    pub pattern: Option<&'static str>,
    pub toy: Toy,
    pub role: Role,
    pub sweep: Sweep,
}

impl Field {
    /// TRL's default (`RunConfig::default()`'s value; `null` when unset).
    pub fn trl_default(&self) -> Value {
        serde_json::to_value(RunConfig::default()).ok().and_then(|v| v.get(self.name).cloned()).unwrap_or(Value::Null)
    }

    /// A toy task's own default, where it differs from TRL's.
    pub fn toy_default(&self, task: Task) -> Option<Value> {
        match task {
            Task::Dataset => None,
            Task::ToyTree => self.toy.tree.map(Lit::to_value),
            Task::ToyLength => self.toy.length.map(Lit::to_value),
        }
    }

    /// Whether the key may be `null` (unset).
    pub fn nullable(&self) -> bool {
        let single = Value::Object(Map::from_iter([(self.name.to_string(), Value::Null)]));
        serde_json::from_value::<RunConfig>(single).is_ok()
    }

    /// The check-box or list values of a [`Sweep::Choices`] key.
    pub fn choices(&self) -> &'static [(&'static str, &'static str)] {
        match self.kind {
            Kind::Choice(c) => c,
            _ => &[],
        }
    }

    /// The JSON schema of the key's value: its type, range, choices, default and help.
    pub fn schema(&self) -> Value {
        let mut s = Map::new();
        let ty = match self.kind {
            Kind::Float => "number",
            Kind::Int => "integer",
            Kind::Bool | Kind::Choice(YES_NO) => "boolean",
            Kind::Choice(_) | Kind::Model | Kind::Dataset | Kind::Text => "string",
            Kind::Labels => "object",
        };
        s.insert("type".into(), ty.into());
        if self.kind == Kind::Labels {
            s.insert(
                "additionalProperties".into(),
                serde_json::json!({"type": "string", "pattern": super::LABEL_PATTERN}),
            );
        }
        if self.kind == Kind::Int {
            s.insert("minimum".into(), 0.into());
        }
        // OpenAPI 3.0's bounds: `minimum` with `exclusiveMinimum: true` for `> min`.
        if let Some(r) = &self.range {
            if let Some(min) = r.min {
                s.insert("minimum".into(), number(min, self.kind));
                if r.min_exclusive {
                    s.insert("exclusiveMinimum".into(), true.into());
                }
            }
            if let Some(max) = r.max {
                s.insert("maximum".into(), number(max, self.kind));
                if r.max_exclusive {
                    s.insert("exclusiveMaximum".into(), true.into());
                }
            }
        }
        match (self.kind, self.pattern) {
            (_, Some(p)) => {
                s.insert("pattern".into(), p.into());
            }
            (Kind::Choice(YES_NO), None) => {}
            (Kind::Choice(c), None) => {
                s.insert("enum".into(), c.iter().map(|(v, _)| Value::from(*v)).collect());
            }
            _ => {}
        }
        if self.nullable() {
            s.insert("nullable".into(), true.into());
        }
        s.insert("default".into(), self.trl_default());
        s.insert("title".into(), self.label.into());
        let mut help = self.help.to_string();
        for task in [Task::ToyTree, Task::ToyLength] {
            if let Some(v) = self.toy_default(task) {
                help.push_str(&format!(" Default for {}: {v}.", task.as_str()));
            }
        }
        s.insert("description".into(), help.into());
        Value::Object(s)
    }
}

fn number(v: f64, kind: Kind) -> Value {
    if kind == Kind::Int {
        Value::from(v as u64)
    } else {
        Value::from(v)
    }
}

/// The description of `name`, if it is a config key.
pub fn field(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

/// The OpenAPI (3.0) schema of a run config object as the API takes it: every key, each
/// optional, and no other key.
pub fn schema() -> Value {
    let properties: Map<String, Value> = FIELDS.iter().map(|f| (f.name.to_string(), f.schema())).collect();
    serde_json::json!({
        "type": "object",
        "description": "A run config: TRL's keys (DPOConfig, KTOConfig, TrainingArguments) and defaults. Every key is optional; a toy task brings its own defaults for some, and unknown keys are refused.",
        "properties": properties,
        "additionalProperties": false,
    })
}

/// The keys a toy task sets when a config leaves them out.
pub(super) fn toy_defaults(task: Task) -> Vec<(&'static str, Value)> {
    FIELDS.iter().filter_map(|f| f.toy_default(task).map(|v| (f.name, v))).collect()
}

/// The [`Range`] of every key outside the toy group (`toy: false`) or inside it (`toy: true`,
/// checked for toy tasks only), checked on `config`.
pub(super) fn check_ranges(config: &RunConfig, toy: bool, errors: &mut Vec<FieldError>) {
    let Ok(Value::Object(values)) = serde_json::to_value(config) else { return };
    for f in FIELDS {
        let Some(range) = &f.range else { continue };
        if (f.group == Group::Toy) != toy {
            continue;
        }
        match values.get(f.name) {
            None | Some(Value::Null) => {}
            Some(v) => {
                if !v.as_f64().is_some_and(|v| range.contains(v)) {
                    errors.push(FieldError::new(f.name, range.message()));
                }
            }
        }
    }
}

pub const TASKS: &[(&str, &str)] = &[
    ("dataset", "dataset: an HF model and a JSONL dataset"),
    ("toy-tree", "toy-tree: exact metrics, no download"),
    ("toy-length", "toy-length: sampled metrics, no download"),
];
pub const LOSSES: &[(&str, &str)] =
    &[("sigmoid", "sigmoid (DPO)"), ("ipo", "ipo (IPO)"), ("kto", "kto (KTO, unpaired data)")];
pub const SCHEDULES: &[(&str, &str)] = &[
    ("linear", "linear"),
    ("cosine", "cosine"),
    ("constant_with_warmup", "constant_with_warmup"),
    ("constant", "constant (no warmup)"),
];
pub const SAMPLING: &[(&str, &str)] =
    &[("random", "random (reshuffled each epoch)"), ("sequential", "sequential (file order)")];
pub const DEVICES: &[(&str, &str)] = &[("cpu", "cpu"), ("cuda", "cuda (a --features cuda build)")];
pub const DTYPES: &[(&str, &str)] = &[("float32", "float32"), ("bfloat16", "bfloat16"), ("float16", "float16")];
pub const SAVE_STRATEGIES: &[(&str, &str)] = &[
    ("steps", "steps: every save_steps and at the end"),
    ("best", "best: also the best evaluation so far"),
    ("pareto", "pareto: also the (KL, metric) front of evaluations"),
];
pub const YES_NO: &[(&str, &str)] = &[("true", "yes"), ("false", "no")];

/// A field with no range, no toy default, the `Training` role, offered in the sweep's TOML box.
const fn f(name: &'static str, group: Group, label: &'static str, kind: Kind, help: &'static str) -> Field {
    Field {
        name,
        group,
        label,
        kind,
        help,
        range: None,
        pattern: None,
        toy: Toy::NONE,
        role: Role::Training,
        sweep: Sweep::Toml,
    }
}

impl Field {
    const fn range(self, range: Range) -> Self {
        Self { range: Some(range), ..self }
    }
    const fn toy(self, toy: Toy) -> Self {
        Self { toy, ..self }
    }
    const fn role(self, role: Role) -> Self {
        Self { role, ..self }
    }
    const fn sweep(self, sweep: Sweep) -> Self {
        Self { sweep, ..self }
    }
    const fn pattern(self, pattern: &'static str) -> Self {
        Self { pattern: Some(pattern), ..self }
    }
}

use Group::{Logging, Method, Optimization, Toy as ToyGroup, TrustRegion};
use Kind::{Bool, Choice, Dataset, Float, Int, Labels, Model, Text};
use Lit::{Float as F, Int as I, Str as S};
use Role::{Bookkeeping, Seed};

/// Every [`RunConfig`] key, in the order the form shows them.
#[rustfmt::skip]
pub const FIELDS: &[Field] = &[
    f("task", Group::Task, "Task", Choice(TASKS), "Built-in toy tasks need no model or dataset and have a known gold reward (SPEC §4).").sweep(Sweep::Base),
    f("model_name_or_path", Group::Task, "Model", Model, "An HF model directory (config.json, model.safetensors, tokenizer.json) under the server's --models-dir.").sweep(Sweep::Base),
    f("random_init", Group::Task, "Random init", Bool, "Start from a seeded random init of the model's config.json instead of its weights."),
    f("initializer_range", Group::Task, "Init std", Float, "Standard deviation of the random init (transformers' initializer_range).").range(Range::above(0.0)),
    f("dataset_path", Group::Task, "Dataset", Dataset, "JSONL in TRL's format, under --datasets-dir: {prompt, chosen, rejected}, or {prompt, completion, label} for KTO.").sweep(Sweep::Base),
    f("max_length", Group::Task, "Max length", Int, "Longest prompt + completion in tokens; longer sequences keep their start.").range(Range::at_least(2.0)),
    f("max_prompt_length", Group::Task, "Max prompt length", Int, "Longest prompt in tokens; longer prompts keep their end. Blank: no limit.").range(Range::at_least(1.0)),
    f("eval_split_ratio", Group::Task, "Eval split", Float, "Fraction of the dataset's distinct prompts held out for evaluation (chosen by the seed, never trained on). 0: none.").range(Range::below(0.0, 1.0)),
    f("eval_dataset_path", Group::Task, "Eval dataset", Dataset, "A separate dataset under --datasets-dir whose prompts are the evaluation set (instead of eval_split_ratio)."),
    f("reward_model_path", Group::Task, "Gold reward model", Model, "Optional gold reward model: an HF sequence-classification directory under --models-dir. Its score of the policy's samples is logged as eval/gold_reward."),
    f("toy_num_prompts", ToyGroup, "P", Int, "Number of prompts P.").range(Range::closed(1.0, 64.0)).toy(Toy::length(I(16))),
    f("toy_alphabet_size", ToyGroup, "A", Int, "Response alphabet size A (toy-tree) or content vocabulary (toy-length).").range(Range::closed(2.0, 32.0)).toy(Toy::length(I(16))),
    f("toy_response_length", ToyGroup, "L", Int, "Response length L (toy-tree) or most tokens generated (toy-length). toy-tree enumerates P·A^L responses.").range(Range::closed(1.0, 64.0)).toy(Toy::length(I(24))),
    f("toy_pairs_per_prompt", ToyGroup, "Pairs per prompt", Int, "Preference pairs sampled from π_init per prompt. Fewer pairs: more overoptimization.").range(Range::at_least(1.0)).toy(Toy::length(I(64))),
    f("toy_label_temperature", ToyGroup, "T", Float, "Bradley–Terry label temperature T: P(y₁ ≻ y₂) = σ((r*(y₁) − r*(y₂)) / T). At T = 1 about 30% of labels disagree with r*.").range(Range::above(0.0)),
    f("toy_behaviour_temperature", ToyGroup, "Behaviour temperature", Float, "Temperature of the behaviour distribution π_init learns (toy-tree); sets the starting OOD mass.").range(Range::above(0.0)),
    f("toy_hidden_size", ToyGroup, "Width", Int, "Width of the toy policy.").range(Range::closed(1.0, 1024.0)),
    f("toy_num_layers", ToyGroup, "Depth", Int, "Depth of the toy policy.").range(Range::closed(1.0, 16.0)),
    f("toy_num_heads", ToyGroup, "Heads", Int, "Attention heads; must divide toy_hidden_size into even head sizes."),
    f("task_seed", ToyGroup, "Task seed", Int, "Seeds the toy problem itself: gold reward, behaviour, π_init and preference data. Runs with one task_seed train on the same problem, so repeats over seed pair up.").role(Seed),
    f("toy_cache_dir", ToyGroup, "Cache", Text, "Where π_init is cached: a directory inside the server's --data-dir. Blank: toy-cache.").role(Bookkeeping),
    f("loss_type", Method, "Loss", Choice(LOSSES), "TRL's loss_type: sigmoid is DPO, ipo is IPO (length-averaged), kto is KTO.").role(Role::Method).sweep(Sweep::Choices { param: "loss" }),
    f("beta", Method, "β", Float, "β, the strength of the KL penalty to the reference. TRL's default 0.1.").range(Range::above(0.0)).sweep(Sweep::List { param: "betas", label: "β values", default: "0.1", help: "Every run." }),
    f("precompute_ref_log_probs", Method, "Precompute reference", Bool, "Compute the reference log-probs once before training (TRL's option); vanilla runs only, since a trust-region reference moves."),
    f("label_smoothing", Method, "Label smoothing", Float, "Accepted as TRL 1.16 accepts it, and ignored (with a warning) as TRL ignores it for sigmoid and ipo: only its robust and EXO losses use it. Refused for kto (KTOConfig has no such key).").range(Range::below(0.0, 0.5)),
    f("desirable_weight", Method, "Desirable weight", Float, "KTO: weight of desirable examples (ignored, with a warning, by sigmoid and ipo).").range(Range::above(0.0)),
    f("undesirable_weight", Method, "Undesirable weight", Float, "KTO: weight of undesirable examples (ignored, with a warning, by sigmoid and ipo).").range(Range::above(0.0)),
    f("sync_ref_model", TrustRegion, "Trust region", Bool, "Move the reference during training: TR-DPO, TR-IPO, TR-KTO. Off: the reference is the initial policy.").role(Role::Method),
    f("ref_model_mixup_alpha", TrustRegion, "α", Float, "α in θ_ref ← α θ + (1 − α) θ_ref. TRL's default 0.6, the paper's choice for soft updates on large models; α = 1 replaces the reference (hard update). Sweep it over orders of magnitude (0.01 … 1).").range(Range::closed(0.0, 1.0)).role(Role::Method).sweep(Sweep::List { param: "alphas", label: "α values (ref_model_mixup_alpha)", default: "0.01, 0.1, 0.6", help: "Trust-region runs only. Span orders of magnitude; 1 is a hard update." }),
    f("ref_model_sync_steps", TrustRegion, "τ", Int, "τ: update the reference after every τ-th optimizer step. TRL's default 512, the paper's choice for hard updates on large models; soft updates use τ = 1.").range(Range::at_least(1.0)).role(Role::Method).sweep(Sweep::List { param: "taus", label: "τ values (ref_model_sync_steps)", default: "1", help: "Trust-region runs only: update the reference every τ steps." }),
    // SPEC §4's reference used 3e-4 on toy-tree; there that moves KL(π‖π_init) to 2 nats within
    // 25 steps and the gold reward only falls. At 3e-5 it rises, peaks, then falls (EXPERIMENTS.md).
    f("learning_rate", Optimization, "Learning rate", Float, "AdamW learning rate. TRL's default 1e-6 suits pretrained models; the toy tasks bring their own.").range(Range::above(0.0)).toy(Toy::each(F(3e-5), F(3e-4))).sweep(Sweep::Base),
    f("max_steps", Optimization, "Steps", Int, "Optimizer steps to run. Blank: num_train_epochs passes over the data (toy tasks default to a fixed number).").range(Range::at_least(1.0).note(" (or unset to train num_train_epochs)")).toy(Toy::each(I(2000), I(1000))).sweep(Sweep::Base),
    f("num_train_epochs", Optimization, "Epochs", Float, "Passes over the data when max_steps is blank."),
    f("per_device_train_batch_size", Optimization, "Batch size", Int, "Examples (pairs) per micro-batch.").range(Range::at_least(1.0)).toy(Toy::both(I(32))),
    f("gradient_accumulation_steps", Optimization, "Accumulation", Int, "Micro-batches per optimizer step.").range(Range::at_least(1.0)),
    f("max_grad_norm", Optimization, "Gradient clip", Float, "Clip gradients to this global norm; 0 disables clipping.").range(Range::at_least(0.0).note(" (0 disables clipping)")).toy(Toy::both(F(0.0))),
    f("warmup_steps", Optimization, "Warmup", Float, "Linear warmup from 0: a number of steps, or a ratio of all steps when below 1 (transformers 5). The constant schedule ignores it."),
    f("lr_scheduler_type", Optimization, "Schedule", Choice(SCHEDULES), "transformers' schedule: linear or cosine decay to 0 after warmup, constant_with_warmup, or constant (which ignores warmup_steps).").toy(Toy::both(S("constant"))),
    f("weight_decay", Optimization, "Weight decay", Float, "AdamW's decoupled weight decay, on every weight but biases and norms (as transformers' Trainer).").range(Range::at_least(0.0)),
    f("adam_beta1", Optimization, "β₁", Float, "AdamW β₁.").range(Range::below(0.0, 1.0)),
    f("adam_beta2", Optimization, "β₂", Float, "AdamW β₂.").range(Range::below(0.0, 1.0)),
    f("adam_epsilon", Optimization, "ε", Float, "AdamW ε.").range(Range::above(0.0)),
    f("seed", Optimization, "Seed", Int, "The training seed: the data order (unless data_seed is set), evaluation sampling and a random_init. A toy task's problem comes from task_seed.").role(Seed).sweep(Sweep::List { param: "seeds", label: "Seeds", default: "1", help: "Every run; aggregate them on the compare page." }),
    f("data_seed", Optimization, "Data seed", Int, "Seeds the data order (random sampling) as in transformers: epoch e is torch.randperm seeded with data_seed + e. Blank: seed."),
    f("train_sampling_strategy", Optimization, "Data order", Choice(SAMPLING), "Data order. Blank: TRL's default for the loss, random for sigmoid and ipo, sequential for kto (which refuses random: its KL pairs are neighbours)."),
    f("dataloader_drop_last", Optimization, "Drop last batch", Bool, "Drop the last, short batch of every epoch."),
    f("logging_steps", Logging, "Logging steps", Int, "Log training metrics every this many steps (averaged over the window).").range(Range::at_least(1.0)).toy(Toy::both(I(25))).role(Bookkeeping),
    f("eval_steps", Logging, "Evaluation steps", Int, "Evaluate KL, gold reward and OOD mass every this many steps (toy tasks). Blank: never (dataset runs).").range(Range::at_least(1.0).note(" (or unset)")).toy(Toy::both(I(25))).sweep(Sweep::Base),
    f("save_steps", Logging, "Save steps", Int, "Write a checkpoint every this many steps and at the end; 0: only at the end.").toy(Toy::both(I(500))).role(Bookkeeping),
    f("save_strategy", Logging, "Save strategy", Choice(SAVE_STRATEGIES), "Which checkpoints to keep besides the periodic ones: pareto keeps every evaluation on the front of (KL to π_init ↓, metric ↑), so the best policy at each distance can be downloaded. Default pareto with a gold reward (toy tasks, reward_model_path).").role(Bookkeeping),
    f("metric_for_best_model", Logging, "Best metric", Text, "The evaluation metric best and pareto rank by; default eval/gold_reward when there is one (transformers' name; eval/ is added to a bare name).").role(Bookkeeping),
    f("greater_is_better", Logging, "Greater is better", Choice(YES_NO), "Whether a larger metric_for_best_model is better. Blank: yes, unless its name ends in loss.").role(Bookkeeping),
    f("save_total_limit", Logging, "Periodic checkpoints kept", Int, "Keep at most this many periodic checkpoints, the newest. Blank: all. The best and Pareto ones and the newest are kept whatever it says.").range(Range::at_least(1.0).note(" (or unset to keep every periodic checkpoint)")).role(Bookkeeping),
    f("save_pareto_limit", Logging, "Pareto checkpoints kept", Int, "At most this many Pareto checkpoints: both ends of the front (π_init's KL, the peak) and those that spread most evenly between.").range(Range::at_least(2.0).note(": the front's two ends (lowest KL, best metric) are always kept")).role(Bookkeeping),
    f("load_best_model_at_end", Logging, "Export the best", Bool, "At the end, export the best evaluation's weights (the gold reward's peak by default) as final-model/, as transformers does. Needs save_strategy best or pareto."),
    f("early_stopping", Logging, "Early stopping", Bool, "Stop the run, as finished, once the overoptimization alarm says it is past its peak. The alarm itself runs whenever there is a gold reward."),
    f("early_stopping_patience", Logging, "Patience", Int, "Evaluations in a row below the running peak before the run counts as past it. Default 8: under 5% false alarms on a flat curve of 41 Monte Carlo evaluations.").range(Range::at_least(1.0)),
    f("early_stopping_threshold", Logging, "Threshold", Float, "The least drop below the peak that counts, in the metric's units; Monte Carlo estimates must also drop by more than 2 standard errors of the difference.").range(Range::at_least(0.0)),
    f("num_threads", Logging, "Threads", Int, "Worker threads per micro-batch, at most the cores (or the server's --max-threads-per-run); 0: one per core.").role(Bookkeeping),
    f("max_new_tokens", Logging, "New tokens", Int, "Tokens the policy samples per evaluation prompt (temperature 1) for KL, gold reward and length (dataset runs).").range(Range::at_least(1.0)),
    f("device", Logging, "Device", Choice(DEVICES), "Where the model trains: cpu, or cuda in a build with --features cuda (cuda:N through the API).").pattern("^(cpu|cuda(:[0-9]+)?)$").role(Bookkeeping),
    f("requires", Logging, "Requires", Labels, "Labels a worker must have to claim the run, as gpu=h100,zone=eu (TOML: requires = {gpu = \"h100\"}); set them with goodhart worker --labels. Blank: any worker. A worker with labels also takes runs that require none.").role(Bookkeeping),
    f("bf16", Optimization, "bf16", Bool, "Mixed precision as transformers' bf16: bfloat16 matmuls and activations on float32 weights; norms, softmaxes and the loss stay float32. For GPUs: on the CPU it is slower."),
    f("fp16", Optimization, "fp16", Bool, "The same in float16, with dynamic loss scaling (an overflowing step is skipped and the scale halves). Not with bf16."),
    f("gradient_checkpointing", Optimization, "Gradient checkpointing", Bool, "Keep only each layer's input and recompute the layer in the backward pass: about half the memory at 6 layers, for one more policy forward pass per step.").role(Bookkeeping),
    f("export_dtype", Logging, "Export dtype", Choice(DTYPES), "Dtype of the exported checkpoint weights; the trained weights stay float32 (also with bf16/fp16), and a float32 copy is kept for resuming.").role(Bookkeeping),
];

/// The role of the key `name` (`None` for a name that is no key).
pub fn role(name: &str) -> Option<Role> {
    field(name).map(|f| f.role)
}

/// The keys of a role, in [`FIELDS`] order.
pub fn with_role(role: Role) -> impl Iterator<Item = &'static str> {
    FIELDS.iter().filter(move |f| f.role == role).map(|f| f.name)
}

/// The config columns a sweep's CSV always has, in order: the method keys, then the other keys
/// the sweep page varies as lists (β, seed).
pub fn sweep_columns() -> Vec<&'static str> {
    let mut out: Vec<&str> = with_role(Role::Method).collect();
    out.extend(
        FIELDS.iter().filter(|f| f.role != Role::Method && matches!(f.sweep, Sweep::List { .. })).map(|f| f.name),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_exactly_one_description_and_every_description_a_key() {
        let keys: Vec<String> = match serde_json::to_value(RunConfig::default()).unwrap() {
            Value::Object(m) => m.keys().cloned().collect(),
            _ => unreachable!(),
        };
        for key in &keys {
            let n = FIELDS.iter().filter(|f| f.name == key).count();
            assert_eq!(n, 1, "RunConfig key {key} has {n} descriptions in FIELDS (config/fields.rs)");
        }
        for f in FIELDS {
            assert!(keys.iter().any(|k| k == f.name), "FIELDS describes {}, which RunConfig has no key for", f.name);
        }
    }

    #[test]
    fn kinds_match_the_types() {
        for f in FIELDS {
            let d = f.trl_default();
            let ok = match f.kind {
                Kind::Float => d.is_number() || d.is_null(),
                Kind::Int => d.is_u64() || d.is_null(),
                Kind::Bool => d.is_boolean(),
                Kind::Choice(YES_NO) => d.is_boolean() || d.is_null(),
                Kind::Choice(c) => d.is_null() || c.iter().any(|(v, _)| d == *v),
                Kind::Model | Kind::Dataset | Kind::Text => d.is_string() || d.is_null(),
                Kind::Labels => d.is_object(),
            };
            assert!(ok, "{}: default {d} is not a {:?}", f.name, f.kind);
            if let Some(r) = f.range {
                if let Some(v) = d.as_f64() {
                    assert!(r.contains(v), "{}: TRL's default {v} is outside its range", f.name);
                }
            }
        }
    }

    #[test]
    fn range_messages_read_as_before() {
        assert_eq!(Range::above(0.0).message(), "must be > 0");
        assert_eq!(Range::closed(0.0, 1.0).message(), "must be in [0, 1]");
        assert_eq!(Range::below(0.0, 0.5).message(), "must be in [0, 0.5)");
        assert_eq!(Range::at_least(1.0).note(" (or unset)").message(), "must be >= 1 (or unset)");
    }

    #[test]
    fn the_sweep_columns_are_the_method_then_beta_and_seed() {
        assert_eq!(
            sweep_columns(),
            ["loss_type", "sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps", "beta", "seed"]
        );
    }
}
