//! Named weight sets in HF layout: the policy, the reference and the frozen initial policy are
//! each a [`ParamSet`] over the same names, so a trust-region update or a checkpoint is a loop
//! over one list.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::hf_config::{Architecture, ModelConfig};
use crate::error::{Error, Result};

/// The parameter names and shapes of an architecture, in a fixed order: HF's names, so a saved
/// `model.safetensors` loads in `transformers`.
pub fn param_specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let q_out = cfg.num_attention_heads * cfg.head_dim;
    let kv_out = cfg.num_key_value_heads * cfg.head_dim;
    let mut specs: Vec<(String, Vec<usize>)> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>| specs.push((name, shape));
    match cfg.architecture {
        Architecture::Llama | Architecture::Qwen2 => {
            push("model.embed_tokens.weight".into(), vec![v, h]);
            for l in 0..cfg.num_hidden_layers {
                let p = format!("model.layers.{l}");
                push(format!("{p}.input_layernorm.weight"), vec![h]);
                for (proj, out) in [("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)] {
                    push(format!("{p}.self_attn.{proj}.weight"), vec![out, h]);
                    if cfg.attention_bias {
                        push(format!("{p}.self_attn.{proj}.bias"), vec![out]);
                    }
                }
                push(format!("{p}.self_attn.o_proj.weight"), vec![h, q_out]);
                if cfg.attention_bias && cfg.architecture == Architecture::Llama {
                    push(format!("{p}.self_attn.o_proj.bias"), vec![h]);
                }
                push(format!("{p}.post_attention_layernorm.weight"), vec![h]);
                for (proj, shape) in [("gate_proj", [i, h]), ("up_proj", [i, h]), ("down_proj", [h, i])] {
                    push(format!("{p}.mlp.{proj}.weight"), shape.to_vec());
                    if cfg.mlp_bias {
                        push(format!("{p}.mlp.{proj}.bias"), vec![shape[0]]);
                    }
                }
            }
            push("model.norm.weight".into(), vec![h]);
            if !cfg.tie_word_embeddings {
                push("lm_head.weight".into(), vec![v, h]);
            }
        }
        Architecture::GptNeox => {
            push("gpt_neox.embed_in.weight".into(), vec![v, h]);
            for l in 0..cfg.num_hidden_layers {
                let p = format!("gpt_neox.layers.{l}");
                for ln in ["input_layernorm", "post_attention_layernorm"] {
                    push(format!("{p}.{ln}.weight"), vec![h]);
                    push(format!("{p}.{ln}.bias"), vec![h]);
                }
                push(format!("{p}.attention.query_key_value.weight"), vec![3 * q_out, h]);
                if cfg.attention_bias {
                    push(format!("{p}.attention.query_key_value.bias"), vec![3 * q_out]);
                }
                push(format!("{p}.attention.dense.weight"), vec![h, q_out]);
                if cfg.attention_bias {
                    push(format!("{p}.attention.dense.bias"), vec![h]);
                }
                push(format!("{p}.mlp.dense_h_to_4h.weight"), vec![i, h]);
                push(format!("{p}.mlp.dense_h_to_4h.bias"), vec![i]);
                push(format!("{p}.mlp.dense_4h_to_h.weight"), vec![h, i]);
                push(format!("{p}.mlp.dense_4h_to_h.bias"), vec![h]);
            }
            push("gpt_neox.final_layer_norm.weight".into(), vec![h]);
            push("gpt_neox.final_layer_norm.bias".into(), vec![h]);
            if !cfg.tie_word_embeddings {
                push("embed_out.weight".into(), vec![v, h]);
            }
        }
    }
    specs
}

/// One full set of model weights, each a [`Var`] so it can be trained or updated in place.
#[derive(Debug)]
pub struct ParamSet {
    names: Vec<String>,
    vars: Vec<Var>,
}

/// A read-only view of a [`ParamSet`] for one forward pass.
#[derive(Debug, Clone)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::model(format!("missing weight `{name}`")))
    }

    pub fn get_opt(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }
}

impl ParamSet {
    /// A seeded random init: normal(0, `initializer_range`) for matrices, ones/zeros for norms
    /// and biases, as transformers initialises these architectures.
    pub fn random(cfg: &ModelConfig, seed: u64, initializer_range: f64, device: &Device) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut names = Vec::new();
        let mut vars = Vec::new();
        for (name, shape) in param_specs(cfg) {
            let n: usize = shape.iter().product();
            let is_norm = name.contains("norm") || name.contains("layernorm");
            let data: Vec<f32> = if name.ends_with(".bias") {
                vec![0.0; n]
            } else if is_norm {
                vec![1.0; n]
            } else {
                (0..n).map(|_| (standard_normal(&mut rng) * initializer_range) as f32).collect()
            };
            vars.push(Var::from_tensor(&Tensor::from_vec(data, shape, device)?)?);
            names.push(name);
        }
        Ok(Self { names, vars })
    }

    /// Loads `model.safetensors` or a sharded `model.safetensors.index.json` from an HF
    /// directory, as float32. Every expected weight must be present with the expected shape.
    pub fn load_hf_dir(dir: &Path, cfg: &ModelConfig, device: &Device) -> Result<Self> {
        Self::load_hf_dir_with(dir, param_specs(cfg), device)
    }

    /// [`ParamSet::load_hf_dir`] for any list of names and shapes (a reward model's backbone and head).
    pub fn load_hf_dir_with(dir: &Path, specs: Vec<(String, Vec<usize>)>, device: &Device) -> Result<Self> {
        let files = weight_files(dir)?.ok_or_else(|| {
            Error::model(format!("{}: neither model.safetensors nor model.safetensors.index.json", dir.display()))
        })?;
        let mut loaded: HashMap<String, Tensor> = HashMap::new();
        for file in &files {
            loaded.extend(candle_core::safetensors::load(file, device)?);
        }
        Self::from_tensors(specs, loaded, &format!("{}", dir.display()))
    }

    pub fn load_safetensors(path: &Path, cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let loaded = candle_core::safetensors::load(path, device)?;
        Self::from_tensors(param_specs(cfg), loaded, &format!("{}", path.display()))
    }

    fn from_tensors(
        specs: Vec<(String, Vec<usize>)>,
        mut loaded: HashMap<String, Tensor>,
        source: &str,
    ) -> Result<Self> {
        let mut names = Vec::new();
        let mut vars = Vec::new();
        for (name, shape) in specs {
            let t =
                loaded.remove(&name).ok_or_else(|| Error::model(format!("{source}: weight `{name}` is missing")))?;
            if t.dims() != shape.as_slice() {
                return Err(Error::model(format!(
                    "{source}: weight `{name}` has shape {:?}, expected {shape:?}",
                    t.dims()
                )));
            }
            vars.push(Var::from_tensor(&t.to_dtype(DType::F32)?.contiguous()?)?);
            names.push(name);
        }
        Ok(Self { names, vars })
    }

    /// A set of no weights: what a [`crate::setup::Setup`] keeps once it has handed its
    /// initial weights to the policy.
    pub(crate) fn empty() -> Self {
        Self { names: Vec::new(), vars: Vec::new() }
    }

    /// A deep copy: the new set shares no storage with this one.
    /// Named variables as they are (checks of single weights).
    pub(crate) fn from_vars(names: Vec<String>, vars: Vec<Var>) -> Self {
        Self { names, vars }
    }

    /// [`ParamSet::random`]'s distributions drawn by the device's own generator (cuRAND on a
    /// GPU): not reproducible across devices, for timing models of billions of parameters.
    pub fn random_on_device(cfg: &ModelConfig, initializer_range: f64, device: &Device) -> Result<Self> {
        let mut names = Vec::new();
        let mut vars = Vec::new();
        for (name, shape) in param_specs(cfg) {
            let is_norm = name.contains("norm") || name.contains("layernorm");
            let t = if name.ends_with(".bias") {
                Tensor::zeros(shape, candle_core::DType::F32, device)?
            } else if is_norm {
                Tensor::ones(shape, candle_core::DType::F32, device)?
            } else {
                Tensor::randn(0f32, initializer_range as f32, shape, device)?
            };
            vars.push(Var::from_tensor(&t)?);
            names.push(name);
        }
        Ok(Self { names, vars })
    }

    pub fn deep_clone(&self) -> Result<Self> {
        let vars =
            self.vars.iter().map(|v| Var::from_tensor(&v.as_tensor().copy()?)).collect::<candle_core::Result<_>>()?;
        Ok(Self { names: self.names.clone(), vars })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.names.iter().map(String::as_str).zip(&self.vars)
    }

    pub fn num_parameters(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }

    /// A view whose tensors are the variables themselves: the forward pass records gradients.
    pub fn trainable(&self) -> Weights {
        self.view(|v| v.as_tensor().clone())
    }

    /// A view detached from autograd: no graph is recorded, so the forward pass is cheaper.
    pub fn frozen(&self) -> Weights {
        self.view(|v| v.as_tensor().detach())
    }

    fn view(&self, f: impl Fn(&Var) -> Tensor) -> Weights {
        Weights { tensors: self.names.iter().cloned().zip(self.vars.iter().map(f)).collect() }
    }

    /// Each parameter's gradient in `store`, in parameter order; `None` where none reached it.
    pub fn grads_from(&self, store: &candle_core::backprop::GradStore) -> Vec<Option<Tensor>> {
        self.vars.iter().map(|v| store.get(v.as_tensor()).cloned()).collect()
    }

    /// Gradients for the optimizer: zeros where no gradient reached a parameter.
    pub fn dense_grads(&self, grads: Vec<Option<Tensor>>) -> Result<Vec<Tensor>> {
        Ok(grads
            .into_iter()
            .zip(&self.vars)
            .map(|(g, v)| g.map_or_else(|| v.zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?)
    }

    /// Overwrites every weight in place with `other`'s values.
    pub fn copy_from(&self, other: &ParamSet) -> Result<()> {
        for (dst, src) in self.vars.iter().zip(&other.vars) {
            dst.set(&src.as_tensor().detach().copy()?)?;
        }
        Ok(())
    }

    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        self.save_safetensors_as(path, DType::F32)
    }

    /// Saves every weight converted to `dtype` (the trained values stay float32).
    pub fn save_safetensors_as(&self, path: &Path, dtype: DType) -> Result<()> {
        let map: HashMap<&str, Tensor> = self
            .names
            .iter()
            .map(String::as_str)
            .zip(self.vars.iter().map(|v| v.as_tensor().detach().to_dtype(dtype)))
            .map(|(n, t)| t.map(|t| (n, t)))
            .collect::<candle_core::Result<_>>()?;
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    /// Bytes the weights occupy in memory.
    pub fn num_bytes(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count() * v.dtype().size_in_bytes()).sum()
    }

    /// Max absolute elementwise difference to another set over the same names.
    pub fn max_abs_diff(&self, other: &ParamSet) -> Result<f32> {
        let mut worst = 0f32;
        for (a, b) in self.vars.iter().zip(&other.vars) {
            let d = (a.as_tensor() - b.as_tensor())?.abs()?.max_all()?.to_scalar::<f32>()?;
            worst = worst.max(d);
        }
        Ok(worst)
    }
}

/// Adds `more` into `acc`, parameter by parameter (`None`: no gradient reached it).
pub fn add_grads(acc: &mut [Option<Tensor>], more: Vec<Option<Tensor>>) -> Result<()> {
    for (sum, g) in acc.iter_mut().zip(more) {
        *sum = match (sum.take(), g) {
            (Some(a), Some(b)) => Some((a + b)?),
            (a, b) => a.or(b),
        };
    }
    Ok(())
}

/// One draw from N(0, 1), the same sequence for a given rng everywhere (weights, toy tasks).
pub(crate) fn standard_normal(rng: &mut impl Rng) -> f64 {
    // Box-Muller: two uniforms in (0, 1] give one standard normal.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The weight files of an HF directory: `model.safetensors`, or every shard named by
/// `model.safetensors.index.json` (each once, sorted). `Ok(None)`: the directory holds neither.
pub fn weight_files(dir: &Path) -> Result<Option<Vec<std::path::PathBuf>>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.is_file() {
        return Ok(Some(vec![single]));
    }
    if !index.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|source| Error::Json { path: index.clone(), source })?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::model(format!("{}: no `weight_map`", index.display())))?;
    let mut shards: Vec<&str> = map.values().filter_map(Value::as_str).collect();
    shards.sort_unstable();
    shards.dedup();
    Ok(Some(shards.into_iter().map(|s| dir.join(s)).collect()))
}
