//! `toy-tree`: P prompts, responses are every string of length L over an alphabet of
//! A tokens, so every evaluation metric is an exact sum over the response tree (SPEC §4).
//!
//! Token ids: the alphabet is `0..A` and prompt `x` is token `A + x`. (Writing prompts with the
//! alphabet's own tokens would make the vocabulary exactly the alphabet, but a 2-layer model with
//! rotary positions then cannot tell the prompt from the response: SFT stalls at
//! KL(behaviour ‖ π) ≈ 0.1–0.4 instead of reaching 0.002.) The softmax covers the whole
//! vocabulary, so a policy can emit a prompt token inside a response. Such a response is invalid:
//! it ends at that token (nothing after it is enumerated), is out of domain, and earns the
//! prompt's lowest gold reward (a malformed answer is as bad as the worst answer).
//! `eval/invalid_mass` reports how much mass sits there.

use std::collections::BTreeSet;
use std::sync::Arc;

use candle_core::{Device, Tensor, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{sample_index, sigmoid, toy_model_config, TaskSetup};
use crate::config::RunConfig;
use crate::data::{PairedExample, Sequence};
use crate::error::Result;
use crate::metric_names::{
    EVAL_ENTROPY, EVAL_GOLD_REWARD, EVAL_INIT_REWARDS_ACCURACIES, EVAL_INIT_REWARDS_MARGINS, EVAL_INVALID_MASS,
    EVAL_KL_INIT, EVAL_KL_REF, EVAL_OOD_MASS,
};
use crate::metrics::Metrics;
use crate::model::{standard_normal, CausalLm, ForwardInput, ModelConfig, Weights};
use crate::sft::{self, SftTarget};
use crate::train::{EvalWeights, Evaluator, Setup};

/// Everything that determines the task, its π_init and its data (the cache key includes it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToyTreeParams {
    pub num_prompts: usize,
    pub alphabet_size: usize,
    pub response_length: usize,
    pub pairs_per_prompt: usize,
    pub label_temperature: f64,
    pub behaviour_temperature: f64,
    pub seed: u64,
}

impl ToyTreeParams {
    pub fn from_config(cfg: &RunConfig) -> Self {
        Self {
            num_prompts: cfg.toy_num_prompts,
            alphabet_size: cfg.toy_alphabet_size,
            response_length: cfg.toy_response_length,
            pairs_per_prompt: cfg.toy_pairs_per_prompt,
            label_temperature: cfg.toy_label_temperature,
            behaviour_temperature: cfg.toy_behaviour_temperature,
            seed: cfg.task_seed,
        }
    }
}

/// Weight of the bigram term in the gold reward and the noise field.
const BIGRAM_WEIGHT: f64 = 0.7;
/// The behaviour distribution mixes the gold reward and an independent noise field equally.
const BEHAVIOUR_GOLD_SHARE: f64 = 0.5;

/// The generated task: gold reward and behaviour distribution of every (prompt, response).
/// A response is identified by its code: its tokens read as a base-A number, first token first.
#[derive(Debug, Clone)]
pub struct ToyTree {
    pub params: ToyTreeParams,
    /// `P × A^L`, standardized per prompt.
    gold: Vec<f64>,
    /// `P × A^L`, each prompt's row sums to 1.
    behaviour: Vec<f64>,
}

impl ToyTree {
    pub fn new(params: ToyTreeParams) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        rng.set_stream(1);
        let gold = random_field(&params, &mut rng);
        rng.set_stream(2);
        let noise = random_field(&params, &mut rng);
        let n = params.alphabet_size.pow(params.response_length as u32);
        let mut behaviour = vec![0.0; gold.len()];
        for x in 0..params.num_prompts {
            let row = x * n..(x + 1) * n;
            let logits: Vec<f64> = gold[row.clone()]
                .iter()
                .zip(&noise[row.clone()])
                .map(|(g, z)| {
                    (BEHAVIOUR_GOLD_SHARE * g + (1.0 - BEHAVIOUR_GOLD_SHARE) * z) / params.behaviour_temperature
                })
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            for (b, l) in behaviour[row].iter_mut().zip(&logits) {
                *b = (l - max).exp() / total;
            }
        }
        Self { params, gold, behaviour }
    }

    pub fn num_prompts(&self) -> usize {
        self.params.num_prompts
    }

    /// A^L.
    pub fn responses_per_prompt(&self) -> usize {
        self.params.alphabet_size.pow(self.params.response_length as u32)
    }

    /// A^(L−1): the distinct model inputs `[x, y₁…y_{L−1}]` per prompt.
    pub fn prefixes_per_prompt(&self) -> usize {
        self.params.alphabet_size.pow(self.params.response_length as u32 - 1)
    }

    pub fn vocab_size(&self) -> usize {
        self.params.alphabet_size + self.params.num_prompts
    }

    /// Tokens per prompt.
    pub fn prompt_length(&self) -> usize {
        1
    }

    pub fn prompt_tokens(&self, x: usize) -> Vec<u32> {
        vec![(self.params.alphabet_size + x) as u32]
    }

    pub fn response_tokens(&self, code: usize) -> Vec<u32> {
        let (a, l) = (self.params.alphabet_size, self.params.response_length);
        (0..l).map(|t| ((code / a.pow((l - 1 - t) as u32)) % a) as u32).collect()
    }

    pub fn gold(&self, x: usize) -> &[f64] {
        let n = self.responses_per_prompt();
        &self.gold[x * n..(x + 1) * n]
    }

    pub fn behaviour(&self, x: usize) -> &[f64] {
        let n = self.responses_per_prompt();
        &self.behaviour[x * n..(x + 1) * n]
    }

    /// Entropy of the behaviour distribution, nats, averaged over prompts.
    pub fn behaviour_entropy(&self) -> f64 {
        let h: f64 = self.behaviour.iter().filter(|&&b| b > 0.0).map(|b| -b * b.ln()).sum();
        h / self.num_prompts() as f64
    }

    pub fn model_config(&self, cfg: &RunConfig) -> Result<ModelConfig> {
        toy_model_config(cfg, self.vocab_size(), self.prompt_length() + self.params.response_length)
    }

    /// Every prefix sequence `[x…, y₁…y_{L−1}]`, prompt-major, prefix code in order:
    /// `(P·A^(L−1), k + L − 1)` for k prompt tokens.
    fn prefix_inputs(&self, device: &Device) -> Result<Tensor> {
        let (l, m, k) = (self.params.response_length, self.prefixes_per_prompt(), self.prompt_length());
        let mut ids = Vec::with_capacity(self.num_prompts() * m * (k + l - 1));
        for x in 0..self.num_prompts() {
            for c in 0..m {
                ids.extend(self.prompt_tokens(x));
                // The first L−1 tokens of response `c·A` are the prefix `c`.
                ids.extend(&self.response_tokens(c * self.params.alphabet_size)[..l - 1]);
            }
        }
        Ok(Tensor::from_vec(ids, (self.num_prompts() * m, k + l - 1), device)?)
    }

    /// Next-token logits at the L positions that predict y₁…y_L: `(P·A^(L−1), L, A)`.
    fn response_logits(&self, model: &CausalLm, weights: &Weights, ids: &Tensor) -> Result<Tensor> {
        let logits = model.forward(weights, ForwardInput::ids(ids), None)?;
        Ok(logits.narrow(1, self.prompt_length() - 1, self.params.response_length)?)
    }

    /// `log π(y|x)` of every valid response, `(P, A^L)`, differentiable: one forward over the
    /// prefixes, since the last position's distribution covers every final token.
    pub fn response_log_probs(&self, model: &CausalLm, weights: &Weights) -> Result<Tensor> {
        let (a, l) = (self.params.alphabet_size, self.params.response_length);
        let ids = self.prefix_inputs(model.device())?;
        let logp = log_softmax(&self.response_logits(model, weights, &ids)?)?;
        let n = ids.dim(0)?;
        let last = logp.narrow(1, l - 1, 1)?.squeeze(1)?.narrow(1, 0, a)?;
        let total = if l > 1 {
            let targets = ids.narrow(1, self.prompt_length(), l - 1)?.contiguous()?.unsqueeze(D::Minus1)?;
            let prefix = logp.narrow(1, 0, l - 1)?.contiguous()?.gather(&targets, D::Minus1)?.squeeze(D::Minus1)?;
            last.broadcast_add(&prefix.sum(1)?.unsqueeze(1)?)?
        } else {
            last
        };
        debug_assert_eq!(n * a, self.num_prompts() * self.responses_per_prompt());
        Ok(total.reshape((self.num_prompts(), self.responses_per_prompt()))?)
    }

    /// The whole response tree of a policy in float64 (see [`TreeLogProbs`]).
    pub fn tree_log_probs(&self, model: &CausalLm, weights: &Weights) -> Result<TreeLogProbs> {
        self.tree_log_probs_on(model, weights, 1)
    }

    /// [`Self::tree_log_probs`] with the prefixes split across `threads` workers, as training
    /// splits its batches: an evaluation then takes the run's cores, not one.
    pub fn tree_log_probs_on(&self, model: &CausalLm, weights: &Weights, threads: usize) -> Result<TreeLogProbs> {
        let ids = self.prefix_inputs(model.device())?;
        let n = ids.dim(0)?;
        let chunk = n.div_ceil(threads.clamp(1, n.max(1)));
        let starts: Vec<usize> = (0..n).step_by(chunk.max(1)).collect();
        let parts = crate::workers::in_parallel(&starts, |&start| {
            let rows = ids.narrow(0, start, chunk.min(n - start))?;
            Ok(self.response_logits(model, weights, &rows)?.to_vec3::<f32>()?)
        })?;
        let logits: Vec<Vec<Vec<f32>>> = parts.into_iter().flatten().collect();
        Ok(TreeLogProbs::from_prefix_logits(self, &logits))
    }
}

/// `log_softmax` over the last dimension, differentiable.
fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Per prompt: per-position scores plus a bigram term, Gaussian, standardized to mean 0, std 1
/// over the prompt's responses.
fn random_field(p: &ToyTreeParams, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let (a, l) = (p.alphabet_size, p.response_length);
    let n = a.pow(l as u32);
    let mut out = Vec::with_capacity(p.num_prompts * n);
    for _ in 0..p.num_prompts {
        let unary: Vec<f64> = (0..l * a).map(|_| standard_normal(rng)).collect();
        let bigram: Vec<f64> = (0..a * a).map(|_| standard_normal(rng)).collect();
        let raw: Vec<f64> = (0..n)
            .map(|code| {
                let y: Vec<usize> = (0..l).map(|t| (code / a.pow((l - 1 - t) as u32)) % a).collect();
                let u: f64 = y.iter().enumerate().map(|(t, &v)| unary[t * a + v]).sum();
                let b: f64 = y.windows(2).map(|w| bigram[w[0] * a + w[1]]).sum();
                u + BIGRAM_WEIGHT * b
            })
            .collect();
        let mean = raw.iter().sum::<f64>() / n as f64;
        let var = raw.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n as f64;
        let std = if var > 0.0 { var.sqrt() } else { 1.0 };
        out.extend(raw.iter().map(|r| (r - mean) / std));
    }
    out
}

/// A policy's next-token log-probs (whole vocabulary, float64) at every node of every prompt's
/// response tree, and the log-prob of every valid response.
#[derive(Debug, Clone)]
pub struct TreeLogProbs {
    vocab: usize,
    alphabet: usize,
    /// `[prompt][depth t]`: `A^t × V` log-probs, node (prefix code) major.
    nodes: Vec<Vec<Vec<f64>>>,
    /// `[prompt][depth t]`: `log π(prefix)` for the `A^t` prefixes, t = 0..=L.
    prefix: Vec<Vec<Vec<f64>>>,
}

impl TreeLogProbs {
    fn from_prefix_logits(tree: &ToyTree, logits: &[Vec<Vec<f32>>]) -> Self {
        let (a, l, m) = (tree.params.alphabet_size, tree.params.response_length, tree.prefixes_per_prompt());
        let vocab = tree.vocab_size();
        let mut nodes = Vec::with_capacity(tree.num_prompts());
        let mut prefix = Vec::with_capacity(tree.num_prompts());
        for x in 0..tree.num_prompts() {
            let mut x_nodes = Vec::with_capacity(l);
            let mut x_prefix = vec![vec![0.0]];
            for t in 0..l {
                let width = a.pow(t as u32);
                let mut depth = Vec::with_capacity(width * vocab);
                let mut next = Vec::with_capacity(width * a);
                for c in 0..width {
                    // Any prefix sequence starting with `c` sees it at position t.
                    let row = &logits[x * m + c * a.pow((l - 1 - t) as u32)][t];
                    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
                    let lse = row.iter().map(|&v| (f64::from(v) - max).exp()).sum::<f64>().ln() + max;
                    let start = depth.len();
                    depth.extend(row.iter().map(|&v| f64::from(v) - lse));
                    let here = x_prefix[t][c];
                    next.extend(depth[start..start + a].iter().map(|lp| here + lp));
                }
                x_nodes.push(depth);
                x_prefix.push(next);
            }
            nodes.push(x_nodes);
            prefix.push(x_prefix);
        }
        Self { vocab, alphabet: a, nodes, prefix }
    }

    /// `log π(y|x)` for every valid response of prompt `x`, by code.
    pub fn response_log_probs(&self, x: usize) -> &[f64] {
        self.prefix[x].last().map_or(&[], Vec::as_slice)
    }

    /// Sums `f(π(prefix), log π(·|node), log q(·|node))` over every node of prompt `x`'s tree.
    fn sum_nodes(&self, other: &Self, x: usize, f: impl Fn(f64, &[f64], &[f64]) -> f64) -> f64 {
        let mut total = 0.0;
        for (t, depth) in self.nodes[x].iter().enumerate() {
            for (c, (p, q)) in depth.chunks(self.vocab).zip(other.nodes[x][t].chunks(self.vocab)).enumerate() {
                total += f(self.prefix[x][t][c].exp(), p, q);
            }
        }
        total
    }

    /// KL(π ‖ q) for prompt `x`, by the chain rule over the tree's nodes (exact).
    pub fn kl(&self, q: &Self, x: usize) -> f64 {
        self.sum_nodes(q, x, |w, p, q| w * p.iter().zip(q).map(|(lp, lq)| lp.exp() * (lp - lq)).sum::<f64>())
    }

    pub fn entropy(&self, x: usize) -> f64 {
        self.sum_nodes(self, x, |w, p, _| w * p.iter().map(|lp| -lp.exp() * lp).sum::<f64>())
    }

    /// Mass on invalid responses: a non-alphabet token anywhere in the response.
    pub fn invalid_mass(&self, x: usize) -> f64 {
        self.sum_nodes(self, x, |w, p, _| w * p[self.alphabet..].iter().map(|lp| lp.exp()).sum::<f64>())
    }
}

/// Preference pairs as (prompt, chosen code, rejected code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToyPairs {
    pub pairs: Vec<(usize, usize, usize)>,
}

impl ToyPairs {
    /// `pairs_per_prompt` pairs per prompt drawn from π_init's exact distribution (two distinct
    /// responses), labelled by Bradley–Terry on the gold reward at the label temperature.
    pub fn sample(tree: &ToyTree, initial: &TreeLogProbs) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(tree.params.seed);
        rng.set_stream(3);
        let mut pairs = Vec::with_capacity(tree.num_prompts() * tree.params.pairs_per_prompt);
        for x in 0..tree.num_prompts() {
            let probs: Vec<f64> = initial.response_log_probs(x).iter().map(|lp| lp.exp()).collect();
            let gold = tree.gold(x);
            for _ in 0..tree.params.pairs_per_prompt {
                let y1 = sample_index(&probs, &mut rng);
                let mut rest = probs.clone();
                rest[y1] = 0.0;
                let y2 = sample_index(&rest, &mut rng);
                let p_first = sigmoid((gold[y1] - gold[y2]) / tree.params.label_temperature);
                let first_wins = rand::Rng::random::<f64>(&mut rng) < p_first;
                pairs.push(if first_wins { (x, y1, y2) } else { (x, y2, y1) });
            }
        }
        Self { pairs }
    }

    /// Which responses of each prompt occur in the data (either side of a pair).
    /// Ordered, so that the OOD mass sums its terms in the same order in every process.
    pub fn support(&self, tree: &ToyTree) -> Vec<BTreeSet<usize>> {
        let mut support = vec![BTreeSet::new(); tree.num_prompts()];
        for &(x, w, l) in &self.pairs {
            support[x].insert(w);
            support[x].insert(l);
        }
        support
    }

    /// Share of pairs whose label disagrees with the gold reward.
    pub fn label_noise(&self, tree: &ToyTree) -> f64 {
        let wrong = self.pairs.iter().filter(|&&(x, w, l)| tree.gold(x)[w] < tree.gold(x)[l]).count();
        wrong as f64 / self.pairs.len().max(1) as f64
    }

    /// The pairs as token sequences, prompt by prompt (the run's dataset shuffles them).
    pub fn pairs(&self, tree: &ToyTree) -> Vec<PairedExample> {
        let seq =
            |x: usize, code: usize| Sequence { prompt: tree.prompt_tokens(x), completion: tree.response_tokens(code) };
        self.pairs.iter().map(|&(x, w, l)| PairedExample { chosen: seq(x, w), rejected: seq(x, l) }).collect()
    }
}

/// SFT on toy-tree: exact cross-entropy against the behaviour distribution, full batch.
struct BehaviourCloning<'a> {
    tree: &'a ToyTree,
    target: Tensor,
    entropy: f64,
}

impl SftTarget for BehaviourCloning<'_> {
    fn loss(&self, model: &CausalLm, weights: &Weights) -> Result<(Tensor, f64)> {
        let logp = self.tree.response_log_probs(model, weights)?;
        let ce = ((&self.target * &logp)?.sum_all()?.neg()? / self.tree.num_prompts() as f64)?;
        let kl = f64::from(ce.to_scalar::<f32>()?) - self.entropy;
        Ok((ce, kl))
    }

    fn criterion_is_kl(&self) -> bool {
        true
    }
}

/// KL(behaviour ‖ π_init) at which SFT stops (SPEC §4).
pub const SFT_TARGET_KL: f64 = 0.002;
const SFT_MAX_STEPS: u64 = 5000;

/// The task, π_init (cached; its SFT reported to `progress`), the preference data and the exact
/// evaluator, from the config.
pub fn build(cfg: &RunConfig, device: &Device, progress: sft::SftProgress<'_>) -> Result<TaskSetup> {
    let tree = Arc::new(ToyTree::new(ToyTreeParams::from_config(cfg)));
    let model_config = tree.model_config(cfg)?;
    let model = CausalLm::new(model_config.clone(), device);
    let target = Tensor::from_vec(
        (0..tree.num_prompts()).flat_map(|x| tree.behaviour(x).iter().map(|&b| b as f32)).collect::<Vec<f32>>(),
        (tree.num_prompts(), tree.responses_per_prompt()),
        device,
    )?;
    let objective = BehaviourCloning { tree: &tree, target, entropy: tree.behaviour_entropy() };
    let cached = sft::cached_initial_policy(
        &sft::cache_dir(cfg),
        &("toy-tree", &tree.params, model_config.to_hf_json(), cfg.initializer_range),
        &model,
        progress,
        |progress| {
            let (seed, range) = (cfg.task_seed, cfg.initializer_range);
            sft::train_initial_policy(&model, &objective, seed, range, SFT_TARGET_KL, SFT_MAX_STEPS, progress)
        },
    )?;
    let initial_tree = tree.tree_log_probs(&model, &cached.params.frozen())?;
    let pairs = ToyPairs::sample(&tree, &initial_tree);
    let threads = if device.is_cpu() { crate::workers::worker_threads(cfg.num_threads) } else { 1 };
    let evaluator = ToyTreeEvaluator::new(Arc::clone(&tree), pairs.clone(), cfg.beta, threads);
    let setup = Setup {
        model,
        initial: cached.params,
        data: super::toy_dataset(pairs.pairs(&tree), cfg)?,
        eval: None,
        pad_token_id: 0,
        side_files: Vec::new(),
    };
    Ok(TaskSetup { setup, evaluator: Box::new(evaluator) })
}

/// Exact `eval/*` metrics for toy-tree, from one forward per weight set.
#[derive(Debug)]
pub struct ToyTreeEvaluator {
    tree: Arc<ToyTree>,
    pairs: ToyPairs,
    support: Vec<BTreeSet<usize>>,
    beta: f64,
    /// π_init never moves: its tree is computed once.
    initial: Option<TreeLogProbs>,
    /// Workers an evaluation's forward passes are split across (the run's `num_threads`).
    threads: usize,
}

impl ToyTreeEvaluator {
    pub fn new(tree: Arc<ToyTree>, pairs: ToyPairs, beta: f64, threads: usize) -> Self {
        let support = pairs.support(&tree);
        Self { tree, pairs, support, beta, initial: None, threads: threads.max(1) }
    }

    /// The metrics of a policy against π_init and the current reference.
    pub fn metrics(&self, policy: &TreeLogProbs, initial: &TreeLogProbs, reference: &TreeLogProbs) -> Metrics {
        let tree = &self.tree;
        let p = tree.num_prompts() as f64;
        let (mut kl_init, mut kl_ref, mut gold, mut ood, mut entropy, mut invalid) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for x in 0..tree.num_prompts() {
            let probs: Vec<f64> = policy.response_log_probs(x).iter().map(|lp| lp.exp()).collect();
            let bad = policy.invalid_mass(x);
            let worst = tree.gold(x).iter().copied().fold(f64::INFINITY, f64::min);
            gold += probs.iter().zip(tree.gold(x)).map(|(p, g)| p * g).sum::<f64>() + bad * worst;
            ood += 1.0 - self.support[x].iter().map(|&y| probs[y]).sum::<f64>();
            kl_init += policy.kl(initial, x);
            kl_ref += policy.kl(reference, x);
            entropy += policy.entropy(x);
            invalid += bad;
        }
        // Implicit rewards against π_init, comparable across runs whatever the reference does.
        let (mut margins, mut correct) = (0.0, 0.0);
        for &(x, w, l) in &self.pairs.pairs {
            let (pi, init) = (policy.response_log_probs(x), initial.response_log_probs(x));
            let margin = self.beta * ((pi[w] - init[w]) - (pi[l] - init[l]));
            margins += margin;
            correct += f64::from(u8::from(margin > 0.0));
        }
        let n = self.pairs.pairs.len().max(1) as f64;
        Metrics::from([
            (EVAL_KL_INIT.to_string(), kl_init / p),
            (EVAL_KL_REF.to_string(), kl_ref / p),
            (EVAL_GOLD_REWARD.to_string(), gold / p),
            (EVAL_OOD_MASS.to_string(), ood / p),
            (EVAL_ENTROPY.to_string(), entropy / p),
            (EVAL_INVALID_MASS.to_string(), invalid / p),
            (EVAL_INIT_REWARDS_MARGINS.to_string(), margins / n),
            (EVAL_INIT_REWARDS_ACCURACIES.to_string(), correct / n),
        ])
    }
}

impl Evaluator for ToyTreeEvaluator {
    fn evaluate(&mut self, _step: u64, w: EvalWeights<'_>) -> Result<Metrics> {
        if self.initial.is_none() {
            self.initial = Some(self.tree.tree_log_probs_on(w.model, &w.initial.frozen(), self.threads)?);
        }
        let initial = self.initial.as_ref().expect("just computed");
        let policy = self.tree.tree_log_probs_on(w.model, &w.policy.frozen(), self.threads)?;
        let moved;
        let reference = if std::ptr::eq(w.reference, w.initial) {
            initial
        } else {
            moved = self.tree.tree_log_probs_on(w.model, &w.reference.frozen(), self.threads)?;
            &moved
        };
        Ok(self.metrics(&policy, initial, reference))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{mismatched_neighbour, Collated, Dataset};
    use crate::logps::sequence_logps;
    use crate::model::ParamSet;

    fn tiny_config(task_seed: u64) -> RunConfig {
        RunConfig {
            task: crate::config::Task::ToyTree,
            task_seed,
            toy_num_prompts: 3,
            toy_alphabet_size: 2,
            toy_response_length: 3,
            toy_pairs_per_prompt: 4,
            toy_hidden_size: 8,
            toy_num_layers: 1,
            toy_num_heads: 2,
            ..RunConfig::default()
        }
    }

    /// Every outcome of prompt `x`: each valid response, and each valid prefix followed by a
    /// non-alphabet token (where an invalid response ends). `(tokens, valid response code)`.
    fn outcomes(tree: &ToyTree) -> Vec<(Vec<u32>, Option<usize>)> {
        let (a, l, v) = (tree.params.alphabet_size, tree.params.response_length, tree.vocab_size());
        let mut out: Vec<(Vec<u32>, Option<usize>)> =
            (0..tree.responses_per_prompt()).map(|c| (tree.response_tokens(c), Some(c))).collect();
        for t in 0..l {
            for c in 0..a.pow(t as u32) {
                let prefix = &tree.response_tokens(c * a.pow((l - t) as u32))[..t];
                for bad in a..v {
                    let mut tokens = prefix.to_vec();
                    tokens.push(bad as u32);
                    out.push((tokens, None));
                }
            }
        }
        out
    }

    /// `log π(outcome|x)` by scoring each outcome as a sequence: the trainer's own code path.
    fn brute_force_log_probs(tree: &ToyTree, model: &CausalLm, params: &ParamSet, x: usize) -> Vec<f64> {
        let seqs: Vec<Sequence> = outcomes(tree)
            .into_iter()
            .map(|(tokens, _)| Sequence { prompt: tree.prompt_tokens(x), completion: tokens })
            .collect();
        let batch = Collated::from_sequences(&seqs, 0);
        let sums = sequence_logps(model, &params.frozen(), &batch).unwrap().sums;
        sums.to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect()
    }

    #[test]
    fn an_evaluation_split_across_workers_gives_the_same_tree() {
        let cfg = tiny_config(3);
        let tree = Arc::new(ToyTree::new(ToyTreeParams::from_config(&cfg)));
        let model = CausalLm::new(tree.model_config(&cfg).unwrap(), &Device::Cpu);
        let [policy, initial] = [1, 2].map(|s| ParamSet::random(&model.config, s, 0.5, &Device::Cpu).unwrap());
        let one = tree.tree_log_probs(&model, &policy.frozen()).unwrap();
        let q = tree.tree_log_probs(&model, &initial.frozen()).unwrap();
        for threads in [2, 3, 1000] {
            let split = tree.tree_log_probs_on(&model, &policy.frozen(), threads).unwrap();
            for x in 0..tree.num_prompts() {
                let d = (split.kl(&q, x) - one.kl(&q, x)).abs();
                // Only float32 rounding differs: the matrix kernels see other batch sizes.
                assert!(d < 1e-5, "{threads} workers, prompt {x}: {d:e}");
                assert!((split.entropy(x) - one.entropy(x)).abs() < 1e-5, "{threads} workers, prompt {x}");
                let close = split.response_log_probs(x).iter().zip(one.response_log_probs(x));
                assert!(close.into_iter().all(|(a, b)| (a - b).abs() < 1e-5), "{threads} workers, prompt {x}");
            }
        }
    }

    #[test]
    fn exact_metrics_equal_brute_force_sums_over_every_outcome() {
        let cfg = tiny_config(3);
        let tree = Arc::new(ToyTree::new(ToyTreeParams::from_config(&cfg)));
        let model = CausalLm::new(tree.model_config(&cfg).unwrap(), &Device::Cpu);
        // Three unrelated random policies, with a large init so they differ visibly and put
        // real mass on invalid responses.
        let [policy, initial, reference] =
            [1, 2, 3].map(|s| ParamSet::random(&model.config, s, 0.5, &Device::Cpu).unwrap());
        let tables = [&policy, &initial, &reference].map(|p| tree.tree_log_probs(&model, &p.frozen()).unwrap());
        let pairs = ToyPairs::sample(&tree, &tables[1]);
        let evaluator = ToyTreeEvaluator::new(Arc::clone(&tree), pairs.clone(), 0.1, 1);
        let got = evaluator.metrics(&tables[0], &tables[1], &tables[2]);

        let support = pairs.support(&tree);
        let kinds = outcomes(&tree);
        let p = tree.num_prompts() as f64;
        let (mut kl_init, mut kl_ref, mut gold, mut ood, mut entropy, mut invalid) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for (x, data) in support.iter().enumerate() {
            let [lp, li, lr] = [&policy, &initial, &reference].map(|w| brute_force_log_probs(&tree, &model, w, x));
            let total: f64 = lp.iter().map(|l| l.exp()).sum();
            assert!((total - 1.0).abs() < 1e-5, "outcome probabilities sum to {total}");
            let worst = tree.gold(x).iter().copied().fold(f64::INFINITY, f64::min);
            for (o, (_, code)) in kinds.iter().enumerate() {
                let pi = lp[o].exp();
                kl_init += pi * (lp[o] - li[o]) / p;
                kl_ref += pi * (lp[o] - lr[o]) / p;
                entropy -= pi * lp[o] / p;
                gold += pi * code.map_or(worst, |c| tree.gold(x)[c]) / p;
                if !code.is_some_and(|c| data.contains(&c)) {
                    ood += pi / p;
                }
                if code.is_none() {
                    invalid += pi / p;
                }
            }
            for (o, (_, code)) in kinds.iter().enumerate() {
                if let Some(c) = code {
                    assert!((tables[0].response_log_probs(x)[*c] - lp[o]).abs() < 1e-5);
                }
            }
        }
        for (name, want) in [
            ("eval/kl_init", kl_init),
            ("eval/kl_ref", kl_ref),
            ("eval/gold_reward", gold),
            ("eval/ood_mass", ood),
            ("eval/entropy", entropy),
            ("eval/invalid_mass", invalid),
        ] {
            assert!((got[name] - want).abs() < 1e-5, "{name}: exact {} vs brute force {want}", got[name]);
        }
        assert!(kl_init > 0.01 && kl_ref > 0.01 && invalid > 0.01, "a real test: {kl_init} {kl_ref} {invalid}");
        // The differentiable path SFT trains through agrees with the float64 tree.
        let diff = tree.response_log_probs(&model, &policy.frozen()).unwrap().to_vec2::<f32>().unwrap();
        for (x, row) in diff.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                assert!((f64::from(*v) - tables[0].response_log_probs(x)[c]).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn the_task_is_standardized_and_the_behaviour_is_a_distribution() {
        let tree = ToyTree::new(ToyTreeParams::from_config(&RunConfig::default()));
        assert_eq!(tree.responses_per_prompt(), 1296);
        for x in 0..tree.num_prompts() {
            let g = tree.gold(x);
            let mean = g.iter().sum::<f64>() / g.len() as f64;
            let var = g.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / g.len() as f64;
            assert!(mean.abs() < 1e-9 && (var - 1.0).abs() < 1e-9);
            assert!((tree.behaviour(x).iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
        // Distinct prompts get distinct token strings.
        let prompts: std::collections::HashSet<Vec<u32>> =
            (0..tree.num_prompts()).map(|x| tree.prompt_tokens(x)).collect();
        assert_eq!(prompts.len(), tree.num_prompts());
    }

    #[test]
    fn the_same_seed_gives_the_same_task_policy_and_data() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let build_in = |dir: &tempfile::TempDir, seed: u64| {
            let cfg = RunConfig { toy_cache_dir: Some(dir.path().to_path_buf()), ..tiny_config(seed) };
            crate::tasks::build(&cfg, &Device::Cpu).unwrap().setup
        };
        let (a, b, c) = (build_in(&dirs[0], 5), build_in(&dirs[1], 5), build_in(&dirs[2], 6));
        // Built separately (no shared cache), bit-identical.
        assert_eq!(a.initial.max_abs_diff(&b.initial).unwrap(), 0.0);
        let pairs = |s: &Setup| match &s.data {
            Dataset::Paired(p) => p.clone(),
            Dataset::Unpaired(_) => unreachable!("DPO data is paired"),
        };
        assert_eq!(pairs(&a), pairs(&b));
        assert_ne!(pairs(&a), pairs(&c));
        assert!(a.initial.max_abs_diff(&c.initial).unwrap() > 0.0);
    }

    #[test]
    fn kto_gets_the_unpaired_view_of_the_same_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RunConfig { toy_cache_dir: Some(dir.path().to_path_buf()), ..tiny_config(5) };
        let kto = RunConfig { loss_type: crate::config::LossType::Kto, ..cfg.clone() };
        let paired = crate::tasks::build(&cfg, &Device::Cpu).unwrap().setup.data;
        let unpaired = crate::tasks::build(&kto, &Device::Cpu).unwrap().setup.data;
        let (Dataset::Paired(p), Dataset::Unpaired(u)) = (paired, unpaired) else { panic!("wrong views") };
        assert_eq!(u.len(), 2 * p.len());
        for pair in &p {
            assert!(u.iter().any(|e| e.label && e.sequence == pair.chosen));
            assert!(u.iter().any(|e| !e.label && e.sequence == pair.rejected));
        }
        // KTO's mismatched completion (the neighbour's in its batch) answers another prompt for
        // at least 1 − 1/P of the examples, as on real data.
        let batch = kto.per_device_train_batch_size;
        let crossing = (0..u.len())
            .filter(|&i| {
                let j = mismatched_neighbour(i, u.len(), batch);
                assert_eq!(u[i].kl_completion, u[j].sequence.completion);
                u[i].sequence.prompt != u[j].sequence.prompt
            })
            .count();
        let floor = 1.0 - 1.0 / kto.toy_num_prompts as f64;
        assert!(crossing as f64 / u.len() as f64 >= floor, "{crossing} of {} cross prompts", u.len());
    }

    #[test]
    fn labels_follow_bradley_terry_on_the_gold_reward() {
        // Many pairs at T = 1: the share of labels against the gold reward matches the expected
        // Bradley–Terry error rate of the same pairs.
        let params = ToyTreeParams { pairs_per_prompt: 2000, ..ToyTreeParams::from_config(&RunConfig::default()) };
        let tree = ToyTree::new(params);
        let cfg = RunConfig::default();
        let model = CausalLm::new(tree.model_config(&cfg).unwrap(), &Device::Cpu);
        let uniformish = ParamSet::random(&model.config, 0, 0.02, &Device::Cpu).unwrap();
        let table = tree.tree_log_probs(&model, &uniformish.frozen()).unwrap();
        let pairs = ToyPairs::sample(&tree, &table);
        assert!(pairs.pairs.iter().all(|(_, w, l)| w != l));
        let expected: f64 =
            pairs.pairs.iter().map(|&(x, w, l)| sigmoid(-(tree.gold(x)[w] - tree.gold(x)[l]).abs())).sum::<f64>()
                / pairs.pairs.len() as f64;
        let observed = pairs.label_noise(&tree);
        let se = (expected * (1.0 - expected) / pairs.pairs.len() as f64).sqrt();
        assert!((observed - expected).abs() < 4.0 * se, "noise {observed} vs {expected} ± {se}");
    }
}
