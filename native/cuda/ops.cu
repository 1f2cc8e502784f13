// Elementwise and row-wise pieces of the decoder forward on the GPU, fp32 math, in the order ops.cpp uses.
#include <algorithm>

#include "common.cuh"

namespace lowbit {
namespace cuda {
namespace {

// The block's reduction of every thread's v (warp op `w`, then the warps' results by thread 0's warp), for all
// threads; blockDim.x a multiple of 32. `part` is the caller's __shared__ float[32].
template <class W>
__device__ __forceinline__ float block_reduce(float v, float* part, W w) {
  v = w(v);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    float u = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.f;
    u = w(u);
    if (threadIdx.x == 0) part[0] = u;
  }
  __syncthreads();
  return part[0];
}

// One block per row; V elements per access (V = 4 where n % 4 == 0: 16-byte loads of x and w).
template <class TOut, int V>
__global__ void rmsnorm_kernel(const float* __restrict__ x, const float* __restrict__ w, TOut* __restrict__ y, int64_t n,
                               float eps) {
  __shared__ float part[32];
  const float* xr = x + blockIdx.x * n;
  TOut* yr = y + blockIdx.x * n;
  float ss = 0.f;
  for (int64_t i = threadIdx.x * V; i < n; i += blockDim.x * V) {
    float a[V];
    load_f<V>(xr + i, a);
#pragma unroll
    for (int v = 0; v < V; ++v) ss += a[v] * a[v];
  }
  ss = block_reduce(ss, part, [](float v) { return warp_sum(v); });
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x * V; i < n; i += blockDim.x * V) {
    float a[V], g[V];
    load_f<V>(xr + i, a);
    load_f<V>(w + i, g);
#pragma unroll
    for (int v = 0; v < V; ++v) a[v] = g[v] * (a[v] * inv);
    store_f<V>(yr + i, a);
  }
}

template <class TW>
__global__ void embed_kernel(const TW* __restrict__ table, const int32_t* __restrict__ ids, float* __restrict__ h,
                             int64_t n, int64_t hidden) {
  const int64_t total = n * hidden;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = i / hidden, c = i - r * hidden;
    h[i] = to_f(table[static_cast<int64_t>(ids[r]) * hidden + c]);
  }
}

// One block (4 warps) per token; each warp takes whole heads, V = 4 consecutive elements per lane (hd % 8 == 0,
// so that no group straddles the two RoPE halves: the attention kernels need hd % 32 == 0 anyway; hd ≤ 256, so a lane
// holds at most two groups of a head). The next head's inputs are loaded while this one is normalized and rotated:
// otherwise each warp waits out one load latency per head. Shared: 4 × hd floats.
template <class TQ>
__global__ void qkv_post_kernel(const float* __restrict__ qkv, const float* __restrict__ bias,
                                const float* __restrict__ qn, const float* __restrict__ kn,
                                const float* __restrict__ cosv, const float* __restrict__ sinv, TQ* __restrict__ q,
                                TQ* __restrict__ k, TQ* __restrict__ v, int64_t L, int nh, int nkv, int hd, float eps) {
  extern __shared__ float sh[];
  const int64_t t = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  float* buf = sh + warp * hd;
  const int heads = nh + 2 * nkv, half = hd / 2;
  const float* row = qkv + t * static_cast<int64_t>(heads) * hd;
  const int64_t s = t / L, p = t - s * L;
  constexpr int V = 4, NG = 2;  // groups of V per lane
  float nxt[NG][V];
  auto load_head = [&](int head) {
#pragma unroll
    for (int c = 0; c < NG; ++c)
      if ((lane + 32 * c) * V < hd) load_f<V>(row + head * hd + (lane + 32 * c) * V, nxt[c]);
  };
  if (warp < heads) load_head(warp);
  for (int head = warp; head < heads; head += nwarps) {
    float cur[NG][V];
#pragma unroll
    for (int c = 0; c < NG; ++c)
#pragma unroll
      for (int e = 0; e < V; ++e) cur[c][e] = nxt[c][e];
    if (head + nwarps < heads) load_head(head + nwarps);
    const bool isq = head < nh, isk = !isq && head < nh + nkv;
    const float* nw = isq ? qn : (isk ? kn : nullptr);
    float ss = 0.f;
#pragma unroll
    for (int c = 0; c < NG; ++c) {
      const int i = (lane + 32 * c) * V;
      if (i >= hd) break;
      float* a = cur[c];
      if (bias) {
        float b[V];
        load_f<V>(bias + head * hd + i, b);
#pragma unroll
        for (int e = 0; e < V; ++e) a[e] += b[e];
      }
#pragma unroll
      for (int e = 0; e < V; ++e) {
        buf[i + e] = a[e];
        ss += a[e] * a[e];
      }
    }
    __syncwarp();
    if (nw) {
      ss = warp_sum(ss);
      const float inv = 1.0f / sqrtf(ss / static_cast<float>(hd) + eps);
      for (int i = lane * V; i < hd; i += 32 * V) {
        float g[V];
        load_f<V>(nw + i, g);
#pragma unroll
        for (int e = 0; e < V; ++e) buf[i + e] = g[e] * (buf[i + e] * inv);
      }
      __syncwarp();
    }
    TQ* dst;
    if (isq) dst = q + ((s * nh + head) * L + p) * hd;
    else if (isk) dst = k + ((s * nkv + (head - nh)) * L + p) * hd;
    else dst = v + ((s * nkv + (head - nh - nkv)) * L + p) * hd;
    for (int i = lane * V; i < hd; i += 32 * V) {
      float o[V];
      if (!(isq || isk)) {
#pragma unroll
        for (int e = 0; e < V; ++e) o[e] = buf[i + e];
      } else {
        const int j = i < half ? i : i - half;  // the rotation's frequency index
        float c[V], sn[V];
        load_f<V>(cosv + p * half + j, c);
        load_f<V>(sinv + p * half + j, sn);
#pragma unroll
        for (int e = 0; e < V; ++e)
          o[e] = i < half ? __fsub_rn(__fmul_rn(buf[i + e], c[e]), __fmul_rn(buf[i + e + half], sn[e]))
                          : __fadd_rn(__fmul_rn(buf[i + e], c[e]), __fmul_rn(buf[j + e], sn[e]));
      }
      store_f<V>(dst + i, o);
    }
    __syncwarp();
  }
}

// Row t = blockIdx.y (grid-strided), V consecutive columns per thread (16-byte loads where inter % V == 0).
template <class TIn, class TOut, int V>
__global__ void silu_mul_kernel(const TIn* __restrict__ gu, TOut* __restrict__ out, int64_t T, int64_t inter) {
  const int64_t c = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * V;
  if (c >= inter) return;
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y) {
    float g[V], u[V];
    load_f<V>(gu + t * 2 * inter + c, g);
    load_f<V>(gu + t * 2 * inter + inter + c, u);
#pragma unroll
    for (int e = 0; e < V; ++e) g[e] = g[e] / (1.0f + expf(-g[e])) * u[e];
    store_f<V>(out + t * inter + c, g);
  }
}

template <class T>
__global__ void add_bias_kernel(T* __restrict__ y, const float* __restrict__ b, int64_t T_, int64_t n) {
  const int64_t total = T_ * n;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = from_f<T>(to_f(y[i]) + b[i % n]);
}

template <class T>
__global__ void cast_kernel(const float* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = from_f<T>(x[i]);
}

template <class T>
__global__ void split_kernel(const float* __restrict__ x, T* __restrict__ hi, T* __restrict__ lo, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float v = x[i];
    const T h = from_f<T>(v);
    hi[i] = h;
    lo[i] = from_f<T>(v - to_f(h));
  }
}

}  // namespace

template <class T>
void split_hi_lo(const float* x, T* hi, T* lo, int64_t n, cudaStream_t st) {
  split_kernel<T><<<blocks_for(n, 256), 256, 0, st>>>(x, hi, lo, n);
  LB_LAUNCHED();
}
template void split_hi_lo<bf16>(const float*, bf16*, bf16*, int64_t, cudaStream_t);
template void split_hi_lo<f16>(const float*, f16*, f16*, int64_t, cudaStream_t);

template <class TOut>
void rmsnorm(const float* x, const float* w, TOut* y, int64_t rows, int64_t n, float eps, cudaStream_t st) {
  if (rows <= 0) return;
  if (n % 4 == 0) rmsnorm_kernel<TOut, 4><<<static_cast<unsigned>(rows), 256, 0, st>>>(x, w, y, n, eps);
  else rmsnorm_kernel<TOut, 1><<<static_cast<unsigned>(rows), 256, 0, st>>>(x, w, y, n, eps);
  LB_LAUNCHED();
}

template <class TW>
void embed(const TW* table, const int32_t* ids, float* h, int64_t n, int64_t hidden, cudaStream_t st) {
  embed_kernel<TW><<<blocks_for(n * hidden, 256), 256, 0, st>>>(table, ids, h, n, hidden);
  LB_LAUNCHED();
}

template <class TQ>
void qkv_post(const float* qkv, const float* bias, const float* q_norm, const float* k_norm, const float* cosv,
              const float* sinv, TQ* q, TQ* k, TQ* v, int64_t T, int64_t L, int nh, int nkv, int hd, float eps,
              cudaStream_t st) {
  if (hd % 8 || hd > 256) throw std::invalid_argument("CUDA q/k norm + RoPE needs headDim a multiple of 8, at most 256, got " + std::to_string(hd));
  qkv_post_kernel<TQ><<<static_cast<unsigned>(T), 128, 4 * hd * sizeof(float), st>>>(qkv, bias, q_norm, k_norm, cosv,
                                                                                     sinv, q, k, v, L, nh, nkv, hd, eps);
  LB_LAUNCHED();
}

template <class TIn, class TOut>
void silu_mul(const TIn* gu, TOut* out, int64_t T, int64_t inter, cudaStream_t st) {
  if (T <= 0) return;
  constexpr int V = 16 / sizeof(TIn);
  const int vec = inter % V == 0 ? V : 1;
  const int64_t lanes = inter / vec;
  const int threads = static_cast<int>(std::min<int64_t>(256, (lanes + 31) / 32 * 32));
  const dim3 grid(static_cast<unsigned>((lanes + threads - 1) / threads), static_cast<unsigned>(std::min<int64_t>(T, 65535)));
  if (vec == V) silu_mul_kernel<TIn, TOut, V><<<grid, threads, 0, st>>>(gu, out, T, inter);
  else silu_mul_kernel<TIn, TOut, 1><<<grid, threads, 0, st>>>(gu, out, T, inter);
  LB_LAUNCHED();
}

void add_bias(float* y, const float* b, int64_t T, int64_t n, cudaStream_t st) { add_bias_t<float>(y, b, T, n, st); }

template <class T>
void add_bias_t(T* y, const float* b, int64_t T_, int64_t n, cudaStream_t st) {
  add_bias_kernel<T><<<blocks_for(T_ * n, 256), 256, 0, st>>>(y, b, T_, n);
  LB_LAUNCHED();
}

template <class T>
void cast_from_f32(const float* x, T* y, int64_t n, cudaStream_t st) {
  cast_kernel<T><<<blocks_for(n, 256), 256, 0, st>>>(x, y, n);
  LB_LAUNCHED();
}

#define LB_INST(T)                                                                                              \
  template void rmsnorm<T>(const float*, const float*, T*, int64_t, int64_t, float, cudaStream_t);             \
  template void embed<T>(const T*, const int32_t*, float*, int64_t, int64_t, cudaStream_t);                    \
  template void qkv_post<T>(const float*, const float*, const float*, const float*, const float*, const float*, \
                            T*, T*, T*, int64_t, int64_t, int, int, int, float, cudaStream_t);                  \
  template void silu_mul<T, T>(const T*, T*, int64_t, int64_t, cudaStream_t);                                   \
  template void add_bias_t<T>(T*, const float*, int64_t, int64_t, cudaStream_t);                                \
  template void cast_from_f32<T>(const float*, T*, int64_t, cudaStream_t);
LB_INST(float)
LB_INST(bf16)
LB_INST(f16)
#undef LB_INST

namespace {
template <class T>
__global__ void gather_rows_kernel(const T* __restrict__ x, const int32_t* __restrict__ rows, T* __restrict__ out, int64_t nrows, int64_t n) {
  const int64_t total = nrows * n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += gridDim.x * static_cast<int64_t>(blockDim.x))
    out[i] = x[static_cast<int64_t>(rows[i / n]) * n + i % n];
}
}  // namespace

template <class T>
void gather_rows(const T* x, const int32_t* rows, T* out, int64_t nrows, int64_t n, cudaStream_t st) {
  if (nrows <= 0) return;
  gather_rows_kernel<T><<<blocks_for(nrows * n, 256), 256, 0, st>>>(x, rows, out, nrows, n);
  LB_LAUNCHED();
}
template void gather_rows<float>(const float*, const int32_t*, float*, int64_t, int64_t, cudaStream_t);
template void gather_rows<bf16>(const bf16*, const int32_t*, bf16*, int64_t, int64_t, cudaStream_t);
template void gather_rows<f16>(const f16*, const int32_t*, f16*, int64_t, int64_t, cudaStream_t);

namespace {
// One block per row: s = max(max|x|, 1e-5) / (2^(bits-1) − 1), x = nearbyint(x / s)·s — ops.cpp's
// fake_quant_rows_sym, with the same IEEE operations.
template <class T>
__global__ void fake_quant_rows_kernel(T* __restrict__ x, int64_t n, float qmax) {
  __shared__ float part[32];
  T* xr = x + blockIdx.x * n;
  float m = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, fabsf(to_f(xr[i])));
  m = block_reduce(m, part, [](float v) { return warp_max(v); });
  const float s = __fdiv_rn(fmaxf(m, 1e-5f), qmax);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) xr[i] = from_f<T>(__fmul_rn(rintf(__fdiv_rn(to_f(xr[i]), s)), s));
}
}  // namespace

template <class T>
void fake_quant_rows(T* x, int64_t rows, int64_t n, int bits, cudaStream_t st) {
  if (rows <= 0) return;
  fake_quant_rows_kernel<T><<<static_cast<unsigned>(rows), 256, 0, st>>>(x, n, static_cast<float>((1 << (bits - 1)) - 1));
  LB_LAUNCHED();
}
template void fake_quant_rows<float>(float*, int64_t, int64_t, int, cudaStream_t);
template void fake_quant_rows<bf16>(bf16*, int64_t, int64_t, int, cudaStream_t);
template void fake_quant_rows<f16>(f16*, int64_t, int64_t, int, cudaStream_t);

}  // namespace cuda
}  // namespace lowbit
