//! The one in-place lerp, `x ← keep·x + take·y`: the exponential moving average that AdamW's
//! moments (`m ← β·m + (1 − β)·g`, `v ← β₂·v + (1 − β₂)·g²`) and the trust-region reference
//! (`θ_ref ← (1 − α)·θ_ref + α·θ`) both are.
//!
//! Each caller gives the coefficient it is configured with, and the other is computed from it as
//! torch does: `m.mul_(β).add_(g, alpha=1 − β)` and TRL's `ref.mul_(1 − α).add_(θ, alpha=α)`.
//! Float32 CPU tensors are updated in one pass without allocating; other devices and dtypes get
//! a new tensor.

use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor};

use crate::error::Result;
use crate::model::fused::{slice, slice_mut};

/// A lerp's coefficient, as its caller knows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lerp {
    /// Keeps `β` of the old value: AdamW's moments.
    Decay(f64),
    /// Moves `α` of the way to the new value: the trust-region reference.
    Towards(f64),
}

impl Lerp {
    /// `(keep, take)` in float64, for tensor arithmetic.
    fn coefficients(self) -> (f64, f64) {
        match self {
            Self::Decay(beta) => (beta, 1.0 - beta),
            Self::Towards(alpha) => (1.0 - alpha, alpha),
        }
    }

    /// `(keep, take)` in float32, the given one rounded first (what a float32 kernel computes).
    fn coefficients_f32(self) -> (f32, f32) {
        match self {
            Self::Decay(beta) => {
                let beta = beta as f32;
                (beta, 1.0 - beta)
            }
            Self::Towards(alpha) => {
                let alpha = alpha as f32;
                (1.0 - alpha, alpha)
            }
        }
    }

    /// `x ← keep·x + take·y` in place (`y²` with `square`), one pass: `x` and `y` contiguous
    /// float32 tensors on the CPU, of one shape.
    pub fn in_place(self, x: &Tensor, y: &Tensor, square: bool) -> Result<()> {
        let (keep, take) = self.coefficients_f32();
        x.inplace_op2(y, &LerpOp { keep, take, square })?;
        Ok(())
    }

    /// `keep·x + take·y`, a new tensor, on any device and dtype.
    pub fn of(self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let (keep, take) = self.coefficients();
        Ok(((x * keep)? + (y * take)?)?)
    }
}

struct LerpOp {
    keep: f32,
    take: f32,
    square: bool,
}

impl InplaceOp2 for LerpOp {
    fn name(&self) -> &'static str {
        "lerp"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let (x, y) = (slice_mut(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        for (x, &y) in x.iter_mut().zip(y) {
            let y = if self.square { y * y } else { y };
            *x = *x * self.keep + y * self.take;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn in_place_and_tensor_lerps_agree_and_keep_each_callers_rounding() {
        let x0 = [0.3f32, -1.7, 2.5e-3, 8.0];
        let y = Tensor::new(&[1.1f32, 0.4, -3.0, 1e-4], &Device::Cpu).unwrap();
        for lerp in [Lerp::Decay(0.9), Lerp::Decay(0.999), Lerp::Towards(0.6), Lerp::Towards(1.0)] {
            for square in [false, true] {
                let x = Tensor::new(&x0, &Device::Cpu).unwrap();
                lerp.in_place(&x, &y, square).unwrap();
                let ys: Vec<f32> = y.to_vec1().unwrap();
                let (keep, take) = lerp.coefficients_f32();
                let expected: Vec<f32> =
                    x0.iter().zip(&ys).map(|(&x, &y)| x * keep + if square { y * y } else { y } * take).collect();
                assert_eq!(x.to_vec1::<f32>().unwrap(), expected, "{lerp:?} square {square}");
                if !square {
                    let out = lerp.of(&Tensor::new(&x0, &Device::Cpu).unwrap(), &y).unwrap();
                    let diff: Vec<f32> =
                        out.to_vec1::<f32>().unwrap().iter().zip(&expected).map(|(a, b)| (a - b).abs()).collect();
                    assert!(diff.iter().all(|d| *d < 1e-6), "{lerp:?}: {diff:?}");
                }
            }
        }
        // β is rounded to float32 and 1 − β computed from it, as torch's float32 `mul_(β).add_(g, alpha=1 − β)`.
        assert_eq!(Lerp::Decay(0.9).coefficients_f32(), (0.9f32, 1.0 - 0.9f32));
        assert_eq!(Lerp::Towards(0.6).coefficients_f32(), (1.0 - 0.6f32, 0.6f32));
    }
}
