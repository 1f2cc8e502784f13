// AWQ over one decoder layer on the GPU, with lib/quant/awq.ts's semantics (llm-awq): capture every
// window's linear inputs through the full-precision layer (which also moves the states on to the next layer),
// search each scale group's s = mean|x|^(r/grid) by the MSE of the block output its scaled, pseudo-quantized
// weights give, fold the best s into the weights, the preceding norm or linear and the captured inputs, then
// search each clipped linear's per-group clip range on a sample of its input, and quantize every linear on
// the grid the CPU path's rtnQuantize (grid 'awq') uses, with the same arithmetic.
//
// Everything is fp32 (cuBLAS without TF32, the fp32 attention kernel), and every reduction runs in a fixed
// order, so a run is repeatable bit for bit; the scale vectors are computed on the host exactly as awq.ts
// computes them.
#include <cmath>
#include <vector>

#include "quant_session.cuh"

namespace lowbit {
namespace cuda {
namespace {

// llm-awq's pseudo-quantizer (native/cpu/quantizer.h awq_params / fake_quant): asymmetric min/max grid with
// the zero point clamped to [0, maxq] (the range need not contain 0).
__device__ __forceinline__ void awq_params(float mn, float mx, float maxq, float& scale, float& zero) {
  scale = fmaxf(mx - mn, 1e-5f) / maxq;
  zero = fminf(fmaxf(-rintf(mn / scale), 0.f), maxq);
}
__device__ __forceinline__ float fake_quant(float w, float scale, float zero, float maxq) {
  return scale * (fminf(fmaxf(rintf(w / scale) + zero, 0.f), maxq) - zero);
}

// One (row, group)'s grid from its values v_j = w_j·s_j (w_j without s): min and max over the warp, llm-awq's rule.
__device__ __forceinline__ void group_grid(const float* __restrict__ w, const float* __restrict__ s, int64_t gs, float maxq,
                                           float& scale, float& zero) {
  const int lane = threadIdx.x & 31;
  float mn = INFINITY, mx = -INFINITY;
  for (int64_t j = lane; j < gs; j += 32) {
    const float v = s ? w[j] * s[j] : w[j];
    mn = fminf(mn, v);
    mx = fmaxf(mx, v);
  }
  awq_params(warp_min(mn), warp_max(mx), maxq, scale, zero);
}

// out = fake_quant(W ⊙ s) / s, each (row, group) on its own grid: one warp per (row, group).
__global__ void fq_scaled_kernel(const float* __restrict__ W, const float* __restrict__ s, float* __restrict__ out,
                                 int64_t rows, int64_t cols, int64_t gs, float maxq) {
  const int lane = threadIdx.x & 31;
  const int64_t ng = cols / gs, nwarps = gridDim.x * static_cast<int64_t>(blockDim.x) >> 5;
  // the loop bound is the same for a warp's lanes: whole warps leave together
  for (int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5; warp < rows * ng; warp += nwarps) {
    const int64_t off = (warp / ng) * cols + (warp % ng) * gs;
    const float* sg = s + (warp % ng) * gs;
    float scale, zero;
    group_grid(W + off, sg, gs, maxq, scale, zero);
    for (int64_t j = lane; j < gs; j += 32) out[off + j] = fake_quant(W[off + j] * sg[j], scale, zero, maxq) / sg[j];
  }
}

// The final integers: each (row, group) of W on its own grid, q = clamp(round(w / scale) + zero, 0, maxq), exactly
// as the host's rtnQuantize with grid 'awq' computes them. One warp per (row, group).
__global__ void awq_quant_kernel(const float* __restrict__ W, uint8_t* __restrict__ q, float* __restrict__ scales,
                                 float* __restrict__ zeros, int64_t rows, int64_t cols, int64_t gs, float maxq) {
  const int lane = threadIdx.x & 31;
  const int64_t ng = cols / gs, nwarps = gridDim.x * static_cast<int64_t>(blockDim.x) >> 5;
  for (int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5; warp < rows * ng; warp += nwarps) {
    const int64_t off = (warp / ng) * cols + (warp % ng) * gs;
    float scale, zero;
    group_grid(W + off, nullptr, gs, maxq, scale, zero);
    for (int64_t j = lane; j < gs; j += 32)
      q[off + j] = static_cast<uint8_t>(fminf(fmaxf(rintf(W[off + j] / scale) + zero, 0.f), maxq));
    if (lane == 0) {
      scales[warp] = scale;
      zeros[warp] = zero;
    }
  }
}

// a[i, j] ·= s[j] (or /= s[j]) for a [rows, cols].
__global__ void scale_cols_kernel(float* __restrict__ a, int64_t n, int64_t cols, const float* __restrict__ s, bool divide) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * static_cast<int64_t>(blockDim.x))
    a[i] = divide ? a[i] / s[i % cols] : a[i] * s[i % cols];
}

// a[i, :] /= s[i] for a [rows, cols] (cols = 1: a vector).
__global__ void div_rows_kernel(float* __restrict__ a, int64_t n, int64_t cols, const float* __restrict__ s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * static_cast<int64_t>(blockDim.x))
    a[i] /= s[i / cols];
}

// Σ_r |x[r, c]| in float64, in a fixed order: block (cx, ry) sums rows ry, ry + 64·8, … of its 32 columns into
// part[ry][c]; col_sum_parts adds the 64 parts in order.
constexpr int kRowParts = 64;
__global__ void col_abssum_kernel(const float* __restrict__ x, int64_t T, int64_t n, double* __restrict__ part) {
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  __shared__ double p[8][33];
  double a = 0;
  if (c < n)
    for (int64_t r = blockIdx.y * 8 + threadIdx.y; r < T; r += kRowParts * 8) a += fabsf(x[r * n + c]);
  p[threadIdx.y][threadIdx.x] = a;
  __syncthreads();
  if (threadIdx.y == 0 && c < n) {
    for (int y = 1; y < 8; ++y) a += p[y][threadIdx.x];
    part[blockIdx.y * n + c] = a;
  }
}
__global__ void col_sum_parts_kernel(const double* __restrict__ part, int64_t n, double* __restrict__ sum) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= n) return;
  double a = 0;
  for (int k = 0; k < kRowParts; ++k) a += part[k * n + c];
  sum[c] = a;
}

// acc += Σ (a − b)² in float64, in a fixed order: a grid of kSqBlocks blocks writes per-block sums, one block adds them.
constexpr int kSqBlocks = 512;
__global__ void sq_diff_kernel(const float* __restrict__ a, const float* __restrict__ b, int64_t n, double* __restrict__ part) {
  double s = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(kSqBlocks) * blockDim.x) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    s += d * d;
  }
  for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  __shared__ double w[32];
  if ((threadIdx.x & 31) == 0) w[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 1; k < static_cast<int>(blockDim.x >> 5); ++k) s += w[k];
    part[blockIdx.x] = s;
  }
}
__global__ void sum_parts_kernel(const double* __restrict__ part, double* __restrict__ acc) {
  __shared__ double p[kSqBlocks];
  p[threadIdx.x] = part[threadIdx.x];
  __syncthreads();
  for (int h = kSqBlocks / 2; h; h >>= 1) {
    if (threadIdx.x < h) p[threadIdx.x] += p[threadIdx.x + h];
    __syncthreads();
  }
  if (threadIdx.x == 0) *acc += p[0];
}

// xt [ci, n] = rows 0, step, 2·step, … of x [*, ci], transposed so the clip search reads each column's tokens
// contiguously.
__global__ void gather_t_kernel(const float* __restrict__ x, int64_t ci, int64_t step, int64_t n, float* __restrict__ xt) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < ci * n; i += gridDim.x * static_cast<int64_t>(blockDim.x)) {
    const int64_t j = i / n, t = i % n;
    xt[i] = x[t * step * ci + j];
  }
}

// The clip search (native/cpu/awq.cpp): for group g of row o and clip value m_k = max|w|·(1 − k/grid),
// k < steps, the error is mean_t (Σ_{j∈g} x_tj (q_j(m_k) − w_j))² with q the pseudo-quantization of
// clamp(w, −m, m); the first smallest error wins and the row's group is clamped to it. A block takes one
// group of kClipRows rows; each thread kClipTok tokens; the candidates' weights are built in shared memory
// kClipCols columns at a time (variant 0 is w itself), so any group size fits.
constexpr int kClipRows = 2, kClipVars = 12, kClipCols = 64, kClipThreads = 256, kClipTok = 2;
constexpr int kClipMaxSteps = kClipVars - 1;

__global__ void __launch_bounds__(kClipThreads) awq_clip_kernel(float* __restrict__ W, int64_t co, int64_t ci,
                                                                const float* __restrict__ xt, int n, int64_t gs,
                                                                float maxq, int grid, int steps) {
  const int64_t g = blockIdx.x, r0 = static_cast<int64_t>(blockIdx.y) * kClipRows;
  const int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5;
  __shared__ __align__(16) float qs[kClipCols][kClipRows][kClipVars];
  __shared__ float mv[kClipRows][kClipVars], sc[kClipRows][kClipVars], zr[kClipRows][kClipVars];
  __shared__ float omax_s[kClipRows];
  if (wid < kClipRows) {  // the row's group extremes give every candidate's grid: clamping is monotone
    const int64_t o = r0 + wid;
    float mn = INFINITY, mx = -INFINITY, am = 0.f;
    if (o < co)
      for (int64_t j = lane; j < gs; j += 32) {
        const float w = W[o * ci + g * gs + j];
        mn = fminf(mn, w);
        mx = fmaxf(mx, w);
        am = fmaxf(am, fabsf(w));
      }
    mn = warp_min(mn);
    mx = warp_max(mx);
    am = warp_max(am);
    if (lane < kClipVars) {
      const int k = lane - 1;
      const float m = k < 0 ? INFINITY : am * (1.f - static_cast<float>(k) / grid);
      float s = 1.f, z = 0.f;
      if (k >= 0) awq_params(fminf(fmaxf(mn, -m), m), fminf(fmaxf(mx, -m), m), maxq, s, z);
      mv[wid][lane] = m;
      sc[wid][lane] = s;
      zr[wid][lane] = z;
    }
    if (lane == 0) omax_s[wid] = am;
  }
  float acc[kClipTok][kClipRows][kClipVars] = {};
  int tok[kClipTok];
#pragma unroll
  for (int u = 0; u < kClipTok; ++u) tok[u] = tid + u * kClipThreads;
  for (int64_t j0 = 0; j0 < gs; j0 += kClipCols) {
    __syncthreads();
    for (int e = tid; e < kClipCols * kClipRows * kClipVars; e += kClipThreads) {
      const int jj = e / (kClipRows * kClipVars), r = (e / kClipVars) % kClipRows, v = e % kClipVars;
      const int64_t o = r0 + r, j = j0 + jj;
      float q = 0.f;
      if (o < co && j < gs && v <= steps) {
        const float w = W[o * ci + g * gs + j];
        q = v == 0 ? w : fake_quant(fminf(fmaxf(w, -mv[r][v]), mv[r][v]), sc[r][v], zr[r][v], maxq);
      }
      qs[jj][r][v] = q;
    }
    __syncthreads();
    const int64_t jn = gs - j0 < kClipCols ? gs - j0 : kClipCols;
    for (int jj = 0; jj < jn; ++jj) {
      const float* xc = xt + (g * gs + j0 + jj) * n;
      float x[kClipTok];
#pragma unroll
      for (int u = 0; u < kClipTok; ++u) x[u] = tok[u] < n ? xc[tok[u]] : 0.f;
#pragma unroll
      for (int r = 0; r < kClipRows; ++r)
#pragma unroll
        for (int v4 = 0; v4 < kClipVars / 4; ++v4) {
          const float4 q = *reinterpret_cast<const float4*>(&qs[jj][r][v4 * 4]);
#pragma unroll
          for (int u = 0; u < kClipTok; ++u) {
            acc[u][r][v4 * 4 + 0] = fmaf(x[u], q.x, acc[u][r][v4 * 4 + 0]);
            acc[u][r][v4 * 4 + 1] = fmaf(x[u], q.y, acc[u][r][v4 * 4 + 1]);
            acc[u][r][v4 * 4 + 2] = fmaf(x[u], q.z, acc[u][r][v4 * 4 + 2]);
            acc[u][r][v4 * 4 + 3] = fmaf(x[u], q.w, acc[u][r][v4 * 4 + 3]);
          }
        }
    }
  }
  // Squared errors per candidate, summed over tokens: warps by shuffles, then warp by warp in order.
  __shared__ double wsum[kClipThreads / 32][kClipRows][kClipVars];
#pragma unroll
  for (int r = 0; r < kClipRows; ++r)
#pragma unroll
    for (int v = 1; v < kClipVars; ++v) {
      double e = 0;
#pragma unroll
      for (int u = 0; u < kClipTok; ++u)
        if (tok[u] < n) {
          const double d = static_cast<double>(acc[u][r][v]) - static_cast<double>(acc[u][r][0]);
          e += d * d;
        }
      for (int o = 16; o; o >>= 1) e += __shfl_xor_sync(0xffffffffu, e, o);
      if (lane == 0) wsum[wid][r][v] = e;
    }
  __syncthreads();
  if (wid < kClipRows && r0 + wid < co) {
    float best = omax_s[wid];
    if (lane == 0) {
      double min_err = 1e9;
      for (int k = 0; k < steps; ++k) {
        double e = 0;
        for (int w = 0; w < kClipThreads / 32; ++w) e += wsum[w][wid][k + 1];
        e /= n;
        if (e < min_err) {
          min_err = e;
          best = mv[wid][k + 1];
        }
      }
    }
    best = __shfl_sync(0xffffffffu, best, 0);
    float* w = W + (r0 + wid) * ci + g * gs;
    for (int64_t j = lane; j < gs; j += 32) w[j] = fminf(fmaxf(w[j], -best), best);
  }
}

void launch_clip(float* W, int64_t co, int64_t ci, const float* xt, int64_t n, int64_t gs, int bits, int grid, int steps,
                 cudaStream_t st) {
  if (steps < 1 || steps > kClipMaxSteps) throw std::invalid_argument("AWQ clip steps must be 1.." + std::to_string(kClipMaxSteps));
  if (n < 1 || n > kClipThreads * kClipTok) throw std::invalid_argument("AWQ clip takes 1.." + std::to_string(kClipThreads * kClipTok) + " tokens");
  dim3 g(static_cast<unsigned>(ci / gs), static_cast<unsigned>((co + kClipRows - 1) / kClipRows));
  awq_clip_kernel<<<g, kClipThreads, 0, st>>>(W, co, ci, xt, static_cast<int>(n), gs, static_cast<float>((1 << bits) - 1), grid, steps);
  LB_LAUNCHED();
}

// The search over one layer, on the session's buffers.
class AwqLayer {
 public:
  AwqLayer(QuantSession& s, const AwqOpts& o) : s_(s), c_(s.cfg), o_(o), st_(s.cx.st), Tn_(s.nseq * s.L) {}

  void run(AwqOut& out, const CancelCheck& cancel) {
    capture(cancel);
    // An overflow in this layer (or broken weights) would poison every statistic after it: stop, saying where.
    if (nonfinite_output(out)) return;
    // awq.ts's groups, in its order: v → o only when v's outputs are o's inputs one to one (not under GQA).
    search(out, 0, cancel);
    search(out, 2, cancel);
    if (c_.nkv == c_.nh) search(out, 1, cancel);
    search(out, 3, cancel);
    // Clipping: every linear but q and k, each on a sample of its own (now scaled) input.
    const int clip_lins[5] = {2, 3, 4, 5, 6};
    static const int input_of[7] = {0, 0, 0, 1, 2, 2, 3};
    for (int lin : clip_lins) {
      cancel();
      int64_t rows = 0, cols = 0;
      s_.shape(lin, rows, cols);
      const int64_t step = std::max<int64_t>(1, Tn_ / o_.clip_tokens);
      const int64_t take = std::min<int64_t>(o_.clip_tokens, (Tn_ + step - 1) / step);
      xt_.alloc(cols * take * 4);
      gather_t_kernel<<<blocks_for(cols * take, 256), 256, 0, st_>>>(feat_[input_of[lin]].as<float>(), cols, step, take, xt_.as<float>());
      LB_LAUNCHED();
      launch_clip(s_.weight(lin), rows, cols, xt_.as<float>(), take, group(cols), o_.bits, o_.grid, o_.grid / 2, st_);
    }
    // The final integers, scales and zeros (and, when asked, the scaled and clipped weights they quantize).
    DevBuf qd, sd, zd;
    for (int lin = 0; lin < 7; ++lin) {
      int64_t rows = 0, cols = 0;
      s_.shape(lin, rows, cols);
      const int64_t gs = group(cols), ng = cols / gs;
      qd.alloc(rows * cols);
      sd.alloc(rows * ng * 4);
      zd.alloc(rows * ng * 4);
      awq_quant_kernel<<<blocks_for(rows * ng * 32, 256), 256, 0, st_>>>(s_.weight(lin), qd.as<uint8_t>(), sd.as<float>(), zd.as<float>(),
                                                                       rows, cols, gs, static_cast<float>((1 << o_.bits) - 1));
      LB_LAUNCHED();
      out.q[lin].resize(rows * cols);
      out.scales[lin].resize(rows * ng);
      out.zeros[lin].resize(rows * ng);
      LB_CK(cudaMemcpyAsync(out.q[lin].data(), qd.p, rows * cols, cudaMemcpyDeviceToHost, st_));
      LB_CK(cudaMemcpyAsync(out.scales[lin].data(), sd.p, rows * ng * 4, cudaMemcpyDeviceToHost, st_));
      LB_CK(cudaMemcpyAsync(out.zeros[lin].data(), zd.p, rows * ng * 4, cudaMemcpyDeviceToHost, st_));
      if (o_.weights) {
        out.w[lin].resize(rows * cols);
        LB_CK(cudaMemcpyAsync(out.w[lin].data(), s_.weight(lin), rows * cols * 4, cudaMemcpyDeviceToHost, st_));
      }
      if (const float* b = bias(lin)) {
        out.bias[lin].resize(rows);
        LB_CK(cudaMemcpyAsync(out.bias[lin].data(), b, rows * 4, cudaMemcpyDeviceToHost, st_));
      }
      LB_CK(cudaStreamSynchronize(st_));  // before the staging buffers are reused
    }
    s_.cx.sample_memory();
    out.in_norm.resize(c_.hidden);
    out.post_norm.resize(c_.hidden);
    LB_CK(cudaMemcpyAsync(out.in_norm.data(), s_.in_norm.p, c_.hidden * 4, cudaMemcpyDeviceToHost, st_));
    LB_CK(cudaMemcpyAsync(out.post_norm.data(), s_.post_norm.p, c_.hidden * 4, cudaMemcpyDeviceToHost, st_));
    LB_CK(cudaStreamSynchronize(st_));
  }

 private:
  QuantSession& s_;
  const ModelCfg& c_;
  const AwqOpts& o_;
  cudaStream_t st_;
  const int64_t Tn_;
  DevBuf feat_[4], org_, scratch_, svec_, xm_parts_, xm_, sq_parts_, sq_acc_, xt_;

  int64_t group(int64_t cols) const { return o_.group_size > 0 ? o_.group_size : cols; }
  float* bias(int lin) const {
    const int64_t off[7] = {0, c_.nh * c_.hd, (c_.nh + c_.nkv) * c_.hd, 0, 0, c_.inter, 0};
    const DevBuf* b[7] = {&s_.b_qkv, &s_.b_qkv, &s_.b_qkv, &s_.b_o, &s_.b_gu, &s_.b_gu, &s_.b_down};
    return b[lin]->p ? b[lin]->as<float>() + off[lin] : nullptr;
  }

  // Every window through the full-precision layer, keeping its four linear inputs; the states move on in place
  // (the next layer's inputs come from the unmodified layer, as llm-awq's do).
  void capture(const CancelCheck& cancel) {
    uint64_t need = static_cast<uint64_t>(Tn_) * c_.hidden * 4;  // the unscaled block outputs
    for (int k = 0; k < 4; ++k) need += static_cast<uint64_t>(Tn_) * s_.in_dim(k) * 4;
    size_t fr = 0, tot = 0;
    LB_CK(cudaMemGetInfo(&fr, &tot));
    if (need + (uint64_t(1) << 30) > fr)
      throw std::runtime_error("AWQ on the GPU keeps the four linear inputs of all " + std::to_string(Tn_) +
                               " calibration tokens: " + std::to_string(need >> 20) + " MiB, but device " +
                               std::to_string(s_.cx.dev) + " has " + std::to_string(fr >> 20) +
                               " MiB free (use fewer calibration samples, or --device cpu)");
    for (int k = 0; k < 4; ++k) {
      feat_[k].alloc(Tn_ * s_.in_dim(k) * 4);
      s_.feat[k] = feat_[k].as<float>();
    }
    try {
      s_.all_batches(4, 0, cancel);
    } catch (...) {
      for (auto& f : s_.feat) f = nullptr;
      throw;
    }
    for (auto& f : s_.feat) f = nullptr;
    // att_all now holds the full-precision attention output, which the scaled and clipped q/k/v no longer give.
    s_.att_valid = false;
    s_.res_valid = false;
  }

  bool nonfinite_output(AwqOut& out) {
    const int64_t i = first_nonfinite(s_.cx, s_.hs.as<float>(), Tn_ * c_.hidden);
    if (i < 0) return false;
    out.nonfinite_at = i;
    LB_CK(cudaMemcpy(&out.nonfinite_value, s_.hs.as<float>() + i, 4, cudaMemcpyDeviceToHost));
    return true;
  }

  // The output of scale group k's block for windows [s0, s0 + ns) from their inputs x, with the group's
  // weights w (the others as loaded): 0 attention (q|k|v → o), 1 o, 2 the MLP (gate|up → down), 3 down.
  void block(int k, const float* x, const float* w, float* y, int64_t ns) {
    const int64_t T = ns * s_.L;
    switch (k) {
      case 0:
        s_.gemm(x, w, s_.qkv.as<float>(), T, s_.dqkv(), c_.hidden, 0.f);
        qkv_post<float>(s_.qkv.as<float>(), s_.b_qkv.as<float>(), s_.q_norm.as<float>(), s_.k_norm.as<float>(),
                        s_.cosv.as<float>(), s_.sinv.as<float>(), s_.q.as<float>(), s_.k.as<float>(), s_.v.as<float>(), T,
                        s_.L, static_cast<int>(c_.nh), static_cast<int>(c_.nkv), static_cast<int>(c_.hd), c_.eps, st_);
        attention<float>(s_.q.as<float>(), s_.k.as<float>(), s_.v.as<float>(), s_.att.as<float>(), ns, s_.L,
                         static_cast<int>(c_.nh), static_cast<int>(c_.nkv), static_cast<int>(c_.hd), true, st_);
        s_.gemm(s_.att.as<float>(), s_.w_o.as<float>(), y, T, c_.hidden, c_.nh * c_.hd, 0.f);
        if (s_.b_o.p) add_bias(y, s_.b_o.as<float>(), T, c_.hidden, st_);
        break;
      case 1:
        s_.gemm(x, w, y, T, c_.hidden, c_.nh * c_.hd, 0.f);
        if (s_.b_o.p) add_bias(y, s_.b_o.as<float>(), T, c_.hidden, st_);
        break;
      case 2:
        s_.gemm(x, w, s_.gu.as<float>(), T, 2 * c_.inter, c_.hidden, 0.f);
        if (s_.b_gu.p) add_bias(s_.gu.as<float>(), s_.b_gu.as<float>(), T, 2 * c_.inter, st_);
        silu_mul<float, float>(s_.gu.as<float>(), s_.act.as<float>(), T, c_.inter, st_);
        s_.gemm(s_.act.as<float>(), s_.w_down.as<float>(), y, T, c_.hidden, c_.inter, 0.f);
        if (s_.b_down.p) add_bias(y, s_.b_down.as<float>(), T, c_.hidden, st_);
        break;
      case 3:
        s_.gemm(x, w, y, T, c_.hidden, c_.inter, 0.f);
        if (s_.b_down.p) add_bias(y, s_.b_down.as<float>(), T, c_.hidden, st_);
        break;
    }
  }

  // mean over every window of (org − block(x; w))², or (org == nullptr) org = block(x; w).
  double block_pass(int k, const float* w, float* org, const CancelCheck& cancel) {
    const int64_t cols = s_.in_dim(k);
    if (org) LB_CK(cudaMemsetAsync(sq_acc_.p, 0, 8, st_));
    for (int64_t s0 = 0; s0 < s_.nseq; s0 += s_.bs) {
      cancel();
      const int64_t ns = std::min(s_.bs, s_.nseq - s0), T = ns * s_.L;
      const float* x = feat_[k].as<float>() + s0 * s_.L * cols;
      float* y = org ? s_.res.as<float>() : org_.as<float>() + s0 * s_.L * c_.hidden;
      block(k, x, w, y, ns);
      if (org) {
        sq_diff_kernel<<<kSqBlocks, 256, 0, st_>>>(org + s0 * s_.L * c_.hidden, y, T * c_.hidden, sq_parts_.as<double>());
        LB_LAUNCHED();
        sum_parts_kernel<<<1, kSqBlocks, 0, st_>>>(sq_parts_.as<double>(), sq_acc_.as<double>());
        LB_LAUNCHED();
      }
    }
    if (!org) return 0;
    double sum = 0;
    LB_CK(cudaMemcpyAsync(&sum, sq_acc_.p, 8, cudaMemcpyDeviceToHost, st_));
    LB_CK(cudaStreamSynchronize(st_));
    return sum / static_cast<double>(Tn_ * c_.hidden);
  }

  // Scale group k: its weights (contiguous in the session), what the scales fold into, its input.
  void search(AwqOut& out, int k, const CancelCheck& cancel) {
    cancel();
    const int64_t cols = s_.in_dim(k), gs = group(cols);
    if (cols % gs) throw std::invalid_argument("AWQ: group size " + std::to_string(gs) + " does not divide " + std::to_string(cols));
    const int first[4] = {0, 3, 4, 6}, count[4] = {3, 1, 2, 1};
    float* w = s_.weight(first[k]);
    int64_t rows = 0;
    for (int i = 0; i < count[k]; ++i) {
      int64_t r = 0, cc = 0;
      s_.shape(first[k] + i, r, cc);
      rows += r;
    }
    const float* x = feat_[k].as<float>();
    // mean |x| per input channel (float64, as awq.ts), on the host for the grid's powers.
    const int64_t ncb = (cols + 31) / 32;
    xm_parts_.alloc(kRowParts * cols * 8);
    xm_.alloc(cols * 8);
    col_abssum_kernel<<<dim3(static_cast<unsigned>(ncb), kRowParts), dim3(32, 8), 0, st_>>>(x, Tn_, cols, xm_parts_.as<double>());
    LB_LAUNCHED();
    col_sum_parts_kernel<<<blocks_for(cols, 256), 256, 0, st_>>>(xm_parts_.as<double>(), cols, xm_.as<double>());
    LB_LAUNCHED();
    std::vector<double> xm(cols);
    LB_CK(cudaMemcpyAsync(xm.data(), xm_.p, cols * 8, cudaMemcpyDeviceToHost, st_));
    LB_CK(cudaStreamSynchronize(st_));
    for (int64_t j = 0; j < cols; ++j) {
      xm[j] /= static_cast<double>(Tn_);
      if (!std::isfinite(xm[j]))
        throw std::invalid_argument("AWQ: the input statistics of scale group " + std::to_string(k) + " are not finite");
    }
    org_.alloc(Tn_ * c_.hidden * 4);
    sq_parts_.alloc(kSqBlocks * 8);
    sq_acc_.alloc(8);
    scratch_.alloc(rows * cols * 4);
    svec_.alloc(cols * 4);
    block_pass(k, w, nullptr, cancel);
    std::vector<float> s(cols), best_s;
    double best = INFINITY;
    for (int r = 0; r < o_.grid; ++r) {
      // awq.ts: s = max(fround(xm^(r/grid)), 1e-4), divided by fround(sqrt(max·min)).
      float mx = -INFINITY, mn = INFINITY;
      for (int64_t j = 0; j < cols; ++j) {
        s[j] = std::max(static_cast<float>(std::pow(xm[j], static_cast<double>(r) / o_.grid)), 1e-4f);
        mx = std::max(mx, s[j]);
        mn = std::min(mn, s[j]);
      }
      const float norm = static_cast<float>(std::sqrt(static_cast<double>(mx) * mn));
      for (auto& v : s) v = static_cast<float>(static_cast<double>(v) / norm);
      LB_CK(cudaMemcpyAsync(svec_.p, s.data(), cols * 4, cudaMemcpyHostToDevice, st_));
      const int64_t warps = rows * (cols / gs);
      fq_scaled_kernel<<<blocks_for(warps * 32, 256), 256, 0, st_>>>(w, svec_.as<float>(), scratch_.as<float>(), rows, cols, gs,
                                                                    static_cast<float>((1 << o_.bits) - 1));
      LB_LAUNCHED();
      const double loss = block_pass(k, scratch_.as<float>(), org_.as<float>(), cancel);
      if (loss < best) {
        best = loss;
        best_s = s;
        out.best_ratio[k] = r;
      }
    }
    if (best_s.empty()) throw std::runtime_error("AWQ: every scale candidate of group " + std::to_string(k) + " gave a non-finite loss");
    out.loss[k] = best;
    // Fold: the group's weights take s, what precedes it gives it back, and so does its captured input.
    LB_CK(cudaMemcpyAsync(svec_.p, best_s.data(), cols * 4, cudaMemcpyHostToDevice, st_));
    const float* sv = svec_.as<float>();
    scale_cols_kernel<<<blocks_for(rows * cols, 256), 256, 0, st_>>>(w, rows * cols, cols, sv, false);
    LB_LAUNCHED();
    scale_cols_kernel<<<blocks_for(Tn_ * cols, 256), 256, 0, st_>>>(feat_[k].as<float>(), Tn_ * cols, cols, sv, true);
    LB_LAUNCHED();
    if (k == 0 || k == 2) {
      float* norm = (k == 0 ? s_.in_norm : s_.post_norm).as<float>();
      div_rows_kernel<<<blocks_for(cols, 256), 256, 0, st_>>>(norm, cols, 1, sv);
      LB_LAUNCHED();
    } else {
      const int prev = k == 1 ? 2 : 5;  // v before o, up before down
      int64_t pr = 0, pc = 0;
      s_.shape(prev, pr, pc);
      div_rows_kernel<<<blocks_for(pr * pc, 256), 256, 0, st_>>>(s_.weight(prev), pr * pc, pc, sv);
      LB_LAUNCHED();
      if (float* b = bias(prev)) {
        div_rows_kernel<<<blocks_for(pr, 256), 256, 0, st_>>>(b, pr, 1, sv);
        LB_LAUNCHED();
      }
    }
    LB_CK(cudaStreamSynchronize(st_));
    s_.cx.sample_memory();
  }
};

}  // namespace

void quant_session_awq(QuantSession& s, const AwqOpts& o, AwqOut& out, const CancelCheck& cancel) {
  LB_CK(cudaSetDevice(s.cx.dev));
  if (!s.loaded) throw std::logic_error("no layer loaded on the GPU quantization session");
  if (o.bits < 1 || o.bits > 8) throw std::invalid_argument("AWQ: bits must be 1..8");
  if (o.grid < 2) throw std::invalid_argument("AWQ: the scale grid needs at least 2 points");
  if (o.clip_tokens < 1) throw std::invalid_argument("AWQ: clip tokens must be positive");
  for (auto& h : s.H) h.release();
  s.att.alloc(s.bs * s.L * s.cfg.nh * s.cfg.hd * 4);  // the block searches' attention output (att_all is the capture's)
  out = AwqOut();
  AwqLayer(s, o).run(out, cancel);
}

}  // namespace cuda
}  // namespace lowbit
