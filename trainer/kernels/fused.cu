// Goodhart's fused CUDA kernels: the GPU side of `trainer/src/model/fused.rs` (forward and
// backward of each fused op), AdamW and the trust-region mix in place.
//
// Every kernel is `extern "C"` (unmangled names for the driver's module loader). Row kernels
// run one block per row and reduce with warp shuffles; element-wise kernels use a grid-stride
// loop. Arithmetic is float32 whatever the storage type: a bf16/fp16 tensor is widened on
// load and rounded once on store.
//
// Compiled to PTX for compute capability 8.0 and 9.0 by `trainer/build.rs` (nvcc via cudaforge,
// as candle's own kernels are); the driver JIT-compiles the PTX for the GPU it runs on.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// ---------------------------------------------------------------------------------------------
// helpers

__device__ __forceinline__ float load(float v) { return v; }
__device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float load(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T store(float v);
template <> __device__ __forceinline__ float store<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 store<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half store<__half>(float v) { return __float2half(v); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ float block_sum(float v) {
    __shared__ float partial[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < (blockDim.x >> 5) ? partial[lane] : 0.0f;
        w = warp_sum(w);
        if (lane == 0) total = w;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}

__device__ float block_max(float v) {
    __shared__ float partial[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < (blockDim.x >> 5) ? partial[lane] : -INFINITY;
        w = warp_max(w);
        if (lane == 0) total = w;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}

#define GRID_STRIDE(i, n) for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)blockDim.x * gridDim.x)

// ---------------------------------------------------------------------------------------------
// softmax(scale * x + bias) over the last dim of x (b, h, t, k); bias (bias_batches, 1, t, k).
// One block per row of k.

extern "C" __global__ void masked_softmax_f32(const float* __restrict__ x, const float* __restrict__ bias,
                                              float* __restrict__ out, int h, int t, int k, int bias_batches,
                                              float scale) {
    const size_t row = blockIdx.x;
    const int ti = row % t;
    const int bi = row / ((size_t)t * h);
    const float* xr = x + row * k;
    const float* br = bias + ((size_t)(bi % bias_batches) * t + ti) * k;
    float* orow = out + row * k;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < k; j += blockDim.x) m = fmaxf(m, xr[j] * scale + br[j]);
    m = block_max(m);
    float s = 0.0f;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        float e = expf((xr[j] * scale + br[j]) - m);
        orow[j] = e;
        s += e;
    }
    s = block_sum(s);
    const float inv = 1.0f / s;
    for (int j = threadIdx.x; j < k; j += blockDim.x) orow[j] *= inv;
}

// dx = scale * p * (g - sum(g * p)), row by row.
extern "C" __global__ void masked_softmax_bwd_f32(const float* __restrict__ p, const float* __restrict__ g,
                                                  float* __restrict__ out, int k, float scale) {
    const size_t row = blockIdx.x;
    const float* pr = p + row * k;
    const float* gr = g + row * k;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < k; j += blockDim.x) dot += pr[j] * gr[j];
    dot = block_sum(dot);
    for (int j = threadIdx.x; j < k; j += blockDim.x) out[row * k + j] = scale * pr[j] * (gr[j] - dot);
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: w * x / sqrt(mean(x^2) + eps) over the last dim d.

__device__ __forceinline__ float row_inv_rms(const float* xr, int d, float eps) {
    float ss = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) ss += xr[j] * xr[j];
    ss = block_sum(ss);
    return 1.0f / sqrtf(ss / d + eps);
}

extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                        float* __restrict__ out, int d, float eps) {
    const size_t row = blockIdx.x;
    const float* xr = x + row * d;
    const float r = row_inv_rms(xr, d, eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) out[row * d + j] = xr[j] * r * w[j];
}

// dx = r * (g*w - x_hat * mean(g * w * x_hat)), x_hat = r * x.
extern "C" __global__ void rms_norm_bwd_x_f32(const float* __restrict__ x, const float* __restrict__ w,
                                              const float* __restrict__ g, float* __restrict__ out, int d,
                                              float eps) {
    const size_t row = blockIdx.x;
    const float* xr = x + row * d;
    const float* gr = g + row * d;
    const float r = row_inv_rms(xr, d, eps);
    float dot = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) dot += gr[j] * w[j] * xr[j] * r;
    const float mean = block_sum(dot) / d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) out[row * d + j] = r * (gr[j] * w[j] - xr[j] * r * mean);
}

// Per-row statistics for the weight gradients: inv_rms (RMSNorm) or (mean, inv_std) (LayerNorm).
extern "C" __global__ void rms_norm_stats_f32(const float* __restrict__ x, float* __restrict__ rstd, int d,
                                              float eps) {
    const size_t row = blockIdx.x;
    const float r = row_inv_rms(x + row * d, d, eps);
    if (threadIdx.x == 0) rstd[row] = r;
}

// partial[c, j] = sum over rows r in chunk c of g[r, j] * (x[r, j] - mean[r]) * rstd[r]
// (mean = null for RMSNorm). Grid: (ceil(d / blockDim), chunks). Deterministic: no atomics.
extern "C" __global__ void norm_weight_grad_partial_f32(const float* __restrict__ x, const float* __restrict__ g,
                                                        const float* __restrict__ mean,
                                                        const float* __restrict__ rstd,
                                                        float* __restrict__ partial, int rows, int d,
                                                        int rows_per_chunk) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    const int r0 = blockIdx.y * rows_per_chunk;
    const int r1 = min(rows, r0 + rows_per_chunk);
    float acc = 0.0f;
    for (int r = r0; r < r1; ++r) {
        const size_t i = (size_t)r * d + j;
        const float c = mean ? x[i] - mean[r] : x[i];
        acc += g[i] * c * rstd[r];
    }
    partial[(size_t)blockIdx.y * d + j] = acc;
}

// out[j] = sum over chunks of partial[c, j].
extern "C" __global__ void sum_chunks_f32(const float* __restrict__ partial, float* __restrict__ out, int chunks,
                                          int d) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    float acc = 0.0f;
    for (int c = 0; c < chunks; ++c) acc += partial[(size_t)c * d + j];
    out[j] = acc;
}

// ---------------------------------------------------------------------------------------------
// LayerNorm (GPT-NeoX): (x - mean) / sqrt(var + eps) * w + b, biased variance.

__device__ __forceinline__ void row_mean_rstd(const float* xr, int d, float eps, float* mean, float* rstd) {
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += xr[j];
    const float mu = block_sum(s) / d;
    float v = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float c = xr[j] - mu;
        v += c * c;
    }
    const float var = block_sum(v) / d;
    *mean = mu;
    *rstd = 1.0f / sqrtf(var + eps);
}

extern "C" __global__ void layer_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ b, float* __restrict__ out, int d, float eps) {
    const size_t row = blockIdx.x;
    const float* xr = x + row * d;
    float mu, r;
    row_mean_rstd(xr, d, eps, &mu, &r);
    for (int j = threadIdx.x; j < d; j += blockDim.x) out[row * d + j] = (xr[j] - mu) * r * w[j] + b[j];
}

// dx = rstd * (gw - mean(gw) - x_hat * mean(gw * x_hat)), gw = g * w.
extern "C" __global__ void layer_norm_bwd_x_f32(const float* __restrict__ x, const float* __restrict__ w,
                                                const float* __restrict__ g, float* __restrict__ out, int d,
                                                float eps) {
    const size_t row = blockIdx.x;
    const float* xr = x + row * d;
    const float* gr = g + row * d;
    float mu, r;
    row_mean_rstd(xr, d, eps, &mu, &r);
    float s1 = 0.0f, s2 = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float gw = gr[j] * w[j];
        s1 += gw;
        s2 += gw * (xr[j] - mu) * r;
    }
    const float m1 = block_sum(s1) / d;
    const float m2 = block_sum(s2) / d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float xh = (xr[j] - mu) * r;
        out[row * d + j] = r * (gr[j] * w[j] - m1 - xh * m2);
    }
}

extern "C" __global__ void layer_norm_stats_f32(const float* __restrict__ x, float* __restrict__ mean,
                                                float* __restrict__ rstd, int d, float eps) {
    const size_t row = blockIdx.x;
    float mu, r;
    row_mean_rstd(x + row * d, d, eps, &mu, &r);
    if (threadIdx.x == 0) {
        mean[row] = mu;
        rstd[row] = r;
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary embeddings (HF rotate_half) on x (b, h, t, d) with tables (table_batches, 1, t, d);
// `inverse` applies the transpose of the rotation (the backward pass).

template <typename T>
__device__ void rope(const T* __restrict__ x, const T* __restrict__ cos, const T* __restrict__ sin,
                     T* __restrict__ out, int b, int h, int t, int d, int table_batches, int inverse) {
    const int half = d / 2;
    const size_t n = (size_t)b * h * t * half;
    GRID_STRIDE(i, n) {
        const int j = i % half;
        const size_t row = i / half;  // (bi * h + hi) * t + ti
        const int ti = row % t;
        const int bi = row / ((size_t)t * h);
        const size_t tb = ((size_t)(bi % table_batches) * t + ti) * d;
        const float x1 = load(x[row * d + j]), x2 = load(x[row * d + j + half]);
        const float c1 = load(cos[tb + j]), c2 = load(cos[tb + j + half]);
        const float s1 = load(sin[tb + j]), s2 = load(sin[tb + j + half]);
        float o1, o2;
        if (inverse) {
            o1 = x1 * c1 + x2 * s2;
            o2 = x2 * c2 - x1 * s1;
        } else {
            o1 = x1 * c1 - x2 * s1;
            o2 = x2 * c2 + x1 * s2;
        }
        out[row * d + j] = store<T>(o1);
        out[row * d + j + half] = store<T>(o2);
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU silu(gate) * up and exact GELU (erf), each with its backward.

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float siluf(float x) { return x / (1.0f + expf(-x)); }

template <typename T>
__device__ void swiglu(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ out, size_t n) {
    GRID_STRIDE(i, n) out[i] = store<T>(siluf(load(g[i])) * load(u[i]));
}

// d gate = grad * up * s (1 + g (1 - s)), s = sigmoid(g)
template <typename T>
__device__ void swiglu_bwd_gate(const T* __restrict__ g, const T* __restrict__ u, const T* __restrict__ d,
                                T* __restrict__ out, size_t n) {
    GRID_STRIDE(i, n) {
        const float gv = load(g[i]);
        const float s = sigmoidf(gv);
        out[i] = store<T>((load(d[i]) * load(u[i])) * (s * (1.0f + gv * (1.0f - s))));
    }
}

// d up = grad * silu(gate)
template <typename T>
__device__ void swiglu_bwd_up(const T* __restrict__ g, const T* __restrict__ d, T* __restrict__ out, size_t n) {
    GRID_STRIDE(i, n) out[i] = store<T>(load(d[i]) * siluf(load(g[i])));
}

__device__ __forceinline__ float gelu_erff(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

template <typename T>
__device__ void gelu(const T* __restrict__ x, T* __restrict__ out, size_t n) {
    GRID_STRIDE(i, n) out[i] = store<T>(gelu_erff(load(x[i])));
}

// d x = grad * (Phi(x) + x * phi(x))
template <typename T>
__device__ void gelu_bwd(const T* __restrict__ x, const T* __restrict__ d, T* __restrict__ out, size_t n) {
    GRID_STRIDE(i, n) {
        const float v = load(x[i]);
        const float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        const float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        out[i] = store<T>(load(d[i]) * (cdf + v * pdf));
    }
}

#define FOR_EACH_TYPE(M) M(f32, float) M(bf16, __nv_bfloat16) M(f16, __half)

#define ELEMENTWISE(SUFFIX, T)                                                                                   \
    extern "C" __global__ void rope_##SUFFIX(const T* x, const T* c, const T* s, T* out, int b, int h, int t,   \
                                             int d, int tb, int inverse) {                                      \
        rope<T>(x, c, s, out, b, h, t, d, tb, inverse);                                                         \
    }                                                                                                           \
    extern "C" __global__ void swiglu_##SUFFIX(const T* g, const T* u, T* out, size_t n) { swiglu<T>(g, u, out, n); } \
    extern "C" __global__ void swiglu_bwd_gate_##SUFFIX(const T* g, const T* u, const T* d, T* out, size_t n) {     \
        swiglu_bwd_gate<T>(g, u, d, out, n);                                                                    \
    }                                                                                                           \
    extern "C" __global__ void swiglu_bwd_up_##SUFFIX(const T* g, const T* d, T* out, size_t n) {              \
        swiglu_bwd_up<T>(g, d, out, n);                                                                         \
    }                                                                                                           \
    extern "C" __global__ void gelu_##SUFFIX(const T* x, T* out, size_t n) { gelu<T>(x, out, n); }              \
    extern "C" __global__ void gelu_bwd_##SUFFIX(const T* x, const T* d, T* out, size_t n) { gelu_bwd<T>(x, d, out, n); }

FOR_EACH_TYPE(ELEMENTWISE)

// ---------------------------------------------------------------------------------------------
// log_softmax(logits)[target] over the vocabulary, never materialising the log-softmax.
// logits (rows, v) float32; targets (rows) u32. One block per row.

__device__ __forceinline__ void row_max_lse(const float* xr, int v, float* max, float* lse) {
    float m = -INFINITY;
    for (int j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, xr[j]);
    m = block_max(m);
    float s = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) s += expf(xr[j] - m);
    s = block_sum(s);
    *max = m;
    *lse = logf(s);
}

extern "C" __global__ void target_log_probs_f32(const float* __restrict__ logits, const uint32_t* __restrict__ targets,
                                                float* __restrict__ out, int v) {
    const size_t row = blockIdx.x;
    const float* xr = logits + row * v;
    float m, lse;
    row_max_lse(xr, v, &m, &lse);
    const uint32_t t = targets[row];
    // An out-of-range target (a bug upstream) reads as NaN rather than out of bounds.
    if (threadIdx.x == 0) out[row] = t < (uint32_t)v ? (xr[t] - m) - lse : NAN;
}

// dlogits = g * (onehot(target) - softmax(logits)); rows with g == 0 (prompt, padding) get 0.
extern "C" __global__ void target_log_probs_bwd_f32(const float* __restrict__ logits,
                                                    const uint32_t* __restrict__ targets,
                                                    const float* __restrict__ g, float* __restrict__ out, int v) {
    const size_t row = blockIdx.x;
    const float* xr = logits + row * v;
    float* orow = out + row * v;
    const float gr = g[row];
    if (gr == 0.0f) {
        for (int j = threadIdx.x; j < v; j += blockDim.x) orow[j] = 0.0f;
        return;
    }
    float m, lse;
    row_max_lse(xr, v, &m, &lse);
    const uint32_t t = targets[row];
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float d = -gr * expf(xr[j] - m - lse);
        if ((uint32_t)j == t) d += gr;
        orow[j] = d;
    }
}

// ---------------------------------------------------------------------------------------------
// AdamW (torch.optim.AdamW semantics) in place, one pass: m, v and p updated together.
//   m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
//   p <- p * decay - step_size * m / (sqrt(v) / bc2_sqrt + eps)

extern "C" __global__ void adamw_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                     float* __restrict__ v, size_t n, float beta1, float beta2, float decay,
                                     float step_size, float bc2_sqrt, float eps) {
    // Rounded operation by operation (no fused multiply-add), in the CPU loop's order: Adam turns
    // rounding differences in near-zero gradients into whole steps.
    const float keep1 = __fsub_rn(1.0f, beta1), keep2 = __fsub_rn(1.0f, beta2);
    GRID_STRIDE(i, n) {
        const float gi = g[i];
        const float mi = __fadd_rn(__fmul_rn(m[i], beta1), __fmul_rn(gi, keep1));
        const float vi = __fadd_rn(__fmul_rn(v[i], beta2), __fmul_rn(__fmul_rn(gi, gi), keep2));
        m[i] = mi;
        v[i] = vi;
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        p[i] = __fsub_rn(__fmul_rn(p[i], decay), __fmul_rn(__fdiv_rn(mi, denom), step_size));
    }
}

// The trust-region soft update in place: ref <- (1 - alpha) ref + alpha policy.
extern "C" __global__ void trust_region_mix_f32(float* __restrict__ r, const float* __restrict__ p, size_t n,
                                                float alpha) {
    const float keep = __fsub_rn(1.0f, alpha);
    GRID_STRIDE(i, n) r[i] = __fadd_rn(__fmul_rn(r[i], keep), __fmul_rn(p[i], alpha));
}
