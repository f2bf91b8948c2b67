//! Per-sequence completion log-probs, TRL's `get_batch_logps`: the sum over completion tokens
//! of `log π(token | prefix)`, prompt and padding masked out.

use candle_core::{DType, Device, Tensor};

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
    let width = batch.width();
    let ids = input_ids(batch, dev)?;
    let logits = model.forward(weights, forward_input(&ids, batch), None)?;
    let logits = logits.narrow(1, 0, width - 1)?;
    let targets = ids.narrow(1, 1, width - 1)?.contiguous()?;
    let logp = target_log_probs(&logits, &targets)?;
    Ok((logp * completion_targets_mask(batch, dev)?)?)
}

/// Completion log-prob sums. Only the completion positions go through the output projection
/// and the log-softmax (as TRL's completion-only LM head does): the prompt's and the padding's
/// vocabulary-sized work is skipped.
pub fn sequence_logps(model: &CausalLm, weights: &Weights, batch: &Collated) -> Result<SequenceLogps> {
    let dev = model.device();
    let (rows, width) = (batch.rows(), batch.width());
    let ids = input_ids(batch, dev)?;
    let hidden = model.hidden_states(weights, forward_input(&ids, batch), None)?;
    // Position p of row r is scored when token p + 1 is a completion token.
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let mut owner = Vec::new();
    for (r, (mask, row_ids)) in batch.completion_mask.iter().zip(&batch.input_ids).enumerate() {
        for p in 0..width - 1 {
            if mask[p + 1] == 1 {
                positions.push((r * width + p) as u32);
                targets.push(row_ids[p + 1]);
                owner.push(r);
            }
        }
    }
    let n = positions.len();
    if n == 0 {
        return Ok(SequenceLogps { sums: Tensor::zeros(rows, DType::F32, dev)? });
    }
    let picked = hidden.reshape((rows * width, hidden.dim(2)?))?.index_select(&Tensor::new(positions, dev)?, 0)?;
    let logp = target_log_probs(&model.lm_head(weights, &picked)?, &Tensor::new(targets, dev)?)?;
    // Per-row sums as one small matmul with a 0/1 ownership matrix, which keeps the gradient.
    let mut select = vec![0f32; rows * n];
    for (i, &r) in owner.iter().enumerate() {
        select[r * n + i] = 1.0;
    }
    let sums = Tensor::from_vec(select, (rows, n), dev)?.matmul(&logp.unsqueeze(1)?)?.squeeze(1)?;
    Ok(SequenceLogps { sums })
}

fn input_ids(batch: &Collated, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(batch.input_ids.concat(), (batch.rows(), batch.width()), dev)?)
}

/// Right-padded rows attend by their mask; positions count from 0 in every row.
fn forward_input<'a>(ids: &'a Tensor, batch: &'a Collated) -> ForwardInput<'a> {
    ForwardInput { input_ids: ids, attention_mask: Some(&batch.attention_mask), position_ids: None }
}

/// `completion_mask[:, 1:]` as f32: which next-token targets are completion tokens.
fn completion_targets_mask(batch: &Collated, dev: &Device) -> Result<Tensor> {
    let width = batch.width();
    let data: Vec<f32> = batch.completion_mask.iter().flat_map(|m| m[1..].iter().map(|&v| f32::from(v))).collect();
    Ok(Tensor::from_vec(data, (batch.rows(), width - 1), dev)?)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use candle_core::D;

    use super::*;

    #[test]
    fn completion_only_scoring_equals_summing_the_full_per_token_log_probs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/trl-parity/tiny-gpt-neox");
        let (model, params) = CausalLm::from_hf_dir(&dir, &Device::Cpu).unwrap();
        let seqs = [
            crate::data::Sequence { prompt: vec![5, 6, 7], completion: vec![8, 9, 2] },
            crate::data::Sequence { prompt: vec![10], completion: vec![11, 2] },
        ];
        let batch = Collated::from_sequences(&seqs, 0);
        let fast: Vec<f32> = sequence_logps(&model, &params.frozen(), &batch).unwrap().sums.to_vec1().unwrap();
        let full: Vec<f32> =
            token_logps(&model, &params.frozen(), &batch).unwrap().sum(D::Minus1).unwrap().to_vec1().unwrap();
        for (a, b) in fast.iter().zip(&full) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
