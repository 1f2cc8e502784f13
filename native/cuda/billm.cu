// BiLLM on the GPU with native/cpu/billm.cpp's semantics (its header comment has the algorithm and where it
// departs from the reference code): the damped inverse Hessian's Cholesky factor (hinv.cu), then per block of
// columns the column saliency, the salient-count search, the break-point search over the percentiles of
// |M·¬sal| (a device radix sort; the percentiles from the host's float64 arithmetic), the block's binarization
// with fp16-rounded α/μ, and the lazy error feedback to the remaining columns as one SGEMM.
//
// One warp per weight row holds the block in registers (column j = lane + 32·slot). Means, mean deviations and
// errors are float64 as on the CPU, summed per lane and then over the warp's butterfly (every lane gets the same
// bits); the per-row search errors are summed over rows in a fixed two-level order. So runs repeat bit for bit,
// and the choices are the CPU path's except where two candidates' float64 errors tie to within rounding. The
// elementwise float steps use explicitly rounded operations, in the CPU path's order (no FMA contraction), and
// the feedback walks each row's columns in order as the CPU path does: the loss and E match it exactly for the
// same binarization.
#include <cub/device/device_radix_sort.cuh>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "quant.cuh"

namespace lowbit {
namespace cuda {
namespace {

constexpr int kWarps = 8;        // weight rows per CTA, one warp each
constexpr int kMaxBlock = 256;   // columns per block: up to 8 per lane
constexpr int kSplits = 81;      // break points: the 10%..90% percentiles, step 1% (billm.cpp)
constexpr int kSumSlices = 64;   // row slices of the two-level column sums
constexpr unsigned kAll = 0xffffffffu;
enum : uint8_t { kConc = 0, kSparse = 1, kSal = 2 };

// billm.cpp's residual_binarize over this warp's entries of group `grp`: adds the order-ORDER binarization of x
// into out. With ab, α and μ are rounded to fp16 first and recorded (ab[2o], ab[2o + 1]), and the signs set bit o
// of bits.
template <int NPER, int ORDER>
__device__ __forceinline__ void residual_binarize(const float* x, const uint8_t* g, uint8_t grp, int nb, bool centered,
                                                  float* out, float* ab = nullptr, uint8_t* bits = nullptr) {
  const int lane = threadIdx.x & 31;
  bool in[NPER];
  int m = 0;
#pragma unroll
  for (int k = 0; k < NPER; ++k) {
    in[k] = lane + 32 * k < nb && g[k] == grp;
    m += in[k];
  }
  m = warp_sum(m);
  if (m == 0) return;
#pragma unroll
  for (int o = 0; o < ORDER; ++o) {
    double mu = 0;
    if (centered) {
      double s = 0;
#pragma unroll
      for (int k = 0; k < NPER; ++k)
        if (in[k]) s = __dadd_rn(s, __dsub_rn(static_cast<double>(x[k]), static_cast<double>(out[k])));
      mu = __ddiv_rn(warp_sum(s), static_cast<double>(m));
    }
    double a = 0;
#pragma unroll
    for (int k = 0; k < NPER; ++k)
      if (in[k]) a = __dadd_rn(a, fabs(__dsub_rn(__dsub_rn(static_cast<double>(x[k]), static_cast<double>(out[k])), mu)));
    a = __ddiv_rn(warp_sum(a), static_cast<double>(m));
    float fa = static_cast<float>(a), fmu = static_cast<float>(mu);
    if (ab) {
      fa = __half2float(__float2half_rn(fa));
      fmu = __half2float(__float2half_rn(fmu));
      ab[2 * o] = fa;
      ab[2 * o + 1] = fmu;
    }
#pragma unroll
    for (int k = 0; k < NPER; ++k)
      if (in[k]) {
        const float s = __fsub_rn(__fsub_rn(x[k], out[k]), fmu) >= 0.f ? 1.f : -1.f;
        if (bits && s > 0) bits[k] |= static_cast<uint8_t>(1u << o);
        out[k] = __fadd_rn(out[k], __fadd_rn(__fmul_rn(fa, s), fmu));
      }
  }
}

// Σ over the row of (x − q)² in float64 (billm.cpp's sq_err), on every lane.
template <int NPER>
__device__ __forceinline__ double sq_err(const float* x, const float* q, int nb) {
  const int lane = threadIdx.x & 31;
  double e = 0;
#pragma unroll
  for (int k = 0; k < NPER; ++k)
    if (lane + 32 * k < nb) {
      const double d = __dsub_rn(static_cast<double>(x[k]), static_cast<double>(q[k]));
      e = __dadd_rn(e, __dmul_rn(d, d));
    }
  return warp_sum(e);
}

template <int NPER>
__device__ __forceinline__ void load_row(const float* __restrict__ src, int nb, float* x) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int k = 0; k < NPER; ++k) x[k] = lane + 32 * k < nb ? src[lane + 32 * k] : 0.f;
}

// S[r, k]: column k's saliency term from W[r, i1 + k] (w²/Hinv_kk² or |w|); M[r, k]: the value the searches run on.
__global__ void prep_kernel(const float* __restrict__ W, int64_t rows, int64_t cols, const float* __restrict__ Hinv,
                            int64_t i1, int nb, bool hessian, bool on_saliency, double* __restrict__ S,
                            float* __restrict__ M) {
  const int64_t n = rows * nb;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * static_cast<int64_t>(blockDim.x)) {
    const int64_t r = i / nb, k = i - r * nb;
    const double w = W[r * cols + i1 + k], d = Hinv[(i1 + k) * cols + i1 + k];
    const double t = __ddiv_rn(__dmul_rn(w, w), __dmul_rn(d, d));
    S[i] = hessian ? t : fabs(w);
    M[i] = hessian && on_saliency ? static_cast<float>(t) : static_cast<float>(w);
  }
}

// part[s, j] = Σ of A[r, j] over the rows of slice s (rows s·8 + ty + t·8·slices), in a fixed order.
__global__ void col_sum_part_kernel(const double* __restrict__ A, int64_t rows, int n, double* __restrict__ part) {
  __shared__ double red[8][32];
  const int j = blockIdx.x * 32 + threadIdx.x, s = blockIdx.y;
  double acc = 0;
  if (j < n)
    for (int64_t r = s * 8 + threadIdx.y; r < rows; r += 8 * kSumSlices) acc += A[r * n + j];
  red[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < n) {
    double t = 0;
    for (int y = 0; y < 8; ++y) t += red[y][threadIdx.x];
    part[s * n + j] = t;
  }
}

__global__ void col_sum_final_kernel(const double* __restrict__ part, int n, double* __restrict__ out) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  double t = 0;
  for (int s = 0; s < kSumSlices; ++s) t += part[s * n + j];
  out[j] = t;
}

// err[r, k − 1] = the block's error with the top-k saliency columns binarized apart (order 2 each), k = 1..nk
// (billm.cpp's structural_search, first loop).
template <int NPER>
__global__ void __launch_bounds__(kWarps * 32) salient_count_kernel(const float* __restrict__ M, int64_t rows, int nb,
                                                                    const int32_t* __restrict__ order, int nk,
                                                                    bool centered, double* __restrict__ err) {
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + (threadIdx.x >> 5);
  if (row >= rows) return;
  float x[NPER];
  uint8_t g[NPER];
  load_row<NPER>(M + row * nb, nb, x);
#pragma unroll
  for (int k = 0; k < NPER; ++k) g[k] = kConc;
  for (int kk = 1; kk <= nk; ++kk) {
    const int c = order[kk - 1];
#pragma unroll
    for (int k = 0; k < NPER; ++k)
      if (c == lane + 32 * k) g[k] = kSal;
    float q[NPER] = {};
    residual_binarize<NPER, 2>(x, g, kSal, nb, centered, q);
    residual_binarize<NPER, 2>(x, g, kConc, nb, centered, q);
    const double e = sq_err<NPER>(x, q, nb);
    if (lane == 0) err[row * nk + kk - 1] = e;
  }
}

// flat[r, k] = |M[r, k]|, 0 on salient columns (the reference's flattened quantile counts them as zeros).
__global__ void flat_kernel(const float* __restrict__ M, int64_t n, int nb, const uint8_t* __restrict__ colsal,
                            float* __restrict__ flat) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * static_cast<int64_t>(blockDim.x))
    flat[i] = colsal[i % nb] ? 0.f : fabsf(M[i]);
}

__global__ void gather_kernel(const float* __restrict__ src, const int64_t* __restrict__ idx, int n, float* __restrict__ out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = src[idx[i]];
}

// err[r, i] = the block's error with break point splits[i]: salient columns order 2, concentrated and sparse
// entries order 1 each (structural_search, second loop).
template <int NPER>
__global__ void __launch_bounds__(kWarps * 32) split_kernel(const float* __restrict__ M, int64_t rows, int nb,
                                                            const uint8_t* __restrict__ colsal, const float* __restrict__ splits,
                                                            bool centered, double* __restrict__ err) {
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + (threadIdx.x >> 5);
  if (row >= rows) return;
  float x[NPER], qs[NPER] = {};
  uint8_t g[NPER];
  bool sal[NPER];
  load_row<NPER>(M + row * nb, nb, x);
#pragma unroll
  for (int k = 0; k < NPER; ++k) {
    sal[k] = lane + 32 * k < nb && colsal[lane + 32 * k];
    g[k] = sal[k] ? kSal : kConc;
  }
  residual_binarize<NPER, 2>(x, g, kSal, nb, centered, qs);
  for (int i = 0; i < kSplits; ++i) {
    const float p = splits[i];
    float q[NPER];
#pragma unroll
    for (int k = 0; k < NPER; ++k) {
      if (!sal[k]) g[k] = fabsf(x[k]) >= p ? kSparse : kConc;
      q[k] = qs[k];
    }
    residual_binarize<NPER, 1>(x, g, kConc, nb, centered, q);
    residual_binarize<NPER, 1>(x, g, kSparse, nb, centered, q);
    const double e = sq_err<NPER>(x, q, nb);
    if (lane == 0) err[row * kSplits + i] = e;
  }
}

struct BlockArgs {
  float* W;
  int64_t rows, cols, i1, blk, nblocks;
  int nb, ldE;
  const float* Hinv;
  const float* M;
  const uint8_t* colsal;
  float p;
  bool centered, feedback, exact;
  float* E;
  uint8_t* code;     // [rows, cols]: the 2-bit code of each weight
  uint16_t* scales;  // [rows, nblocks, kBillmScales] fp16
  double* loss;      // [rows], accumulated over the blocks in column order
  int* overflow;
};

// The block's final binarization (recording α/μ, signs and groups), written over W's block columns, then the
// error fed back: E[r, i] = (w − q)/Hinv_ii walking the columns in order (with exact feedback, each error also
// updates the block's later columns).
template <int NPER>
__global__ void __launch_bounds__(kWarps * 32) binarize_kernel(BlockArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + (threadIdx.x >> 5);
  if (row >= a.rows) return;
  float* w = a.W + row * a.cols + a.i1;
  float x[NPER], q[NPER] = {};
  uint8_t g[NPER], bits[NPER] = {};
  load_row<NPER>(w, a.nb, x);
#pragma unroll
  for (int k = 0; k < NPER; ++k) {
    const int j = lane + 32 * k;
    g[k] = j >= a.nb ? kConc : a.colsal[j] ? kSal : (fabsf(a.M[row * a.nb + j]) >= a.p ? kSparse : kConc);
  }
  float ab[kBillmScales] = {};
  residual_binarize<NPER, 2>(x, g, kSal, a.nb, a.centered, q, ab + kBillmA1, bits);
  residual_binarize<NPER, 1>(x, g, kConc, a.nb, a.centered, q, ab + kBillmAc, bits);
  residual_binarize<NPER, 1>(x, g, kSparse, a.nb, a.centered, q, ab + kBillmAs, bits);
  if (lane == 0) {
    uint16_t* sc = a.scales + (row * a.nblocks + a.blk) * kBillmScales;
#pragma unroll
    for (int s = 0; s < kBillmScales; ++s) {
      if (!isfinite(ab[s])) atomicOr(a.overflow, 1);
      sc[s] = __half_as_ushort(__float2half_rn(ab[s]));
    }
  }
#pragma unroll
  for (int k = 0; k < NPER; ++k) {
    const int j = lane + 32 * k;
    if (j >= a.nb) continue;
    // bit 0: the first sign; bit 1: the second residual sign (salient) or the sparse flag
    const unsigned b1 = g[k] == kSal ? (bits[k] >> 1) & 1u : g[k] == kSparse;
    a.code[row * a.cols + a.i1 + j] = static_cast<uint8_t>((bits[k] & 1u) | b1 << 1);
    w[j] = q[k];
  }
  if (!a.feedback) return;
  double acc = lane == 0 ? a.loss[row] : 0.0;
  for (int i = 0; i < a.nb; ++i) {
    const int64_t c = a.i1 + i;
    float xi = 0.f, qi = 0.f;
#pragma unroll
    for (int k = 0; k < NPER; ++k)
      if (k == (i >> 5)) {
        xi = x[k];
        qi = q[k];
      }
    xi = __shfl_sync(kAll, xi, i & 31);
    qi = __shfl_sync(kAll, qi, i & 31);
    const float d = a.Hinv[c * a.cols + c];
    const float diff = __fsub_rn(xi, qi);
    const float err = __fdiv_rn(diff, d);
    if (lane == 0) {
      a.E[row * a.ldE + i] = err;
      const double dd = static_cast<double>(diff), hd = static_cast<double>(d);
      acc = __dadd_rn(acc, __ddiv_rn(__ddiv_rn(__dmul_rn(dd, dd), __dmul_rn(hd, hd)), 2.0));
    }
    if (a.exact) {
      const float* h = a.Hinv + c * a.cols + a.i1;
#pragma unroll
      for (int k = 0; k < NPER; ++k) {
        const int j = lane + 32 * k;
        if (j > i && j < a.nb) x[k] = __fsub_rn(x[k], __fmul_rn(err, h[j]));
      }
    }
  }
  if (lane == 0) a.loss[row] = acc;
}

// words[r, w] = the codes of columns 16w .. 16w + 15 (2 bits each, column c at bits 2(c % 16)).
__global__ void pack_codes_kernel(const uint8_t* __restrict__ code, int64_t rows, int64_t cols, int64_t wpr,
                                  uint32_t* __restrict__ words) {
  const int64_t n = rows * wpr;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * static_cast<int64_t>(blockDim.x)) {
    const int64_t r = i / wpr, c0 = (i - r * wpr) * 16;
    uint32_t v = 0;
    for (int64_t c = c0; c < c0 + 16 && c < cols; ++c) v |= static_cast<uint32_t>(code[r * cols + c]) << (2 * (c - c0));
    words[i] = v;
  }
}

void launch_check() { LB_LAUNCHED(); }

// billm.cpp's quantile_sorted (numpy's linear quantile) at the 10%..90% percentiles of a sorted device array of n
// values: the two neighbours of each position come back, the arithmetic is the host's.
class Percentiles {
 public:
  Percentiles() {
    idx_.alloc(2 * kSplits * sizeof(int64_t));
    vals_.alloc(2 * kSplits * sizeof(float));
  }
  void run(QuantCtx& cx, const float* sorted, int64_t n, float* out) {
    int64_t lohi[2 * kSplits];
    double pos[kSplits];
    for (int i = 0; i < kSplits; ++i) {
      pos[i] = (0.10 + 0.01 * i) * static_cast<double>(n - 1);
      const int64_t lo = static_cast<int64_t>(std::floor(pos[i]));
      lohi[2 * i] = lo;
      lohi[2 * i + 1] = std::min<int64_t>(lo + 1, n - 1);
    }
    float v[2 * kSplits];
    LB_CK(cudaMemcpyAsync(idx_.p, lohi, sizeof lohi, cudaMemcpyHostToDevice, cx.st));
    gather_kernel<<<1, 2 * kSplits, 0, cx.st>>>(sorted, idx_.as<int64_t>(), 2 * kSplits, vals_.as<float>());
    launch_check();
    LB_CK(cudaMemcpyAsync(v, vals_.p, sizeof v, cudaMemcpyDeviceToHost, cx.st));
    LB_CK(cudaStreamSynchronize(cx.st));
    for (int i = 0; i < kSplits; ++i) {
      const double lo = static_cast<double>(lohi[2 * i]);
      out[i] = static_cast<float>(v[2 * i] + (static_cast<double>(v[2 * i + 1]) - v[2 * i]) * (pos[i] - lo));
    }
  }

 private:
  DevBuf idx_, vals_;
};

// Index of the smallest value, the first on ties (the CPU path's strict <).
int64_t argmin(const std::vector<double>& v) {
  int64_t best = 0;
  for (int64_t i = 1; i < static_cast<int64_t>(v.size()); ++i)
    if (v[i] < v[best]) best = i;
  return best;
}

template <int NPER>
struct Kernels {
  static void salient_count(const float* M, int64_t rows, int nb, const int32_t* order, int nk, bool centered, double* err,
                            cudaStream_t st) {
    salient_count_kernel<NPER><<<static_cast<unsigned>((rows + kWarps - 1) / kWarps), kWarps * 32, 0, st>>>(M, rows, nb, order, nk,
                                                                                                          centered, err);
  }
  static void split(const float* M, int64_t rows, int nb, const uint8_t* colsal, const float* splits, bool centered, double* err,
                    cudaStream_t st) {
    split_kernel<NPER><<<static_cast<unsigned>((rows + kWarps - 1) / kWarps), kWarps * 32, 0, st>>>(M, rows, nb, colsal, splits,
                                                                                                 centered, err);
  }
  static void binarize(const BlockArgs& a, cudaStream_t st) {
    binarize_kernel<NPER><<<static_cast<unsigned>((a.rows + kWarps - 1) / kWarps), kWarps * 32, 0, st>>>(a);
  }
};

}  // namespace

void billm_device(QuantCtx& cx, float* W, int64_t rows, int64_t cols, const float* H, const BillmOptions& o, bool want_weight,
                  BillmResult& res, const CancelCheck& cancel) {
  if (o.block < 1 || o.block > kMaxBlock)
    throw std::invalid_argument("BiLLM on the GPU takes blockSize 1.." + std::to_string(kMaxBlock) + ", got " + std::to_string(o.block));
  cudaStream_t st = cx.st;
  const int64_t bad = first_nonfinite(cx, W, rows * cols);
  if (bad >= 0)
    throw std::invalid_argument("billmQuantize: weight has a non-finite value (NaN/Inf) at row " + std::to_string(bad / cols) +
                                ", column " + std::to_string(bad % cols));
  const std::vector<float> diag = diagonal(cx, H, cols);
  std::vector<uint8_t> dead(cols, 0);
  std::vector<int32_t> dead_list;
  double mean_diag = 0;
  for (int64_t i = 0; i < cols; ++i) {
    if (!std::isfinite(diag[i]))
      throw std::invalid_argument("billmQuantize: hessian has a non-finite value (NaN/Inf) at [" + std::to_string(i) + ", " +
                                  std::to_string(i) + "]");
    if (diag[i] == 0) {  // a column no calibration token touched
      dead[i] = 1;
      dead_list.push_back(static_cast<int32_t>(i));
    }
    mean_diag += dead[i] ? 1.0 : static_cast<double>(diag[i]);
  }
  mean_diag /= cols;
  res.dead = static_cast<int64_t>(dead_list.size());
  zero_columns(cx, W, rows, cols, dead_list);
  DevBuf d_perm, d_dead, Hinv;
  {
    std::vector<int32_t> id(cols);
    std::iota(id.begin(), id.end(), 0);
    d_perm.alloc(cols * 4);
    d_dead.alloc(cols);
    LB_CK(cudaMemcpyAsync(d_perm.p, id.data(), cols * 4, cudaMemcpyHostToDevice, st));
    LB_CK(cudaMemcpyAsync(d_dead.p, dead.data(), cols, cudaMemcpyHostToDevice, st));
    hinv_upper(cx, H, cols, d_perm.as<int32_t>(), d_dead.as<uint8_t>(), o.damp * mean_diag,
               "billmQuantize: the damped Hessian is not positive definite; raise damp", Hinv);
  }
  for (float d : diagonal(cx, Hinv.as<float>(), cols))
    if (!(d > 0) || !std::isfinite(d)) throw std::runtime_error("billmQuantize: the damped Hessian is numerically singular; raise damp");

  const int64_t B = o.block, nblocks = (cols + B - 1) / B, wpr = (cols + 15) / 16;
  const int64_t nerr = std::max<int64_t>(kSplits, B);
  DevBuf S, M, err, part, sums, order, colsal, flat, sorted, splits, E, code, scales, loss, overflow, words, cub_tmp;
  S.alloc(rows * B * 8);
  M.alloc(rows * B * 4);
  err.alloc(rows * nerr * 8);
  part.alloc(kSumSlices * nerr * 8);
  sums.alloc(nerr * 8);
  order.alloc(B * 4);
  colsal.alloc(B);
  flat.alloc(rows * B * 4);
  sorted.alloc(rows * B * 4);
  splits.alloc(kSplits * 4);
  E.alloc(rows * B * 4);
  code.alloc(rows * cols);
  scales.alloc(rows * nblocks * kBillmScales * 2);
  loss.alloc(rows * 8);
  overflow.alloc(4);
  LB_CK(cudaMemsetAsync(loss.p, 0, rows * 8, st));
  LB_CK(cudaMemsetAsync(overflow.p, 0, 4, st));
  size_t cub_bytes = 0;
  LB_CK(cub::DeviceRadixSort::SortKeys(nullptr, cub_bytes, flat.as<float>(), sorted.as<float>(), static_cast<int>(rows * B), 0, 32, st));
  cub_tmp.alloc(std::max<size_t>(cub_bytes, 8));
  Percentiles pct;
  cx.sample_memory();

  // Σ over rows of A [rows, n] (device) → host, in the fixed two-level order.
  auto col_sums = [&](const double* A, int n) {
    col_sum_part_kernel<<<dim3((n + 31) / 32, kSumSlices), dim3(32, 8), 0, st>>>(A, rows, n, part.as<double>());
    launch_check();
    col_sum_final_kernel<<<(n + 127) / 128, 128, 0, st>>>(part.as<double>(), n, sums.as<double>());
    launch_check();
    std::vector<double> h(n);
    LB_CK(cudaMemcpyAsync(h.data(), sums.p, n * 8, cudaMemcpyDeviceToHost, st));
    LB_CK(cudaStreamSynchronize(st));
    return h;
  };
  const bool wide = B > 128;
  res.salient_mask.assign(cols, 0);
  for (int64_t i1 = 0; i1 < cols; i1 += B) {
    cancel();
    const int64_t i2 = std::min(i1 + B, cols);
    const int nb = static_cast<int>(i2 - i1);
    prep_kernel<<<blocks_for(rows * nb, 256), 256, 0, st>>>(W, rows, cols, Hinv.as<float>(), i1, nb, o.hessian_metric,
                                                           o.search_on_saliency, S.as<double>(), M.as<float>());
    launch_check();
    const std::vector<double> sal = col_sums(S.as<double>(), nb);
    std::vector<int32_t> ord(nb);
    std::iota(ord.begin(), ord.end(), 0);
    std::stable_sort(ord.begin(), ord.end(), [&](int32_t a, int32_t b) { return sal[a] > sal[b]; });

    // 1) the salient-column count
    int64_t best_k = 0;
    if (o.saliency_search) {
      const int64_t up = std::min<int64_t>(o.max_salient, nb);
      if (up >= 2) {
        const int nk = static_cast<int>(up - 1);
        LB_CK(cudaMemcpyAsync(order.p, ord.data(), nb * 4, cudaMemcpyHostToDevice, st));
        (wide ? Kernels<8>::salient_count : Kernels<4>::salient_count)(M.as<float>(), rows, nb, order.as<int32_t>(), nk, o.centered,
                                                                      err.as<double>(), st);
        launch_check();
        best_k = argmin(col_sums(err.as<double>(), nk)) + 1;
      }
    } else {
      best_k = std::min<int64_t>(o.fixed_salient, nb);
    }
    std::vector<uint8_t> cs(nb, 0);
    for (int64_t k = 0; k < best_k; ++k) cs[ord[k]] = 1;
    LB_CK(cudaMemcpyAsync(colsal.p, cs.data(), nb, cudaMemcpyHostToDevice, st));

    // 2) the break point: percentiles of |M·¬sal|, then the search over them
    const int64_t n = rows * nb;
    flat_kernel<<<blocks_for(n, 256), 256, 0, st>>>(M.as<float>(), n, nb, colsal.as<uint8_t>(), flat.as<float>());
    launch_check();
    LB_CK(cub::DeviceRadixSort::SortKeys(cub_tmp.p, cub_bytes, flat.as<float>(), sorted.as<float>(), static_cast<int>(n), 0, 32, st));
    float sp[kSplits];
    pct.run(cx, sorted.as<float>(), n, sp);
    LB_CK(cudaMemcpyAsync(splits.p, sp, sizeof sp, cudaMemcpyHostToDevice, st));
    (wide ? Kernels<8>::split : Kernels<4>::split)(M.as<float>(), rows, nb, colsal.as<uint8_t>(), splits.as<float>(), o.centered,
                                                  err.as<double>(), st);
    launch_check();
    const float p = sp[argmin(col_sums(err.as<double>(), kSplits))];

    // 3) binarize the block, then feed its error to the remaining columns: W[:, i2:] −= E · Hinv[i1:i2, i2:]
    BlockArgs a{W, rows, cols, i1, i1 / B, nblocks, nb, static_cast<int>(B), Hinv.as<float>(), M.as<float>(),
                colsal.as<uint8_t>(), p, o.centered, o.feedback, o.exact_feedback, E.as<float>(), code.as<uint8_t>(),
                scales.as<uint16_t>(), loss.as<double>(), overflow.as<int>()};
    (wide ? Kernels<8>::binarize : Kernels<4>::binarize)(a, st);
    launch_check();
    if (o.feedback && i2 < cols) {
      const float alpha = -1.f, beta = 1.f;
      LB_CKB(cublasSgemm(cx.blas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(cols - i2), static_cast<int>(rows), nb, &alpha,
                         Hinv.as<float>() + i1 * cols + i2, static_cast<int>(cols), E.as<float>(), static_cast<int>(B), &beta,
                         W + i2, static_cast<int>(cols)));
    }
    res.block_salient.push_back(static_cast<int32_t>(best_k));
    res.salient += best_k;
    for (int k = 0; k < nb; ++k) res.salient_mask[i1 + k] = cs[k];
  }
  int of = 0;
  LB_CK(cudaMemcpyAsync(&of, overflow.p, 4, cudaMemcpyDeviceToHost, st));
  LB_CK(cudaStreamSynchronize(st));
  if (of)
    throw std::invalid_argument("billmQuantize: a binarization scale exceeds the fp16 range (|w| > 65504) and cannot be stored");
  S.release();
  err.release();
  flat.release();
  sorted.release();
  words.alloc(rows * wpr * 4);
  pack_codes_kernel<<<blocks_for(rows * wpr, 256), 256, 0, st>>>(code.as<uint8_t>(), rows, cols, wpr, words.as<uint32_t>());
  launch_check();
  res.w.resize(want_weight ? rows * cols : 0);
  res.codes.resize(rows * wpr);
  res.scales.resize(rows * nblocks * kBillmScales);
  std::vector<double> row_loss(rows);
  if (want_weight) LB_CK(cudaMemcpyAsync(res.w.data(), W, rows * cols * 4, cudaMemcpyDeviceToHost, st));
  LB_CK(cudaMemcpyAsync(res.codes.data(), words.p, rows * wpr * 4, cudaMemcpyDeviceToHost, st));
  LB_CK(cudaMemcpyAsync(res.scales.data(), scales.p, res.scales.size() * 2, cudaMemcpyDeviceToHost, st));
  LB_CK(cudaMemcpyAsync(row_loss.data(), loss.p, rows * 8, cudaMemcpyDeviceToHost, st));
  LB_CK(cudaStreamSynchronize(st));
  res.loss = std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
  billm_finish(res, cols, B);
}

void billm_host(int device, const HostMat& Wh, const float* Hh, const BillmOptions& o, BillmResult& r, const CancelCheck& cancel) {
  QuantCtx cx(device);
  DevBuf W, H;
  upload_problem(cx, Wh, Hh, W, H);
  billm_device(cx, W.as<float>(), Wh.rows, Wh.cols, H.as<float>(), o, true, r, cancel);
}

}  // namespace cuda
}  // namespace lowbit
