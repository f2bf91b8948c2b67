//! One TR-DPO training step, timed phase by phase, on the peer baseline's workload
//! (`../shared/bench/peer/`): a random-init Llama, 8 pairs of 16 prompt + 48 completion
//! tokens, fp32, a soft reference update (α = 0.6) after every optimizer step.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::RunConfig;
use crate::data::{Collated, Dataset, PairedExample, Sequence};
use crate::data_parallel::{micro_batch_grads, MicroBatchGrads, ReferenceSource};
use crate::error::Result;
use crate::logps::sequence_logps;
use crate::loss::{dpo_loss, Pair};
use crate::model::{CausalLm, ModelConfig, ParamSet};
use crate::optim::{AdamW, AdamWConfig};
use crate::setup::Setup;
use crate::trust_region::soft_update;

pub const PROMPT_LEN: usize = 16;
pub const COMPLETION_LEN: usize = 48;
pub const PAIRS: usize = 8;
pub const ALPHA: f64 = 0.6;

/// The peer's `tiny` and `small` LlamaConfigs (untied, MHA, rope 1e4, rms eps 1e-6), and
/// EleutherAI's Pythia shapes (GPT-NeoX, from their `config.json`; random init, nothing is
/// downloaded): `pythia-160m` for timing real sizes on a GPU, `pythia-1.4b` and `pythia-2.8b`
/// for the paper's scale.
pub fn peer_model_config(name: &str) -> Option<ModelConfig> {
    let pythia = |hidden: usize, layers: usize, heads: usize| {
        ModelConfig::from_hf_json(&json!({
            "model_type": "gpt_neox", "vocab_size": 50304, "hidden_size": hidden, "intermediate_size": 4 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "max_position_embeddings": 2048,
            "rotary_pct": 0.25, "rotary_emb_base": 10000, "layer_norm_eps": 1e-5, "use_parallel_residual": true,
            "tie_word_embeddings": false, "hidden_act": "gelu",
        }))
        .ok()
    };
    let (vocab, hidden, inter, layers, heads, pos) = match name {
        "pythia-160m" => return pythia(768, 12, 12),
        "pythia-1.4b" => return pythia(2048, 24, 16),
        "pythia-2.8b" => return pythia(2560, 32, 32),
        "tiny" => (256, 128, 344, 2, 4, 128),
        "small" => (512, 256, 688, 4, 8, 256),
        _ => return None,
    };
    ModelConfig::from_hf_json(&json!({
        "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
        "max_position_embeddings": pos, "tie_word_embeddings": false, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
    }))
    .ok()
}

/// The bench step's run: TR-DPO (α = 0.6 every step) on 8 pairs of 16 + 48 tokens, computing in
/// `dtype`, with or without gradient checkpointing; what the memory plan is asked about.
pub fn bench_run_config(device: &str, dtype: DType, gradient_checkpointing: bool) -> RunConfig {
    RunConfig {
        device: device.to_string(),
        beta: 0.1,
        learning_rate: 1e-6,
        per_device_train_batch_size: PAIRS,
        sync_ref_model: true,
        ref_model_mixup_alpha: ALPHA,
        ref_model_sync_steps: 1,
        bf16: dtype == DType::BF16,
        fp16: dtype == DType::F16,
        gradient_checkpointing,
        ..RunConfig::default()
    }
}

/// The memory plan of the bench step for `cfg` (see [`bench_run_config`]).
pub fn bench_memory_plan(
    cfg: &ModelConfig,
    device: &str,
    dtype: DType,
    gradient_checkpointing: bool,
) -> Result<crate::memory::MemoryPlan> {
    let seq = |n: usize| Sequence { prompt: vec![0; PROMPT_LEN], completion: vec![0; n] };
    let data = Dataset::Paired(
        (0..PAIRS).map(|_| PairedExample { chosen: seq(COMPLETION_LEN), rejected: seq(COMPLETION_LEN) }).collect(),
    );
    crate::memory::MemoryPlan::for_run(
        &bench_run_config(device, dtype, gradient_checkpointing).memory_shape(),
        cfg,
        &data,
    )
}

/// Per-step phase times in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepTimes {
    pub policy_fwd: f64,
    pub ref_fwd: f64,
    pub loss_bwd: f64,
    pub optim: f64,
    pub soft_update: f64,
    pub total: f64,
}

/// Collects the measured steps (those after the warm-up) and the first and last loss.
#[derive(Debug)]
struct Recorder {
    warmup: usize,
    steps: Vec<StepTimes>,
    first_loss: f64,
    last_loss: f64,
}

impl Recorder {
    fn new(warmup: usize, steps: usize) -> Self {
        Self { warmup, steps: Vec::with_capacity(steps), first_loss: f64::NAN, last_loss: f64::NAN }
    }

    fn record(&mut self, step: usize, loss: f64, times: StepTimes) {
        if step == 0 {
            self.first_loss = loss;
        }
        self.last_loss = loss;
        if step >= self.warmup {
            self.steps.push(times);
        }
    }

    fn report(self, config: &str, n_params: usize, threads: usize) -> BenchReport {
        let Self { steps, first_loss, last_loss, .. } = self;
        BenchReport {
            config: config.to_string(),
            n_params,
            threads,
            steps,
            first_loss,
            last_loss,
            peak_gpu_bytes: None,
        }
    }
}

fn ms(a: Instant, b: Instant) -> f64 {
    (b - a).as_secs_f64() * 1e3
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub config: String,
    pub n_params: usize,
    pub threads: usize,
    pub steps: Vec<StepTimes>,
    pub first_loss: f64,
    pub last_loss: f64,
    /// The most GPU memory in use (the whole device, as the driver reports it) at the two points
    /// of a step where it is read: after the gradients, and at the step's end. `None` on the CPU.
    #[serde(default)]
    pub peak_gpu_bytes: Option<u64>,
}

fn random_batch(vocab: usize, rng: &mut ChaCha8Rng) -> Collated {
    let mut draw = |n: usize| (0..n).map(|_| rng.random_range(0..vocab as u32)).collect::<Vec<u32>>();
    let prompts: Vec<Vec<u32>> = (0..PAIRS).map(|_| draw(PROMPT_LEN)).collect();
    let chosen: Vec<Vec<u32>> = (0..PAIRS).map(|_| draw(COMPLETION_LEN)).collect();
    let rejected: Vec<Vec<u32>> = (0..PAIRS).map(|_| draw(COMPLETION_LEN)).collect();
    let seqs: Vec<Sequence> = chosen
        .iter()
        .chain(&rejected)
        .enumerate()
        .map(|(i, c)| Sequence { prompt: prompts[i % PAIRS].clone(), completion: c.clone() })
        .collect();
    Collated::from_sequences(&seqs, 0)
}

/// The trainer's own step (`data_parallel::micro_batch_grads`, with its worker threads), then AdamW and
/// the soft update: what `goodhart train` runs. `warmup + steps` steps; `on_warm` is called
/// once the warm-up is done.
#[allow(clippy::too_many_arguments)]
pub fn run_trainer_step(
    config_name: &str,
    cfg: &ModelConfig,
    dev: &Device,
    dtype: DType,
    num_threads: usize,
    warmup: usize,
    steps: usize,
    mut on_warm: impl FnMut(),
) -> Result<BenchReport> {
    run_trainer_step_with(config_name, cfg, dev, dtype, false, num_threads, warmup, steps, &mut on_warm)
}

/// [`run_trainer_step`] with or without gradient checkpointing.
#[allow(clippy::too_many_arguments)]
pub fn run_trainer_step_with(
    config_name: &str,
    cfg: &ModelConfig,
    dev: &Device,
    dtype: DType,
    gradient_checkpointing: bool,
    num_threads: usize,
    warmup: usize,
    steps: usize,
    on_warm: &mut dyn FnMut(),
) -> Result<BenchReport> {
    let setup = random_pairs_setup(cfg, dev, dtype, warmup + steps)?;
    let run = RunConfig { num_threads, ..bench_run_config("cpu", dtype, gradient_checkpointing) };
    let policy = setup.initial.deep_clone()?;
    let reference = setup.initial.deep_clone()?;
    let mut optimizer = AdamW::new(&policy, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 })?;
    let mut recorder = Recorder::new(warmup, steps);
    let mut peak_gpu: Option<u64> = None;
    for i in 0..warmup + steps {
        if i == warmup {
            on_warm();
        }
        let indices: Vec<usize> = (i * PAIRS..(i + 1) * PAIRS).collect();
        let t0 = Instant::now();
        let MicroBatchGrads { metrics, grads } =
            micro_batch_grads(&run, &setup, &policy, ReferenceSource::Weights(&reference), &indices, 1.0)?;
        let grads = policy.dense_grads(grads)?;
        peak_gpu = peak_gpu.max(gpu_memory(dev).map(|(used, _)| used));
        let t1 = Instant::now();
        optimizer.step(policy.vars(), &grads, 1e-6)?;
        let t2 = Instant::now();
        soft_update(&policy, &reference, ALPHA)?;
        // Kernels run asynchronously on a GPU: the step ends when its last one does.
        dev.synchronize()?;
        let t3 = Instant::now();
        peak_gpu = peak_gpu.max(gpu_memory(dev).map(|(used, _)| used));
        let loss = metrics.iter().find(|(n, _)| *n == crate::metric_names::LOSS).map_or(f64::NAN, |m| m.1);
        recorder.record(
            i,
            loss,
            StepTimes {
                policy_fwd: f64::NAN,
                ref_fwd: f64::NAN,
                loss_bwd: ms(t0, t1),
                optim: ms(t1, t2),
                soft_update: ms(t2, t3),
                total: ms(t0, t3),
            },
        );
    }
    Ok(BenchReport { peak_gpu_bytes: peak_gpu, ..recorder.report(config_name, policy.num_parameters(), num_threads) })
}

/// Bytes of GPU memory in use on `dev` (by every process, as the driver counts it) and its
/// total; `None` on the CPU.
pub fn gpu_memory(dev: &Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = dev.as_cuda_device() {
        let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
        return Some(((total - free) as u64, total as u64));
    }
    let _ = dev;
    None
}

/// Wall times of one evaluation, both ways (see [`time_evaluation`]).
#[derive(Debug, Clone, Serialize)]
pub struct EvalTiming {
    pub config: String,
    pub dtype: String,
    pub prompts: usize,
    pub new_tokens: usize,
    /// The trainer's own sampler, then its training path scoring π_init (`eval::sample_and_score`).
    pub trainer_ms: Vec<f64>,
    /// candle-transformers sampling and scoring in lock-step (`eval::sample_and_score_inference`).
    pub candle_transformers_ms: Vec<f64>,
    /// Largest |log π_θ(y) − log π_init(y)| over the answers at step 0 (π_θ = π_init): the KL
    /// estimate's error from scoring through two paths (0 for one path).
    pub trainer_max_abs_log_ratio: f64,
    pub candle_transformers_max_abs_log_ratio: f64,
}

/// One evaluation of `prompts` random prompts of `prompt_len` tokens, `new_tokens` sampled
/// tokens each (no EOS), scored under π_init too, at step 0 (π_θ = π_init): through the
/// trainer's own sampler and through candle-transformers, `repeats` times each, alternating.
#[allow(clippy::too_many_arguments)]
pub fn time_evaluation(
    config_name: &str,
    cfg: &ModelConfig,
    dev: &Device,
    dtype: DType,
    prompts: usize,
    prompt_len: usize,
    new_tokens: usize,
    repeats: usize,
) -> Result<EvalTiming> {
    use crate::eval::{sample_and_score, sample_and_score_inference};
    use crate::model::sampling::SamplingConfig;
    let model = CausalLm::new(cfg.clone(), dev).with_compute_dtype(dtype);
    let policy = ParamSet::random(cfg, 0, 0.02, dev)?;
    let initial = policy.deep_clone()?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let batch: Vec<Vec<u32>> =
        (0..prompts).map(|_| (0..prompt_len).map(|_| rng.random_range(0..cfg.vocab_size as u32)).collect()).collect();
    let sampling = SamplingConfig {
        max_new_tokens: new_tokens,
        temperature: 1.0,
        top_k: None,
        eos_token_id: None,
        pad_token_id: 0,
    };
    let weights = crate::eval::EvalWeights { model: &model, policy: &policy, reference: &initial, initial: &initial };
    let worst = |samples: &[crate::eval::ScoredSample]| {
        samples.iter().map(|s| (s.policy_logp - s.other_logps[0]).abs()).fold(0f64, f64::max)
    };
    let mut timing = EvalTiming {
        config: config_name.to_string(),
        dtype: format!("{dtype:?}"),
        prompts,
        new_tokens,
        trainer_ms: Vec::new(),
        candle_transformers_ms: Vec::new(),
        trainer_max_abs_log_ratio: 0.0,
        candle_transformers_max_abs_log_ratio: 0.0,
    };
    for repeat in 0..repeats {
        let t0 = Instant::now();
        let own = sample_and_score(&model, &policy, &[&initial], &batch, 1, &sampling, &|_| false, &mut rng)?;
        dev.synchronize()?;
        let t1 = Instant::now();
        let ct = sample_and_score_inference(weights, &[&initial], &batch, &sampling, repeat as u64)?;
        dev.synchronize()?;
        let t2 = Instant::now();
        timing.trainer_ms.push(ms(t0, t1));
        timing.candle_transformers_ms.push(ms(t1, t2));
        timing.trainer_max_abs_log_ratio = timing.trainer_max_abs_log_ratio.max(worst(&own));
        timing.candle_transformers_max_abs_log_ratio = timing.candle_transformers_max_abs_log_ratio.max(worst(&ct));
    }
    Ok(timing)
}

/// Random-init weights of `cfg` and `batches` batches of random pairs, the same for every
/// device, computing in `dtype` (float32 weights either way).
fn random_pairs_setup(cfg: &ModelConfig, dev: &Device, dtype: DType, batches: usize) -> Result<Setup> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let examples: Vec<PairedExample> = (0..batches * PAIRS)
        .map(|_| {
            let mut draw = |n: usize| (0..n).map(|_| rng.random_range(0..cfg.vocab_size as u32)).collect::<Vec<u32>>();
            let prompt = draw(PROMPT_LEN);
            PairedExample {
                chosen: Sequence { prompt: prompt.clone(), completion: draw(COMPLETION_LEN) },
                rejected: Sequence { prompt, completion: draw(COMPLETION_LEN) },
            }
        })
        .collect();
    // Billions of parameters are drawn on the GPU itself (the seeded CPU draw takes tens of
    // seconds there); smaller models start from the same weights on every device.
    let initial = if dev.is_cuda()
        && crate::model::param_specs(cfg).iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>() > 500_000_000
    {
        ParamSet::random_on_device(cfg, 0.02, dev)?
    } else {
        ParamSet::random(cfg, 0, 0.02, dev)?
    };
    Ok(Setup {
        model: CausalLm::new(cfg.clone(), dev).with_compute_dtype(dtype),
        initial,
        data: Dataset::Paired(examples),
        eval: None,
        pad_token_id: 0,
        side_files: Vec::new(),
    })
}

/// One TR-DPO step (gradients, clipping, AdamW, soft update) on the CPU in float32 and on
/// `device` in `dtype`, from the same weights and batch: how far apart the two results are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceComparison {
    pub device: String,
    /// The device side's compute dtype.
    pub dtype: String,
    pub loss: [f64; 2],
    pub grad_norm: [f64; 2],
    /// Largest over parameters of ‖g_cpu − g_device‖ / ‖g_cpu‖.
    pub max_grad_rel_diff: f64,
    /// Largest over parameters of ‖Δθ_cpu − Δθ_device‖ / ‖Δθ_cpu‖, Δθ the AdamW update.
    pub max_update_rel_diff: f64,
    /// The same for the reference's move in the soft update.
    pub max_reference_rel_diff: f64,
}

impl DeviceComparison {
    /// float32 on both sides: agreement within bfloat16's resolution (8 bits of mantissa,
    /// ≈ 0.4%), with some room.
    pub const TOLERANCE: f64 = 1e-2;
    /// A half-precision step against the float32 one: the loss, the gradient norm and every
    /// parameter's gradient, which carry the half dtype's rounding through every layer (bf16:
    /// up to 3% per parameter in `model::tests`). The AdamW update is reported but not held to
    /// it: the first step is lr · sign(g), so each near-zero gradient whose sign the rounding
    /// flips moves its weight the other way (bf16 on the CPU: 12% of the update's norm).
    pub const HALF_TOLERANCE: f64 = 5e-2;

    pub fn is_half(&self) -> bool {
        self.dtype != "F32"
    }

    pub fn tolerance(&self) -> f64 {
        if self.is_half() {
            Self::HALF_TOLERANCE
        } else {
            Self::TOLERANCE
        }
    }

    pub fn within_tolerance(&self) -> bool {
        let tolerance = self.tolerance();
        let rel = |[a, b]: [f64; 2]| (a - b).abs() / a.abs().max(1e-12);
        let gradients =
            rel(self.loss) <= tolerance && rel(self.grad_norm) <= tolerance && self.max_grad_rel_diff <= tolerance;
        gradients
            && (self.is_half() || (self.max_update_rel_diff <= tolerance && self.max_reference_rel_diff <= tolerance))
    }
}

pub fn compare_step_across_devices(cfg: &ModelConfig, device: &Device, dtype: DType) -> Result<DeviceComparison> {
    struct Outcome {
        loss: f64,
        grad_norm: f64,
        grads: Vec<Tensor>,
        updates: Vec<Tensor>,
        reference_moves: Vec<Tensor>,
    }
    let run_on = |dev: &Device, dtype: DType| -> Result<Outcome> {
        let setup = random_pairs_setup(cfg, dev, dtype, 1)?;
        let run = RunConfig { beta: 0.1, num_threads: 1, ..RunConfig::default() };
        let policy = setup.initial.deep_clone()?;
        let reference = setup.initial.deep_clone()?;
        let indices: Vec<usize> = (0..PAIRS).collect();
        // float16 trains with loss scaling; without it its small gradients would underflow.
        let mut scaler = (dtype == DType::F16).then(crate::optim::LossScaler::default);
        let loss_scale = scaler.map_or(1.0, |s| s.scale);
        let MicroBatchGrads { metrics, grads } =
            micro_batch_grads(&run, &setup, &policy, ReferenceSource::Weights(&reference), &indices, loss_scale)?;
        let mut grads = policy.dense_grads(grads)?;
        let grad_norm = match scaler.as_mut() {
            Some(scaler) => scaler
                .unscale(&mut grads)?
                .ok_or_else(|| crate::Error::NonFinite { step: 1, what: "float16 gradients".into() })?,
            None => crate::optim::global_grad_norm(&grads)?,
        };
        crate::optim::clip_to_max_norm(&mut grads, grad_norm, 1.0)?;
        let before: Vec<Tensor> =
            policy.vars().iter().map(|v| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?;
        let mut optimizer =
            AdamW::new(&policy, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 })?;
        optimizer.step(policy.vars(), &grads, 1e-3)?;
        let updates = policy
            .vars()
            .iter()
            .zip(&before)
            .map(|(v, b)| v.as_tensor() - b)
            .collect::<candle_core::Result<Vec<_>>>()?;
        soft_update(&policy, &reference, ALPHA)?;
        let reference_moves = reference
            .vars()
            .iter()
            .zip(setup.initial.vars())
            .map(|(r, i)| r.as_tensor() - i.as_tensor())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let loss = metrics.iter().find(|(n, _)| *n == crate::metric_names::LOSS).map_or(f64::NAN, |m| m.1);
        let to_cpu =
            |ts: Vec<Tensor>| ts.iter().map(|t| t.to_device(&Device::Cpu)).collect::<candle_core::Result<Vec<_>>>();
        Ok(Outcome {
            loss,
            grad_norm,
            grads: to_cpu(grads)?,
            updates: to_cpu(updates)?,
            reference_moves: to_cpu(reference_moves)?,
        })
    };
    let cpu = run_on(&Device::Cpu, DType::F32)?;
    let dev = run_on(device, dtype)?;
    let max_rel = |a: &[Tensor], b: &[Tensor]| -> Result<f64> {
        let mut worst = 0f64;
        for (x, y) in a.iter().zip(b) {
            let norm = f64::from(x.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?);
            let diff = f64::from((x - y)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?);
            worst = worst.max(diff / norm.max(1e-30));
        }
        Ok(worst)
    };
    Ok(DeviceComparison {
        device: format!("{:?}", device.location()),
        dtype: format!("{dtype:?}"),
        loss: [cpu.loss, dev.loss],
        grad_norm: [cpu.grad_norm, dev.grad_norm],
        max_grad_rel_diff: max_rel(&cpu.grads, &dev.grads)?,
        max_update_rel_diff: max_rel(&cpu.updates, &dev.updates)?,
        max_reference_rel_diff: max_rel(&cpu.reference_moves, &dev.reference_moves)?,
    })
}

/// The same step written out sequentially with a timer between phases (policy forward,
/// reference forward, loss + backward, AdamW, soft update), on one worker: for the per-phase
/// breakdown. `warmup + steps` steps; `on_warm` is called once the warm-up is done.
pub fn run_trdpo(
    config_name: &str,
    cfg: &ModelConfig,
    warmup: usize,
    steps: usize,
    mut on_warm: impl FnMut(),
) -> Result<BenchReport> {
    let dev = Device::Cpu;
    let model = CausalLm::new(cfg.clone(), &dev);
    let policy = ParamSet::random(cfg, 0, 0.02, &dev)?;
    let reference = policy.deep_clone()?;
    let mut optimizer = AdamW::new(&policy, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 })?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let batches: Vec<Collated> = (0..warmup + steps).map(|_| random_batch(cfg.vocab_size, &mut rng)).collect();
    let mut recorder = Recorder::new(warmup, steps);
    for (i, batch) in batches.iter().enumerate() {
        if i == warmup {
            on_warm();
        }
        let t0 = Instant::now();
        let pol = sequence_logps(&model, &policy.trainable(), batch)?.sums;
        let t1 = Instant::now();
        let refl = sequence_logps(&model, &reference.frozen(), batch)?.sums;
        let t2 = Instant::now();
        let split = |v: &Tensor| -> Result<Pair> {
            Ok(Pair { chosen: v.narrow(0, 0, PAIRS)?, rejected: v.narrow(0, PAIRS, PAIRS)? })
        };
        let out = dpo_loss(&split(&pol)?, &split(&refl)?, 0.1)?;
        let grads = policy.dense_grads(policy.grads_from(&out.loss.backward()?))?;
        let t3 = Instant::now();
        optimizer.step(policy.vars(), &grads, 1e-6)?;
        let t4 = Instant::now();
        soft_update(&policy, &reference, ALPHA)?;
        let t5 = Instant::now();
        recorder.record(
            i,
            out.metrics[0].1,
            StepTimes {
                policy_fwd: ms(t0, t1),
                ref_fwd: ms(t1, t2),
                loss_bwd: ms(t2, t3),
                optim: ms(t3, t4),
                soft_update: ms(t4, t5),
                total: ms(t0, t5),
            },
        );
    }
    Ok(recorder.report(config_name, policy.num_parameters(), candle_core::utils::get_num_threads()))
}

pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_models_have_the_peer_parameter_counts() {
        // bench/peer/README.md: tiny 461,440 and small 3,426,560 parameters.
        for (name, expected) in [("tiny", 461_440), ("small", 3_426_560)] {
            let cfg = peer_model_config(name).unwrap();
            let params = ParamSet::random(&cfg, 0, 0.02, &Device::Cpu).unwrap();
            assert_eq!(params.num_parameters(), expected, "{name}");
        }
    }

    #[test]
    fn the_trainer_step_bench_starts_at_ln_2() {
        let report =
            run_trainer_step("tiny", &peer_model_config("tiny").unwrap(), &Device::Cpu, DType::F32, 2, 1, 2, || {})
                .unwrap();
        assert!((report.first_loss - std::f64::consts::LN_2).abs() < 1e-6);
        assert_eq!(report.steps.len(), 2);
    }

    #[test]
    fn the_pythia_preset_has_pythia_160m_parameter_count() {
        // EleutherAI/pythia-160m: 162,322,944 parameters (untied embed_in and embed_out).
        let cfg = peer_model_config("pythia-160m").unwrap();
        let params = ParamSet::random(&cfg, 0, 0.02, &Device::Cpu).unwrap();
        assert_eq!(params.num_parameters(), 162_322_944);
    }

    #[test]
    fn the_cpu_agrees_with_itself_across_devices_and_a_perturbed_step_does_not() {
        let cfg = peer_model_config("tiny").unwrap();
        let same = compare_step_across_devices(&cfg, &Device::Cpu, DType::F32).unwrap();
        assert!(same.within_tolerance(), "{same:?}");
        assert_eq!(same.max_grad_rel_diff, 0.0);
        let off = DeviceComparison { loss: [same.loss[0], same.loss[0] * 1.05], ..same };
        assert!(!off.within_tolerance());
    }

    #[test]
    fn a_half_precision_step_agrees_with_the_float32_one_within_its_tolerance() {
        let cfg = peer_model_config("tiny").unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let half = compare_step_across_devices(&cfg, &Device::Cpu, dtype).unwrap();
            assert!(half.within_tolerance(), "{half:?}");
            assert!(half.max_grad_rel_diff > 0.0, "{dtype:?} rounds differently from float32");
        }
    }

    #[test]
    fn a_bench_run_starts_at_ln_2_and_times_every_phase() {
        let report = run_trdpo("tiny", &peer_model_config("tiny").unwrap(), 1, 2, || {}).unwrap();
        assert!((report.first_loss - std::f64::consts::LN_2).abs() < 1e-6);
        assert_eq!(report.steps.len(), 2);
        assert!(report.steps.iter().all(|s| s.total > 0.0 && s.policy_fwd > 0.0 && s.loss_bwd > 0.0));
    }
}
