// GPTQ on the GPU with the semantics of native/cpu/gptq.cpp (the reference's): dead columns, act-order
// (stable, by descending Hessian diagonal), damp of the mean diagonal, the upper Cholesky factor of the
// inverse Hessian in float64 (cuSOLVER), then per block of columns one warp per weight row walks the
// columns in order (group parameters formed in quantization order from the updated weights, error
// feedback inside the block from a shared-memory copy of the block's Hinv), and the lazy update of the
// remaining columns is one cuBLAS SGEMM. Elementwise arithmetic uses explicitly rounded operations (no
// FMA contraction) in the CPU path's order, so integers agree with it up to GEMM summation order.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "quant.cuh"

namespace lowbit {
namespace cuda {
namespace {

constexpr int kMaxBlock = 128;  // columns per lazy block (Hinv block in shared memory: 64 KiB)
constexpr int kRowsPerCta = 16;

// quantizer.h gptq_params from an already reduced [min(0, w), max(0, w)].
__device__ __forceinline__ void gptq_params_dev(float mn, float mx, float maxq, bool sym, float& scale, float& zero) {
  if (sym) {
    mx = fmaxf(fabsf(mn), mx);
    if (mn < 0) mn = -mx;
  }
  if (mn == 0.f && mx == 0.f) {
    mn = -1.f;
    mx = 1.f;
  }
  scale = __fdiv_rn(__fsub_rn(mx, mn), maxq);
  zero = sym ? (maxq + 1.f) / 2.f : rintf(__fdiv_rn(-mn, scale));
}

// Per-channel / static-group parameters from W before any update: one warp per (row, group).
__global__ void group_params_kernel(const float* __restrict__ W, int64_t rows, int64_t cols, int64_t gs,
                                    int64_t ngroups, float maxq, bool sym, float* __restrict__ s,
                                    float* __restrict__ z) {
  const int64_t wid = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (wid >= rows * ngroups) return;
  const int64_t r = wid / ngroups, g = wid - r * ngroups, c0 = g * gs, n = min(gs, cols - c0);
  float mn = 0.f, mx = 0.f;
  for (int64_t j = lane; j < n; j += 32) {
    const float v = W[r * cols + c0 + j];
    mn = fminf(mn, v);
    mx = fmaxf(mx, v);
  }
  mn = warp_min(mn);
  mx = warp_max(mx);
  if (lane == 0) gptq_params_dev(mn, mx, maxq, sym, s[wid], z[wid]);
}

// dst[r, c] = src[r, perm[c]]
__global__ void permute_cols_kernel(const float* __restrict__ src, float* __restrict__ dst, const int32_t* __restrict__ perm,
                                    int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * static_cast<int64_t>(blockDim.x)) {
    const int64_t r = i / cols, c = i - r * cols;
    dst[i] = src[r * cols + perm[c]];
  }
}

// W[r, perm[c]] = Q[r, c]; q8[r, perm[c]] = Qi[r, c]
__global__ void unpermute_kernel(const float* __restrict__ Q, const uint8_t* __restrict__ Qi, const int32_t* __restrict__ perm,
                                 float* __restrict__ W, uint8_t* __restrict__ q8, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * static_cast<int64_t>(blockDim.x)) {
    const int64_t r = i / cols, c = i - r * cols;
    W[r * cols + perm[c]] = Q[i];
    q8[r * cols + perm[c]] = Qi[i];
  }
}

// One lazy block [i1, i1 + nb) of columns; one warp per row. mode 0: per channel (fixed params, 1 group),
// 1: groups formed in quantization order, 2: static groups (fixed params, group of the original column).
__global__ void __launch_bounds__(kRowsPerCta * 32) gptq_block_kernel(
    const float* __restrict__ W, int64_t rows, int64_t cols, const float* __restrict__ Hinv, int64_t i1, int nb,
    float* __restrict__ Q, uint8_t* __restrict__ Qi, float* __restrict__ E, float* __restrict__ scales,
    float* __restrict__ zeros, int64_t ngroups, const float* __restrict__ fs, const float* __restrict__ fz,
    const int32_t* __restrict__ perm, int64_t gs, int mode, float maxq, bool sym, double* __restrict__ loss) {
  constexpr int NPER = kMaxBlock / 32;
  extern __shared__ float Hs[];  // [kMaxBlock, kMaxBlock]: 64 KiB, above the static limit
  for (int idx = threadIdx.x; idx < nb * nb; idx += blockDim.x) {
    const int a = idx / nb, b = idx - a * nb;
    Hs[a * kMaxBlock + b] = b >= a ? Hinv[(i1 + a) * cols + i1 + b] : 0.f;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerCta) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const float* w = W + row * cols;
  const int64_t i2 = i1 + nb;
  float reg[NPER];
#pragma unroll
  for (int k = 0; k < NPER; ++k) {
    const int j = lane + 32 * k;
    reg[k] = j < nb ? w[i1 + j] : 0.f;
  }
  float scale = 1.f, zero = 0.f;
  if (mode == 0) {
    scale = fs[row];
    zero = fz[row];
  } else if (mode == 1 && i1 % gs != 0) {  // a group begun in an earlier block: its parameters carry over
    scale = scales[row * ngroups + i1 / gs];
    zero = zeros[row * ngroups + i1 / gs];
  }
  double acc = 0;
  for (int i = 0; i < nb; ++i) {
    const int64_t c = i1 + i;
    int64_t g = 0;
    if (mode == 1) {
      g = c / gs;
      if (c % gs == 0) {
        const int64_t end = c + min(gs, cols - c);
        float mn = 0.f, mx = 0.f;
#pragma unroll
        for (int k = 0; k < NPER; ++k) {
          const int j = lane + 32 * k;
          if (j >= i && j < nb && i1 + j < end) {
            mn = fminf(mn, reg[k]);
            mx = fmaxf(mx, reg[k]);
          }
        }
        for (int64_t j = i2 + lane; j < end; j += 32) {  // the group reaches past this block: not yet updated
          const float v = w[j];
          mn = fminf(mn, v);
          mx = fmaxf(mx, v);
        }
        gptq_params_dev(warp_min(mn), warp_max(mx), maxq, sym, scale, zero);
      }
    } else if (mode == 2) {
      g = perm[c] / gs;
      scale = fs[row * ngroups + g];
      zero = fz[row * ngroups + g];
    }
    float mine = 0.f;
#pragma unroll
    for (int k = 0; k < NPER; ++k)
      if (k == (i >> 5)) mine = reg[k];
    const float wc = __shfl_sync(0xffffffffu, mine, i & 31);
    const float qi = fminf(fmaxf(rintf(__fdiv_rn(wc, scale)) + zero, 0.f), maxq);
    const float q = __fmul_rn(scale, __fsub_rn(qi, zero));
    const float d = Hs[i * kMaxBlock + i];
    const float diff = __fsub_rn(wc, q);
    const float err = __fdiv_rn(diff, d);
    if (lane == 0) {
      Q[row * cols + c] = q;
      Qi[row * cols + c] = static_cast<uint8_t>(qi);
      E[row * kMaxBlock + i] = err;
      scales[row * ngroups + g] = scale;
      zeros[row * ngroups + g] = zero;
      acc += static_cast<double>(diff) * diff / (static_cast<double>(d) * d) / 2;
    }
#pragma unroll
    for (int k = 0; k < NPER; ++k) {
      const int j = lane + 32 * k;
      if (j >= i && j < nb) reg[k] = __fsub_rn(reg[k], __fmul_rn(err, Hs[i * kMaxBlock + j]));
    }
  }
  if (lane == 0) loss[row] += acc;
}

void launch_check() { LB_LAUNCHED(); }

}  // namespace

QuantCtx::QuantCtx(int device) : dev(device) {
  int ndev = 0;
  LB_CK(cudaGetDeviceCount(&ndev));
  if (device < 0 || device >= ndev)
    throw std::invalid_argument("no CUDA device " + std::to_string(device) + " (found " + std::to_string(ndev) + ")");
  LB_CK(cudaSetDevice(device));
  size_t fr = 0, tot = 0;
  LB_CK(cudaMemGetInfo(&fr, &tot));
  used0 = tot - fr;
  LB_CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  LB_CKB(cublasCreate(&blas));
  LB_CKB(cublasSetStream(blas, st));
  LB_CKB(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));  // fp32 GEMMs stay fp32 (no TF32)
  blas_ws.alloc(32u << 20);
  LB_CKB(cublasSetWorkspace(blas, blas_ws.p, blas_ws.bytes));
  LB_CKS(cusolverDnCreate(&sol));
  LB_CKS(cusolverDnSetStream(sol, st));
  LB_CKS(cusolverDnCreateParams(&sp));
}

QuantCtx::~QuantCtx() {
  cudaSetDevice(dev);
  if (st) cudaStreamSynchronize(st);
  if (sp) cusolverDnDestroyParams(sp);
  if (sol) cusolverDnDestroy(sol);
  if (blas) cublasDestroy(blas);
  blas_ws.release();
  if (st) cudaStreamDestroy(st);
}

void QuantCtx::sample_memory() {
  size_t fr = 0, tot = 0;
  LB_CK(cudaMemGetInfo(&fr, &tot));
  const uint64_t used = tot - fr;
  if (used > used0) peak = std::max<uint64_t>(peak, used - used0);
}

void syrk_acc(QuantCtx& cx, float* H, const float* X, int64_t T, int64_t n, float alpha) {
  const float beta = 1.f;
  // Row-major X [T, n] is column-major Xᵀ [n, T]: C = Xᵀ·X is SYRK with op N on it.
  LB_CKB(cublasSsyrk(cx.blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(T), &alpha, X,
                     static_cast<int>(n), &beta, H, static_cast<int>(n)));
}

namespace {
__global__ void symmetrize_kernel(float* __restrict__ H, int64_t n) {
  const int64_t total = n * n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += gridDim.x * static_cast<int64_t>(blockDim.x)) {
    const int64_t col = i / n, r = i - col * n;  // column-major (r, col)
    if (r < col) H[i] = H[r * n + col];          // upper ← lower
  }
}
}  // namespace

void symmetrize(QuantCtx& cx, float* H, int64_t n) {
  symmetrize_kernel<<<blocks_for(n * n, 256), 256, 0, cx.st>>>(H, n);
  launch_check();
}

void gptq_device(QuantCtx& cx, float* W, int64_t rows, int64_t cols, const float* H, const GptqOpts& o, GptqOut& r,
                 const CancelCheck& cancel) {
  if (o.block < 1 || o.block > kMaxBlock)
    throw std::invalid_argument("GPTQ on the GPU takes blockSize 1.." + std::to_string(kMaxBlock) + ", got " + std::to_string(o.block));
  if (o.group > 0 && cols % o.group)
    throw std::invalid_argument("group size " + std::to_string(o.group) + " does not divide " + std::to_string(cols) + " columns");
  cudaStream_t st = cx.st;
  const float maxq = static_cast<float>((1 << o.bits) - 1);
  const int64_t gs = o.group > 0 ? o.group : cols, ngroups = (cols + gs - 1) / gs;

  // Diagonal → dead columns and the act-order permutation (host: cols values).
  const std::vector<float> diag = diagonal(cx, H, cols);
  std::vector<uint8_t> dead(cols, 0);
  std::vector<int32_t> dead_list;
  std::vector<double> d64(cols);
  for (int64_t i = 0; i < cols; ++i) {
    d64[i] = diag[i];
    if (diag[i] == 0) {
      dead[i] = 1;
      d64[i] = 1;
      dead_list.push_back(static_cast<int32_t>(i));
    }
  }
  r.dead = static_cast<int64_t>(dead_list.size());
  std::vector<int32_t> perm(cols);
  std::iota(perm.begin(), perm.end(), 0);
  if (o.act_order) std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) { return d64[a] > d64[b]; });
  double mean_diag = 0;
  for (int64_t i = 0; i < cols; ++i) mean_diag += d64[perm[i]];  // the CPU path's summation order
  mean_diag /= cols;

  DevBuf d_deadmask, d_perm, fixed_s, fixed_z;
  d_perm.alloc(cols * 4);
  LB_CK(cudaMemcpyAsync(d_perm.p, perm.data(), cols * 4, cudaMemcpyHostToDevice, st));
  d_deadmask.alloc(cols);
  LB_CK(cudaMemcpyAsync(d_deadmask.p, dead.data(), cols, cudaMemcpyHostToDevice, st));
  zero_columns(cx, W, rows, cols, dead_list);
  const int mode = o.group <= 0 ? 0 : (o.static_groups ? 2 : 1);
  if (mode != 1) {
    fixed_s.alloc(rows * ngroups * 4);
    fixed_z.alloc(rows * ngroups * 4);
    group_params_kernel<<<blocks_for(rows * ngroups * 32, 256), 256, 0, st>>>(W, rows, cols, gs, ngroups, maxq, o.sym,
                                                                              fixed_s.as<float>(), fixed_z.as<float>());
    launch_check();
  }

  DevBuf Hinv;
  hinv_upper(cx, H, cols, d_perm.as<int32_t>(), d_deadmask.as<uint8_t>(), o.damp * mean_diag,
             "GPTQ: the damped Hessian is not positive definite; raise --damp", Hinv);

  DevBuf Wp, Q, Qi, E, sc, ze, loss;
  Wp.alloc(rows * cols * 4);
  permute_cols_kernel<<<blocks_for(rows * cols, 256), 256, 0, st>>>(W, Wp.as<float>(), d_perm.as<int32_t>(), rows, cols);
  launch_check();
  Q.alloc(rows * cols * 4);
  Qi.alloc(rows * cols);
  E.alloc(rows * kMaxBlock * 4);
  sc.alloc(rows * ngroups * 4);
  ze.alloc(rows * ngroups * 4);
  loss.alloc(rows * 8);
  LB_CK(cudaMemsetAsync(loss.p, 0, rows * 8, st));
  cx.sample_memory();
  const unsigned ctas = static_cast<unsigned>((rows + kRowsPerCta - 1) / kRowsPerCta);
  constexpr int smem = kMaxBlock * kMaxBlock * sizeof(float);
  LB_CK(cudaFuncSetAttribute(gptq_block_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  for (int64_t i1 = 0; i1 < cols; i1 += o.block) {
    cancel();
    const int64_t i2 = std::min(i1 + o.block, cols), nb = i2 - i1;
    gptq_block_kernel<<<ctas, kRowsPerCta * 32, smem, st>>>(
        Wp.as<float>(), rows, cols, Hinv.as<float>(), i1, static_cast<int>(nb), Q.as<float>(), Qi.as<uint8_t>(),
        E.as<float>(), sc.as<float>(), ze.as<float>(), ngroups, fixed_s.as<float>(), fixed_z.as<float>(),
        d_perm.as<int32_t>(), gs, mode, maxq, o.sym, loss.as<double>());
    launch_check();
    if (i2 < cols) {  // W[:, i2:] -= E · Hinv[i1:i2, i2:]
      const float alpha = -1.f, beta = 1.f;
      LB_CKB(cublasSgemm(cx.blas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(cols - i2), static_cast<int>(rows),
                         static_cast<int>(nb), &alpha, Hinv.as<float>() + i1 * cols + i2, static_cast<int>(cols),
                         E.as<float>(), kMaxBlock, &beta, Wp.as<float>() + i2, static_cast<int>(cols)));
    }
    if ((i1 / o.block) % 8 == 7) LB_CK(cudaStreamSynchronize(st));  // keeps cancel() responsive
  }
  Wp.release();
  DevBuf q8;
  q8.alloc(rows * cols);
  unpermute_kernel<<<blocks_for(rows * cols, 256), 256, 0, st>>>(Q.as<float>(), Qi.as<uint8_t>(), d_perm.as<int32_t>(), W,
                                                                 q8.as<uint8_t>(), rows, cols);
  launch_check();
  r.w.resize(o.weight ? rows * cols : 0);
  r.q.resize(rows * cols);
  r.scales.resize(rows * ngroups);
  r.zeros.resize(rows * ngroups);
  std::vector<double> row_loss(rows);
  if (o.weight) LB_CK(cudaMemcpyAsync(r.w.data(), W, rows * cols * 4, cudaMemcpyDeviceToHost, st));
  LB_CK(cudaMemcpyAsync(r.q.data(), q8.p, rows * cols, cudaMemcpyDeviceToHost, st));
  LB_CK(cudaMemcpyAsync(r.scales.data(), sc.p, rows * ngroups * 4, cudaMemcpyDeviceToHost, st));
  LB_CK(cudaMemcpyAsync(r.zeros.data(), ze.p, rows * ngroups * 4, cudaMemcpyDeviceToHost, st));
  LB_CK(cudaMemcpyAsync(row_loss.data(), loss.p, rows * 8, cudaMemcpyDeviceToHost, st));
  LB_CK(cudaStreamSynchronize(st));
  r.loss = std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
  r.g_idx.assign(cols, 0);
  for (int64_t c = 0; c < cols; ++c)
    r.g_idx[perm[c]] = static_cast<int32_t>(mode == 1 ? c / gs : (mode == 2 ? perm[c] / gs : 0));
  if (o.act_order) r.perm = perm;
  else r.perm.clear();
}

void gptq_host(int device, const HostMat& Wh, const float* Hh, const GptqOpts& o, GptqOut& r, const CancelCheck& cancel) {
  QuantCtx cx(device);
  DevBuf W, H;
  upload_problem(cx, Wh, Hh, W, H);
  gptq_device(cx, W.as<float>(), Wh.rows, Wh.cols, H.as<float>(), o, r, cancel);
}

void hessian_host(int device, float* Hh, const float* Xh, int64_t T, int64_t n, float alpha) {
  QuantCtx cx(device);
  DevBuf H, X;
  H.alloc(n * n * 4);
  X.alloc(std::max<int64_t>(T * n, 1) * 4);
  LB_CK(cudaMemcpyAsync(H.p, Hh, n * n * 4, cudaMemcpyHostToDevice, cx.st));
  LB_CK(cudaMemcpyAsync(X.p, Xh, T * n * 4, cudaMemcpyHostToDevice, cx.st));
  // H is symmetric on entry (a Hessian); SYRK updates the lower triangle, symmetrize mirrors it.
  if (T > 0) syrk_acc(cx, H.as<float>(), X.as<float>(), T, n, alpha);
  symmetrize(cx, H.as<float>(), n);
  LB_CK(cudaMemcpyAsync(Hh, H.p, n * n * 4, cudaMemcpyDeviceToHost, cx.st));
  LB_CK(cudaStreamSynchronize(cx.st));
}

}  // namespace cuda
}  // namespace lowbit
