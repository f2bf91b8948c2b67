//! `toy-length`: variable-length responses that end with EOS, so metrics are Monte Carlo
//! estimates from samples drawn with the KV-cache sampler (SPEC §4).
//!
//! Tokens: content `0..C` and EOS = `C`. Each prompt is 3 content tokens and has 8 "good" content
//! tokens. Gold reward: good tokens in the response − 1.5·max(0, n − 10), n the number of content
//! tokens. The behaviour policy answers short (2 + Geometric(0.25) tokens, each good with
//! probability 0.6), so among π_init's answers the longer one usually wins a pair.

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::common::{sigmoid, toy_dataset, toy_model_config, TaskSetup};
use crate::config::RunConfig;
use crate::data::{Collated, PairedExample, Sequence};
use crate::error::Result;
use crate::eval::{sample_and_score, sample_metrics, Estimate};
use crate::eval::{EvalWeights, Evaluator};
use crate::logps::token_logps;
use crate::metric_names::{EVAL_GOLD_REWARD, EVAL_GOLD_REWARD_SE};
use crate::metrics::Metrics;
use crate::model::sampling::{generate, SamplingConfig};
use crate::model::{CausalLm, Weights};
use crate::setup::Setup;
use crate::sft::{self, SftTarget};

const PROMPT_TOKENS: usize = 3;
const GOOD_PER_PROMPT: usize = 8;
const LENGTH_OPTIMUM: usize = 10;
const LENGTH_PENALTY: f64 = 1.5;
const BEHAVIOUR_STOP: f64 = 0.25;
const BEHAVIOUR_MIN_LENGTH: usize = 2;
const BEHAVIOUR_GOOD: f64 = 0.6;
/// Behaviour samples per prompt for SFT, and SFT's fixed number of full-batch steps.
const SFT_SAMPLES: usize = 32;
const SFT_STEPS: u64 = 300;
/// Evaluation samples per prompt (SPEC §4: 16–32 early, when KL is near 0).
pub const EVAL_SAMPLES: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToyLengthParams {
    pub num_prompts: usize,
    pub content_tokens: usize,
    pub max_new_tokens: usize,
    pub pairs_per_prompt: usize,
    pub label_temperature: f64,
    pub seed: u64,
}

impl ToyLengthParams {
    pub fn from_config(cfg: &RunConfig) -> Self {
        Self {
            num_prompts: cfg.toy_num_prompts,
            content_tokens: cfg.toy_alphabet_size,
            max_new_tokens: cfg.toy_response_length,
            pairs_per_prompt: cfg.toy_pairs_per_prompt,
            label_temperature: cfg.toy_label_temperature,
            seed: cfg.task_seed,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ToyLength {
    pub params: ToyLengthParams,
    pub prompts: Vec<Vec<u32>>,
    /// `[prompt][token]`: whether a content token is good for that prompt.
    pub good: Vec<Vec<bool>>,
}

impl ToyLength {
    pub fn new(params: ToyLengthParams) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        rng.set_stream(11);
        let c = params.content_tokens;
        let prompts = (0..params.num_prompts)
            .map(|_| (0..PROMPT_TOKENS).map(|_| rng.random_range(0..c as u32)).collect())
            .collect();
        let good = (0..params.num_prompts)
            .map(|_| {
                let mut ids: Vec<usize> = (0..c).collect();
                ids.shuffle(&mut rng);
                let mut g = vec![false; c];
                ids.iter().take(GOOD_PER_PROMPT.min(c.saturating_sub(1))).for_each(|&i| g[i] = true);
                g
            })
            .collect();
        Self { params, prompts, good }
    }

    pub fn eos(&self) -> u32 {
        self.params.content_tokens as u32
    }

    pub fn vocab_size(&self) -> usize {
        self.params.content_tokens + 1
    }

    /// Good content tokens − 1.5·max(0, n − 10); EOS is not content.
    pub fn gold(&self, x: usize, response: &[u32]) -> f64 {
        let content: Vec<u32> = response.iter().copied().filter(|&t| t != self.eos()).collect();
        let good = content.iter().filter(|&&t| self.good[x][t as usize]).count() as f64;
        good - LENGTH_PENALTY * content.len().saturating_sub(LENGTH_OPTIMUM) as f64
    }

    /// One behaviour response, EOS included.
    pub fn behaviour_sample(&self, x: usize, rng: &mut impl Rng) -> Vec<u32> {
        let mut n = BEHAVIOUR_MIN_LENGTH;
        while rng.random::<f64>() >= BEHAVIOUR_STOP {
            n += 1;
        }
        let n = n.min(self.params.max_new_tokens - 1);
        let (good, bad): (Vec<u32>, Vec<u32>) =
            (0..self.params.content_tokens as u32).partition(|&t| self.good[x][t as usize]);
        let mut out: Vec<u32> = (0..n)
            .map(|_| {
                let pool = if rng.random::<f64>() < BEHAVIOUR_GOOD || bad.is_empty() { &good } else { &bad };
                pool[rng.random_range(0..pool.len())]
            })
            .collect();
        out.push(self.eos());
        out
    }

    fn sampling(&self) -> SamplingConfig {
        SamplingConfig {
            max_new_tokens: self.params.max_new_tokens,
            temperature: 1.0,
            top_k: None,
            eos_token_id: Some(self.eos()),
            pad_token_id: self.eos(),
        }
    }
}

/// SFT on behaviour samples: cross-entropy averaged per token (SPEC §4: per sequence makes
/// π_init too short).
struct BehaviourCloning {
    batch: Collated,
    tokens: f64,
}

impl SftTarget for BehaviourCloning {
    fn loss(&self, model: &CausalLm, weights: &Weights) -> Result<(Tensor, f64)> {
        let per_token = token_logps(model, weights, &self.batch)?;
        let loss = (per_token.sum_all()?.neg()? / self.tokens)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        Ok((loss, value))
    }
}

pub fn build(cfg: &RunConfig, device: &Device, progress: sft::SftProgress<'_>) -> Result<TaskSetup> {
    let task = ToyLength::new(ToyLengthParams::from_config(cfg));
    let model_config = toy_model_config(cfg, task.vocab_size(), PROMPT_TOKENS + task.params.max_new_tokens + 1)?;
    let model = CausalLm::new(model_config.clone(), device);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.task_seed);
    rng.set_stream(12);
    let sft_data: Vec<Sequence> = (0..task.params.num_prompts)
        .flat_map(|x| (0..SFT_SAMPLES).map(move |_| x))
        .map(|x| Sequence { prompt: task.prompts[x].clone(), completion: task.behaviour_sample(x, &mut rng) })
        .collect();
    let tokens = sft_data.iter().map(|s| s.completion.len()).sum::<usize>() as f64;
    let objective = BehaviourCloning { batch: Collated::from_sequences(&sft_data, task.eos()), tokens };
    let cached = sft::cached_initial_policy(
        &sft::cache_dir(cfg),
        &("toy-length", &task.params, model_config.to_hf_json(), cfg.initializer_range),
        &model,
        progress,
        |progress| {
            let (seed, range) = (cfg.task_seed, cfg.initializer_range);
            sft::train_initial_policy(&model, &objective, seed, range, f64::NEG_INFINITY, SFT_STEPS, progress)
        },
    )?;

    // Pairs from π_init with the KV-cache sampler, labelled by Bradley–Terry on the gold reward.
    rng.set_stream(13);
    let per_prompt = 2 * task.params.pairs_per_prompt;
    let prompts: Vec<Vec<u32>> = task.prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), per_prompt)).collect();
    let samples = generate(&model, &cached.params.frozen(), &prompts, &task.sampling(), &mut rng)?;
    let mut pairs = Vec::with_capacity(task.params.num_prompts * task.params.pairs_per_prompt);
    for (i, two) in samples.chunks(2).enumerate() {
        let x = i / task.params.pairs_per_prompt;
        let (a, b) = (&two[0].tokens, &two[1].tokens);
        let p_first = sigmoid((task.gold(x, a) - task.gold(x, b)) / task.params.label_temperature);
        let (w, l) = if rng.random::<f64>() < p_first { (a, b) } else { (b, a) };
        let seq = |y: &Vec<u32>| Sequence { prompt: task.prompts[x].clone(), completion: y.clone() };
        pairs.push(PairedExample { chosen: seq(w), rejected: seq(l) });
    }
    let setup = Setup {
        model,
        initial: cached.params,
        data: toy_dataset(pairs, cfg)?,
        eval: None,
        pad_token_id: task.eos(),
        side_files: Vec::new(),
    };
    let evaluator = ToyLengthEvaluator { task, seed: cfg.seed };
    Ok(TaskSetup { setup, evaluator: Box::new(evaluator) })
}

/// Monte Carlo `eval/*` metrics with standard errors, from [`EVAL_SAMPLES`] samples per prompt.
#[derive(Debug)]
pub struct ToyLengthEvaluator {
    task: ToyLength,
    seed: u64,
}

impl Evaluator for ToyLengthEvaluator {
    fn evaluate(&mut self, step: u64, w: EvalWeights<'_>) -> Result<Metrics> {
        // Seeded by (seed, step): every run of a sweep sees the same draws at the same step.
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(1_000 + step);
        let samples = sample_and_score(
            w.model,
            w.policy,
            &[w.initial, w.reference],
            &self.task.prompts,
            EVAL_SAMPLES,
            &self.task.sampling(),
            &|_| false,
            &mut rng,
        )?;
        let gold: Vec<f64> = samples.iter().map(|s| self.task.gold(s.prompt, &s.sample.tokens)).collect();
        let gold = Estimate::of(&gold);
        let mut metrics = sample_metrics(&samples, Some(self.task.eos()), 1);
        metrics.insert(EVAL_GOLD_REWARD.into(), gold.mean);
        metrics.insert(EVAL_GOLD_REWARD_SE.into(), gold.se);
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gold_counts_good_content_and_penalises_length_past_the_optimum() {
        let task =
            ToyLength::new(ToyLengthParams::from_config(&RunConfig::parse("task = \"toy-length\"\n", "toml").unwrap()));
        let good = task.good[0].iter().position(|&g| g).unwrap() as u32;
        let bad = task.good[0].iter().position(|&g| !g).unwrap() as u32;
        let eos = task.eos();
        assert_eq!(task.gold(0, &[good, bad, eos]), 1.0);
        assert_eq!(task.gold(0, &[good; 10]), 10.0);
        assert_eq!(task.gold(0, &[good; 12]), 12.0 - 1.5 * 2.0);
        // Behaviour answers are short and end with EOS.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let lengths: Vec<usize> = (0..2000).map(|_| task.behaviour_sample(0, &mut rng).len() - 1).collect();
        let mean = lengths.iter().sum::<usize>() as f64 / lengths.len() as f64;
        assert!((mean - 5.0).abs() < 0.4, "2 + Geometric(0.25) has mean 5: {mean}");
    }

    #[test]
    fn a_tiny_toy_length_run_logs_monte_carlo_metrics_with_standard_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RunConfig {
            toy_num_prompts: 2,
            toy_pairs_per_prompt: 4,
            toy_hidden_size: 16,
            toy_num_layers: 1,
            toy_num_heads: 2,
            toy_response_length: 8,
            max_steps: Some(2),
            eval_steps: Some(1),
            toy_cache_dir: Some(dir.path().join("cache")),
            ..RunConfig::parse("task = \"toy-length\"\n", "toml").unwrap()
        };
        let mut sink = crate::metrics::MemorySink::default();
        crate::train::train_with(&cfg, &dir.path().join("run"), false, &mut sink).unwrap();
        let kl = sink.series("eval/kl_init");
        assert_eq!(kl.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(kl[0].1.abs() < 1e-4, "KL to π_init is 0 at step 0: {}", kl[0].1);
        assert!(sink.series("eval/gold_reward_se").iter().all(|(_, se)| *se > 0.0));
    }
}
