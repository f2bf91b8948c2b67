//! Differentiable building blocks.
//!
//! candle-nn's fused `softmax_last_dim`, `rms_norm`, `layer_norm` and `rope` have no backward
//! pass: gradients silently stop at them. Everything here is composed from candle-core ops that
//! all have a `bwd`, so every parameter of the model gets its gradient.

use candle_core::{Tensor, D};

use crate::error::Result;

/// `x @ w^T + b` for `x` of shape `(..., in)` and an HF/PyTorch weight of shape `(out, in)`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, in_dim))?.matmul(&weight.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("linear input has at least one dim") = weight.dim(0)?;
    Ok(y.reshape(out_dims)?)
}

/// Llama/Qwen2 RMSNorm: `w * x / sqrt(mean(x^2) + eps)`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let variance = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(variance + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(weight)?)
}

/// LayerNorm with bias (GPT-NeoX), biased variance as in PyTorch.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(variance + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(weight)?.broadcast_add(bias)?)
}

/// Softmax over the last dimension. The max is subtracted for stability and detached: softmax
/// does not depend on it, so no gradient needs to flow through it.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// `log_softmax(logits)[target]` over the last dimension without materialising the full
/// log-softmax: `logit[target] - logsumexp(logits)`. `targets` holds u32 ids with the shape of
/// `logits` minus its last dimension.
pub fn target_log_probs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?;
    Ok((picked - lse)?.squeeze(D::Minus1)?)
}

/// HF's `rotate_half` rotary embedding on the last dimension of `x`, with `cos`/`sin`
/// broadcastable to `x` (both already duplicated to the full rotary width).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dim = x.dim(D::Minus1)?;
    let half = dim / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn finite_difference_check(f: impl Fn(&Tensor) -> Result<Tensor>, shape: &[usize]) {
        let dev = Device::Cpu;
        let x = Var::randn(0f64, 1.0, shape, &dev).unwrap();
        // a fixed random projection turns the output into a scalar with a non-trivial gradient
        let out = f(x.as_tensor()).unwrap();
        let proj = Tensor::randn(0f64, 1.0, out.shape(), &dev).unwrap();
        let loss = (out * &proj).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<f64> =
            grads.get(x.as_tensor()).expect("gradient reaches the input").flatten_all().unwrap().to_vec1().unwrap();
        let x0: Vec<f64> = x.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let eval = |v: &[f64]| -> f64 {
            let t = Tensor::from_slice(v, shape, &dev).unwrap();
            let out = f(&t).unwrap();
            (out * &proj).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        let h = 1e-6;
        for i in 0..x0.len() {
            let mut plus = x0.clone();
            plus[i] += h;
            let mut minus = x0.clone();
            minus[i] -= h;
            let numeric = (eval(&plus) - eval(&minus)) / (2.0 * h);
            let diff = (numeric - g[i]).abs();
            assert!(diff < 1e-6 * (1.0 + numeric.abs()), "element {i}: analytic {} vs numeric {numeric}", g[i]);
        }
    }

    #[test]
    fn softmax_gradient_matches_finite_differences() {
        finite_difference_check(softmax_last_dim, &[2, 3, 5]);
    }

    #[test]
    fn rms_norm_gradient_matches_finite_differences() {
        let w = Tensor::new(&[0.5f64, -1.0, 2.0, 0.3], &Device::Cpu).unwrap();
        finite_difference_check(|x| rms_norm(x, &w.to_dtype(x.dtype())?, 1e-6), &[3, 4]);
    }

    #[test]
    fn layer_norm_gradient_matches_finite_differences() {
        let w = Tensor::new(&[0.5f64, -1.0, 2.0, 0.3], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.1f64, 0.2, -0.3, 0.0], &Device::Cpu).unwrap();
        finite_difference_check(|x| layer_norm(x, &w.to_dtype(x.dtype())?, &b.to_dtype(x.dtype())?, 1e-5), &[3, 4]);
    }

    #[test]
    fn rope_gradient_matches_finite_differences() {
        let cos = Tensor::new(&[[0.3f64, 0.8, 0.3, 0.8], [0.1, -0.5, 0.1, -0.5]], &Device::Cpu).unwrap();
        let sin = Tensor::new(&[[0.9f64, 0.2, 0.9, 0.2], [-0.7, 0.6, -0.7, 0.6]], &Device::Cpu).unwrap();
        finite_difference_check(|x| apply_rope(x, &cos.to_dtype(x.dtype())?, &sin.to_dtype(x.dtype())?), &[2, 2, 4]);
    }

    #[test]
    fn target_log_probs_gradient_matches_finite_differences() {
        let targets = Tensor::new(&[[1u32, 4, 0], [2, 2, 3]], &Device::Cpu).unwrap();
        finite_difference_check(|x| target_log_probs(x, &targets), &[2, 3, 5]);
    }

    #[test]
    fn target_log_probs_equals_full_log_softmax_gather() {
        let dev = Device::Cpu;
        let logits = Tensor::randn(0f32, 3.0, (2, 3, 7), &dev).unwrap();
        let targets = Tensor::new(&[[1u32, 6, 0], [2, 5, 3]], &dev).unwrap();
        let fast: Vec<Vec<f32>> = target_log_probs(&logits, &targets).unwrap().to_vec2().unwrap();
        let full = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let slow: Vec<Vec<f32>> =
            full.gather(&targets.unsqueeze(2).unwrap(), 2).unwrap().squeeze(2).unwrap().to_vec2().unwrap();
        for (a, b) in fast.iter().flatten().zip(slow.iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
