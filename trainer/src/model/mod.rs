//! A differentiable decoder-only causal LM covering HF Llama, Qwen2 and GPT-NeoX (Pythia).
//!
//! The architecture is data ([`ModelConfig`]); the weights live in a [`ParamSet`]. One
//! [`CausalLm`] serves the policy, the reference and the initial policy alike: they differ only
//! in the weights passed to [`CausalLm::forward`].
//!
//! Mixed precision works as transformers' `bf16`/`fp16` training does: the weights stay float32
//! (the optimizer's master copy) and each forward pass casts them to the compute dtype, so the
//! gradients come back to them in float32. Norms, the attention softmax and the log-softmax over
//! the vocabulary run in float32, as autocast and HF's eager attention run them.

#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub(crate) mod fused;
mod hf_config;
pub mod inference;
pub mod kernel_check;
mod ops;
mod params;
pub mod registry;
pub mod reward;
pub mod sampling;

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

pub use fused::{apply_rope, gelu, layer_norm, rms_norm, scaled_masked_softmax, swiglu, target_log_probs};
pub use hf_config::{Architecture, ModelConfig, RopeScaling};
pub use ops::{linear, softmax_last_dim};
pub(crate) use params::standard_normal;
pub use params::{add_grads, param_specs, ParamSet, Weights};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct CausalLm {
    pub config: ModelConfig,
    inv_freq: Vec<f32>,
    device: Device,
    /// The dtype of the matrix multiplications and the activations between them.
    compute_dtype: DType,
}

/// What every layer of one forward pass shares: rotary tables and the attention bias.
#[derive(Debug, Clone)]
pub struct LayerInputs {
    cos: Tensor,
    sin: Tensor,
    /// Additive float32 bias; the softmax runs in float32.
    mask: Tensor,
}

/// Per-layer keys and values of the positions already decoded, for incremental sampling.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers] }
    }

    /// Positions already held (the key length).
    pub fn len(&self) -> usize {
        self.layers.first().and_then(Option::as_ref).map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a forward pass needs besides the token ids.
#[derive(Debug, Clone, Copy)]
pub struct ForwardInput<'a> {
    /// `(batch, seq)` u32 token ids.
    pub input_ids: &'a Tensor,
    /// `(batch, keys)` of 1 (attend) / 0 (padding) over every key position, cached ones
    /// included. `None` means no padding.
    pub attention_mask: Option<&'a [Vec<u8>]>,
    /// `(batch, seq)` positions for rotary embeddings; `None` means `cache_len..cache_len+seq`
    /// for every row.
    pub position_ids: Option<&'a [Vec<u32>]>,
}

impl<'a> ForwardInput<'a> {
    pub fn ids(input_ids: &'a Tensor) -> Self {
        Self { input_ids, attention_mask: None, position_ids: None }
    }
}

impl CausalLm {
    pub fn new(config: ModelConfig, device: &Device) -> Self {
        let inv_freq = rope_inv_freq(&config);
        Self { config, inv_freq, device: device.clone(), compute_dtype: DType::F32 }
    }

    /// The same model computing in `dtype` (bfloat16 or float16) with float32 weights.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.compute_dtype = dtype;
        self
    }

    /// A weight in the compute dtype. The cast is recorded, so a trainable weight's gradient
    /// arrives in float32.
    fn weight(&self, w: &Weights, name: &str) -> Result<Tensor> {
        Ok(w.get(name)?.to_dtype(self.compute_dtype)?)
    }

    fn weight_opt(&self, w: &Weights, name: &str) -> Result<Option<Tensor>> {
        Ok(w.get_opt(name).map(|t| t.to_dtype(self.compute_dtype)).transpose()?)
    }

    /// Reads `config.json` and the weights of an HF model directory.
    pub fn from_hf_dir(dir: &Path, device: &Device) -> Result<(Self, ParamSet)> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let params = ParamSet::load_hf_dir(dir, &config, device)?;
        Ok((Self::new(config, device), params))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Logits at every position, `(batch, seq, vocab)`.
    pub fn forward(&self, w: &Weights, input: ForwardInput<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let hidden = self.hidden_states(w, input, cache)?;
        self.lm_head(w, &hidden)
    }

    /// The output projection, for hidden states of any leading shape: scoring only the
    /// positions that matter skips the rest of the vocabulary-sized work. The logits are
    /// float32 whatever the compute dtype: a log-softmax over the vocabulary needs the range.
    pub fn lm_head(&self, w: &Weights, hidden: &Tensor) -> Result<Tensor> {
        let head = match (self.config.architecture, self.config.tie_word_embeddings) {
            (Architecture::GptNeox, true) => "gpt_neox.embed_in.weight",
            (Architecture::GptNeox, false) => "embed_out.weight",
            (_, true) => "model.embed_tokens.weight",
            (_, false) => "lm_head.weight",
        };
        Ok(linear(hidden, &self.weight(w, head)?, None)?.to_dtype(DType::F32)?)
    }

    /// The final normalised hidden states `(batch, seq, hidden)`, before the output projection.
    pub fn hidden_states(
        &self,
        w: &Weights,
        input: ForwardInput<'_>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let past = cache.as_ref().map_or(0, |c| c.len());
        let shared = self.layer_inputs(input, past)?;
        let mut x = self.embed(w, input.input_ids)?;
        for layer in 0..self.config.num_hidden_layers {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[layer]);
            x = self.block(w, layer, &x, &shared, layer_cache)?;
        }
        self.final_norm(w, &x)
    }

    /// The rotary tables and attention bias for `input`, after `past` cached positions.
    pub fn layer_inputs(&self, input: ForwardInput<'_>, past: usize) -> Result<LayerInputs> {
        let (batch, seq) = input.input_ids.dims2()?;
        let (cos, sin) = self.rope_tables(batch, seq, past, input.position_ids)?;
        let mask = self.attention_bias(batch, seq, past, input.attention_mask)?;
        Ok(LayerInputs { cos: cos.to_dtype(self.compute_dtype)?, sin: sin.to_dtype(self.compute_dtype)?, mask })
    }

    /// Token embeddings `(batch, seq, hidden)` of `(batch, seq)` ids.
    pub fn embed(&self, w: &Weights, input_ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let table = match self.config.architecture {
            Architecture::GptNeox => "gpt_neox.embed_in.weight",
            _ => "model.embed_tokens.weight",
        };
        Ok(self.weight(w, table)?.index_select(&input_ids.flatten_all()?, 0)?.reshape((
            batch,
            seq,
            self.config.hidden_size,
        ))?)
    }

    /// One decoder layer.
    pub fn block(
        &self,
        w: &Weights,
        layer: usize,
        x: &Tensor,
        shared: &LayerInputs,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let LayerInputs { cos, sin, mask } = shared;
        match self.config.architecture {
            Architecture::GptNeox => self.neox_block(w, layer, x, cos, sin, mask, cache),
            _ => self.llama_block(w, layer, x, cos, sin, mask, cache),
        }
    }

    /// The norm after the last layer.
    pub fn final_norm(&self, w: &Weights, x: &Tensor) -> Result<Tensor> {
        match self.config.architecture {
            Architecture::GptNeox => self.layer_norm(x, w, "gpt_neox.final_layer_norm"),
            _ => self.rms_norm(x, w, "model.norm.weight"),
        }
    }

    /// RMSNorm in float32 with the float32 weight, back in the input's dtype.
    fn rms_norm(&self, x: &Tensor, w: &Weights, weight: &str) -> Result<Tensor> {
        let normed = rms_norm(&x.to_dtype(DType::F32)?, w.get(weight)?, self.config.norm_eps)?;
        Ok(normed.to_dtype(x.dtype())?)
    }

    /// LayerNorm (`{prefix}.weight`, `{prefix}.bias`) in float32, back in the input's dtype.
    fn layer_norm(&self, x: &Tensor, w: &Weights, prefix: &str) -> Result<Tensor> {
        let normed = layer_norm(
            &x.to_dtype(DType::F32)?,
            w.get(&format!("{prefix}.weight"))?,
            w.get(&format!("{prefix}.bias"))?,
            self.config.norm_eps,
        )?;
        Ok(normed.to_dtype(x.dtype())?)
    }

    #[allow(clippy::too_many_arguments)]
    fn llama_block(
        &self,
        w: &Weights,
        layer: usize,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let p = format!("model.layers.{layer}");
        let h = self.rms_norm(x, w, &format!("{p}.input_layernorm.weight"))?;
        let proj = |name: &str, input: &Tensor| -> Result<Tensor> {
            let bias = self.weight_opt(w, &format!("{p}.{name}.bias"))?;
            linear(input, &self.weight(w, &format!("{p}.{name}.weight"))?, bias.as_ref())
        };
        let q = self.split_heads(&proj("self_attn.q_proj", &h)?, cfg.num_attention_heads)?;
        let k = self.split_heads(&proj("self_attn.k_proj", &h)?, cfg.num_key_value_heads)?;
        let v = self.split_heads(&proj("self_attn.v_proj", &h)?, cfg.num_key_value_heads)?;
        let attn = self.attention(&q, &k, v, cos, sin, mask, cache)?;
        let x = (x + proj("self_attn.o_proj", &attn)?)?;
        let h = self.rms_norm(&x, w, &format!("{p}.post_attention_layernorm.weight"))?;
        let gated = swiglu(&proj("mlp.gate_proj", &h)?, &proj("mlp.up_proj", &h)?)?;
        Ok((x + proj("mlp.down_proj", &gated)?)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn neox_block(
        &self,
        w: &Weights,
        layer: usize,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let p = format!("gpt_neox.layers.{layer}");
        let ln = |name: &str, input: &Tensor| -> Result<Tensor> { self.layer_norm(input, w, &format!("{p}.{name}")) };
        let proj = |name: &str, input: &Tensor| -> Result<Tensor> {
            let bias = self.weight_opt(w, &format!("{p}.{name}.bias"))?;
            linear(input, &self.weight(w, &format!("{p}.{name}.weight"))?, bias.as_ref())
        };
        let h = ln("input_layernorm", x)?;
        // The fused projection is laid out per head as [q | k | v], each head_dim wide.
        let qkv = self.split_heads(&proj("attention.query_key_value", &h)?, cfg.num_attention_heads)?;
        let d = cfg.head_dim;
        let q = qkv.narrow(D::Minus1, 0, d)?;
        let k = qkv.narrow(D::Minus1, d, d)?;
        let v = qkv.narrow(D::Minus1, 2 * d, d)?.contiguous()?;
        let attn = proj("attention.dense", &self.attention(&q, &k, v, cos, sin, mask, cache)?)?;
        let mlp = |input: &Tensor| -> Result<Tensor> {
            proj("mlp.dense_4h_to_h", &gelu(&proj("mlp.dense_h_to_4h", input)?)?)
        };
        if cfg.use_parallel_residual {
            let m = mlp(&ln("post_attention_layernorm", x)?)?;
            Ok(((m + attn)? + x)?)
        } else {
            let x = (attn + x)?;
            let m = mlp(&ln("post_attention_layernorm", &x)?)?;
            Ok((m + x)?)
        }
    }

    /// `(batch, seq, heads * width)` -> `(batch, heads, seq, width)`.
    fn split_heads(&self, t: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, s, hw) = t.dims3()?;
        Ok(t.reshape((b, s, heads, hw / heads))?.transpose(1, 2)?.contiguous()?)
    }

    /// Rotary embeddings, the KV cache, grouped-query attention and the output merge.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        // matmul needs row-major operands; `cat` along the last dim may return a transposed layout.
        let q = self.rotate(q, cos, sin)?.contiguous()?;
        let mut k = self.rotate(k, cos, sin)?.contiguous()?;
        let mut v = v;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let (b, kv_heads, keys, d) = k.dims4()?;
        let groups = cfg.kv_groups();
        if groups > 1 {
            let expand = |t: &Tensor| -> candle_core::Result<Tensor> {
                t.unsqueeze(2)?.broadcast_as((b, kv_heads, groups, keys, d))?.reshape((b, kv_heads * groups, keys, d))
            };
            k = expand(&k)?;
            v = expand(&v)?;
        }
        let scale = 1.0 / (d as f64).sqrt();
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        let probs = scaled_masked_softmax(&scores, mask, scale)?.to_dtype(self.compute_dtype)?;
        let out = probs.matmul(&v.contiguous()?)?; // (b, heads, seq, d)
        let seq = out.dim(2)?;
        Ok(out.transpose(1, 2)?.reshape((b, seq, cfg.num_attention_heads * d))?)
    }

    /// Applies rotary embeddings to the first `rotary_dim` dimensions of each head.
    fn rotate(&self, t: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let rot = self.config.rotary_dim();
        let d = t.dim(D::Minus1)?;
        if rot == d {
            return apply_rope(t, cos, sin);
        }
        let rotated = apply_rope(&t.narrow(D::Minus1, 0, rot)?, cos, sin)?;
        Ok(Tensor::cat(&[&rotated, &t.narrow(D::Minus1, rot, d - rot)?], D::Minus1)?)
    }

    /// cos/sin of shape `(batch or 1, 1, seq, rotary_dim)`, computed in f32 as transformers does.
    fn rope_tables(
        &self,
        batch: usize,
        seq: usize,
        past: usize,
        position_ids: Option<&[Vec<u32>]>,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let rows: Vec<Vec<u32>> = match position_ids {
            Some(p) => p.to_vec(),
            None => vec![(past as u32..(past + seq) as u32).collect()],
        };
        let n = rows.len();
        let mut cos = Vec::with_capacity(n * seq * half * 2);
        let mut sin = Vec::with_capacity(n * seq * half * 2);
        for row in &rows {
            if row.len() != seq {
                return Err(Error::model("position_ids must have one entry per input token"));
            }
            for &pos in row {
                let angles: Vec<f32> = self.inv_freq.iter().map(|f| pos as f32 * f).collect();
                for _ in 0..2 {
                    cos.extend(angles.iter().map(|a| a.cos()));
                    sin.extend(angles.iter().map(|a| a.sin()));
                }
            }
        }
        debug_assert!(n == 1 || n == batch);
        let shape = (n, 1, seq, half * 2);
        Ok((Tensor::from_vec(cos, shape, &self.device)?, Tensor::from_vec(sin, shape, &self.device)?))
    }

    /// Additive attention bias `(batch or 1, 1, seq, keys)`: 0 where allowed, the most negative
    /// f32 where the key is in the future or padding (as transformers' eager attention does).
    fn attention_bias(
        &self,
        batch: usize,
        seq: usize,
        past: usize,
        attention_mask: Option<&[Vec<u8>]>,
    ) -> Result<Tensor> {
        let keys = past + seq;
        // Without padding one causal mask serves every row.
        let attention_mask = attention_mask.filter(|m| m.iter().any(|row| row.contains(&0)));
        let rows = attention_mask.map_or(1, <[Vec<u8>]>::len);
        let mut data = Vec::with_capacity(rows * seq * keys);
        for r in 0..rows {
            let pad = attention_mask.map(|m| &m[r]);
            if pad.is_some_and(|m| m.len() != keys) {
                return Err(Error::model(format!("attention_mask rows must cover all {keys} key positions")));
            }
            for qi in 0..seq {
                for ki in 0..keys {
                    let allowed = ki <= past + qi && pad.is_none_or(|m| m[ki] != 0);
                    data.push(if allowed { 0f32 } else { f32::MIN });
                }
            }
        }
        debug_assert!(rows == 1 || rows == batch);
        Ok(Tensor::from_vec(data, (rows, 1, seq, keys), &self.device)?)
    }

    /// The compute dtype (the weights themselves are float32).
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }
}

/// Rotary inverse frequencies, with Llama-3 or linear scaling applied.
fn rope_inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let dim = cfg.rotary_dim();
    let base = cfg.rope_theta;
    let mut inv: Vec<f64> = (0..dim / 2).map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64)).collect();
    match &cfg.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => inv.iter_mut().for_each(|f| *f /= factor),
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            let old = *original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            for f in &mut inv {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
    }
    inv.into_iter().map(|f| f as f32).collect()
}

#[cfg(test)]
mod tests {
    use candle_core::{Tensor, Var};
    use serde_json::json;

    use super::*;
    use crate::optim::{AdamW, AdamWConfig};

    /// Small but complete configs: GQA + untied Llama, tied Qwen2 with q/k/v biases, and
    /// GPT-NeoX with partial rotary, parallel residual and biases everywhere.
    fn configs() -> Vec<ModelConfig> {
        [
            json!({"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "tie_word_embeddings": false}),
            json!({"model_type": "qwen2", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "tie_word_embeddings": true, "rope_theta": 1000000.0}),
            json!({"model_type": "gpt_neox", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
                   "num_hidden_layers": 2, "num_attention_heads": 2, "rotary_pct": 0.5,
                   "use_parallel_residual": true, "tie_word_embeddings": false}),
        ]
        .iter()
        .map(|v| ModelConfig::from_hf_json(v).unwrap())
        .collect()
    }

    #[test]
    fn every_parameter_gets_a_gradient_and_moves_after_one_step_on_every_architecture() {
        let dev = Device::Cpu;
        for cfg in configs() {
            let arch = cfg.model_type_name();
            let model = CausalLm::new(cfg.clone(), &dev);
            let params = ParamSet::random(&cfg, 0, 0.2, &dev).unwrap();
            let before = params.deep_clone().unwrap();
            let ids: Vec<u32> = (0..2 * 7).map(|i| (i * 5 + 3) % 32).collect();
            let ids = Tensor::from_vec(ids, (2, 7), &dev).unwrap();
            let logits = model.forward(&params.trainable(), ForwardInput::ids(&ids), None).unwrap();
            let targets = ids.narrow(1, 1, 6).unwrap().contiguous().unwrap();
            let logp = target_log_probs(&logits.narrow(1, 0, 6).unwrap(), &targets).unwrap();
            let grads = logp.sum_all().unwrap().neg().unwrap().backward().unwrap();
            let mut grad_list = Vec::new();
            for (name, var) in params.iter() {
                let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{arch}: no gradient reaches `{name}`"));
                let max = g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(max > 0.0, "{arch}: `{name}` has an all-zero gradient");
                grad_list.push(g.clone());
            }
            let mut opt =
                AdamW::new(&params, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }).unwrap();
            let vars: Vec<Var> = params.vars().to_vec();
            opt.step(&vars, &grad_list, 1e-3).unwrap();
            for ((name, after), (_, old)) in params.iter().zip(before.iter()) {
                let moved = (after.as_tensor() - old.as_tensor())
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(moved > 0.0, "{arch}: `{name}` did not change after one AdamW step");
            }
        }
    }

    /// The gradient of the summed next-token log-probs with respect to every parameter.
    fn log_prob_grads(model: &CausalLm, params: &ParamSet, ids: &Tensor) -> Vec<Tensor> {
        let logits = model.forward(&params.trainable(), ForwardInput::ids(ids), None).unwrap();
        let seq = ids.dim(1).unwrap();
        let targets = ids.narrow(1, 1, seq - 1).unwrap().contiguous().unwrap();
        let logp = target_log_probs(&logits.narrow(1, 0, seq - 1).unwrap(), &targets).unwrap();
        let grads = logp.sum_all().unwrap().backward().unwrap();
        params
            .iter()
            .map(|(name, var)| {
                grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient reaches `{name}`")).clone()
            })
            .collect()
    }

    #[test]
    fn bf16_and_fp16_training_give_every_float32_weight_a_gradient_close_to_the_float32_one() {
        let dev = Device::Cpu;
        let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 7 + 3) % 32).collect();
        let ids = Tensor::from_vec(ids, (2, 9), &dev).unwrap();
        for cfg in configs() {
            let arch = cfg.model_type_name();
            let params = ParamSet::random(&cfg, 4, 0.2, &dev).unwrap();
            let exact = log_prob_grads(&CausalLm::new(cfg.clone(), &dev), &params, &ids);
            for (dtype, tolerance) in [(DType::BF16, 5e-2), (DType::F16, 1e-2)] {
                let model = CausalLm::new(cfg.clone(), &dev).with_compute_dtype(dtype);
                let mixed = log_prob_grads(&model, &params, &ids);
                for (((name, _), e), m) in params.iter().zip(&exact).zip(&mixed) {
                    assert_eq!(m.dtype(), DType::F32, "{arch} {dtype:?}: `{name}`'s gradient is not float32");
                    let norm =
                        |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
                    let relative = norm(&(m - e).unwrap()) / norm(e);
                    assert!(norm(e) > 0.0, "{arch}: `{name}` has an all-zero gradient");
                    assert!(
                        relative <= tolerance,
                        "{arch} {dtype:?}: `{name}`'s gradient is {relative} off (relative norm)"
                    );
                }
            }
        }
    }

    #[test]
    fn the_kv_cache_path_gives_the_same_logits_as_the_full_forward() {
        let dev = Device::Cpu;
        for cfg in configs() {
            let model = CausalLm::new(cfg.clone(), &dev);
            let params = ParamSet::random(&cfg, 1, 0.2, &dev).unwrap();
            let w = params.frozen();
            let ids = Tensor::new(&[[3u32, 9, 1, 30, 7, 12]], &dev).unwrap();
            let full: Vec<Vec<f32>> =
                model.forward(&w, ForwardInput::ids(&ids), None).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
            let mut cache = KvCache::new(cfg.num_hidden_layers);
            let head = ids.narrow(1, 0, 4).unwrap();
            let mut stepwise: Vec<Vec<f32>> = model
                .forward(&w, ForwardInput::ids(&head), Some(&mut cache))
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2()
                .unwrap();
            for t in 4..6 {
                let one = ids.narrow(1, t, 1).unwrap();
                let out: Vec<Vec<f32>> = model
                    .forward(&w, ForwardInput::ids(&one), Some(&mut cache))
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
                    .to_vec2()
                    .unwrap();
                stepwise.extend(out);
            }
            for (a, b) in full.iter().flatten().zip(stepwise.iter().flatten()) {
                assert!((a - b).abs() < 1e-5, "{}: {a} vs {b}", cfg.model_type_name());
            }
        }
    }

    #[test]
    fn rope_theta_is_read_from_the_top_level_or_from_rope_parameters() {
        let base = json!({"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                          "num_hidden_layers": 1, "num_attention_heads": 1});
        let mut old = base.clone();
        old["rope_theta"] = json!(500000.0);
        let mut new = base;
        new["rope_parameters"] = json!({"rope_theta": 500000.0, "rope_type": "default"});
        assert_eq!(ModelConfig::from_hf_json(&old).unwrap().rope_theta, 500000.0);
        assert_eq!(ModelConfig::from_hf_json(&new).unwrap().rope_theta, 500000.0);
    }

    #[test]
    fn llama3_rope_scaling_matches_transformers_inverse_frequencies() {
        let cfg = ModelConfig::from_hf_json(&json!({
            "model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 1, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        }))
        .unwrap();
        // transformers' _compute_llama3_parameters for head_dim 8, computed independently.
        let expected = [1.0, 0.037_606_030_930_863_93, 0.000_524_846_160_992_954_7, 6.647_869_871_181_236e-6];
        for (got, want) in rope_inv_freq(&cfg).iter().zip(expected) {
            assert!((f64::from(*got) - want).abs() <= 1e-6 * want, "{got} vs {want}");
        }
        let round_trip = ModelConfig::from_hf_json(&cfg.to_hf_json()).unwrap();
        assert_eq!(round_trip, cfg);
    }

    #[test]
    fn an_unsupported_model_type_is_named_in_the_error() {
        let err = ModelConfig::from_hf_json(&json!({"model_type": "mamba", "vocab_size": 8})).unwrap_err();
        assert!(err.to_string().contains("\"mamba\""), "{err}");
    }

    #[test]
    fn a_sharded_checkpoint_loads_like_a_single_file() {
        let dev = Device::Cpu;
        let cfg = configs().remove(0);
        let params = ParamSet::random(&cfg, 3, 0.2, &dev).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = params.names().split_at(params.names().len() / 2);
        let mut index = serde_json::Map::new();
        for (file, names) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)]
        {
            let map: std::collections::HashMap<&str, Tensor> = params
                .iter()
                .filter(|(n, _)| names.iter().any(|x| x == n))
                .map(|(n, v)| (n, v.as_tensor().clone()))
                .collect();
            candle_core::safetensors::save(&map, dir.path().join(file)).unwrap();
            for n in names {
                index.insert(n.clone(), json!(file));
            }
        }
        std::fs::write(dir.path().join("model.safetensors.index.json"), json!({"weight_map": index}).to_string())
            .unwrap();
        let loaded = ParamSet::load_hf_dir(dir.path(), &cfg, &dev).unwrap();
        assert_eq!(loaded.max_abs_diff(&params).unwrap(), 0.0);
    }
}
