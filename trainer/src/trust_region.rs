//! The trust-region reference update (SPEC §2), applied after optimizer step `t`:
//! `if t % τ == 0 { θ_ref ← α θ + (1 − α) θ_ref }`, parameter by parameter, as TRL's
//! `SyncRefModelCallback` does. α = 1 is the hard update, τ = 1 the soft one.

use candle_core::{CpuStorage, DType, InplaceOp2, Layout};

use crate::error::Result;
use crate::model::fused::{slice, slice_mut};
use crate::model::ParamSet;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrustRegion {
    /// α
    pub mixup_alpha: f64,
    /// τ
    pub sync_steps: u64,
}

impl TrustRegion {
    pub fn is_due(&self, optimizer_step: u64) -> bool {
        optimizer_step.is_multiple_of(self.sync_steps)
    }

    /// Updates `reference` in place when step `optimizer_step` is due; returns whether it did.
    pub fn maybe_update(&self, optimizer_step: u64, policy: &ParamSet, reference: &ParamSet) -> Result<bool> {
        if !self.is_due(optimizer_step) {
            return Ok(false);
        }
        soft_update(policy, reference, self.mixup_alpha)?;
        Ok(true)
    }
}

/// `θ_ref ← α θ + (1 − α) θ_ref`, in TRL's order of operations: `ref.mul_(1 − α).add_(θ, α)`.
pub fn soft_update(policy: &ParamSet, reference: &ParamSet, alpha: f64) -> Result<()> {
    for (p, r) in policy.vars().iter().zip(reference.vars()) {
        #[cfg(feature = "cuda")]
        if crate::model::fused::fused_in_place_on_gpu(r) {
            crate::model::cuda::mix(r.as_tensor(), p.as_tensor(), alpha as f32)?;
            continue;
        }
        if r.device().is_cpu() && r.dtype() == DType::F32 {
            r.as_tensor().inplace_op2(p.as_tensor(), &Mix { alpha: alpha as f32 })?;
        } else {
            let mixed = ((r.as_tensor().detach() * (1.0 - alpha))? + (p.as_tensor().detach() * alpha)?)?;
            r.set(&mixed)?;
        }
    }
    Ok(())
}

/// The soft update in place, one pass, no allocation.
struct Mix {
    alpha: f32,
}

impl InplaceOp2 for Mix {
    fn name(&self) -> &'static str {
        "trust-region-mix"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let (r, p) = (slice_mut(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let keep = 1.0 - self.alpha;
        for (r, &p) in r.iter_mut().zip(p) {
            *r = *r * keep + p * self.alpha;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::ModelConfig;

    #[test]
    fn soft_update_mixes_each_weight_and_hard_update_copies() {
        let cfg = ModelConfig::from_hf_json(&serde_json::json!({
            "model_type": "llama", "vocab_size": 8, "hidden_size": 4, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2
        }))
        .unwrap();
        let policy = ParamSet::random(&cfg, 1, 0.1, &Device::Cpu).unwrap();
        let reference = ParamSet::random(&cfg, 2, 0.1, &Device::Cpu).unwrap();
        let before = reference.deep_clone().unwrap();
        let tr = TrustRegion { mixup_alpha: 0.25, sync_steps: 3 };
        assert!(!tr.maybe_update(2, &policy, &reference).unwrap());
        assert_eq!(reference.max_abs_diff(&before).unwrap(), 0.0);
        assert!(tr.maybe_update(3, &policy, &reference).unwrap());
        let p: Vec<f32> = policy.vars()[0].flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = before.vars()[0].flatten_all().unwrap().to_vec1().unwrap();
        let r: Vec<f32> = reference.vars()[0].flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..p.len() {
            assert!((r[i] - (0.25 * p[i] + 0.75 * b[i])).abs() < 1e-6);
        }
        soft_update(&policy, &reference, 1.0).unwrap();
        assert_eq!(reference.max_abs_diff(&policy).unwrap(), 0.0);
    }
}
