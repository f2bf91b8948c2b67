//! Per-sequence completion log-probs, TRL's `get_batch_logps`: the sum over completion tokens
//! of `log π(token | prefix)`, prompt and padding masked out.

use candle_core::{Device, Tensor, D};

use crate::data::Collated;
use crate::error::Result;
use crate::model::{target_log_probs, CausalLm, ForwardInput, Weights};

/// Completion log-prob sums `(rows,)`.
#[derive(Debug, Clone)]
pub struct SequenceLogps {
    pub sums: Tensor,
}

/// Per-token log-probs `(rows, width - 1)` of each next token, zero outside the completion.
pub fn token_logps(model: &CausalLm, weights: &Weights, batch: &Collated) -> Result<Tensor> {
    let dev = model.device();
    let (rows, width) = (batch.rows(), batch.width());
    let ids = Tensor::from_vec(batch.input_ids.concat(), (rows, width), dev)?;
    let logits = model.forward(
        weights,
        ForwardInput { input_ids: &ids, attention_mask: Some(&batch.attention_mask), position_ids: None },
        None,
    )?;
    let logits = logits.narrow(1, 0, width - 1)?;
    let targets = ids.narrow(1, 1, width - 1)?.contiguous()?;
    let logp = target_log_probs(&logits, &targets)?;
    Ok((logp * completion_targets_mask(batch, dev)?)?)
}

pub fn sequence_logps(model: &CausalLm, weights: &Weights, batch: &Collated) -> Result<SequenceLogps> {
    let per_token = token_logps(model, weights, batch)?;
    Ok(SequenceLogps { sums: per_token.sum(D::Minus1)? })
}

/// `completion_mask[:, 1:]` as f32: which next-token targets are completion tokens.
fn completion_targets_mask(batch: &Collated, dev: &Device) -> Result<Tensor> {
    let width = batch.width();
    let data: Vec<f32> = batch.completion_mask.iter().flat_map(|m| m[1..].iter().map(|&v| f32::from(v))).collect();
    Ok(Tensor::from_vec(data, (batch.rows(), width - 1), dev)?)
}
