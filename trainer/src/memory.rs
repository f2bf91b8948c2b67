//! How much memory a run needs, estimated before any weights are loaded, and the refusal of
//! runs that cannot fit.
//!
//! Weight copies, optimizer moments and gradients are exact byte counts of the tensors the
//! trainer allocates (float32 everywhere). Activations are an estimate from the shapes of the
//! tensors one forward pass keeps for its backward pass. A 10% margin covers the allocator and
//! transient copies: with it the total came within 2% above the peak resident memory measured
//! for a 20M-parameter Llama on 256-token pairs (batch 4: 1.65 GiB estimated, 1.65 GiB measured;
//! batch 8: 2.71 GiB estimated, 2.66 GiB measured). Without it the estimate was 7-9% low.

use std::fmt;

use serde::Serialize;

use std::path::Path;

use crate::data::Dataset;
use crate::error::FieldError;
use crate::error::{Error, Result};
use crate::model::registry::{self, ModelKind};
use crate::model::{param_specs, ModelConfig};

const F32: u64 = 4;

/// What the estimate reads from a run's config (see `RunConfig::memory_shape`), so that it
/// needs no config type: the config's validation refuses runs that cannot fit with it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunShape<'a> {
    /// The model the run will train, before anything is loaded.
    pub model: ModelSource<'a>,
    pub per_device_train_batch_size: usize,
    /// The worker threads a CPU run splits each micro-batch across (1 on a GPU).
    pub workers: usize,
    /// Whether the run samples from the policy to evaluate it (`eval_steps`, a reward model).
    pub evaluates: bool,
    pub max_new_tokens: usize,
    pub max_length: Option<usize>,
    /// bf16 or fp16 compute.
    pub mixed_precision: bool,
    pub gradient_checkpointing: bool,
    /// The trust-region reference gets its own copy once it moves.
    pub moving_reference: bool,
    /// One sequence per example (KTO) rather than a pair.
    pub unpaired: bool,
    pub reward_model_path: Option<&'a Path>,
}

/// Where a run's model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource<'a> {
    /// A toy task's small Llama, at its smallest vocabulary and context.
    Toy { vocab_size: usize, max_positions: usize, hidden_size: usize, num_layers: usize, num_heads: usize },
    /// An HF model directory.
    Dir(&'a Path),
    /// Not named (the config's own error says so).
    Unknown,
}

/// Bytes per part of a run: float32 weights, moments and gradients, activations in the compute
/// dtype where the forward pass keeps them so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryPlan {
    pub num_parameters: u64,
    /// The trained weights.
    pub policy: u64,
    /// The frozen initial policy (also the reference while the two are equal).
    pub initial: u64,
    /// The trust-region reference's own copy, once it has moved (0 for vanilla runs).
    pub reference: u64,
    /// AdamW's first and second moments.
    pub adam_moments: u64,
    /// The summed gradient, plus one per worker thread while their shards are added up.
    pub gradients: u64,
    /// bf16/fp16: the policy's weights cast to the compute dtype, which the forward pass keeps
    /// for the backward (one layer's at a time with gradient checkpointing).
    pub half_weights: u64,
    /// What a training micro-batch or an evaluation batch keeps alive at its peak.
    pub activations: u64,
    /// The gold reward model's weights.
    pub reward_model: u64,
    /// 10% of everything else: allocator slack and transient copies.
    pub margin: u64,
}

impl MemoryPlan {
    /// The plan for a run of this shape on a model with `model` as its config and `data` as its examples.
    pub fn for_run(run: &RunShape<'_>, model: &ModelConfig, data: &Dataset) -> Result<Self> {
        let rows_per_example = match data {
            Dataset::Paired(_) => 2,
            Dataset::Unpaired(_) => 1,
        };
        let (longest, longest_completion) = data.longest_sequences();
        let reward_model = match run.reward_model_path {
            Some(dir) => reward_model_bytes(dir)?,
            None => 0,
        };
        Ok(Self::for_shape(
            run,
            model,
            run.per_device_train_batch_size,
            rows_per_example,
            longest,
            longest_completion,
            reward_model,
        ))
    }

    /// The plan for micro-batches of `batch` examples of `rows_per_example` sequences each (2 for
    /// pairs), of at most `longest` tokens of which at most `longest_completion` are completion.
    /// Sums saturate: a plan too large to count is simply too large.
    fn for_shape(
        run: &RunShape<'_>,
        model: &ModelConfig,
        batch: usize,
        rows_per_example: usize,
        longest: usize,
        longest_completion: usize,
        reward_model: u64,
    ) -> Self {
        let n: u64 =
            param_specs(model).iter().map(|(_, s)| product(s.iter().map(|&d| d as u64))).fold(0, u64::saturating_add);
        let weights = n.saturating_mul(F32);
        let rows = (batch as u64).saturating_mul(rows_per_example as u64);
        let workers = run.workers.min(batch).max(1);
        let training = training_activations(model, run, rows, longest as u64, longest_completion as u64);
        let evaluation = if run.evaluates {
            sampling_activations(model, (batch as u64).saturating_mul(2), run.max_new_tokens as u64, longest)
        } else {
            0
        };
        let half_weights = match (run.mixed_precision, run.gradient_checkpointing) {
            (false, _) => 0,
            (true, false) => n.saturating_mul(2),
            (true, true) => n.saturating_mul(2) / model.num_hidden_layers.max(1) as u64,
        };
        let mut plan = Self {
            num_parameters: n,
            half_weights,
            policy: weights,
            initial: weights,
            reference: if run.moving_reference { weights } else { 0 },
            adam_moments: weights.saturating_mul(2),
            gradients: (workers as u64 + 1).saturating_mul(weights),
            activations: training.max(evaluation),
            reward_model,
            margin: 0,
        };
        plan.margin = plan.total() / 10;
        plan
    }

    pub fn total(&self) -> u64 {
        [
            self.policy,
            self.initial,
            self.reference,
            self.adam_moments,
            self.gradients,
            self.half_weights,
            self.activations,
            self.reward_model,
            self.margin,
        ]
        .into_iter()
        .fold(0, u64::saturating_add)
    }

    /// Refuses a run whose estimate exceeds `available` bytes (`None`: unknown, so allowed).
    pub fn check(&self, available: Option<u64>) -> Result<()> {
        match available {
            Some(free) if self.total() > free => Err(Error::OutOfMemory(format!(
                "the run needs about {} ({self}) but only {} is available; use a smaller model, \
                 per_device_train_batch_size or max_length",
                human_bytes(self.total()),
                human_bytes(free)
            ))),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy {} + initial {}", human_bytes(self.policy), human_bytes(self.initial))?;
        if self.reference > 0 {
            write!(f, " + reference {}", human_bytes(self.reference))?;
        } else {
            write!(f, " (also the reference)")?;
        }
        write!(f, " + Adam moments {} + gradients {}", human_bytes(self.adam_moments), human_bytes(self.gradients))?;
        if self.half_weights > 0 {
            write!(f, " + half-precision weights {}", human_bytes(self.half_weights))?;
        }
        write!(f, " + activations {}", human_bytes(self.activations))?;
        if self.reward_model > 0 {
            write!(f, " + reward model {}", human_bytes(self.reward_model))?;
        }
        write!(f, " + margin {}", human_bytes(self.margin))
    }
}

/// Bytes in the largest binary unit that keeps the number at least 1.
pub fn human_bytes(bytes: u64) -> String {
    let units = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    match units.iter().find(|(_, size)| bytes >= *size) {
        Some((unit, size)) => format!("{:.2} {unit}", bytes as f64 / *size as f64),
        None => format!("{bytes} B"),
    }
}

/// A reward model's float32 weights, from its config (nothing is loaded).
fn reward_model_bytes(dir: &Path) -> Result<u64> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json { path, source })?;
    let cfg = ModelConfig::from_hf_json(&json)?;
    Ok(registry::num_parameters(&cfg, Some(ModelKind::SequenceClassification), registry::num_labels(&json)) * F32)
}

/// The product of `factors`, saturating.
fn product(factors: impl IntoIterator<Item = u64>) -> u64 {
    factors.into_iter().fold(1, u64::saturating_mul)
}

/// Floats one token keeps per layer for the backward pass: the block's inputs, norms,
/// projections (before and after the head split and the rotary embedding), attention scores
/// and probabilities over `keys`, and the MLP's three intermediate-width tensors.
fn per_token_per_layer(cfg: &ModelConfig, keys: u64) -> u64 {
    let h = cfg.hidden_size as u64;
    let q = (cfg.num_attention_heads * cfg.head_dim) as u64;
    let kv = (cfg.num_key_value_heads * cfg.head_dim) as u64;
    let i = cfg.intermediate_size as u64;
    let heads = cfg.num_attention_heads as u64;
    (6 * h + 7 * q + 5 * kv + 3 * i).saturating_add(product([2, heads, keys]))
}

/// The policy's forward graph over `rows` sequences of `len` tokens, plus the output
/// projection's logits for the completion tokens (three vocabulary-wide tensors each).
///
/// With gradient checkpointing, every layer's input stays (in the compute dtype) and one
/// layer's graph at a time is rebuilt: with its gradients and the recomputation's transients,
/// 2.5 layers' worth at the peak (fitted to the measurement in BENCHMARKS.md, "Memory").
///
/// Without it, mixed precision (`bf16`/`fp16`) keeps more on the CPU, not less: the half
/// dtype runs candle's composed ops rather than the fused float32 kernels, and the attention
/// scores exist in both dtypes around the float32 softmax. Measured: 1.23× the float32
/// activations, for the same model.
fn training_activations(cfg: &ModelConfig, run: &RunShape<'_>, rows: u64, len: u64, completion: u64) -> u64 {
    let layers = cfg.num_hidden_layers as u64;
    let layer = product([rows, len, per_token_per_layer(cfg, len), F32]);
    let head = product([rows, completion, 3, cfg.vocab_size as u64, F32]);
    let mixed = run.mixed_precision;
    if run.gradient_checkpointing {
        let bytes = if mixed { 2 } else { F32 };
        let layer_inputs = product([rows, len, cfg.hidden_size as u64, layers + 1, bytes]);
        layer_inputs.saturating_add(layer.saturating_mul(5) / 2).saturating_add(head)
    } else {
        // The backward pass holds about one layer's worth of activation gradients on top.
        let all = layer.saturating_mul(layers + 1).saturating_add(head);
        if mixed {
            all.saturating_mul(123) / 100
        } else {
            all
        }
    }
}

/// Sampling `rows` answers of `new_tokens` after prompts of up to `prompt` tokens: the KV cache
/// and one step's logits.
fn sampling_activations(cfg: &ModelConfig, rows: u64, new_tokens: u64, prompt: usize) -> u64 {
    let keys = (prompt as u64).saturating_add(new_tokens);
    let kv = (cfg.num_key_value_heads * cfg.head_dim) as u64;
    let cache = product([2, cfg.num_hidden_layers as u64, rows, keys, kv]);
    let prefill = product([rows, prompt as u64, per_token_per_layer(cfg, prompt as u64)]);
    let logits = product([rows, cfg.vocab_size as u64]);
    product([cache.saturating_add(prefill).saturating_add(logits), F32])
}

/// The largest sizes a run may ask for on a machine with `machine` bytes of memory: beyond
/// them not even the shortest sequences (one prompt and one completion token) fit, whatever
/// the data. Each is a field error naming the bound. The exact plan, with the data's real
/// lengths, is checked when the run starts ([`MemoryPlan::check`]).
pub fn bounds(run: &RunShape<'_>, machine: u64) -> Vec<FieldError> {
    let Some((model, model_field)) = least_model(&run.model) else { return Vec::new() };
    let reward_model = run.reward_model_path.map_or(0, |dir| reward_model_bytes(dir).unwrap_or(0));
    let rows_per_example = if run.unpaired { 1 } else { 2 };
    let plan = |batch: usize, len: usize| {
        MemoryPlan::for_shape(run, &model, batch, rows_per_example, len, len.saturating_sub(1).max(1), reward_model)
    };
    let fits = |batch: usize, len: usize| plan(batch, len).total() <= machine;
    let machine_text = human_bytes(machine);
    if !fits(1, 2) {
        let least = plan(1, 2);
        return vec![FieldError::new(
            model_field,
            format!(
                "the model needs at least {} ({least}), more than this machine's {machine_text} of memory",
                human_bytes(least.total())
            ),
        )];
    }
    let mut errors = Vec::new();
    let batch = run.per_device_train_batch_size;
    if !fits(batch, 2) {
        let most = largest(batch, |b| fits(b, 2));
        errors.push(FieldError::new(
            "per_device_train_batch_size",
            format!(
                "must be <= {most} with this machine's {machine_text} of memory: a batch of {batch} needs at \
                 least {} even for the shortest sequences",
                human_bytes(plan(batch, 2).total())
            ),
        ));
    }
    if let Some(length) = run.max_length.filter(|&l| l > 2 && !fits(1, l)) {
        let most = largest(length, |l| l < 2 || fits(1, l));
        errors.push(FieldError::new(
            "max_length",
            format!(
                "must be <= {most} with this machine's {machine_text} of memory: one example of {length} tokens \
                 needs at least {}",
                human_bytes(plan(1, length).total())
            ),
        ));
    }
    errors
}

/// The largest `n < above` for which `ok(n)` holds, `ok` being true up to some point and false
/// from there (and true for 1).
fn largest(above: usize, ok: impl Fn(usize) -> bool) -> usize {
    let (mut good, mut bad) = (1, above);
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if ok(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    good
}

/// The smallest model the run can have, and the field that chose it: the model directory's
/// config, or a toy task's sizes with its smallest vocabulary and context. `None` when the
/// model's config cannot be read (its own error says why).
fn least_model(source: &ModelSource<'_>) -> Option<(ModelConfig, &'static str)> {
    match *source {
        ModelSource::Toy { vocab_size, max_positions, hidden_size, num_layers, num_heads } => {
            let model = ModelConfig::toy_llama(vocab_size, max_positions, hidden_size, num_layers, num_heads).ok()?;
            Some((model, "toy_hidden_size"))
        }
        ModelSource::Dir(dir) => Some((ModelConfig::from_file(&dir.join("config.json")).ok()?, "model_name_or_path")),
        ModelSource::Unknown => None,
    }
}

/// All the memory of this machine (or its cgroup limit): what no run can exceed, however idle
/// the machine. `None` where it cannot be read.
pub fn machine_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| s.trim().parse::<u64>().ok());
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Memory this process can still allocate: the kernel's `MemAvailable`, lowered to what the
/// cgroup (container) limit leaves. `None` where neither can be read.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .map(|max| max.saturating_sub(read("/sys/fs/cgroup/memory.current").unwrap_or(0)));
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::config::RunConfig;
    use crate::data::{PairedExample, Sequence};
    use crate::model::ParamSet;
    use crate::optim::{AdamW, AdamWConfig};

    fn llama() -> ModelConfig {
        ModelConfig::from_hf_json(&serde_json::json!({
            "model_type": "llama", "vocab_size": 50, "hidden_size": 24, "intermediate_size": 40,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": false,
        }))
        .unwrap()
    }

    fn data() -> Dataset {
        let seq = |p: usize, c: usize| Sequence { prompt: vec![1; p], completion: vec![2; c] };
        Dataset::Paired(vec![
            PairedExample { chosen: seq(3, 5), rejected: seq(3, 9) },
            PairedExample { chosen: seq(7, 2), rejected: seq(7, 4) },
        ])
    }

    #[test]
    fn weight_moment_and_gradient_bytes_are_those_the_trainer_allocates() {
        let cfg = llama();
        let run = RunConfig { num_threads: 2, per_device_train_batch_size: 4, ..RunConfig::default() };
        let plan = MemoryPlan::for_run(&run.memory_shape(), &cfg, &data()).unwrap();
        let policy = ParamSet::random(&cfg, 0, 0.02, &Device::Cpu).unwrap();
        let actual = policy.num_bytes() as u64;
        assert_eq!(plan.num_parameters, policy.num_parameters() as u64);
        assert_eq!((plan.policy, plan.initial, plan.reference), (actual, actual, 0));
        let adam = AdamW::new(&policy, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }).unwrap();
        assert_eq!(plan.adam_moments, adam.num_bytes() as u64);
        assert_eq!(plan.gradients, 3 * actual, "two workers' gradients and their sum");
        assert_eq!(plan.half_weights, 0, "float32 keeps no cast copy");
        let parts = plan.policy + plan.initial + plan.reference + plan.adam_moments + plan.gradients + plan.activations;
        assert_eq!(plan.margin, parts / 10);
        assert_eq!(plan.total(), parts + plan.margin);
        let tr = RunConfig { sync_ref_model: true, ..run };
        assert_eq!(MemoryPlan::for_run(&tr.memory_shape(), &cfg, &data()).unwrap().reference, actual);
    }

    #[test]
    fn activations_grow_with_the_batch_and_the_sequence_length() {
        let cfg = llama();
        let small = MemoryPlan::for_run(&RunConfig::default().memory_shape(), &cfg, &data()).unwrap().activations;
        let wide = RunConfig { per_device_train_batch_size: 16, ..RunConfig::default() };
        assert!(MemoryPlan::for_run(&wide.memory_shape(), &cfg, &data()).unwrap().activations > small);
        let seq = |p: usize, c: usize| Sequence { prompt: vec![1; p], completion: vec![2; c] };
        let long = Dataset::Paired(vec![PairedExample { chosen: seq(3, 50), rejected: seq(3, 5) }]);
        assert!(MemoryPlan::for_run(&RunConfig::default().memory_shape(), &cfg, &long).unwrap().activations > small);
    }

    #[test]
    fn gradient_checkpointing_plans_for_one_layer_at_a_time() {
        let cfg = ModelConfig { num_hidden_layers: 12, ..llama() };
        let plain = MemoryPlan::for_run(&RunConfig::default().memory_shape(), &cfg, &data()).unwrap().activations;
        let run = RunConfig { gradient_checkpointing: true, ..RunConfig::default() };
        let checkpointed = MemoryPlan::for_run(&run.memory_shape(), &cfg, &data()).unwrap().activations;
        assert!(checkpointed * 3 < plain, "{checkpointed} vs {plain} bytes");
    }

    /// The paper's scale: a TR-DPO run (policy, reference, π_init, AdamW, bf16 with gradient
    /// checkpointing) of Pythia-1.4B fits one H100 or H200; Pythia-2.8B fits an H200 only.
    #[test]
    fn pythia_1_4b_fits_one_h100_and_pythia_2_8b_needs_an_h200() {
        let (h100, h200) = (81_559u64 << 20, 143_771u64 << 20);
        let plan = |name: &str| {
            let cfg = crate::bench::peer_model_config(name).unwrap();
            crate::bench::bench_memory_plan(&cfg, "cuda", candle_core::DType::BF16, true).unwrap()
        };
        let (small, large) = (plan("pythia-1.4b"), plan("pythia-2.8b"));
        assert_eq!(small.num_parameters, 1_414_647_808);
        assert_eq!(large.num_parameters, 2_775_208_960);
        assert!(small.total() < h100, "{small}");
        assert!(large.total() > h100 && large.total() < h200, "{large}");
        // Three float32 weight copies (policy, reference, π_init) and two moments.
        assert_eq!(large.policy + large.initial + large.reference + large.adam_moments, 20 * large.num_parameters);
    }

    #[test]
    fn a_run_that_cannot_fit_is_refused_with_its_breakdown() {
        let plan = MemoryPlan::for_run(&RunConfig::default().memory_shape(), &llama(), &data()).unwrap();
        assert!(plan.check(Some(plan.total())).is_ok());
        assert!(plan.check(None).is_ok());
        let err = plan.check(Some(plan.total() - 1)).unwrap_err().to_string();
        assert!(err.contains("needs about") && err.contains("Adam moments") && err.contains("available"), "{err}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_machine_reports_its_available_memory() {
        let free = available_bytes().expect("Linux exposes /proc/meminfo");
        assert!(free > 1 << 20);
    }
}
