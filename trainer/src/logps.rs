//! Per-sequence completion log-probs, TRL's `get_batch_logps`: the sum over completion tokens
//! of `log π(token | prefix)`, prompt and padding masked out.

use candle_core::{DType, Device, Tensor, Var};

use crate::data::Collated;
use crate::error::Result;
use crate::model::{add_grads, target_log_probs, CausalLm, ForwardInput, LayerInputs, ParamSet, Weights};

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
    let ids = input_ids(batch, model.device())?;
    let hidden = model.hidden_states(weights, forward_input(&ids, batch), None)?;
    Ok(SequenceLogps { sums: completion_sums(model, weights, &hidden, batch)? })
}

/// The completion log-prob sums `(rows,)` from the final hidden states `(rows, width, hidden)`.
fn completion_sums(model: &CausalLm, weights: &Weights, hidden: &Tensor, batch: &Collated) -> Result<Tensor> {
    let dev = model.device();
    let (rows, width) = (batch.rows(), batch.width());
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
        return Ok(Tensor::zeros(rows, DType::F32, dev)?);
    }
    let picked = hidden.reshape((rows * width, hidden.dim(2)?))?.index_select(&Tensor::new(positions, dev)?, 0)?;
    let logp = target_log_probs(&model.lm_head(weights, &picked)?, &Tensor::new(targets, dev)?)?;
    // Per-row sums as one small matmul with a 0/1 ownership matrix, which keeps the gradient.
    let mut select = vec![0f32; rows * n];
    for (i, &r) in owner.iter().enumerate() {
        select[r * n + i] = 1.0;
    }
    Ok(Tensor::from_vec(select, (rows, n), dev)?.matmul(&logp.unsqueeze(1)?)?.squeeze(1)?)
}

/// The policy's completion log-probs with gradient checkpointing: the forward pass keeps only
/// each layer's input, without a graph, and [`Checkpointed::backward`] rebuilds one layer's
/// graph at a time. Peak activation memory is then the layer inputs plus one layer, instead of
/// every layer's intermediates; the price is a second forward pass of the policy.
pub struct Checkpointed {
    /// The sums `(rows,)`, without a graph.
    pub sums: Tensor,
    ids: Tensor,
    shared: LayerInputs,
    /// The input of every layer, then the input of the final norm.
    layer_inputs: Vec<Tensor>,
}

impl Checkpointed {
    pub fn forward(model: &CausalLm, params: &ParamSet, batch: &Collated) -> Result<Self> {
        let w = params.frozen();
        let ids = input_ids(batch, model.device())?;
        let shared = model.layer_inputs(forward_input(&ids, batch), 0)?;
        let mut x = model.embed(&w, &ids)?;
        let mut layer_inputs = Vec::with_capacity(model.config.num_hidden_layers + 1);
        for layer in 0..model.config.num_hidden_layers {
            let next = model.block(&w, layer, &x, &shared, None)?;
            layer_inputs.push(x);
            x = next;
        }
        let sums = completion_sums(model, &w, &model.final_norm(&w, &x)?, batch)?;
        layer_inputs.push(x);
        Ok(Self { sums, ids, shared, layer_inputs })
    }

    /// Each parameter's gradient of `Σ sums · upstream`, in parameter order (`None` where none
    /// reaches it), from the head down to the embeddings, one segment's graph alive at a time.
    pub fn backward(
        &self,
        model: &CausalLm,
        params: &ParamSet,
        batch: &Collated,
        upstream: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let w = params.trainable();
        let mut grads: Vec<Option<Tensor>> = vec![None; params.vars().len()];
        let mut accumulate = |store: &candle_core::backprop::GradStore| -> Result<()> {
            add_grads(&mut grads, params.grads_from(store))
        };
        // Each segment's input becomes a leaf, so its gradient is what the segment below needs.
        let layers = model.config.num_hidden_layers;
        let input = Var::from_tensor(&self.layer_inputs[layers])?;
        let sums = completion_sums(model, &w, &model.final_norm(&w, input.as_tensor())?, batch)?;
        let store = (sums * upstream)?.sum_all()?.backward()?;
        accumulate(&store)?;
        let Some(mut output_grad) = store.get(input.as_tensor()).cloned() else {
            return Ok(grads); // no completion token: nothing below the head is reached
        };
        for layer in (0..layers).rev() {
            let input = Var::from_tensor(&self.layer_inputs[layer])?;
            let output = model.block(&w, layer, input.as_tensor(), &self.shared, None)?;
            let store = (output * &output_grad)?.sum_all()?.backward()?;
            accumulate(&store)?;
            output_grad = store.get(input.as_tensor()).cloned().expect("a layer's output depends on its input");
        }
        let store = (model.embed(&w, &self.ids)? * &output_grad)?.sum_all()?.backward()?;
        accumulate(&store)?;
        Ok(grads)
    }
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

    #[test]
    fn checkpointed_gradients_equal_the_full_graphs_on_every_architecture() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/trl-parity");
        let seqs = [
            crate::data::Sequence { prompt: vec![5, 6, 7], completion: vec![8, 9, 2] },
            crate::data::Sequence { prompt: vec![10], completion: vec![11, 12, 13, 2] },
            crate::data::Sequence { prompt: vec![3, 4], completion: vec![2] },
        ];
        let batch = Collated::from_sequences(&seqs, 0);
        for name in ["tiny-llama", "tiny-qwen2", "tiny-gpt-neox"] {
            let (model, params) = CausalLm::from_hf_dir(&root.join(name), &Device::Cpu).unwrap();
            let upstream = Tensor::new(&[0.7f32, -1.3, 0.4], &Device::Cpu).unwrap();
            let full = sequence_logps(&model, &params.trainable(), &batch).unwrap().sums;
            let expected = params.grads_from(&(&full * &upstream).unwrap().sum_all().unwrap().backward().unwrap());
            let checkpointed = Checkpointed::forward(&model, &params, &batch).unwrap();
            let sums_diff = (&checkpointed.sums - &full).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(sums_diff.to_scalar::<f32>().unwrap(), 0.0, "{name}: the same forward values");
            let got = checkpointed.backward(&model, &params, &batch, &upstream).unwrap();
            for ((param, e), g) in params.names().iter().zip(&expected).zip(&got) {
                let e =
                    e.as_ref().unwrap_or_else(|| panic!("{name}: `{param}` gets no gradient without checkpointing"));
                let g = g.as_ref().unwrap_or_else(|| panic!("{name}: `{param}` gets no gradient with checkpointing"));
                let scale = e.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let diff = (g - e).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(scale > 0.0, "{name}: `{param}` has an all-zero gradient");
                assert!(diff <= 1e-5 * scale.max(1.0), "{name}: `{param}` differs by {diff} (largest entry {scale})");
            }
        }
    }
}
