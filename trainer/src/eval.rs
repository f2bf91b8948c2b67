//! Monte Carlo evaluation for tasks whose responses cannot be enumerated: sample y ~ π_θ at
//! temperature exactly 1 with the KV-cache sampler, then estimate KL(π_θ ‖ q) as the plain mean of
//! per-sample log-ratios `Σ_t [log π_θ(y_t|·) − log q(y_t|·)]`, with its standard error
//! (SPEC §4: per-sample values are often negative at small KL; the k3 estimator is heavy-tailed).

use rand::Rng;

use crate::data::{Collated, Sequence};
use crate::error::Result;
use crate::logps::sequence_logps;
use crate::model::sampling::{generate, Sample, SamplingConfig};
use crate::model::{CausalLm, ParamSet};

/// A sample mean and its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub se: f64,
}

impl Estimate {
    pub fn of(values: &[f64]) -> Self {
        let n = values.len() as f64;
        if values.is_empty() {
            return Self { mean: f64::NAN, se: f64::NAN };
        }
        let mean = values.iter().sum::<f64>() / n;
        let var =
            if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        Self { mean, se: (var / n).sqrt() }
    }
}

/// One response drawn from the policy, with its log-prob under the policy and under others.
#[derive(Debug, Clone)]
pub struct ScoredSample {
    pub prompt: usize,
    pub sample: Sample,
    /// `log π_θ(y|x)` at temperature 1 (EOS included when it was generated).
    pub policy_logp: f64,
    /// `log q(y|x)` under each of the `others`, in order.
    pub other_logps: Vec<f64>,
}

/// `samples_per_prompt` responses per prompt from the policy at temperature 1, each scored under
/// every weight set in `others` with the trainer's own completion log-probs (so EOS counts
/// exactly as it does in training). A response also ends at the first token for which `ends`
/// holds (toy-tree's invalid tokens); what the sampler drew after it is dropped, which leaves
/// the distribution of everything before it unchanged.
#[allow(clippy::too_many_arguments)]
pub fn sample_and_score(
    model: &CausalLm,
    policy: &ParamSet,
    others: &[&ParamSet],
    prompts: &[Vec<u32>],
    samples_per_prompt: usize,
    sampling: &SamplingConfig,
    ends: &dyn Fn(u32) -> bool,
    rng: &mut impl Rng,
) -> Result<Vec<ScoredSample>> {
    let sampling = SamplingConfig { temperature: 1.0, top_k: None, ..sampling.clone() };
    let repeated: Vec<(usize, Vec<u32>)> =
        prompts.iter().enumerate().flat_map(|(i, p)| std::iter::repeat_n((i, p.clone()), samples_per_prompt)).collect();
    let batch_prompts: Vec<Vec<u32>> = repeated.iter().map(|(_, p)| p.clone()).collect();
    let mut samples = generate(model, &policy.frozen(), &batch_prompts, &sampling, rng)?;
    for s in &mut samples {
        if let Some(cut) = s.tokens.iter().position(|&t| ends(t)) {
            s.tokens.truncate(cut + 1);
            s.logprobs.truncate(cut + 1);
            s.finished = true;
        }
    }
    let sequences: Vec<Sequence> = repeated
        .iter()
        .zip(&samples)
        .map(|((_, p), s)| Sequence { prompt: p.clone(), completion: s.tokens.clone() })
        .collect();
    let batch = Collated::from_sequences(&sequences, sampling.pad_token_id);
    let mut other_logps: Vec<Vec<f64>> = vec![Vec::with_capacity(others.len()); samples.len()];
    for other in others {
        let sums = sequence_logps(model, &other.frozen(), &batch)?.sums.to_vec1::<f32>()?;
        for (row, v) in other_logps.iter_mut().zip(sums) {
            row.push(f64::from(v));
        }
    }
    Ok(repeated
        .into_iter()
        .zip(samples)
        .zip(other_logps)
        .map(|(((prompt, _), sample), other_logps)| ScoredSample {
            prompt,
            policy_logp: sample.logprobs.iter().sum(),
            sample,
            other_logps,
        })
        .collect())
}

/// KL(π_θ ‖ others[which]) per prompt averaged over prompts: the mean of per-sample log-ratios
/// and its standard error. Every prompt has the same number of samples, so the grand mean is the
/// mean of the prompt means.
pub fn kl_estimate(samples: &[ScoredSample], which: usize) -> Estimate {
    let ratios: Vec<f64> = samples.iter().map(|s| s.policy_logp - s.other_logps[which]).collect();
    Estimate::of(&ratios)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::Device;
    use rand::SeedableRng;

    use super::*;
    use crate::config::{RunConfig, Task};
    use crate::tasks::toy_tree::{ToyTree, ToyTreeParams};

    #[test]
    fn monte_carlo_kl_agrees_with_the_exact_kl_on_the_tree() {
        let cfg = RunConfig {
            task: Task::ToyTree,
            toy_num_prompts: 4,
            toy_alphabet_size: 3,
            toy_response_length: 3,
            toy_hidden_size: 16,
            toy_num_layers: 1,
            toy_num_heads: 2,
            ..RunConfig::default()
        };
        let tree = Arc::new(ToyTree::new(ToyTreeParams::from_config(&cfg)));
        let model = CausalLm::new(tree.model_config(&cfg).unwrap(), &Device::Cpu);
        let policy = ParamSet::random(&model.config, 1, 0.3, &Device::Cpu).unwrap();
        let initial = ParamSet::random(&model.config, 2, 0.3, &Device::Cpu).unwrap();
        let exact_policy = tree.tree_log_probs(&model, &policy.frozen()).unwrap();
        let exact_initial = tree.tree_log_probs(&model, &initial.frozen()).unwrap();
        let exact = (0..tree.num_prompts()).map(|x| exact_policy.kl(&exact_initial, x)).sum::<f64>()
            / tree.num_prompts() as f64;

        let prompts: Vec<Vec<u32>> = (0..tree.num_prompts()).map(|x| tree.prompt_tokens(x)).collect();
        let sampling =
            SamplingConfig { max_new_tokens: 3, temperature: 1.0, top_k: None, eos_token_id: None, pad_token_id: 0 };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        // Invalid (non-alphabet) tokens end a toy-tree response, as in the exact sums.
        let invalid = |t: u32| t as usize >= cfg.toy_alphabet_size;
        let samples =
            sample_and_score(&model, &policy, &[&initial], &prompts, 500, &sampling, &invalid, &mut rng).unwrap();
        let estimate = kl_estimate(&samples, 0);
        assert!(exact > 0.05, "the policies differ: {exact}");
        assert!(estimate.se > 0.0 && estimate.se < exact / 3.0, "{estimate:?}");
        assert!((estimate.mean - exact).abs() < 3.0 * estimate.se, "MC {estimate:?} vs exact {exact}");
        // The sampler's own log-probs match the exact tree.
        for s in samples.iter().filter(|s| s.sample.tokens.len() == 3 && !invalid(s.sample.tokens[2])).take(20) {
            let code = s.sample.tokens.iter().fold(0, |c, &t| c * 3 + t as usize);
            assert!((s.policy_logp - exact_policy.response_log_probs(s.prompt)[code]).abs() < 1e-4);
        }
    }

    #[test]
    fn eos_is_counted_in_sampled_and_scored_log_probs() {
        // TRL counts the EOS token in the completion log-prob; masking it makes DPO's length run
        // away (SPEC §4). The sampler keeps EOS, and scoring the sample counts it.
        let cfg = crate::model::ModelConfig::from_hf_json(&serde_json::json!({
            "model_type": "llama", "vocab_size": 6, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "eos_token_id": 5,
        }))
        .unwrap();
        let model = CausalLm::new(cfg, &Device::Cpu);
        let policy = ParamSet::random(&model.config, 4, 0.5, &Device::Cpu).unwrap();
        let sampling = SamplingConfig {
            max_new_tokens: 12,
            temperature: 1.0,
            top_k: None,
            eos_token_id: Some(5),
            pad_token_id: 0,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let samples =
            sample_and_score(&model, &policy, &[&policy], &[vec![1, 2]], 64, &sampling, &|_| false, &mut rng).unwrap();
        let ended: Vec<&ScoredSample> = samples.iter().filter(|s| s.sample.finished).collect();
        assert!(ended.len() > 5, "some samples end at EOS");
        for s in ended {
            assert_eq!(s.sample.tokens.last(), Some(&5));
            // The scored log-prob (training's code path) includes the EOS term ...
            assert!((s.policy_logp - s.other_logps[0]).abs() < 1e-4, "{} vs {}", s.policy_logp, s.other_logps[0]);
            // ... which is a real, non-zero term: without it the sum differs by log π(EOS|·).
            let eos_logp = *s.sample.logprobs.last().unwrap();
            assert!(eos_logp < -1e-3);
            let without: f64 = s.sample.logprobs[..s.sample.logprobs.len() - 1].iter().sum();
            assert!((s.other_logps[0] - without - eos_logp).abs() < 1e-4);
        }
        // A truncated sample (no EOS) has no EOS term.
        assert!(samples.iter().filter(|s| !s.sample.finished).all(|s| s.sample.tokens.len() == 12));
    }
}
