//! One micro-batch's loss and gradients, split across the worker threads by examples (data
//! parallelism), and the reference log-probs a step compares against.

use candle_core::{Device, Tensor, Var};

use crate::config::{LossType, RunConfig};
use crate::data::{self, Batch, Collated, Dataset, PairedExample, UnpairedExample};
use crate::error::Result;
use crate::logps::{sequence_logps, Checkpointed};
use crate::loss::{self, LossOutput, Pair};
use crate::model::{add_grads, ParamSet};
use crate::setup::Setup;
use crate::workers;

/// Loss metrics and summed gradients of one micro-batch. The model work is split across
/// worker threads by examples (data parallelism: no synchronisation inside the small matrix
/// ops), while the loss is computed once on the whole micro-batch, exactly as without threads:
///
/// 1. each shard's sequence log-probs, in parallel (the policy's keep their graphs);
/// 2. the loss on leaf copies of all of them, and its gradient with respect to each;
/// 3. each shard pushes its part of that gradient back through its graph, in parallel.
///
/// `scale` multiplies the loss (1 / gradient_accumulation_steps).
pub(crate) fn micro_batch_grads(
    cfg: &RunConfig,
    setup: &Setup,
    policy: &ParamSet,
    reference: ReferenceSource<'_>,
    indices: &[usize],
    scale: f64,
) -> Result<MicroBatchGrads> {
    let shards = shards(cfg, setup, indices);
    let parts = workers::in_parallel(&shards, |shard| {
        shard_forward(setup, policy, reference, shard, cfg.gradient_checkpointing)
    })?;

    let leaves: Vec<Var> =
        parts.iter().map(|p| Var::from_tensor(&p.policy.detach())).collect::<candle_core::Result<_>>()?;
    let out = batch_loss(cfg, &parts, &leaves)?;
    let upstream = (out.loss.clone() * scale)?.backward()?;

    let shard_ids: Vec<usize> = (0..parts.len()).collect();
    let shard_grads = workers::in_parallel(&shard_ids, |&k| {
        let Some(d) = upstream.get(leaves[k].as_tensor()) else { return Ok(vec![None; policy.vars().len()]) };
        match &parts[k].checkpointed {
            Some((forward, rows)) => forward.backward(&setup.model, policy, rows, d),
            None => Ok(policy.grads_from(&(&parts[k].policy * d)?.sum_all()?.backward()?)),
        }
    })?;
    let mut grads: Vec<Option<Tensor>> = vec![None; policy.vars().len()];
    for shard in shard_grads {
        add_grads(&mut grads, shard)?;
    }
    Ok(MicroBatchGrads { metrics: out.metrics, grads })
}

/// A micro-batch split into one shard per worker thread, each collated (padded) on its own.
fn shards<'a>(cfg: &RunConfig, setup: &Setup, indices: &'a [usize]) -> Vec<&'a [usize]> {
    // A GPU parallelises inside each op; splitting the batch would only shrink its kernels.
    let threads = if setup.model.device().is_cpu() { workers::worker_threads(cfg.num_threads) } else { 1 };
    let threads = threads.min(indices.len()).max(1);
    indices.chunks(indices.len().div_ceil(threads).max(1)).collect()
}

/// What one micro-batch contributes to an optimizer step.
#[derive(Debug)]
pub(crate) struct MicroBatchGrads {
    /// TRL's metrics for the micro-batch.
    pub metrics: Vec<(&'static str, f64)>,
    /// One entry per policy parameter, `None` where no gradient reached it.
    pub grads: Vec<Option<Tensor>>,
}

/// One shard's sequence log-probs. Paired rows are `[chosen…, rejected…]`; unpaired rows are
/// in order, with their labels and, for KTO's z₀, the mismatched completions' log-ratios.
struct ShardForward {
    /// With a graph, unless `checkpointed` holds what rebuilds it layer by layer.
    policy: Tensor,
    checkpointed: Option<(Checkpointed, Collated)>,
    reference: Tensor,
    token_counts: Vec<f32>,
    labels: Vec<bool>,
    kl_log_ratios: Option<Tensor>,
}

fn shard_forward(
    setup: &Setup,
    policy: &ParamSet,
    reference: ReferenceSource<'_>,
    indices: &[usize],
    gradient_checkpointing: bool,
) -> Result<ShardForward> {
    let model = &setup.model;
    let (rows, labels, kl_rows) = collate(setup, indices);
    // z₀ is detached in TRL: the mismatched pairs go through the policy without gradients.
    let kl_log_ratios = match &kl_rows {
        Some(kl) => {
            let reference_kl = match reference {
                ReferenceSource::Weights(w) => sequence_logps(model, &w.frozen(), kl)?.sums,
                ReferenceSource::Precomputed(table) => table.gather(indices, 1, model.device())?,
            };
            Some((sequence_logps(model, &policy.frozen(), kl)?.sums - reference_kl)?)
        }
        None => None,
    };
    let reference = match reference {
        ReferenceSource::Weights(w) => sequence_logps(model, &w.frozen(), &rows)?.sums,
        ReferenceSource::Precomputed(table) => match &setup.data {
            // Rows are [chosen…, rejected…].
            Dataset::Paired(_) => {
                Tensor::cat(&[table.gather(indices, 0, model.device())?, table.gather(indices, 1, model.device())?], 0)?
            }
            Dataset::Unpaired(_) => table.gather(indices, 0, model.device())?,
        },
    };
    let token_counts = rows.completion_token_counts();
    let (policy, checkpointed) = if gradient_checkpointing {
        let forward = Checkpointed::forward(model, policy, &rows)?;
        (forward.sums.clone(), Some((forward, rows)))
    } else {
        (sequence_logps(model, &policy.trainable(), &rows)?.sums, None)
    };
    Ok(ShardForward { policy, checkpointed, reference, token_counts, labels, kl_log_ratios })
}

/// The rows of some examples as the loss needs them: paired `[chosen…, rejected…]`, or
/// unpaired rows with their labels and KTO's mismatched rows.
fn collate(setup: &Setup, indices: &[usize]) -> (Collated, Vec<bool>, Option<Collated>) {
    let pad = setup.pad_token_id;
    match &setup.data {
        Dataset::Paired(examples) => {
            let picked: Vec<&PairedExample> = indices.iter().map(|&i| &examples[i]).collect();
            let Batch::Paired(rows) = data::collate_paired(&picked, pad) else { unreachable!("paired collation") };
            (rows, Vec::new(), None)
        }
        Dataset::Unpaired(examples) => {
            let picked: Vec<&UnpairedExample> = indices.iter().map(|&i| &examples[i]).collect();
            let Batch::Unpaired { rows, labels, kl_rows } = data::collate_unpaired(&picked, pad) else {
                unreachable!("unpaired collation")
            };
            (rows, labels, Some(kl_rows))
        }
    }
}

/// Where a step's reference log-probs come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReferenceSource<'a> {
    /// A forward pass of these weights on every micro-batch.
    Weights(&'a ParamSet),
    /// Looked up in a table computed before the first step.
    Precomputed(&'a ReferenceLogps),
}

/// Every example's reference log-probs, computed once (TRL's `precompute_ref_log_probs`): for
/// paired data `[chosen, rejected]`, for unpaired `[completion, mismatched completion]` (KTO's z₀).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReferenceLogps {
    per_example: Vec<[f32; 2]>,
}

impl ReferenceLogps {
    /// In dataset order, `per_device_train_batch_size` examples at a time (TRL's batches), each
    /// split and padded as a training micro-batch is: read in order, the table then holds exactly
    /// what a reference forward pass per step would compute.
    pub(crate) fn compute(cfg: &RunConfig, setup: &Setup, reference: &ParamSet) -> Result<Self> {
        let all: Vec<usize> = (0..setup.data.len()).collect();
        let frozen = reference.frozen();
        let mut per_example = Vec::with_capacity(all.len());
        for batch in all.chunks(cfg.per_device_train_batch_size).flat_map(|b| shards(cfg, setup, b)) {
            let (rows, _, kl_rows) = collate(setup, batch);
            let sums: Vec<f32> = sequence_logps(&setup.model, &frozen, &rows)?.sums.to_vec1()?;
            let second: Vec<f32> = match &kl_rows {
                Some(kl) => sequence_logps(&setup.model, &frozen, kl)?.sums.to_vec1()?,
                None => sums[batch.len()..].to_vec(),
            };
            per_example.extend(sums.iter().zip(&second).take(batch.len()).map(|(&a, &b)| [a, b]));
        }
        Ok(Self { per_example })
    }

    /// Column `which` of the given examples, as a `(indices.len(),)` tensor.
    fn gather(&self, indices: &[usize], which: usize, device: &Device) -> Result<Tensor> {
        let values: Vec<f32> = indices.iter().map(|&i| self.per_example[i][which]).collect();
        Ok(Tensor::new(values, device)?)
    }
}

/// The configured loss on the whole micro-batch, reassembled from the shards in order.
fn batch_loss(cfg: &RunConfig, parts: &[ShardForward], leaves: &[Var]) -> Result<LossOutput> {
    let dev = leaves[0].device().clone();
    match cfg.loss_type {
        LossType::Sigmoid | LossType::Ipo => {
            // Each shard is [chosen…, rejected…]; the loss wants all chosen, then all rejected.
            let halves = |t: &Tensor, second: bool| -> Result<Tensor> {
                let n = t.dim(0)? / 2;
                Ok(t.narrow(0, if second { n } else { 0 }, n)?)
            };
            let pair = |ts: &[Tensor]| -> Result<Pair> {
                let chosen = ts.iter().map(|t| halves(t, false)).collect::<Result<Vec<_>>>()?;
                let rejected = ts.iter().map(|t| halves(t, true)).collect::<Result<Vec<_>>>()?;
                Ok(Pair { chosen: Tensor::cat(&chosen, 0)?, rejected: Tensor::cat(&rejected, 0)? })
            };
            let pol = pair(&leaves.iter().map(|l| l.as_tensor().clone()).collect::<Vec<_>>())?;
            let refl = pair(&parts.iter().map(|p| p.reference.clone()).collect::<Vec<_>>())?;
            if cfg.loss_type == LossType::Ipo {
                let counts: Vec<Tensor> = parts
                    .iter()
                    .map(|p| Tensor::new(p.token_counts.as_slice(), &dev))
                    .collect::<candle_core::Result<_>>()?;
                loss::ipo_loss(&pol, &refl, &pair(&counts)?, cfg.beta)
            } else {
                loss::dpo_loss(&pol, &refl, cfg.beta)
            }
        }
        LossType::Kto => {
            let cat = |ts: Vec<Tensor>| -> Result<Tensor> { Ok(Tensor::cat(&ts, 0)?) };
            let pol = cat(leaves.iter().map(|l| l.as_tensor().clone()).collect())?;
            let refl = cat(parts.iter().map(|p| p.reference.clone()).collect())?;
            let kl = cat(parts.iter().filter_map(|p| p.kl_log_ratios.clone()).collect())?;
            let labels: Vec<bool> = parts.iter().flat_map(|p| p.labels.iter().copied()).collect();
            let z0 = loss::kto_z0(&kl)?;
            loss::kto_loss(&pol, &refl, &labels, z0, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
        }
    }
}
