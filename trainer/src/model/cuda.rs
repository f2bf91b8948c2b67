//! The CUDA side of the fused ops in `fused.rs`, of AdamW (`optim.rs`) and of the trust-region
//! mix (`trust_region.rs`): kernel launches on candle's CUDA storage.
//!
//! The kernels are `trainer/kernels/fused.cu`, compiled to PTX for compute capability 8.0 and
//! 9.0 at build time (`build.rs`). The first launch on a device loads the PTX for the highest
//! capability the GPU has into candle's module cache; the driver JIT-compiles it once.
//!
//! Every function takes contiguous inputs (the callers in `fused.rs` make them so) and returns
//! a fresh output, except the two optimizer kernels, which update their weights in place.
// Kernel launches are foreign calls: each `unsafe` block below launches a kernel whose
// arguments were checked against the shapes it reads and writes.
#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Result, Shape};
use half::{bf16, f16};

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// The PTX for the highest compiled capability at or below the device's.
fn ptx_for(dev: &CudaDevice) -> Result<&'static str> {
    let (major, minor) = dev.cuda_stream().context().compute_capability().w()?;
    let cap = (major * 10 + minor) as usize;
    ptx::FUSED.iter().filter(|(c, _)| *c <= cap).max_by_key(|(c, _)| *c).map(|(_, p)| *p).ok_or_else(|| {
        candle_core::Error::Msg(format!("the fused kernels need compute capability 8.0; this GPU has {major}.{minor}"))
    })
}

/// candle's cache key for the module.
const MODULE: &str = "goodhart_fused";

/// A contiguous tensor's elements.
fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

fn last_dim(l: &Layout) -> usize {
    l.shape().dims().last().copied().unwrap_or(1)
}

/// Threads per block for a kernel that walks a row of `k` elements per block.
fn row_threads(k: usize) -> u32 {
    match k {
        0..=64 => 32,
        65..=512 => 128,
        513..=4096 => 256,
        _ => 1024,
    }
}

fn rows_config(rows: usize, k: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (row_threads(k), 1, 1), shared_mem_bytes: 0 }
}

/// A grid-stride launch over `n` elements.
fn elementwise_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65_536) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn wrap<T: CudaDType>(slice: CudaSlice<T>, dev: &CudaDevice, shape: &Shape) -> (CudaStorage, Shape) {
    (CudaStorage::wrap_cuda_slice(slice, dev.clone()), shape.clone())
}

fn i32_of(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("{what}: {n} does not fit the kernel's int")))
}

// ---------------------------------------------------------------------------------------------
// scaled masked softmax

pub fn masked_softmax(
    x: &CudaStorage,
    lx: &Layout,
    bias: &CudaStorage,
    lb: &Layout,
    scale: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let (b, h, t, k) = lx.shape().dims4()?;
    let bias_batches = lb.shape().dims4()?.0;
    let (xv, bv) = (view::<f32>(x, lx, "softmax")?, view::<f32>(bias, lb, "softmax bias")?);
    let rows = b * h * t;
    // SAFETY: every element is written by the kernel before it is read.
    let out = unsafe { dev.alloc::<f32>(rows * k)? };
    let f = dev.get_or_load_custom_func("masked_softmax_f32", MODULE, ptx_for(dev)?)?;
    let mut a = f.builder();
    let (hh, tt, kk, bb) =
        (i32_of(h, "heads")?, i32_of(t, "queries")?, i32_of(k, "keys")?, i32_of(bias_batches, "bias")?);
    a.arg(&xv).arg(&bv).arg(&out).arg(&hh).arg(&tt).arg(&kk).arg(&bb).arg(&scale);
    // SAFETY: x and out hold rows * k floats, bias bias_batches * t * k.
    unsafe { a.launch(rows_config(rows, k)) }.w()?;
    Ok(wrap(out, dev, lx.shape()))
}

pub fn masked_softmax_bwd(
    p: &CudaStorage,
    lp: &Layout,
    g: &CudaStorage,
    lg: &Layout,
    scale: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = p.device();
    let k = last_dim(lp);
    let n = lp.shape().elem_count();
    let (pv, gv) = (view::<f32>(p, lp, "softmax backward")?, view::<f32>(g, lg, "softmax backward")?);
    // SAFETY: written in full by the kernel.
    let out = unsafe { dev.alloc::<f32>(n)? };
    let f = dev.get_or_load_custom_func("masked_softmax_bwd_f32", MODULE, ptx_for(dev)?)?;
    let mut a = f.builder();
    let kk = i32_of(k, "keys")?;
    a.arg(&pv).arg(&gv).arg(&out).arg(&kk).arg(&scale);
    // SAFETY: p, g and out hold n = rows * k floats.
    unsafe { a.launch(rows_config(n / k.max(1), k)) }.w()?;
    Ok(wrap(out, dev, lp.shape()))
}

// ---------------------------------------------------------------------------------------------
// RMSNorm and LayerNorm

pub fn rms_norm(x: &CudaStorage, lx: &Layout, w: &CudaStorage, lw: &Layout, eps: f32) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let d = last_dim(lx);
    let n = lx.shape().elem_count();
    let (xv, wv) = (view::<f32>(x, lx, "rms_norm")?, view::<f32>(w, lw, "rms_norm weight")?);
    // SAFETY: written in full by the kernel.
    let out = unsafe { dev.alloc::<f32>(n)? };
    let f = dev.get_or_load_custom_func("rms_norm_f32", MODULE, ptx_for(dev)?)?;
    let mut a = f.builder();
    let dd = i32_of(d, "width")?;
    a.arg(&xv).arg(&wv).arg(&out).arg(&dd).arg(&eps);
    // SAFETY: x and out hold rows * d floats, w d.
    unsafe { a.launch(rows_config(n / d.max(1), d)) }.w()?;
    Ok(wrap(out, dev, lx.shape()))
}

/// `dx` of RMSNorm (`layer_norm = false`) or LayerNorm.
#[allow(clippy::too_many_arguments)]
pub fn norm_bwd_x(
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    g: &CudaStorage,
    lg: &Layout,
    eps: f32,
    layer_norm: bool,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let d = last_dim(lx);
    let n = lx.shape().elem_count();
    let (xv, wv, gv) =
        (view::<f32>(x, lx, "norm backward")?, view::<f32>(w, lw, "norm weight")?, view::<f32>(g, lg, "norm grad")?);
    // SAFETY: written in full by the kernel.
    let out = unsafe { dev.alloc::<f32>(n)? };
    let f = dev.get_or_load_custom_func(
        if layer_norm { "layer_norm_bwd_x_f32" } else { "rms_norm_bwd_x_f32" },
        MODULE,
        ptx_for(dev)?,
    )?;
    let mut a = f.builder();
    let dd = i32_of(d, "width")?;
    a.arg(&xv).arg(&wv).arg(&gv).arg(&out).arg(&dd).arg(&eps);
    // SAFETY: x, g and out hold rows * d floats, w d.
    unsafe { a.launch(rows_config(n / d.max(1), d)) }.w()?;
    Ok(wrap(out, dev, lx.shape()))
}

/// `dw = Σ_rows g ⊙ x̂` of RMSNorm (`layer_norm = false`) or LayerNorm: the rows' statistics,
/// then column sums over chunks of rows, then the sum of the chunks (deterministic, no atomics).
pub fn norm_bwd_w(
    x: &CudaStorage,
    lx: &Layout,
    g: &CudaStorage,
    lg: &Layout,
    eps: f32,
    layer_norm: bool,
) -> Result<(CudaStorage, Shape)> {
    const ROWS_PER_CHUNK: usize = 64;
    let dev = x.device();
    let d = last_dim(lx);
    let rows = lx.shape().elem_count() / d.max(1);
    let (xv, gv) = (view::<f32>(x, lx, "norm backward")?, view::<f32>(g, lg, "norm grad")?);
    let dd = i32_of(d, "width")?;
    // SAFETY (all three allocations): written in full by the kernels below.
    let rstd = unsafe { dev.alloc::<f32>(rows.max(1))? };
    let mean = if layer_norm { Some(unsafe { dev.alloc::<f32>(rows.max(1))? }) } else { None };
    {
        let f = dev.get_or_load_custom_func(
            if layer_norm { "layer_norm_stats_f32" } else { "rms_norm_stats_f32" },
            MODULE,
            ptx_for(dev)?,
        )?;
        let mut a = f.builder();
        a.arg(&xv);
        if let Some(m) = &mean {
            a.arg(m);
        }
        a.arg(&rstd).arg(&dd).arg(&eps);
        // SAFETY: x holds rows * d floats; mean and rstd one per row.
        unsafe { a.launch(rows_config(rows, d)) }.w()?;
    }
    let chunks = rows.div_ceil(ROWS_PER_CHUNK).max(1);
    let partial = unsafe { dev.alloc::<f32>(chunks * d)? };
    let columns = LaunchConfig {
        grid_dim: (d.div_ceil(256) as u32, chunks as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    {
        let f = dev.get_or_load_custom_func("norm_weight_grad_partial_f32", MODULE, ptx_for(dev)?)?;
        // RMSNorm has no means: a null pointer.
        let null: u64 = 0;
        let mut a = f.builder();
        a.arg(&xv).arg(&gv);
        match &mean {
            Some(m) => a.arg(m),
            None => a.arg(&null),
        };
        let (rr, per) = (i32_of(rows, "rows")?, i32_of(ROWS_PER_CHUNK, "chunk")?);
        a.arg(&rstd).arg(&partial).arg(&rr).arg(&dd).arg(&per);
        // SAFETY: partial holds chunks * d floats, one per (chunk, column) block thread.
        unsafe { a.launch(columns) }.w()?;
    }
    let out = unsafe { dev.alloc::<f32>(d)? };
    {
        let f = dev.get_or_load_custom_func("sum_chunks_f32", MODULE, ptx_for(dev)?)?;
        let mut a = f.builder();
        let cc = i32_of(chunks, "chunks")?;
        a.arg(&partial).arg(&out).arg(&cc).arg(&dd);
        let cfg =
            LaunchConfig { grid_dim: (d.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: out holds d floats.
        unsafe { a.launch(cfg) }.w()?;
    }
    Ok(wrap(out, dev, &Shape::from(d)))
}

#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    b: &CudaStorage,
    lb: &Layout,
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let d = last_dim(lx);
    let n = lx.shape().elem_count();
    let (xv, wv, bv) = (
        view::<f32>(x, lx, "layer_norm")?,
        view::<f32>(w, lw, "layer_norm weight")?,
        view::<f32>(b, lb, "layer_norm bias")?,
    );
    // SAFETY: written in full by the kernel.
    let out = unsafe { dev.alloc::<f32>(n)? };
    let f = dev.get_or_load_custom_func("layer_norm_f32", MODULE, ptx_for(dev)?)?;
    let mut a = f.builder();
    let dd = i32_of(d, "width")?;
    a.arg(&xv).arg(&wv).arg(&bv).arg(&out).arg(&dd).arg(&eps);
    // SAFETY: x and out hold rows * d floats, w and b d.
    unsafe { a.launch(rows_config(n / d.max(1), d)) }.w()?;
    Ok(wrap(out, dev, lx.shape()))
}

// ---------------------------------------------------------------------------------------------
// element-wise ops in f32, bf16 or f16

/// Launches `{name}_{f32|bf16|f16}` on one to three inputs of the same dtype and an output of
/// the first one's shape, followed by the element count (`n_last`) or the `extra` ints.
fn elementwise(
    name: &str,
    inputs: &[(&CudaStorage, &Layout)],
    n_last: bool,
    extra: &[i32],
) -> Result<(CudaStorage, Shape)> {
    let (first, l0) = inputs[0];
    match first.dtype() {
        DType::F32 => elementwise_typed::<f32>(name, "f32", inputs, n_last, extra),
        DType::BF16 => elementwise_typed::<bf16>(name, "bf16", inputs, n_last, extra),
        DType::F16 => elementwise_typed::<f16>(name, "f16", inputs, n_last, extra),
        other => bail!("{name}: no fused kernel for {other:?} ({:?})", l0.shape()),
    }
}

fn elementwise_typed<T: CudaDType + DeviceRepr>(
    name: &str,
    suffix: &str,
    inputs: &[(&CudaStorage, &Layout)],
    n_last: bool,
    extra: &[i32],
) -> Result<(CudaStorage, Shape)> {
    let (first, l0) = inputs[0];
    let dev = first.device();
    let n = l0.shape().elem_count();
    let views = inputs.iter().map(|(s, l)| view::<T>(s, l, name)).collect::<Result<Vec<_>>>()?;
    // SAFETY: written in full by the kernel.
    let out = unsafe { dev.alloc::<T>(n)? };
    let f = dev.get_or_load_custom_func(&format!("{name}_{suffix}"), MODULE, ptx_for(dev)?)?;
    let mut a = f.builder();
    for v in &views {
        a.arg(v);
    }
    a.arg(&out);
    if n_last {
        a.arg(&n);
    }
    for x in extra {
        a.arg(x);
    }
    // SAFETY: the callers pass inputs of n elements (or, for rope, the tables of its shape).
    unsafe { a.launch(elementwise_config(n)) }.w()?;
    Ok(wrap(out, dev, l0.shape()))
}

#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &CudaStorage,
    lx: &Layout,
    cos: &CudaStorage,
    lc: &Layout,
    sin: &CudaStorage,
    ls: &Layout,
    inverse: bool,
) -> Result<(CudaStorage, Shape)> {
    let (b, h, t, d) = lx.shape().dims4()?;
    let table_batches = lc.shape().dims4()?.0;
    if cos.dtype() != x.dtype() || sin.dtype() != x.dtype() {
        bail!("rope: tables {:?} and input {:?} differ in dtype", cos.dtype(), x.dtype());
    }
    let args = [
        i32_of(b, "batch")?,
        i32_of(h, "heads")?,
        i32_of(t, "seq")?,
        i32_of(d, "width")?,
        i32_of(table_batches, "tables")?,
        i32::from(inverse),
    ];
    elementwise("rope", &[(x, lx), (cos, lc), (sin, ls)], false, &args)
}

pub fn swiglu(g: &CudaStorage, lg: &Layout, u: &CudaStorage, lu: &Layout) -> Result<(CudaStorage, Shape)> {
    elementwise("swiglu", &[(g, lg), (u, lu)], true, &[])
}

pub fn swiglu_bwd_gate(
    g: &CudaStorage,
    lg: &Layout,
    u: &CudaStorage,
    lu: &Layout,
    d: &CudaStorage,
    ld: &Layout,
) -> Result<(CudaStorage, Shape)> {
    elementwise("swiglu_bwd_gate", &[(g, lg), (u, lu), (d, ld)], true, &[])
}

pub fn swiglu_bwd_up(g: &CudaStorage, lg: &Layout, d: &CudaStorage, ld: &Layout) -> Result<(CudaStorage, Shape)> {
    elementwise("swiglu_bwd_up", &[(g, lg), (d, ld)], true, &[])
}

pub fn gelu(x: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
    elementwise("gelu", &[(x, lx)], true, &[])
}

pub fn gelu_bwd(x: &CudaStorage, lx: &Layout, d: &CudaStorage, ld: &Layout) -> Result<(CudaStorage, Shape)> {
    elementwise("gelu_bwd", &[(x, lx), (d, ld)], true, &[])
}

// ---------------------------------------------------------------------------------------------
// log-softmax + gather of the target token

pub fn target_log_probs(
    logits: &CudaStorage,
    ll: &Layout,
    targets: &CudaStorage,
    lt: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = logits.device();
    let v = last_dim(ll);
    let rows = ll.shape().elem_count() / v.max(1);
    let (xv, tv) = (view::<f32>(logits, ll, "target_log_probs")?, view::<u32>(targets, lt, "targets")?);
    // SAFETY: written in full by the kernel.
    let out = unsafe { dev.alloc::<f32>(rows)? };
    let f = dev.get_or_load_custom_func("target_log_probs_f32", MODULE, ptx_for(dev)?)?;
    let mut a = f.builder();
    let vv = i32_of(v, "vocabulary")?;
    a.arg(&xv).arg(&tv).arg(&out).arg(&vv);
    // SAFETY: logits hold rows * v floats, targets and out one per row.
    unsafe { a.launch(rows_config(rows, v)) }.w()?;
    Ok(wrap(out, dev, lt.shape()))
}

#[allow(clippy::too_many_arguments)]
pub fn target_log_probs_bwd(
    logits: &CudaStorage,
    ll: &Layout,
    targets: &CudaStorage,
    lt: &Layout,
    g: &CudaStorage,
    lg: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = logits.device();
    let v = last_dim(ll);
    let n = ll.shape().elem_count();
    let (xv, tv, gv) = (
        view::<f32>(logits, ll, "target_log_probs backward")?,
        view::<u32>(targets, lt, "targets")?,
        view::<f32>(g, lg, "grad")?,
    );
    // SAFETY: written in full by the kernel.
    let out = unsafe { dev.alloc::<f32>(n)? };
    let f = dev.get_or_load_custom_func("target_log_probs_bwd_f32", MODULE, ptx_for(dev)?)?;
    let mut a = f.builder();
    let vv = i32_of(v, "vocabulary")?;
    a.arg(&xv).arg(&tv).arg(&gv).arg(&out).arg(&vv);
    // SAFETY: logits and out hold rows * v floats, targets and g one per row.
    unsafe { a.launch(rows_config(n / v.max(1), v)) }.w()?;
    Ok(wrap(out, dev, ll.shape()))
}

// ---------------------------------------------------------------------------------------------
// AdamW and the trust-region mix, in place

/// The scalars of one AdamW step (see `optim::AdamW::step`).
#[derive(Debug, Clone, Copy)]
pub struct AdamWScalars {
    pub beta1: f32,
    pub beta2: f32,
    pub decay: f32,
    pub step_size: f32,
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
}

/// `p`, `m` and `v` updated together from `g` in one pass. `m` and `v` arrive as shared
/// storage: they are the optimizer's own state, which nothing else reads or writes, and the
/// kernel writes them through their device pointers on candle's single stream.
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    p: &mut CudaStorage,
    lp: &Layout,
    m: &CudaStorage,
    lm: &Layout,
    v: &CudaStorage,
    lv: &Layout,
    g: &CudaStorage,
    lg: &Layout,
    s: AdamWScalars,
) -> Result<()> {
    let n = lp.shape().elem_count();
    for (what, l) in [("exp_avg", lm), ("exp_avg_sq", lv), ("grad", lg)] {
        if l.shape().elem_count() != n {
            bail!("adamw: {what} has {} elements, the weight {n}", l.shape().elem_count());
        }
    }
    let dev = p.device().clone();
    let (mv, vv, gv) = (view::<f32>(m, lm, "exp_avg")?, view::<f32>(v, lv, "exp_avg_sq")?, view::<f32>(g, lg, "grad")?);
    let Some((a0, a1)) = lp.contiguous_offsets() else { bail!("adamw: expected a contiguous weight") };
    let mut pv = p.as_cuda_slice_mut::<f32>()?.slice_mut(a0..a1);
    let f = dev.get_or_load_custom_func("adamw_f32", MODULE, ptx_for(&dev)?)?;
    let mut a = f.builder();
    let scalars = [s.beta1, s.beta2, s.decay, s.step_size, s.bias_correction2_sqrt, s.eps];
    a.arg(&mut pv).arg(&gv).arg(&mv).arg(&vv).arg(&n);
    for x in &scalars {
        a.arg(x);
    }
    // SAFETY: p, g, m and v hold n floats each.
    unsafe { a.launch(elementwise_config(n)) }.w()?;
    Ok(())
}

/// `r ← (1 − α) r + α p` in place.
pub fn trust_region_mix(r: &mut CudaStorage, lr: &Layout, p: &CudaStorage, lp: &Layout, alpha: f32) -> Result<()> {
    let n = lr.shape().elem_count();
    if lp.shape().elem_count() != n {
        bail!("trust-region mix: the policy weight has {} elements, the reference {n}", lp.shape().elem_count());
    }
    let dev = r.device().clone();
    let pv = view::<f32>(p, lp, "policy weight")?;
    let Some((a0, a1)) = lr.contiguous_offsets() else { bail!("trust-region mix: expected a contiguous weight") };
    let mut rv = r.as_cuda_slice_mut::<f32>()?.slice_mut(a0..a1);
    let f = dev.get_or_load_custom_func("trust_region_mix_f32", MODULE, ptx_for(&dev)?)?;
    let mut a = f.builder();
    a.arg(&mut rv).arg(&pv).arg(&n).arg(&alpha);
    // SAFETY: r and p hold n floats.
    unsafe { a.launch(elementwise_config(n)) }.w()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The optimizer-side entry points (tensors in, nothing out)

/// One AdamW step of weight `p` from gradient `g`, updating the moments `m` and `v`: a single
/// in-place kernel, as torch's fused AdamW.
pub fn adamw_step(
    p: &candle_core::Tensor,
    g: &candle_core::Tensor,
    m: &candle_core::Tensor,
    v: &candle_core::Tensor,
    s: AdamWScalars,
) -> Result<()> {
    let g = g.contiguous()?;
    p.inplace_op3(m, v, &AdamWStep { grad: g, scalars: s })
}

struct AdamWStep {
    grad: candle_core::Tensor,
    scalars: AdamWScalars,
}

impl candle_core::InplaceOp3 for AdamWStep {
    fn name(&self) -> &'static str {
        "adamw-fused"
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        bail!("adamw-fused runs on a CUDA device; the CPU has its own three in-place passes")
    }

    fn cuda_fwd(
        &self,
        p: &mut CudaStorage,
        lp: &Layout,
        m: &CudaStorage,
        lm: &Layout,
        v: &CudaStorage,
        lv: &Layout,
    ) -> Result<()> {
        let (g, lg) = self.grad.storage_and_layout();
        let candle_core::Storage::Cuda(g) = &*g else { bail!("adamw-fused: the gradient is not on the GPU") };
        adamw(p, lp, m, lm, v, lv, g, lg, self.scalars)
    }
}

/// The trust-region soft update of one weight in place: `r ← (1 − α) r + α p`.
pub fn mix(r: &candle_core::Tensor, p: &candle_core::Tensor, alpha: f32) -> Result<()> {
    r.inplace_op2(&p.contiguous()?, &Mix { alpha })
}

struct Mix {
    alpha: f32,
}

impl candle_core::InplaceOp2 for Mix {
    fn name(&self) -> &'static str {
        "trust-region-mix-fused"
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        bail!("trust-region-mix-fused runs on a CUDA device")
    }

    fn cuda_fwd(&self, r: &mut CudaStorage, lr: &Layout, p: &CudaStorage, lp: &Layout) -> Result<()> {
        trust_region_mix(r, lr, p, lp, self.alpha)
    }
}
