//! The fused kernels against candle's composed ops on one device, values and gradients: within
//! 1e-5 relative in float32, and within the half dtype's resolution in bf16/fp16 (against the
//! float32 composition of the same rounded inputs). Run on a GPU they check the CUDA kernels.
//!
//! The `cuda_*` tests below run each check on the GPU. A build without the `cuda` feature (CI)
//! lists them as ignored with the reason; a CUDA build on a machine without a GPU prints
//! `SKIPPED <name>` on stderr (uncaptured) and passes. `goodhart bench kernels` runs the same
//! checks from the release binary (what `scripts/check-cuda.sh` carries to the GPU machine).

use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

use super::{fused, ops};
use crate::error::Result;

/// One comparison of a fused op with its composition.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCheck {
    pub kernel: &'static str,
    /// What was compared (shape, which input's gradient).
    pub case: String,
    pub dtype: String,
    /// ‖fused − composed‖∞ / ‖composed‖∞ of the values (for the optimizer kernels: of the update).
    pub values: f64,
    /// The same for the input gradient of a fixed random projection of the output.
    pub gradients: f64,
    pub tolerance: f64,
}

impl KernelCheck {
    pub fn passed(&self) -> bool {
        self.values <= self.tolerance && self.gradients <= self.tolerance
    }
}

/// ‖a − b‖∞ / ‖b‖∞, both read as float32.
fn rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let f = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.flatten_all()?) };
    let (a, b) = (f(a)?, f(b)?);
    let diff = (&a - &b)?.abs()?.max(0)?.to_scalar::<f32>()?;
    let scale = b.abs()?.max(0)?.to_scalar::<f32>()?;
    Ok(f64::from(diff) / f64::from(scale).max(1e-30))
}

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        // 8 bits of mantissa: 2^-8 = 3.9e-3 per rounding; the composed reference rounds once.
        DType::BF16 => 1e-2,
        // 11 bits: 2^-11 = 4.9e-4.
        _ => 2e-3,
    }
}

/// `fused` on an input of `shape` in `dtype` against `composed` on the same (rounded) input in
/// float32: values, and the gradient of a fixed random projection of the output.
fn compare(
    kernel: &'static str,
    case: String,
    dev: &Device,
    dtype: DType,
    shape: &[usize],
    fused: impl Fn(&Tensor) -> Result<Tensor>,
    composed: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<KernelCheck> {
    let x = Tensor::randn(0f32, 1.0, shape, dev)?.to_dtype(dtype)?;
    let xh = Var::from_tensor(&x)?;
    let x32 = Var::from_tensor(&x.to_dtype(DType::F32)?)?;
    let a = fused(xh.as_tensor())?;
    let b = composed(x32.as_tensor())?;
    if a.dtype() != dtype {
        return Err(crate::Error::model(format!("{kernel}: the fused op returned {:?} for {dtype:?}", a.dtype())));
    }
    let values = rel(&a, &b)?;
    let proj = Tensor::randn(0f32, 1.0, a.shape(), dev)?;
    let ga = (a.to_dtype(DType::F32)? * &proj)?.sum_all()?.backward()?;
    let gb = (b * &proj)?.sum_all()?.backward()?;
    let missing = || crate::Error::model(format!("{kernel}: no gradient reaches the input"));
    let gradients = rel(ga.get(xh.as_tensor()).ok_or_else(missing)?, gb.get(x32.as_tensor()).ok_or_else(missing)?)?;
    Ok(KernelCheck { kernel, case, dtype: format!("{dtype:?}"), values, gradients, tolerance: tolerance(dtype) })
}

const HALF_AND_FULL: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

fn causal_bias(dev: &Device, batches: usize, t: usize, k: usize) -> Result<Tensor> {
    let data: Vec<f32> =
        (0..batches * t * k).map(|i| if i % k <= (i / k) % t + (k - t) { 0.0 } else { f32::MIN }).collect();
    Ok(Tensor::from_vec(data, (batches, 1, t, k), dev)?)
}

/// Per-row padding bias and one shared causal bias; rows of 7, 64 and 600 keys pick different
/// block sizes.
pub fn masked_softmax(dev: &Device) -> Result<Vec<KernelCheck>> {
    let mut out = Vec::new();
    for (b, h, t, k, batches) in [(2, 3, 5, 7, 2), (2, 4, 64, 64, 1), (1, 2, 9, 600, 1)] {
        let bias = causal_bias(dev, batches, t, k)?;
        out.push(compare(
            "masked_softmax",
            format!("({b}, {h}, {t}, {k}), bias batches {batches}"),
            dev,
            DType::F32,
            &[b, h, t, k],
            |x| fused::scaled_masked_softmax(x, &bias, 0.3),
            |x| ops::softmax_last_dim(&(x * 0.3)?.broadcast_add(&bias)?),
        )?);
    }
    Ok(out)
}

/// Input and weight gradients; the weight's summed over 210 rows (several chunks of the
/// kernel's column sums).
pub fn rms_norm(dev: &Device) -> Result<Vec<KernelCheck>> {
    let mut out = Vec::new();
    for d in [8, 768, 2560] {
        let w = (Tensor::randn(0f32, 0.2, d, dev)? + 1.0)?;
        let x = Tensor::randn(0f32, 1.0, (3, 70, d), dev)?;
        out.push(compare(
            "rms_norm",
            format!("x (3, 70, {d})"),
            dev,
            DType::F32,
            &[3, 70, d],
            |x| fused::rms_norm(x, &w, 1e-6),
            |x| ops::rms_norm(x, &w, 1e-6),
        )?);
        out.push(compare(
            "rms_norm",
            format!("weight ({d})"),
            dev,
            DType::F32,
            &[d],
            |w| fused::rms_norm(&x, w, 1e-6),
            |w| ops::rms_norm(&x, w, 1e-6),
        )?);
    }
    Ok(out)
}

pub fn layer_norm(dev: &Device) -> Result<Vec<KernelCheck>> {
    let mut out = Vec::new();
    for d in [8, 768, 2560] {
        let w = (Tensor::randn(0f32, 0.2, d, dev)? + 1.0)?;
        let b = Tensor::randn(0f32, 0.2, d, dev)?;
        let x = (Tensor::randn(0f32, 1.0, (3, 70, d), dev)? + 0.5)?;
        out.push(compare(
            "layer_norm",
            format!("x (3, 70, {d})"),
            dev,
            DType::F32,
            &[3, 70, d],
            |x| fused::layer_norm(x, &w, &b, 1e-5),
            |x| ops::layer_norm(x, &w, &b, 1e-5),
        )?);
        out.push(compare(
            "layer_norm",
            format!("weight ({d})"),
            dev,
            DType::F32,
            &[d],
            |w| fused::layer_norm(&x, w, &b, 1e-5),
            |w| ops::layer_norm(&x, w, &b, 1e-5),
        )?);
        out.push(compare(
            "layer_norm",
            format!("bias ({d})"),
            dev,
            DType::F32,
            &[d],
            |b| fused::layer_norm(&x, &w, b, 1e-5),
            |b| ops::layer_norm(&x, &w, b, 1e-5),
        )?);
    }
    Ok(out)
}

pub fn rope(dev: &Device) -> Result<Vec<KernelCheck>> {
    let mut out = Vec::new();
    for dtype in HALF_AND_FULL {
        for table_batches in [1, 2] {
            let cos = Tensor::randn(0f32, 1.0, (table_batches, 1, 5, 16), dev)?.to_dtype(dtype)?;
            let sin = Tensor::randn(0f32, 1.0, (table_batches, 1, 5, 16), dev)?.to_dtype(dtype)?;
            let (cos32, sin32) = (cos.to_dtype(DType::F32)?, sin.to_dtype(DType::F32)?);
            out.push(compare(
                "rope",
                format!("(2, 3, 5, 16), table batches {table_batches}"),
                dev,
                dtype,
                &[2, 3, 5, 16],
                |x| fused::apply_rope(x, &cos, &sin),
                |x| ops::apply_rope(x, &cos32, &sin32),
            )?);
        }
    }
    Ok(out)
}

pub fn swiglu(dev: &Device) -> Result<Vec<KernelCheck>> {
    let mut out = Vec::new();
    for dtype in HALF_AND_FULL {
        let other = Tensor::randn(0f32, 2.0, (33, 700), dev)?.to_dtype(dtype)?;
        let other32 = other.to_dtype(DType::F32)?;
        out.push(compare(
            "swiglu",
            "gate (33, 700)".into(),
            dev,
            dtype,
            &[33, 700],
            |g| fused::swiglu(g, &other),
            |g| Ok((g.silu()? * &other32)?),
        )?);
        out.push(compare(
            "swiglu",
            "up (33, 700)".into(),
            dev,
            dtype,
            &[33, 700],
            |u| fused::swiglu(&other, u),
            |u| Ok((other32.silu()? * u)?),
        )?);
    }
    Ok(out)
}

pub fn gelu(dev: &Device) -> Result<Vec<KernelCheck>> {
    HALF_AND_FULL
        .into_iter()
        .map(|dtype| compare("gelu", "(33, 3072)".into(), dev, dtype, &[33, 3072], fused::gelu, |x| Ok(x.gelu_erf()?)))
        .collect()
}

/// Over 5 and over Pythia's 50,304 tokens (the rows of 1024 threads).
pub fn target_log_probs(dev: &Device) -> Result<Vec<KernelCheck>> {
    let mut out = Vec::new();
    for vocab in [5, 50_304] {
        let ids: Vec<u32> = (0..2 * 48).map(|i| (i * 7919 + 13) % vocab as u32).collect();
        let targets = Tensor::from_vec(ids, (2, 48), dev)?;
        out.push(compare(
            "target_log_probs",
            format!("(2, 48, {vocab})"),
            dev,
            DType::F32,
            &[2, 48, vocab],
            |x| fused::target_log_probs(x, &targets),
            |x| ops::target_log_probs(x, &targets),
        )?);
    }
    Ok(out)
}

/// Three AdamW steps (with weight decay) through `optim::AdamW` against torch.optim.AdamW's
/// formula composed of candle ops, with the float32 scalars the optimizer passes its kernels
/// (so that the comparison measures the kernels, not the scalars' rounding); then the
/// trust-region soft update against its formula. On a GPU both run the fused in-place kernels.
pub fn adamw_and_mix(dev: &Device) -> Result<Vec<KernelCheck>> {
    let (beta1, beta2, eps, weight_decay, lr) = (0.9f64, 0.999f64, 1e-8f64, 0.01f64, 1e-3f64);
    let cfg = crate::optim::AdamWConfig { beta1, beta2, eps, weight_decay };
    let shape = (300, 517);
    let init = Tensor::randn(0f32, 0.02, shape, dev)?;
    let grads = (0..3).map(|_| Tensor::randn(0f32, 1e-3, shape, dev)).collect::<candle_core::Result<Vec<_>>>()?;
    let param_set = |t: &Tensor| -> Result<super::ParamSet> {
        Ok(super::ParamSet::from_vars(vec!["w".into()], vec![Var::from_tensor(t)?]))
    };
    let fused_params = param_set(&init)?;
    let mut opt = crate::optim::AdamW::new(&fused_params, cfg)?;
    let scalar = |x: f64| Tensor::new(x as f32, dev);
    let (b1, b2) = (beta1 as f32, beta2 as f32);
    let (keep1, keep2) = (scalar(f64::from(1.0 - b1))?, scalar(f64::from(1.0 - b2))?);
    let (mut p, mut m, mut v) = (init.clone(), init.zeros_like()?, init.zeros_like()?);
    for (t, g) in grads.iter().enumerate() {
        opt.step(fused_params.vars(), std::slice::from_ref(g), lr)?;
        let t = t as i32 + 1;
        let bc2_sqrt = scalar((1.0 - beta2.powi(t)).sqrt())?;
        let step_size = scalar(lr / (1.0 - beta1.powi(t)))?;
        m = (m.broadcast_mul(&scalar(beta1)?)? + g.broadcast_mul(&keep1)?)?;
        v = (v.broadcast_mul(&scalar(beta2)?)? + g.sqr()?.broadcast_mul(&keep2)?)?;
        let denom = v.sqrt()?.broadcast_div(&bc2_sqrt)?.broadcast_add(&scalar(eps)?)?;
        p = (p.broadcast_mul(&scalar(1.0 - lr * weight_decay)?)? - (&m / denom)?.broadcast_mul(&step_size)?)?;
    }
    let update = rel(&(fused_params.vars()[0].as_tensor() - &init)?, &(&p - &init)?)?;
    let reference = param_set(&init.copy()?)?;
    crate::trust_region::soft_update(&fused_params, &reference, 0.6)?;
    let expected = (init.broadcast_mul(&scalar(f64::from(1.0 - 0.6f32))?)?
        + fused_params.vars()[0].as_tensor().broadcast_mul(&scalar(0.6)?)?)?;
    let mix = rel(reference.vars()[0].as_tensor(), &expected)?;
    let check = |kernel, values| KernelCheck {
        kernel,
        case: "(300, 517)".into(),
        dtype: "F32".into(),
        values,
        gradients: 0.0,
        tolerance: 1e-5,
    };
    Ok(vec![check("adamw (3 steps, the update)", update), check("trust_region_mix", mix)])
}

/// Every check above, in order.
pub fn all(dev: &Device) -> Result<Vec<KernelCheck>> {
    let mut out = Vec::new();
    for check in [masked_softmax, rms_norm, layer_norm, rope, swiglu, gelu, target_log_probs, adamw_and_mix] {
        out.extend(check(dev)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// The GPU, or `None` after saying on stderr that `test` was skipped.
    fn gpu(test: &str) -> Option<Device> {
        match Device::new_cuda(0) {
            Ok(dev) => Some(dev),
            Err(e) => {
                // Written to the real stderr: the test harness captures only the print macros.
                let _ = writeln!(std::io::stderr(), "SKIPPED {test}: no CUDA device ({e})");
                None
            }
        }
    }

    fn assert_all_pass(test: &str, checks: Result<Vec<KernelCheck>>) {
        for c in checks.unwrap() {
            let _ = writeln!(std::io::stderr(), "{test}: {c:?}");
            assert!(c.passed(), "{test}: {c:?}");
        }
    }

    macro_rules! on_the_gpu {
        ($($test:ident => $check:ident,)*) => {$(
            #[test]
            #[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build (--features cuda) and a GPU")]
            fn $test() {
                let Some(dev) = gpu(stringify!($test)) else { return };
                assert_all_pass(stringify!($test), $check(&dev));
            }
        )*};
    }

    on_the_gpu! {
        cuda_masked_softmax_matches_the_composed_ops => masked_softmax,
        cuda_rms_norm_matches_the_composed_ops_for_input_and_weight => rms_norm,
        cuda_layer_norm_matches_the_composed_ops_for_input_weight_and_bias => layer_norm,
        cuda_rope_matches_the_composed_ops_in_every_dtype => rope,
        cuda_swiglu_matches_the_composed_ops_for_both_inputs_in_every_dtype => swiglu,
        cuda_gelu_matches_the_composed_ops_in_every_dtype => gelu,
        cuda_target_log_probs_match_the_composed_ops_over_a_pythia_vocabulary => target_log_probs,
        cuda_adamw_and_the_trust_region_mix_match_the_composed_updates => adamw_and_mix,
    }

    /// On the CPU the same checks hold the CPU's fused loops (float32; the element-wise ops in
    /// half dtypes fall back to the composed ops there), so the harness itself is exercised.
    #[test]
    fn every_kernel_check_passes_on_the_cpu() {
        let checks = all(&Device::Cpu).unwrap();
        assert!(checks.len() >= 30, "{} checks", checks.len());
        for c in checks {
            assert!(c.passed(), "{c:?}");
        }
    }
}
