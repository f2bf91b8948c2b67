//! A differentiable decoder-only causal LM covering HF Llama, Qwen2 and GPT-NeoX (Pythia).
//!
//! The architecture is data ([`ModelConfig`]); the weights live in a [`ParamSet`]. One
//! [`CausalLm`] serves the policy, the reference and the initial policy alike: they differ only
//! in the weights passed to [`CausalLm::forward`].

mod config;
mod ops;
mod params;
pub mod sampling;

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

pub use config::{Architecture, ModelConfig, RopeScaling};
pub use ops::{apply_rope, layer_norm, linear, rms_norm, softmax_last_dim, target_log_probs};
pub use params::{param_specs, ParamSet, Weights};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct CausalLm {
    pub config: ModelConfig,
    inv_freq: Vec<f32>,
    device: Device,
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
        Self { config, inv_freq, device: device.clone() }
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
    pub fn forward(&self, w: &Weights, input: ForwardInput<'_>, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let cfg = &self.config;
        let (batch, seq) = input.input_ids.dims2()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        let (cos, sin) = self.rope_tables(batch, seq, past, input.position_ids)?;
        let mask = self.attention_bias(batch, seq, past, input.attention_mask)?;
        let flat_ids = input.input_ids.flatten_all()?;
        let mut x = match cfg.architecture {
            Architecture::GptNeox => w.get("gpt_neox.embed_in.weight")?,
            _ => w.get("model.embed_tokens.weight")?,
        }
        .index_select(&flat_ids, 0)?
        .reshape((batch, seq, cfg.hidden_size))?;
        for layer in 0..cfg.num_hidden_layers {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[layer]);
            x = match cfg.architecture {
                Architecture::GptNeox => self.neox_block(w, layer, &x, &cos, &sin, &mask, layer_cache)?,
                _ => self.llama_block(w, layer, &x, &cos, &sin, &mask, layer_cache)?,
            };
        }
        let (x, head) = match cfg.architecture {
            Architecture::GptNeox => (
                layer_norm(
                    &x,
                    w.get("gpt_neox.final_layer_norm.weight")?,
                    w.get("gpt_neox.final_layer_norm.bias")?,
                    cfg.norm_eps,
                )?,
                if cfg.tie_word_embeddings { "gpt_neox.embed_in.weight" } else { "embed_out.weight" },
            ),
            _ => (
                rms_norm(&x, w.get("model.norm.weight")?, cfg.norm_eps)?,
                if cfg.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" },
            ),
        };
        linear(&x, w.get(head)?, None)
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
        let h = rms_norm(x, w.get(&format!("{p}.input_layernorm.weight"))?, cfg.norm_eps)?;
        let proj = |name: &str, input: &Tensor| -> Result<Tensor> {
            linear(input, w.get(&format!("{p}.{name}.weight"))?, w.get_opt(&format!("{p}.{name}.bias")))
        };
        let q = self.split_heads(&proj("self_attn.q_proj", &h)?, cfg.num_attention_heads)?;
        let k = self.split_heads(&proj("self_attn.k_proj", &h)?, cfg.num_key_value_heads)?;
        let v = self.split_heads(&proj("self_attn.v_proj", &h)?, cfg.num_key_value_heads)?;
        let attn = self.attention(q, k, v, cos, sin, mask, cache)?;
        let x = (x + proj("self_attn.o_proj", &attn)?)?;
        let h = rms_norm(&x, w.get(&format!("{p}.post_attention_layernorm.weight"))?, cfg.norm_eps)?;
        let gated = (proj("mlp.gate_proj", &h)?.silu()? * proj("mlp.up_proj", &h)?)?;
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
        let ln = |name: &str, input: &Tensor| -> Result<Tensor> {
            layer_norm(input, w.get(&format!("{p}.{name}.weight"))?, w.get(&format!("{p}.{name}.bias"))?, cfg.norm_eps)
        };
        let proj = |name: &str, input: &Tensor| -> Result<Tensor> {
            linear(input, w.get(&format!("{p}.{name}.weight"))?, w.get_opt(&format!("{p}.{name}.bias")))
        };
        let h = ln("input_layernorm", x)?;
        // The fused projection is laid out per head as [q | k | v], each head_dim wide.
        let qkv = self.split_heads(&proj("attention.query_key_value", &h)?, cfg.num_attention_heads)?;
        let d = cfg.head_dim;
        let q = qkv.narrow(D::Minus1, 0, d)?;
        let k = qkv.narrow(D::Minus1, d, d)?;
        let v = qkv.narrow(D::Minus1, 2 * d, d)?.contiguous()?;
        let attn = proj("attention.dense", &self.attention(q, k, v, cos, sin, mask, cache)?)?;
        let mlp = |input: &Tensor| -> Result<Tensor> {
            proj("mlp.dense_4h_to_h", &proj("mlp.dense_h_to_4h", input)?.gelu_erf()?)
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
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let q = self.rotate(&q, cos, sin)?;
        let mut k = self.rotate(&k, cos, sin)?;
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
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let probs = softmax_last_dim(&scores)?;
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

    pub fn dtype(&self) -> DType {
        DType::F32
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
