//! The trust-region reference update (SPEC §2), applied after optimizer step `t`:
//! `if t % τ == 0 { θ_ref ← α θ + (1 − α) θ_ref }`, parameter by parameter, as TRL's
//! `SyncRefModelCallback` does. α = 1 is the hard update, τ = 1 the soft one.

use candle_core::DType;

use crate::error::Result;
use crate::lerp::Lerp;
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
            Lerp::Towards(alpha).in_place(r.as_tensor(), p.as_tensor(), false)?;
        } else {
            r.set(&Lerp::Towards(alpha).of(&r.as_tensor().detach(), &p.as_tensor().detach())?)?;
        }
    }
    Ok(())
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
