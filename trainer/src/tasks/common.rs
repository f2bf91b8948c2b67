//! What the toy tasks share: what a task hands the training loop, the toy model's config, the
//! order of the preference data, and small sampling helpers.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{LossType, RunConfig};
use crate::data::{Dataset, PairedExample};
use crate::error::Result;
use crate::eval::Evaluator;
use crate::model::ModelConfig;
use crate::setup::{dataset_for_loss, Setup};

/// What a toy task hands the training loop.
pub struct TaskSetup {
    pub setup: Setup,
    pub evaluator: Box<dyn Evaluator>,
}

impl std::fmt::Debug for TaskSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSetup").field("setup", &self.setup).finish_non_exhaustive()
    }
}

/// A small Llama for the toy tasks: the vocabulary is the task's, the sizes come from the config.
pub fn toy_model_config(cfg: &RunConfig, vocab_size: usize, max_positions: usize) -> Result<ModelConfig> {
    ModelConfig::toy_llama(vocab_size, max_positions, cfg.toy_hidden_size, cfg.toy_num_layers, cfg.toy_num_heads)
}

/// The toy preference data as a real dataset comes: in a seeded random order rather than
/// prompt by prompt, with neighbours from different prompts wherever the counts allow. KTO trains
/// on the unpaired view, its rows ordered the same way on their own, so the completion each
/// example is mismatched with for the KL estimate (its neighbour's) answers another prompt.
pub(crate) fn toy_dataset(pairs: Vec<PairedExample>, cfg: &RunConfig) -> Result<Dataset> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    rng.set_stream(21);
    let data = match cfg.loss_type {
        LossType::Kto => {
            let rows = Dataset::Paired(pairs).into_unpaired();
            let order = spread_order(&rows.iter().map(|r| r.sequence.prompt.clone()).collect::<Vec<_>>(), &mut rng);
            Dataset::Unpaired(order.into_iter().map(|i| rows[i].clone()).collect())
        }
        LossType::Sigmoid | LossType::Ipo => {
            let order = spread_order(&pairs.iter().map(|p| p.chosen.prompt.clone()).collect::<Vec<_>>(), &mut rng);
            Dataset::Paired(order.into_iter().map(|i| pairs[i].clone()).collect())
        }
    };
    dataset_for_loss(data, cfg)
}

/// A random order of `keys.len()` items in which no two neighbours share a key, except where
/// one key is left over at the end: a shuffle, then each clash swapped with the next item of
/// another key.
fn spread_order<K: PartialEq>(keys: &[K], rng: &mut impl Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.shuffle(rng);
    for i in 1..order.len() {
        if keys[order[i]] == keys[order[i - 1]] {
            if let Some(j) = (i + 1..order.len()).find(|&j| keys[order[j]] != keys[order[i - 1]]) {
                order.swap(i, j);
            }
        }
    }
    order
}

/// Draws an index from unnormalised probabilities.
pub(crate) fn sample_index(probs: &[f64], rng: &mut impl Rng) -> usize {
    let total: f64 = probs.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, p) in probs.iter().enumerate() {
        if u < *p {
            return i;
        }
        u -= p;
    }
    probs.iter().rposition(|&p| p > 0.0).unwrap_or(0)
}

pub(crate) fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{mismatched_neighbour, Sequence};

    fn pairs(prompts: usize, per_prompt: usize) -> Vec<PairedExample> {
        (0..prompts * per_prompt)
            .map(|i| {
                let prompt = vec![(i / per_prompt) as u32];
                let completion = |side: u32| vec![1000 + 2 * i as u32 + side];
                PairedExample {
                    chosen: Sequence { prompt: prompt.clone(), completion: completion(0) },
                    rejected: Sequence { prompt, completion: completion(1) },
                }
            })
            .collect()
    }

    /// Share of examples whose mismatched completion (their neighbour's) answers another prompt.
    fn cross_prompt_share(data: &Dataset, batch: usize) -> f64 {
        let Dataset::Unpaired(rows) = data else { panic!("KTO data is unpaired") };
        let crossing = (0..rows.len())
            .filter(|&i| {
                let j = mismatched_neighbour(i, rows.len(), batch);
                assert_eq!(rows[i].kl_completion, rows[j].sequence.completion);
                rows[i].sequence.prompt != rows[j].sequence.prompt
            })
            .count();
        crossing as f64 / rows.len() as f64
    }

    #[test]
    fn kto_mismatched_pairs_cross_prompts_as_on_real_data() {
        for (prompts, per_prompt, batch) in [(8, 32, 32), (2, 16, 8), (3, 5, 4), (16, 64, 32), (5, 3, 2)] {
            for seed in 0..5 {
                let cfg = RunConfig {
                    loss_type: LossType::Kto,
                    per_device_train_batch_size: batch,
                    seed,
                    ..RunConfig::default()
                };
                let data = toy_dataset(pairs(prompts, per_prompt), &cfg).unwrap();
                let share = cross_prompt_share(&data, batch);
                let floor = 1.0 - 1.0 / prompts as f64;
                assert!(share >= floor, "P = {prompts}, seed {seed}: {share} of KL pairs cross prompts, < {floor}");
            }
        }
    }

    #[test]
    fn toy_data_is_shuffled_by_the_seed_and_keeps_every_pair() {
        let cfg = RunConfig { seed: 3, ..RunConfig::default() };
        let Dataset::Paired(a) = toy_dataset(pairs(4, 8), &cfg).unwrap() else { panic!("DPO data is paired") };
        let Dataset::Paired(b) = toy_dataset(pairs(4, 8), &cfg).unwrap() else { panic!("DPO data is paired") };
        assert_eq!(a, b, "the same seed, the same order");
        assert_ne!(a, pairs(4, 8), "not prompt by prompt");
        let mut sorted = a.clone();
        sorted.sort_by_key(|p| p.chosen.completion.clone());
        assert_eq!(sorted, pairs(4, 8));
        assert!(a.windows(2).all(|w| w[0].chosen.prompt != w[1].chosen.prompt), "neighbours differ in prompt");
    }
}
