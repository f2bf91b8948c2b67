//! The CUDA kernels against candle's composed ops on the same GPU: values and gradients within
//! 1e-5 relative in float32, and within the half dtype's resolution in bf16/fp16 (against the
//! float32 composition of the same rounded inputs).
//!
//! They need a CUDA build and a GPU. A build without the `cuda` feature (CI) lists each one as
//! ignored with the reason; a CUDA build on a machine without a GPU prints `SKIPPED <name>`
//! on stderr (uncaptured) and passes. `scripts/check-cuda.sh` runs them on the GPU machine.

use std::io::Write as _;

use candle_core::{DType, Device, Tensor, Var};

use super::{fused, ops};
use crate::error::Result;

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

/// ‖a − b‖∞ / ‖b‖∞, both read as float32.
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let (a, b) = (f(a), f(b));
    let diff = (&a - &b).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale = b.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    f64::from(diff) / f64::from(scale).max(1e-30)
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
fn same_values_and_gradients(
    test: &str,
    dev: &Device,
    dtype: DType,
    shape: &[usize],
    fused: impl Fn(&Tensor) -> Result<Tensor>,
    composed: impl Fn(&Tensor) -> Result<Tensor>,
) {
    let x = Tensor::randn(0f32, 1.0, shape, dev).unwrap().to_dtype(dtype).unwrap();
    let xh = Var::from_tensor(&x).unwrap();
    let x32 = Var::from_tensor(&x.to_dtype(DType::F32).unwrap()).unwrap();
    let a = fused(xh.as_tensor()).unwrap();
    let b = composed(x32.as_tensor()).unwrap();
    assert_eq!(a.dtype(), dtype, "{test}: the fused op keeps the input's dtype");
    let tol = tolerance(dtype);
    let values = rel(&a, &b);
    assert!(values <= tol, "{test} {dtype:?}: values differ by {values:e} relative (tolerance {tol:e})");
    let proj = Tensor::randn(0f32, 1.0, a.shape(), dev).unwrap();
    let ga = (a.to_dtype(DType::F32).unwrap() * &proj).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (b * &proj).unwrap().sum_all().unwrap().backward().unwrap();
    let (ga, gb) = (ga.get(xh.as_tensor()).unwrap(), gb.get(x32.as_tensor()).unwrap());
    let grads = rel(ga, gb);
    assert!(grads <= tol, "{test} {dtype:?}: gradients differ by {grads:e} relative (tolerance {tol:e})");
    let _ = writeln!(std::io::stderr(), "{test} {dtype:?}: values {values:.2e}, gradients {grads:.2e} relative");
}

const HALF_AND_FULL: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

fn causal_bias(dev: &Device, batches: usize, t: usize, k: usize) -> Tensor {
    let data: Vec<f32> =
        (0..batches * t * k).map(|i| if i % k <= (i / k) % t + (k - t) { 0.0 } else { f32::MIN }).collect();
    Tensor::from_vec(data, (batches, 1, t, k), dev).unwrap()
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build (--features cuda) and a GPU")]
fn cuda_masked_softmax_matches_the_composed_ops() {
    let name = "cuda_masked_softmax_matches_the_composed_ops";
    let Some(dev) = gpu(name) else { return };
    // Per-row padding bias and one shared causal bias; rows of 7, 64 and 600 keys pick
    // different block sizes.
    for (b, h, t, k, batches) in [(2, 3, 5, 7, 2), (2, 4, 64, 64, 1), (1, 2, 9, 600, 1)] {
        let bias = causal_bias(&dev, batches, t, k);
        same_values_and_gradients(
            name,
            &dev,
            DType::F32,
            &[b, h, t, k],
            |x| fused::scaled_masked_softmax(x, &bias, 0.3),
            |x| ops::softmax_last_dim(&(x * 0.3)?.broadcast_add(&bias)?),
        );
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build (--features cuda) and a GPU")]
fn cuda_rms_norm_matches_the_composed_ops_for_input_and_weight() {
    let name = "cuda_rms_norm_matches_the_composed_ops_for_input_and_weight";
    let Some(dev) = gpu(name) else { return };
    for d in [8, 768, 2560] {
        let w = (Tensor::randn(0f32, 0.2, d, &dev).unwrap() + 1.0).unwrap();
        same_values_and_gradients(
            name,
            &dev,
            DType::F32,
            &[3, 70, d],
            |x| fused::rms_norm(x, &w, 1e-6),
            |x| ops::rms_norm(x, &w, 1e-6),
        );
        // the weight's gradient, summed over 210 rows (several chunks of the column sums)
        let x = Tensor::randn(0f32, 1.0, (3, 70, d), &dev).unwrap();
        same_values_and_gradients(
            name,
            &dev,
            DType::F32,
            &[d],
            |w| fused::rms_norm(&x, w, 1e-6),
            |w| ops::rms_norm(&x, w, 1e-6),
        );
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build (--features cuda) and a GPU")]
fn cuda_layer_norm_matches_the_composed_ops_for_input_weight_and_bias() {
    let name = "cuda_layer_norm_matches_the_composed_ops_for_input_weight_and_bias";
    let Some(dev) = gpu(name) else { return };
    for d in [8, 768, 2560] {
        let w = (Tensor::randn(0f32, 0.2, d, &dev).unwrap() + 1.0).unwrap();
        let b = Tensor::randn(0f32, 0.2, d, &dev).unwrap();
        let x = (Tensor::randn(0f32, 1.0, (3, 70, d), &dev).unwrap() + 0.5).unwrap();
        same_values_and_gradients(
            name,
            &dev,
            DType::F32,
            &[3, 70, d],
            |x| fused::layer_norm(x, &w, &b, 1e-5),
            |x| ops::layer_norm(x, &w, &b, 1e-5),
        );
        same_values_and_gradients(
            name,
            &dev,
            DType::F32,
            &[d],
            |w| fused::layer_norm(&x, w, &b, 1e-5),
            |w| ops::layer_norm(&x, w, &b, 1e-5),
        );
        same_values_and_gradients(
            name,
            &dev,
            DType::F32,
            &[d],
            |b| fused::layer_norm(&x, &w, b, 1e-5),
            |b| ops::layer_norm(&x, &w, b, 1e-5),
        );
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build (--features cuda) and a GPU")]
fn cuda_rope_matches_the_composed_ops_in_every_dtype() {
    let name = "cuda_rope_matches_the_composed_ops_in_every_dtype";
    let Some(dev) = gpu(name) else { return };
    for dtype in HALF_AND_FULL {
        for table_batches in [1, 2] {
            let table = |seed: f64| {
                Tensor::randn(seed as f32, 1.0, (table_batches, 1, 5, 16), &dev).unwrap().to_dtype(dtype).unwrap()
            };
            let (cos, sin) = (table(0.0), table(0.1));
            let (cos32, sin32) = (cos.to_dtype(DType::F32).unwrap(), sin.to_dtype(DType::F32).unwrap());
            same_values_and_gradients(
                name,
                &dev,
                dtype,
                &[2, 3, 5, 16],
                |x| fused::apply_rope(x, &cos, &sin),
                |x| ops::apply_rope(x, &cos32, &sin32),
            );
        }
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build (--features cuda) and a GPU")]
fn cuda_swiglu_matches_the_composed_ops_for_both_inputs_in_every_dtype() {
    let name = "cuda_swiglu_matches_the_composed_ops_for_both_inputs_in_every_dtype";
    let Some(dev) = gpu(name) else { return };
    for dtype in HALF_AND_FULL {
        let other = Tensor::randn(0f32, 2.0, (33, 700), &dev).unwrap().to_dtype(dtype).unwrap();
        let other32 = other.to_dtype(DType::F32).unwrap();
        same_values_and_gradients(
            name,
            &dev,
            dtype,
            &[33, 700],
            |g| fused::swiglu(g, &other),
            |g| Ok((g.silu()? * &other32)?),
        );
        same_values_and_gradients(
            name,
            &dev,
            dtype,
            &[33, 700],
            |u| fused::swiglu(&other, u),
            |u| Ok((other32.silu()? * u)?),
        );
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build (--features cuda) and a GPU")]
fn cuda_gelu_matches_the_composed_ops_in_every_dtype() {
    let name = "cuda_gelu_matches_the_composed_ops_in_every_dtype";
    let Some(dev) = gpu(name) else { return };
    for dtype in HALF_AND_FULL {
        same_values_and_gradients(name, &dev, dtype, &[33, 3072], fused::gelu, |x| Ok(x.gelu_erf()?));
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build (--features cuda) and a GPU")]
fn cuda_target_log_probs_match_the_composed_ops_over_a_pythia_vocabulary() {
    let name = "cuda_target_log_probs_match_the_composed_ops_over_a_pythia_vocabulary";
    let Some(dev) = gpu(name) else { return };
    for vocab in [5, 50_304] {
        let ids: Vec<u32> = (0..2 * 48).map(|i| (i * 7919 + 13) % vocab as u32).collect();
        let targets = Tensor::from_vec(ids, (2, 48), &dev).unwrap();
        same_values_and_gradients(
            name,
            &dev,
            DType::F32,
            &[2, 48, vocab],
            |x| fused::target_log_probs(x, &targets),
            |x| ops::target_log_probs(x, &targets),
        );
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build (--features cuda) and a GPU")]
fn cuda_adamw_and_the_trust_region_mix_match_the_composed_updates() {
    let name = "cuda_adamw_and_the_trust_region_mix_match_the_composed_updates";
    let Some(dev) = gpu(name) else { return };
    let cfg = crate::optim::AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let shape = (300, 517);
    let init = Tensor::randn(0f32, 0.02, shape, &dev).unwrap();
    let grads: Vec<Tensor> = (0..3).map(|_| Tensor::randn(0f32, 1e-3, shape, &dev).unwrap()).collect();
    // Three steps with the fused kernel against the composed formula of torch.optim.AdamW.
    let param_set =
        |t: &Tensor| crate::model::ParamSet::from_vars(vec!["w".into()], vec![Var::from_tensor(t).unwrap()]);
    let fused_params = param_set(&init);
    let mut opt = crate::optim::AdamW::new(&fused_params, cfg).unwrap();
    let (mut p, mut m, mut v) = (init.clone(), init.zeros_like().unwrap(), init.zeros_like().unwrap());
    for (t, g) in grads.iter().enumerate() {
        opt.step(fused_params.vars(), std::slice::from_ref(g), 1e-3).unwrap();
        let t = t as i32 + 1;
        m = ((&m * 0.9).unwrap() + (g * 0.1).unwrap()).unwrap();
        v = ((&v * 0.999).unwrap() + (g.sqr().unwrap() * 0.001).unwrap()).unwrap();
        let denom = ((v.sqrt().unwrap() / (1.0 - 0.999f64.powi(t)).sqrt()).unwrap() + 1e-8).unwrap();
        p = ((&p * (1.0 - 1e-3 * 0.01)).unwrap() - ((&m / denom).unwrap() * (1e-3 / (1.0 - 0.9f64.powi(t)))).unwrap())
            .unwrap();
    }
    let moved = (&p - &init).unwrap();
    let err = rel(&(fused_params.vars()[0].as_tensor() - &init).unwrap(), &moved);
    assert!(err <= 1e-5, "{name}: AdamW's update differs by {err:e} relative");
    // The soft update θ_ref ← α θ + (1 − α) θ_ref.
    let reference = param_set(&init.copy().unwrap());
    crate::trust_region::soft_update(&fused_params, &reference, 0.6).unwrap();
    let expected = ((&init * 0.4).unwrap() + (fused_params.vars()[0].as_tensor() * 0.6).unwrap()).unwrap();
    let mix = rel(reference.vars()[0].as_tensor(), &expected);
    assert!(mix <= 1e-6, "{name}: the trust-region mix differs by {mix:e} relative");
    let _ = writeln!(std::io::stderr(), "{name}: AdamW {err:.2e}, mix {mix:.2e} relative");
}
