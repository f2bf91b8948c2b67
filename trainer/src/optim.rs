//! AdamW with PyTorch/transformers semantics and moments we can checkpoint, global-norm
//! gradient clipping, and transformers' learning-rate schedules.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{CpuStorage, DType, Device, InplaceOp3, Layout, Tensor, Var};

use crate::config::LrSchedulerType;
use crate::error::{Error, Result};
use crate::lerp::Lerp;
use crate::model::fused::{slice, slice_mut};
use crate::model::ParamSet;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// `torch.optim.AdamW`: decoupled weight decay, bias-corrected moments, `eps` outside the sqrt.
/// Weight decay applies to the parameters transformers' Trainer decays (see [`decays`]).
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    /// Optimizer steps taken so far.
    step: u64,
    /// Per parameter: whether weight decay applies.
    decay: Vec<bool>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
}

/// Whether transformers' Trainer applies weight decay to the parameter `name`
/// (`Trainer.get_decay_parameter_names`): not to biases nor to any norm's parameters, found by
/// the patterns `bias`, `layernorm`, `rmsnorm`, `(^|\.)norm($|\.)` and `_norm($|\.)` in the
/// lowercased name. (Its other rule, parameters inside `nn.LayerNorm` modules, adds nothing for
/// the architectures here: their LayerNorms are all named `*layernorm` or `*_layer_norm`.)
pub fn decays(name: &str) -> bool {
    let name = name.to_lowercase();
    let ends_a_segment = |pattern: &str, preceded_by_dot: bool| {
        name.match_indices(pattern).any(|(i, _)| {
            let before_ok = !preceded_by_dot || i == 0 || name.as_bytes()[i - 1] == b'.';
            let after = name.as_bytes().get(i + pattern.len());
            before_ok && after.is_none_or(|&c| c == b'.')
        })
    };
    !(name.contains("bias")
        || name.contains("layernorm")
        || name.contains("rmsnorm")
        || ends_a_segment("norm", true)
        || ends_a_segment("_norm", false))
}

impl AdamW {
    pub fn new(params: &ParamSet, cfg: AdamWConfig) -> Result<Self> {
        let zeros = || params.vars().iter().map(|v| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>();
        let decay = params.names().iter().map(|n| decays(n)).collect();
        Ok(Self { cfg, step: 0, decay, exp_avg: zeros()?, exp_avg_sq: zeros()? })
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Bytes the two moments occupy.
    pub fn num_bytes(&self) -> usize {
        self.exp_avg.iter().chain(&self.exp_avg_sq).map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
    }

    /// One update of every variable with its gradient at learning rate `lr`.
    pub fn step(&mut self, vars: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.cfg;
        let t = self.step as i32;
        let bias_correction1 = 1.0 - beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        let step_size = lr / bias_correction1;
        let params = vars.iter().zip(grads).zip(&self.decay).zip(&mut self.exp_avg).zip(&mut self.exp_avg_sq);
        for ((((var, grad), &decays), m), v) in params {
            let weight_decay = if decays { weight_decay } else { 0.0 };
            #[cfg(feature = "cuda")]
            if crate::model::fused::fused_in_place_on_gpu(var) {
                let scalars = crate::model::cuda::AdamWScalars {
                    beta1: beta1 as f32,
                    beta2: beta2 as f32,
                    decay: (1.0 - lr * weight_decay) as f32,
                    step_size: step_size as f32,
                    bias_correction2_sqrt: bias_correction2_sqrt as f32,
                    eps: eps as f32,
                };
                crate::model::cuda::adamw_step(var.as_tensor(), grad, m, v, scalars)?;
                continue;
            }
            if var.device().is_cpu() && var.dtype() == DType::F32 {
                // In place, three passes, no allocation: what torch's fused AdamW does on CPU.
                let grad = grad.contiguous()?;
                Lerp::Decay(beta1).in_place(m, &grad, false)?;
                Lerp::Decay(beta2).in_place(v, &grad, true)?;
                let update = ParamUpdate {
                    decay: (1.0 - lr * weight_decay) as f32,
                    step_size: step_size as f32,
                    bias_correction2_sqrt: bias_correction2_sqrt as f32,
                    eps: eps as f32,
                };
                var.as_tensor().inplace_op3(m, v, &update)?;
                continue;
            }
            let mut p = var.as_tensor().detach();
            if weight_decay != 0.0 {
                p = (p * (1.0 - lr * weight_decay))?;
            }
            *m = Lerp::Decay(beta1).of(m, grad)?;
            *v = Lerp::Decay(beta2).of(v, &grad.sqr()?)?;
            let denom = ((v.sqrt()? / bias_correction2_sqrt)? + eps)?;
            let update = ((&*m / denom)? * step_size)?;
            var.set(&(p - update)?)?;
        }
        Ok(())
    }

    pub fn save(&self, names: &[String], path: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (name, (m, v)) in names.iter().zip(self.exp_avg.iter().zip(&self.exp_avg_sq)) {
            map.insert(format!("exp_avg.{name}"), m.clone());
            map.insert(format!("exp_avg_sq.{name}"), v.clone());
        }
        map.insert("step".into(), Tensor::new(&[self.step as f64], &Device::Cpu)?);
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    pub fn load(names: &[String], cfg: AdamWConfig, path: &Path, device: &Device) -> Result<Self> {
        let decay = names.iter().map(|n| decays(n)).collect();
        let mut map = candle_core::safetensors::load(path, device)?;
        let missing = |what: &str| Error::Checkpoint { path: path.to_path_buf(), message: format!("missing `{what}`") };
        let mut take = |key: String| map.remove(&key).ok_or_else(|| missing(&key));
        let step = take("step".into())?.to_vec1::<f64>()?[0] as u64;
        let mut exp_avg = Vec::with_capacity(names.len());
        let mut exp_avg_sq = Vec::with_capacity(names.len());
        for name in names {
            exp_avg.push(take(format!("exp_avg.{name}"))?);
            exp_avg_sq.push(take(format!("exp_avg_sq.{name}"))?);
        }
        Ok(Self { cfg, step, decay, exp_avg, exp_avg_sq })
    }
}

/// `p ← p·(1 − lr·wd) − step_size · m / (sqrt(v)/sqrt(bc2) + eps)`, in place.
struct ParamUpdate {
    decay: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
    eps: f32,
}

impl InplaceOp3 for ParamUpdate {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (p, m, v) = (slice_mut(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
            let denom = v.sqrt() / self.bias_correction2_sqrt + self.eps;
            *p = *p * self.decay - (m / denom) * self.step_size;
        }
        Ok(())
    }
}

/// The global L2 norm of all gradients (reported before clipping, as TRL does).
pub fn global_grad_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    Ok(total.sqrt())
}

/// `torch.nn.utils.clip_grad_norm_`: scales every gradient by `max_norm / (norm + 1e-6)` when
/// that is below 1. Returns the norm before clipping. `max_norm = 0` disables clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_grad_norm(grads)?;
    clip_to_max_norm(grads, norm, max_norm)?;
    Ok(norm)
}

/// [`clip_grad_norm`] for gradients whose global norm is already known.
pub fn clip_to_max_norm(grads: &mut [Tensor], norm: f64, max_norm: f64) -> Result<()> {
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(())
}

/// Dynamic loss scaling for float16 training, with the rules of torch's `GradScaler`: the loss
/// is multiplied by `scale` so small gradients survive float16's range; a step whose gradients
/// overflow is skipped and the scale halves; after `GROWTH_INTERVAL` good steps in a row it
/// doubles.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    /// Good steps since the scale last changed.
    pub good_steps: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self { scale: 65_536.0, good_steps: 0 }
    }
}

impl LossScaler {
    pub const GROWTH_INTERVAL: u64 = 2000;

    /// Divides the gradients by the scale. Answers their global norm when they are all finite,
    /// `None` when they overflowed and the optimizer must skip the step; the scale is updated
    /// either way.
    pub fn unscale(&mut self, grads: &mut [Tensor]) -> Result<Option<f64>> {
        let inv = 1.0 / self.scale;
        for g in grads.iter_mut() {
            *g = (&*g * inv)?;
        }
        let norm = global_grad_norm(grads)?;
        let finite = norm.is_finite();
        if finite {
            self.good_steps += 1;
            if self.good_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.good_steps = 0;
        }
        Ok(finite.then_some(norm))
    }
}

/// transformers' schedules (`get_scheduler`): a `LambdaLR` whose factor depends on the number of
/// scheduler steps taken, which is the number of optimizer steps that were not skipped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub kind: LrSchedulerType,
    pub base_lr: f64,
    /// Ignored by `constant`, as transformers ignores it.
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// The learning rate of the optimizer step that follows `steps_done` scheduler steps.
    pub fn lr_at(&self, steps_done: u64) -> f64 {
        let s = steps_done as f64;
        let warmup = self.warmup_steps as f64;
        let in_warmup = steps_done < self.warmup_steps && self.kind != LrSchedulerType::Constant;
        if in_warmup {
            return self.base_lr * s / warmup.max(1.0);
        }
        let progress = (s - warmup) / (self.total_steps as f64 - warmup).max(1.0);
        let factor = match self.kind {
            LrSchedulerType::Constant | LrSchedulerType::ConstantWithWarmup => 1.0,
            LrSchedulerType::Linear => {
                ((self.total_steps as f64 - s) / (self.total_steps as f64 - warmup).max(1.0)).max(0.0)
            }
            LrSchedulerType::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        };
        self.base_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_scaler_skips_an_overflowing_step_halves_and_regrows_after_2000_good_steps() {
        let dev = Device::Cpu;
        let mut scaler = LossScaler::default();
        let mut grads = [Tensor::new(&[65_536f32, -131_072.0], &dev).unwrap()];
        assert_eq!(scaler.unscale(&mut grads).unwrap(), Some(5f64.sqrt()), "the unscaled gradients' norm");
        assert_eq!(grads[0].to_vec1::<f32>().unwrap(), vec![1.0, -2.0], "gradients come back unscaled");
        let mut overflowed = [Tensor::new(&[f32::INFINITY, 1.0], &dev).unwrap()];
        assert_eq!(scaler.unscale(&mut overflowed).unwrap(), None, "an overflow skips the step");
        assert_eq!(scaler, LossScaler { scale: 32_768.0, good_steps: 0 });
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            assert!(scaler.unscale(&mut [Tensor::new(&[1f32], &dev).unwrap()]).unwrap().is_some());
        }
        assert_eq!(scaler.scale, 32_768.0);
        assert!(scaler.unscale(&mut [Tensor::new(&[1f32], &dev).unwrap()]).unwrap().is_some());
        assert_eq!(scaler, LossScaler { scale: 65_536.0, good_steps: 0 });
    }

    fn schedule(kind: LrSchedulerType) -> LrSchedule {
        LrSchedule { kind, base_lr: 1.0, warmup_steps: 2, total_steps: 10 }
    }

    #[test]
    fn schedules_warm_up_linearly_then_follow_their_shape() {
        for kind in [LrSchedulerType::ConstantWithWarmup, LrSchedulerType::Linear, LrSchedulerType::Cosine] {
            let s = schedule(kind);
            assert_eq!(s.lr_at(0), 0.0);
            assert_eq!(s.lr_at(1), 0.5);
            assert_eq!(s.lr_at(2), 1.0);
        }
        assert_eq!(schedule(LrSchedulerType::ConstantWithWarmup).lr_at(9), 1.0);
        assert!((schedule(LrSchedulerType::Linear).lr_at(6) - 0.5).abs() < 1e-12);
        assert!((schedule(LrSchedulerType::Cosine).lr_at(6) - 0.5).abs() < 1e-12);
        assert_eq!(schedule(LrSchedulerType::Linear).lr_at(10), 0.0);
        assert_eq!(schedule(LrSchedulerType::Linear).lr_at(12), 0.0, "never negative past the end");
    }

    #[test]
    fn constant_ignores_warmup_as_transformers_does() {
        let s = schedule(LrSchedulerType::Constant);
        assert_eq!((s.lr_at(0), s.lr_at(1), s.lr_at(9)), (1.0, 1.0, 1.0));
    }

    #[test]
    fn weight_decay_skips_biases_and_norms_as_transformers_does() {
        for name in [
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "lm_head.weight",
            "gpt_neox.layers.1.attention.query_key_value.weight",
            "model.normalizer.weight",
        ] {
            assert!(decays(name), "{name} decays");
        }
        for name in [
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.post_attention_layernorm.weight",
            "model.norm.weight",
            "model.layers.0.self_attn.q_proj.bias",
            "gpt_neox.layers.0.input_layernorm.bias",
            "gpt_neox.final_layer_norm.weight",
            "gpt_neox.layers.1.mlp.dense_4h_to_h.bias",
            "norm.weight",
            "model.rmsnorm",
        ] {
            assert!(!decays(name), "{name} does not decay");
        }
    }

    #[test]
    fn adamw_decays_weights_but_not_norm_gains() {
        let cfg = crate::model::ModelConfig::from_hf_json(&serde_json::json!({
            "model_type": "llama", "vocab_size": 8, "hidden_size": 4, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2
        }))
        .unwrap();
        let params = ParamSet::random(&cfg, 1, 0.1, &Device::Cpu).unwrap();
        let before = params.deep_clone().unwrap();
        let mut opt =
            AdamW::new(&params, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.5 }).unwrap();
        let zero_grads: Vec<Tensor> = params.vars().iter().map(|v| v.zeros_like().unwrap()).collect();
        opt.step(params.vars(), &zero_grads, 0.1).unwrap();
        for ((name, after), (_, was)) in params.iter().zip(before.iter()) {
            let ratio = (after.as_tensor() / was.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let expected = if decays(name) { 0.95 } else { 1.0 };
            assert!(ratio.iter().all(|r| (r - expected).abs() < 1e-6), "{name}: {ratio:?}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_reports_the_norm_before() {
        let dev = Device::Cpu;
        let mut grads = vec![Tensor::new(&[3f32, 0.0], &dev).unwrap(), Tensor::new(&[4f32], &dev).unwrap()];
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((global_grad_norm(&grads).unwrap() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr_against_the_gradient_sign() {
        let dev = Device::Cpu;
        let var = Var::new(&[1f32, -1.0, 0.5], &dev).unwrap();
        let grad = Tensor::new(&[0.3f32, -2.0, 0.0], &dev).unwrap();
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = AdamW {
            cfg,
            step: 0,
            decay: vec![true],
            exp_avg: vec![var.zeros_like().unwrap()],
            exp_avg_sq: vec![var.zeros_like().unwrap()],
        };
        opt.step(std::slice::from_ref(&var), &[grad], 0.01).unwrap();
        let v: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        assert!((v[0] - 0.99).abs() < 1e-6 && (v[1] + 0.99).abs() < 1e-6 && v[2] == 0.5);
    }
}
