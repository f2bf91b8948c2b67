//! Incremental decoding with a KV cache: temperature, top-k, greedy, `max_new_tokens`, EOS.
//!
//! Prompts of different lengths are left-padded; positions come from the attention mask, so
//! each row sees exactly what it would see alone.

use candle_core::{IndexOp, Tensor};
use rand::Rng;

use super::{CausalLm, ForwardInput, KvCache, Weights};
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f64,
    /// Sample only among the `top_k` most likely tokens.
    pub top_k: Option<usize>,
    /// Generation stops for a row once it emits this token (which is kept).
    pub eos_token_id: Option<u32>,
    /// Fills left padding; never attended to.
    pub pad_token_id: u32,
}

impl SamplingConfig {
    pub fn greedy(max_new_tokens: usize, eos_token_id: Option<u32>) -> Self {
        Self { max_new_tokens, temperature: 0.0, top_k: None, eos_token_id, pad_token_id: 0 }
    }
}

/// One generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The generated tokens, EOS included when it was produced.
    pub tokens: Vec<u32>,
    /// `log π(token | prefix)` of each generated token at temperature 1: the policy's own
    /// log-probs, whatever temperature was used to draw.
    pub logprobs: Vec<f64>,
    /// Whether the row stopped at EOS (rather than at `max_new_tokens`).
    pub finished: bool,
}

pub fn generate(
    model: &CausalLm,
    weights: &Weights,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    rng: &mut impl Rng,
) -> Result<Vec<Sample>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if prompts.iter().any(Vec::is_empty) {
        return Err(Error::model("cannot sample from an empty prompt"));
    }
    let batch = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(batch * width);
    let mut mask: Vec<Vec<u8>> = Vec::with_capacity(batch);
    let mut positions: Vec<Vec<u32>> = Vec::with_capacity(batch);
    for p in prompts {
        let pad = width - p.len();
        ids.extend(std::iter::repeat_n(cfg.pad_token_id, pad).chain(p.iter().copied()));
        mask.push(std::iter::repeat_n(0, pad).chain(std::iter::repeat_n(1, p.len())).collect());
        positions.push(std::iter::repeat_n(0, pad).chain(0..p.len() as u32).collect());
    }
    let mut next_pos: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    let mut input = Tensor::from_vec(ids, (batch, width), model.device())?;
    let mut samples = vec![Sample { tokens: Vec::new(), logprobs: Vec::new(), finished: false }; batch];
    for _ in 0..cfg.max_new_tokens {
        let logits = model.forward(
            weights,
            ForwardInput { input_ids: &input, attention_mask: Some(&mask), position_ids: Some(&positions) },
            Some(&mut cache),
        )?;
        let last = logits.dim(1)? - 1;
        let rows: Vec<Vec<f32>> = logits.i((.., last, ..))?.to_vec2()?;
        let mut step_tokens = Vec::with_capacity(batch);
        for (row, sample) in rows.iter().zip(samples.iter_mut()) {
            if sample.finished {
                step_tokens.push(cfg.pad_token_id);
                continue;
            }
            let logp = log_softmax(row);
            let token = pick(&logp, cfg, rng);
            sample.tokens.push(token);
            sample.logprobs.push(logp[token as usize]);
            sample.finished = cfg.eos_token_id == Some(token);
            step_tokens.push(token);
        }
        if samples.iter().all(|s| s.finished) {
            break;
        }
        // A finished row's later keys only feed that row's ignored outputs.
        mask.iter_mut().for_each(|m| m.push(1));
        positions = next_pos.iter().map(|&p| vec![p]).collect();
        next_pos.iter_mut().for_each(|p| *p += 1);
        input = Tensor::from_vec(step_tokens, (batch, 1), model.device())?;
    }
    Ok(samples)
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|&l| l as f64 - lse).collect()
}

fn pick(logp: &[f64], cfg: &SamplingConfig, rng: &mut impl Rng) -> u32 {
    let argmax = || {
        logp.iter().enumerate().fold((0, f64::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
            as u32
    };
    if cfg.temperature <= 0.0 {
        return argmax();
    }
    let mut candidates: Vec<(usize, f64)> = logp.iter().copied().enumerate().collect();
    if let Some(k) = cfg.top_k.filter(|&k| k > 0 && k < candidates.len()) {
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        candidates.truncate(k);
    }
    let max = candidates.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = candidates.iter().map(|c| ((c.1 - max) / cfg.temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (c, w) in candidates.iter().zip(&weights) {
        if u < *w {
            return c.0 as u32;
        }
        u -= w;
    }
    candidates.last().map_or_else(argmax, |c| c.0 as u32)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use candle_core::Device;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::data::{Collated, Sequence};
    use crate::logps::token_logps;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/trl-parity").join(name)
    }

    #[test]
    fn sampled_log_probs_equal_the_training_path_on_every_architecture() {
        for arch in ["tiny-llama", "tiny-qwen2", "tiny-gpt-neox"] {
            let (model, params) = CausalLm::from_hf_dir(&fixture(arch), &Device::Cpu).unwrap();
            let w = params.frozen();
            // Prompts of different lengths exercise left padding and per-row positions.
            let prompts = vec![vec![39, 57, 54], vec![30, 41, 51, 52, 3], vec![8]];
            let cfg = SamplingConfig {
                max_new_tokens: 12,
                temperature: 1.0,
                top_k: None,
                eos_token_id: Some(2),
                pad_token_id: 0,
            };
            let samples = generate(&model, &w, &prompts, &cfg, &mut ChaCha8Rng::seed_from_u64(5)).unwrap();
            let seqs: Vec<Sequence> = prompts
                .iter()
                .zip(&samples)
                .map(|(p, s)| Sequence { prompt: p.clone(), completion: s.tokens.clone() })
                .collect();
            let batch = Collated::from_sequences(&seqs, 0);
            let scored: Vec<Vec<f32>> = token_logps(&model, &w, &batch).unwrap().to_vec2().unwrap();
            for ((p, s), row) in prompts.iter().zip(&samples).zip(&scored) {
                assert!(!s.tokens.is_empty());
                for (i, lp) in s.logprobs.iter().enumerate() {
                    let trained = f64::from(row[p.len() - 1 + i]);
                    assert!((lp - trained).abs() <= 1e-4, "{arch}: token {i}: sampled {lp} vs training path {trained}");
                }
            }
        }
    }

    #[test]
    fn greedy_decoding_is_deterministic_and_stops_at_eos_or_the_token_budget() {
        let (model, params) = CausalLm::from_hf_dir(&fixture("tiny-llama"), &Device::Cpu).unwrap();
        let w = params.frozen();
        let prompts = vec![vec![39, 57, 54], vec![4, 4, 4, 44]];
        let cfg = SamplingConfig::greedy(6, None);
        let a = generate(&model, &w, &prompts, &cfg, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        let b = generate(&model, &w, &prompts, &cfg, &mut ChaCha8Rng::seed_from_u64(2)).unwrap();
        assert_eq!(a, b);
        assert!(a.iter().all(|s| s.tokens.len() == 6 && !s.finished));
        // Make the first greedy token the EOS: generation stops right after it.
        let eos = a[0].tokens[0];
        let stopped = generate(
            &model,
            &w,
            &prompts[..1],
            &SamplingConfig::greedy(6, Some(eos)),
            &mut ChaCha8Rng::seed_from_u64(1),
        )
        .unwrap();
        assert_eq!(stopped[0].tokens, vec![eos]);
        assert!(stopped[0].finished);
    }

    #[test]
    fn top_k_one_is_greedy_and_temperature_sampling_varies_with_the_seed() {
        let (model, params) = CausalLm::from_hf_dir(&fixture("tiny-llama"), &Device::Cpu).unwrap();
        let w = params.frozen();
        let prompts = vec![vec![39, 57, 54]];
        let greedy =
            generate(&model, &w, &prompts, &SamplingConfig::greedy(8, None), &mut ChaCha8Rng::seed_from_u64(0))
                .unwrap();
        let top1 =
            SamplingConfig { max_new_tokens: 8, temperature: 1.0, top_k: Some(1), eos_token_id: None, pad_token_id: 0 };
        assert_eq!(
            generate(&model, &w, &prompts, &top1, &mut ChaCha8Rng::seed_from_u64(9)).unwrap()[0].tokens,
            greedy[0].tokens
        );
        let free = SamplingConfig { top_k: None, ..top1 };
        let draws: std::collections::HashSet<Vec<u32>> = (0..8)
            .map(|s| {
                generate(&model, &w, &prompts, &free, &mut ChaCha8Rng::seed_from_u64(s)).unwrap()[0].tokens.clone()
            })
            .collect();
        assert!(draws.len() > 1, "temperature-1 sampling should not always give the same sequence");
    }
}
