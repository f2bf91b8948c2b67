//! Monte Carlo evaluation for tasks whose responses cannot be enumerated: sample y ~ π_θ at
//! temperature exactly 1 with the KV-cache sampler, then estimate KL(π_θ ‖ q) as the plain mean of
//! per-sample log-ratios `Σ_t [log π_θ(y_t|·) − log q(y_t|·)]`, with its standard error
//! (SPEC §4: per-sample values are often negative at small KL; the k3 estimator is heavy-tailed).

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::RunConfig;
use crate::data::{self, Batch, Collated, PairedExample, Sequence, TextTokenizer};
use crate::error::{Error, Result};
use crate::logps::sequence_logps;
use crate::metric_names::{
    EVAL_ENTROPY, EVAL_EOS_RATE, EVAL_GOLD_REWARD, EVAL_GOLD_REWARD_SE, EVAL_KL_INIT, EVAL_KL_INIT_SE, EVAL_KL_REF,
    EVAL_KL_REF_SE, EVAL_LENGTH, EVAL_LENGTH_SE, EVAL_LOGPS_CHOSEN, EVAL_LOGPS_REJECTED, EVAL_REWARDS_ACCURACIES,
    EVAL_REWARDS_ACCURACIES_SE, EVAL_REWARDS_MARGINS, EVAL_REWARDS_MARGINS_SE,
};
use crate::metrics::Metrics;
use crate::model::inference;
use crate::model::reward::RewardModel;
use crate::model::sampling::{generate, Sample, SamplingConfig};
use crate::model::{CausalLm, ParamSet};

/// Measures the policy during training (`eval/*` metrics): at step 0 of a fresh run, every
/// `eval_steps`, and at the last step. Toy tasks compute exact or Monte Carlo KL to the
/// initial policy and the gold reward here.
pub trait Evaluator {
    fn evaluate(&mut self, step: u64, weights: EvalWeights<'_>) -> Result<Metrics>;
}

/// The three weight sets an evaluation may compare.
#[derive(Debug, Clone, Copy)]
pub struct EvalWeights<'a> {
    pub model: &'a CausalLm,
    pub policy: &'a ParamSet,
    /// The current reference (the initial policy itself when it never moves).
    pub reference: &'a ParamSet,
    pub initial: &'a ParamSet,
}

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

/// [`sample_and_score`] through candle-transformers ([`inference::sample_and_score`]): one
/// answer per prompt, the policy's log-probs from the same scoring path as the others'.
pub fn sample_and_score_inference(
    w: EvalWeights<'_>,
    others: &[&ParamSet],
    prompts: &[Vec<u32>],
    sampling: &SamplingConfig,
    seed: u64,
) -> Result<Vec<ScoredSample>> {
    let sampling = SamplingConfig { temperature: 1.0, top_k: None, ..sampling.clone() };
    let model = w.model;
    let scored = inference::sample_and_score(
        &model.config,
        model.compute_dtype(),
        model.device(),
        w.policy,
        others,
        prompts,
        &sampling,
        seed,
    )?;
    Ok(scored
        .samples
        .into_iter()
        .zip(scored.other_logps)
        .enumerate()
        .map(|(prompt, (sample, other_logps))| ScoredSample {
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

/// The `eval/*` metrics every sampled evaluation logs: KL to π_init (`other_logps[0]`) and to the
/// reference (`other_logps[reference]`), entropy, answer length without `eos`, and the share of
/// answers that ended. The gold reward is the caller's: each task scores it its own way.
pub fn sample_metrics(samples: &[ScoredSample], eos: Option<u32>, reference: usize) -> Metrics {
    let length: Vec<f64> =
        samples.iter().map(|s| s.sample.tokens.iter().filter(|&&t| Some(t) != eos).count() as f64).collect();
    let entropy: Vec<f64> = samples.iter().map(|s| -s.policy_logp).collect();
    let finished = samples.iter().filter(|s| s.sample.finished).count() as f64 / samples.len() as f64;
    let (kl_init, kl_ref) = (kl_estimate(samples, 0), kl_estimate(samples, reference));
    let (length, entropy) = (Estimate::of(&length), Estimate::of(&entropy));
    Metrics::from([
        (EVAL_KL_INIT.to_string(), kl_init.mean),
        (EVAL_KL_INIT_SE.to_string(), kl_init.se),
        (EVAL_KL_REF.to_string(), kl_ref.mean),
        (EVAL_KL_REF_SE.to_string(), kl_ref.se),
        (EVAL_ENTROPY.to_string(), entropy.mean),
        (EVAL_LENGTH.to_string(), length.mean),
        (EVAL_LENGTH_SE.to_string(), length.se),
        (EVAL_EOS_RATE.to_string(), finished),
    ])
}

/// `eval/*` for runs on a model directory and a dataset: at each evaluation the policy answers
/// every evaluation prompt once at temperature 1 (`max_new_tokens`), and the answers give Monte
/// Carlo KL to the initial policy and to the reference, the gold reward model's score when
/// `reward_model_path` is set, and the answers' length — each with its standard error.
#[derive(Debug)]
pub struct PolicySampleEvaluator {
    prompts: Vec<Vec<u32>>,
    /// Turns prompt + answer back into text for the reward model, which has its own tokenizer.
    tokenizer: tokenizers::Tokenizer,
    reward_model: Option<RewardModel>,
    sampling: SamplingConfig,
    /// Prompts sampled at once.
    batch_size: usize,
    seed: u64,
    held_out: Option<HeldOutPairs>,
}

/// Held-out preference pairs (`eval_split_ratio`, `eval_dataset_path`) on which each evaluation
/// scores DPO's implicit reward `β (log π_θ − log π_ref)`, as TRL's evaluation does:
/// `eval/rewards/accuracies`, `eval/rewards/margins` (with `_se`) and `eval/logps/chosen` and
/// `/rejected`. Without a gold reward these are the overoptimization proxies the run page shows,
/// labelled as such: the policy optimizes this very quantity on its training pairs.
#[derive(Debug)]
pub struct HeldOutPairs {
    examples: Vec<PairedExample>,
    beta: f64,
    pad: u32,
}

impl HeldOutPairs {
    /// At most this many pairs are scored at each evaluation.
    pub const MAX_PAIRS: usize = 128;

    pub fn new(mut examples: Vec<PairedExample>, beta: f64, pad: u32) -> Option<Self> {
        examples.truncate(Self::MAX_PAIRS);
        (!examples.is_empty()).then_some(Self { examples, beta, pad })
    }

    fn score(&self, w: &EvalWeights<'_>, batch_size: usize) -> Result<Metrics> {
        let (policy_weights, reference_weights) = (w.policy.frozen(), w.reference.frozen());
        let (mut margins, mut correct, mut chosen, mut rejected) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for chunk in self.examples.chunks(batch_size) {
            let picked: Vec<&PairedExample> = chunk.iter().collect();
            let Batch::Paired(rows) = data::collate_paired(&picked, self.pad) else { unreachable!("paired collation") };
            let policy: Vec<f32> = sequence_logps(w.model, &policy_weights, &rows)?.sums.to_vec1()?;
            let reference: Vec<f32> = sequence_logps(w.model, &reference_weights, &rows)?.sums.to_vec1()?;
            let n = chunk.len();
            for i in 0..n {
                let reward = |k: usize| self.beta * f64::from(policy[k] - reference[k]);
                let margin = reward(i) - reward(n + i);
                margins.push(margin);
                correct.push(if margin > 0.0 { 1.0 } else { 0.0 });
                chosen.push(f64::from(policy[i]));
                rejected.push(f64::from(policy[n + i]));
            }
        }
        let (margin, accuracy) = (Estimate::of(&margins), Estimate::of(&correct));
        Ok(Metrics::from([
            (EVAL_REWARDS_ACCURACIES.to_string(), accuracy.mean),
            (EVAL_REWARDS_ACCURACIES_SE.to_string(), accuracy.se),
            (EVAL_REWARDS_MARGINS.to_string(), margin.mean),
            (EVAL_REWARDS_MARGINS_SE.to_string(), margin.se),
            (EVAL_LOGPS_CHOSEN.to_string(), Estimate::of(&chosen).mean),
            (EVAL_LOGPS_REJECTED.to_string(), Estimate::of(&rejected).mean),
        ]))
    }
}

impl PolicySampleEvaluator {
    /// The evaluator of a `task = "dataset"` run on `prompts` (token ids), when it has something
    /// to measure: `eval_steps` or a reward model is set.
    pub fn for_run(cfg: &RunConfig, model: &CausalLm, prompts: Vec<Vec<u32>>) -> Result<Option<Self>> {
        if cfg.eval_steps.is_none() && cfg.reward_model_path.is_none() {
            return Ok(None);
        }
        let dir = cfg.model_name_or_path.as_deref().ok_or_else(|| Error::model("model_name_or_path is not set"))?;
        let reward_model =
            cfg.reward_model_path.as_deref().map(|p| RewardModel::from_hf_dir(p, model.device())).transpose()?;
        let ids = TextTokenizer::from_dir(dir, model.config.eos_token_id, model.config.pad_token_id)?;
        let sampling = SamplingConfig {
            max_new_tokens: cfg.max_new_tokens,
            temperature: 1.0,
            top_k: None,
            eos_token_id: Some(ids.eos_token_id),
            pad_token_id: ids.pad_token_id,
        };
        Self::new(dir, prompts, reward_model, sampling, cfg.per_device_train_batch_size * 2, cfg.seed).map(Some)
    }

    pub fn new(
        model_dir: &Path,
        prompts: Vec<Vec<u32>>,
        reward_model: Option<RewardModel>,
        sampling: SamplingConfig,
        batch_size: usize,
        seed: u64,
    ) -> Result<Self> {
        if prompts.is_empty() {
            return Err(Error::model("evaluation needs at least one prompt"));
        }
        let path = model_dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self { prompts, tokenizer, reward_model, sampling, batch_size: batch_size.max(1), seed, held_out: None })
    }

    /// Also scores the implicit reward on these held-out pairs at each evaluation.
    pub fn with_held_out(mut self, pairs: Option<HeldOutPairs>) -> Self {
        self.held_out = pairs;
        self
    }

    /// What the reward model reads: prompt and answer decoded together (so no word boundary is
    /// lost between them), special tokens of the prompt kept (BOS, a chat template's markers),
    /// the answer's EOS dropped as TRL drops special tokens from completions.
    fn reward_text(&self, sample: &ScoredSample) -> Result<String> {
        let mut answer = sample.sample.tokens.as_slice();
        if sample.sample.finished && answer.last().copied() == self.sampling.eos_token_id {
            answer = &answer[..answer.len() - 1];
        }
        let ids = [self.prompts[sample.prompt].as_slice(), answer].concat();
        self.tokenizer.decode(&ids, false).map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// The prompts a dataset run evaluates on: the dataset's distinct prompts in order, at most
/// [`EVAL_PROMPTS`] of them.
pub fn eval_prompts(prompts: impl IntoIterator<Item = Vec<u32>>) -> Vec<Vec<u32>> {
    let mut seen = std::collections::HashSet::new();
    prompts.into_iter().filter(|p| !p.is_empty() && seen.insert(p.clone())).take(EVAL_PROMPTS).collect()
}

/// How many prompts an evaluation samples at most: one answer each.
pub const EVAL_PROMPTS: usize = 64;

impl Evaluator for PolicySampleEvaluator {
    fn evaluate(&mut self, step: u64, w: EvalWeights<'_>) -> Result<Metrics> {
        // Seeded by (seed, step): runs of a sweep see the same draws at the same step.
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(1_000 + step);
        // While the reference is the initial policy itself, one scoring pass serves both.
        let shared = std::ptr::eq(w.reference, w.initial);
        let others: Vec<&ParamSet> = if shared { vec![w.initial] } else { vec![w.initial, w.reference] };
        let mut samples = Vec::with_capacity(self.prompts.len());
        for (chunk_index, chunk) in self.prompts.chunks(self.batch_size).enumerate() {
            let scored = if w.model.device().is_cuda() && inference::supports(&w.model.config) {
                // Llama and Qwen2 on a GPU: candle-transformers' models with their fused inference
                // kernels, one scoring path for all. On the CPU it scores π_init token by token and
                // took 1.9x the trainer's sampler (BENCHMARKS.md, "Evaluation"), so the CPU keeps that.
                let seed = rng.random::<u64>();
                sample_and_score_inference(w, &others, chunk, &self.sampling, seed)?
            } else {
                sample_and_score(w.model, w.policy, &others, chunk, 1, &self.sampling, &|_| false, &mut rng)?
            };
            samples.extend(scored.into_iter().map(|mut s| {
                s.prompt += chunk_index * self.batch_size;
                s
            }));
        }
        let mut metrics = sample_metrics(&samples, self.sampling.eos_token_id, if shared { 0 } else { 1 });
        if let Some(rm) = &self.reward_model {
            let mut gold = Vec::with_capacity(samples.len());
            for chunk in samples.chunks(self.batch_size) {
                let texts = chunk.iter().map(|s| self.reward_text(s)).collect::<Result<Vec<_>>>()?;
                gold.extend(rm.score_texts(&texts)?.into_iter().map(f64::from));
            }
            let gold = Estimate::of(&gold);
            metrics.insert(EVAL_GOLD_REWARD.into(), gold.mean);
            metrics.insert(EVAL_GOLD_REWARD_SE.into(), gold.se);
        }
        if let Some(pairs) = &self.held_out {
            metrics.extend(pairs.score(&w, self.batch_size)?);
        }
        Ok(metrics)
    }
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
