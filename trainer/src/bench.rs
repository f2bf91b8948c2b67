//! One TR-DPO training step, timed phase by phase, on the peer baseline's workload
//! (`../shared/bench/peer/`): a random-init Llama, 8 pairs of 16 prompt + 48 completion
//! tokens, fp32, a soft reference update (α = 0.6) after every optimizer step.

use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::RunConfig;
use crate::data::{Collated, PairedExample, Sequence};
use crate::error::Result;
use crate::logps::sequence_logps;
use crate::loss::{dpo_loss, Pair};
use crate::model::{CausalLm, ModelConfig, ParamSet};
use crate::optim::{AdamW, AdamWConfig};
use crate::train::{micro_batch_grads, MicroBatchGrads, Setup, TrainData};
use crate::trust_region::soft_update;

pub const PROMPT_LEN: usize = 16;
pub const COMPLETION_LEN: usize = 48;
pub const PAIRS: usize = 8;
pub const ALPHA: f64 = 0.6;

/// The peer's `tiny` and `small` LlamaConfigs (untied, MHA, rope 1e4, rms eps 1e-6).
pub fn peer_model_config(name: &str) -> Option<ModelConfig> {
    let (vocab, hidden, inter, layers, heads, pos) = match name {
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
        BenchReport { config: config.to_string(), n_params, threads, steps, first_loss, last_loss }
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

/// The trainer's own step (`train::micro_batch_grads`, with its worker threads), then AdamW and
/// the soft update: what `goodhart train` runs. `warmup + steps` steps; `on_warm` is called
/// once the warm-up is done.
pub fn run_trainer_step(
    config_name: &str,
    cfg: &ModelConfig,
    num_threads: usize,
    warmup: usize,
    steps: usize,
    mut on_warm: impl FnMut(),
) -> Result<BenchReport> {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let examples: Vec<PairedExample> = (0..(warmup + steps) * PAIRS)
        .map(|_| {
            let mut draw = |n: usize| (0..n).map(|_| rng.random_range(0..cfg.vocab_size as u32)).collect::<Vec<u32>>();
            let prompt = draw(PROMPT_LEN);
            PairedExample {
                chosen: Sequence { prompt: prompt.clone(), completion: draw(COMPLETION_LEN) },
                rejected: Sequence { prompt, completion: draw(COMPLETION_LEN) },
            }
        })
        .collect();
    let setup = Setup {
        model: CausalLm::new(cfg.clone(), &dev),
        initial: ParamSet::random(cfg, 0, 0.02, &dev)?,
        data: TrainData::Paired(examples),
        eval: None,
        pad_token_id: 0,
        side_files: Vec::new(),
    };
    let run = RunConfig { beta: 0.1, learning_rate: 1e-6, num_threads, ..RunConfig::default() };
    let policy = setup.initial.deep_clone()?;
    let reference = setup.initial.deep_clone()?;
    let mut optimizer = AdamW::new(&policy, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 })?;
    let mut recorder = Recorder::new(warmup, steps);
    for i in 0..warmup + steps {
        if i == warmup {
            on_warm();
        }
        let indices: Vec<usize> = (i * PAIRS..(i + 1) * PAIRS).collect();
        let t0 = Instant::now();
        let MicroBatchGrads { metrics, grads } = micro_batch_grads(&run, &setup, &policy, &reference, &indices, 1.0)?;
        let grads = policy.dense_grads(grads)?;
        let t1 = Instant::now();
        optimizer.step(policy.vars(), &grads, 1e-6)?;
        let t2 = Instant::now();
        soft_update(&policy, &reference, ALPHA)?;
        let t3 = Instant::now();
        let loss = metrics.iter().find(|(n, _)| *n == "loss").map_or(f64::NAN, |m| m.1);
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
    Ok(recorder.report(config_name, policy.num_parameters(), num_threads))
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
        let out = dpo_loss(&split(&pol)?, &split(&refl)?, 0.1, 0.0)?;
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
        let report = run_trainer_step("tiny", &peer_model_config("tiny").unwrap(), 2, 1, 2, || {}).unwrap();
        assert!((report.first_loss - std::f64::consts::LN_2).abs() < 1e-6);
        assert_eq!(report.steps.len(), 2);
    }

    #[test]
    fn a_bench_run_starts_at_ln_2_and_times_every_phase() {
        let report = run_trdpo("tiny", &peer_model_config("tiny").unwrap(), 1, 2, || {}).unwrap();
        assert!((report.first_loss - std::f64::consts::LN_2).abs() < 1e-6);
        assert_eq!(report.steps.len(), 2);
        assert!(report.steps.iter().all(|s| s.total > 0.0 && s.policy_fwd > 0.0 && s.loss_bwd > 0.0));
    }
}
