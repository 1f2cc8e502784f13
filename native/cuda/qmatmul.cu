// Packed low-bit linears on the GPU: y[M, rows] = x[M, cols] · Wᵀ with W held as 2/3/4/8-bit integers and
// fp16 group scales/zeros (layout: qlayout.h), and W8A8 (int8 weights × per-token int8 activations).
//
// qmm_kernel: a block of 4 warps, each with WM tiles of 16 rows and all of the block's tokens (WN n-tiles of 8),
// walks a range of 128-column blocks (K split over gridDim.y, as many splits as fill the GPU in one wave, so that
// batch 1 keeps enough bytes in flight). Each 128-column block's records and x tile pass through a ring of `stages`
// shared-memory slots: on Hopper one thread hands a whole stage to the bulk-copy engine (cp.async.bulk, counted
// on an mbarrier), elsewhere every thread copies 16 bytes at a time with cp.async. A warp loads its words into
// registers, makes a step's A registers with masks and one half2 op per pair, and runs mma.sync m16n8k16 with fp32
// accumulation. The integers go in as exact values; a sub-group's sums Σ q·x become Σ s·(q − z)·x with the group
// sums Σx precomputed per token (acc += s·(Σ q·x − z·Σx)), so scales and zeros are applied in fp32 once per group
// rather than rounded into every weight. x comes converted (T, packed column order, group sums) from its own launch,
// or, where its K range fits in shared memory at no cost in blocks per SM (batch 1–2 on an H100 at 8192 × 28672), each block
// converts it itself (qmm_convert_x). Partial sums of a K split go to their own slice and a second launch adds
// them in a fixed order (deterministic). Any batch runs here on sm_80+; on Hopper, batches from
// QLinearInfo::gemm_from tokens on run the wgmma GEMM of qgemm.cu instead (same records; there the weights are
// rounded to fp16/bf16 as they are dequantized, see there), whose larger tiles read each x tile once per 128 rows
// rather than once per warp. On Hopper the three launches (x conversion, kernel, split sum) are chained with
// programmatic dependent launch where the grid fills the GPU.
//
// W8A8: activations quantized per token on the device exactly as the CPU's quantize_rows_u8 (absmax/127, IEEE
// division, round half to even), cuBLAS int8 GEMM into int32, scaled by sx·sw as the CPU's int8_matmul: the
// result is the CPU's bit for bit.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "gpu.h"
#include "mma.cuh"
#include "qdequant.cuh"
#include "qgemm.h"
#include "qlayout.h"

namespace lowbit {
namespace cuda {

namespace {

constexpr int kWarps = 4;

struct QmmArgs {
  const uint8_t* w;   // records
  const void* x;      // [M, kpad] T, packed column order
  const float* xs;    // [nkb·nsub, Mpad] Σx per sub-group and token
  float* out;         // [splits][M, rows]
  int M, Mpad, N, ntiles, nkb, nsub, kpad, stages;
  int64_t split_stride;
  float oscale;
  // x converted in the kernel (FX): the fp32 x [M, cols] and its column order; xstride: halves between token rows
  // of the block's x in shared memory (the block's K range + 32, so that rows g and g + 1 fall in different banks).
  const float* x32;
  const int32_t* perm;
  int cols, xstride;
};

// x tile rows in shared memory are 160 halves (320 B ≡ 64 mod 128) apart, so the 16-byte loads of lanes
// (g, t) and (g + 1, t) fall in different banks.
constexpr int kXStride = 160;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define LB_QMM_BULK 1
#else
#define LB_QMM_BULK 0
#endif

// A ring slot: the block's records of one 128-column block, and (unless x is converted in the kernel) its x tile.
template <int BITS, int WM, int WN, int NSUB, bool FX>
__host__ __device__ constexpr int qmm_stage_bytes() {
  return kWarps * WM * q_record_bytes(BITS, NSUB) + (FX ? 0 : 8 * WN * kXStride * 2);
}
// With FX, after the ring and its mbarriers (from a 128-byte boundary): the block's x as T, min(M, 8·WN) rows of
// xstride halves, then Σx per sub-group [K range's sub-groups][8·WN tokens].
__host__ __device__ constexpr int qmm_fx_offset(int stages, int stage_bytes) { return (stages * (stage_bytes + 8) + 127) / 128 * 128; }
__host__ __device__ constexpr int qmm_fx_bytes(int xrows, int xstride, int maxnk, int nsub, int wn) {
  return xrows * xstride * 2 + maxnk * nsub * 8 * wn * 4;
}

#if !LB_QMM_BULK
// cp.async.wait_group takes an immediate: at most n (0..6, stages 2..8) groups left pending.
__device__ __forceinline__ void cp_async_wait_n(int n) {
  switch (n) {
    case 0: cp_async_wait<0>(); break;
    case 1: cp_async_wait<1>(); break;
    case 2: cp_async_wait<2>(); break;
    case 3: cp_async_wait<3>(); break;
    case 4: cp_async_wait<4>(); break;
    case 5: cp_async_wait<5>(); break;
    default: cp_async_wait<6>(); break;
  }
}
#endif

// FX's conversion: x rows tok0 … tok0 + xrows − 1, packed columns [kb0·128, kb1·128) → xsh (T, row stride
// a.xstride) and xsum[(kb − kb0)·NSUB + j][token − tok0] = Σ of the T values over sub-group j (0 for tokens
// ≥ xrows). Each thread takes 8 consecutive columns of a token (an item) and up to four items per round, all
// loads issued before any is used: the whole conversion costs about one memory round trip, hidden behind the
// prologue's records. A sub-group's 8-column chunks are consecutive items, i.e. lanes of one half-warp, summed
// with a butterfly in a fixed order (repeatable bit for bit).
template <class T, int WN, int NSUB>
__device__ __forceinline__ void qmm_convert_x(const QmmArgs& a, int tok0, int xrows, int kb0, int kb1, T* xsh, float* xsum) {
  constexpr int CPS = 16 / NSUB, ROUND = 4 * kWarps * 32;  // chunks per sub-group; items per round
  const int nch = (kb1 - kb0) * 16, items = xrows * nch;
  for (int i = threadIdx.x; i < (kb1 - kb0) * NSUB * 8 * WN; i += blockDim.x)
    if (i % (8 * WN) >= xrows) xsum[i] = 0.f;
  const bool vec = a.perm == nullptr && a.cols % 4 == 0;
  for (int base = 0; base < items; base += ROUND) {
    float v[4][8];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = base + r * kWarps * 32 + threadIdx.x;
      const int m = i / nch, j0 = kb0 * 128 + (i % nch) * 8;
      const float* src = a.x32 + static_cast<int64_t>(tok0 + m) * a.cols;
      if (i < items && vec && j0 + 8 <= a.cols) {
        const float4 lo = __ldg(reinterpret_cast<const float4*>(src + j0)), hi = __ldg(reinterpret_cast<const float4*>(src + j0 + 4));
        v[r][0] = lo.x, v[r][1] = lo.y, v[r][2] = lo.z, v[r][3] = lo.w, v[r][4] = hi.x, v[r][5] = hi.y, v[r][6] = hi.z, v[r][7] = hi.w;
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const int j = j0 + e;
          v[r][e] = i < items && j < a.cols ? __ldg(src + (a.perm ? __ldg(a.perm + j) : j)) : 0.f;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      if (base + r * kWarps * 32 >= items) break;  // the same for the whole block: the shuffles below stay full-warp
      const int i = base + r * kWarps * 32 + threadIdx.x;
      union {
        T h[8];
        uint4 u;
      } c;
      float sum = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        c.h[e] = from_f<T>(v[r][e]);
        sum += to_f(c.h[e]);
      }
#pragma unroll
      for (int o = 1; o < CPS; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      if (i < items) {
        const int m = i / nch, ch = i % nch;
        *reinterpret_cast<uint4*>(xsh + m * a.xstride + ch * 8) = c.u;
        if (ch % CPS == 0) xsum[(ch / CPS) * 8 * WN + m] = sum;
      }
    }
  }
}

// NSUB sub-groups (of 128 / NSUB columns) per 128-column block. FX: the block converts the x of its K range itself
// (fp32 → T in the packed column order, Σx per sub-group) into shared memory once, while the prologue's records
// are on their way, instead of reading what a conversion launch wrote.
template <int BITS, class T, int WM, int WN, int NSUB, bool FX>
__global__ void __launch_bounds__(kWarps * 32) qmm_kernel(QmmArgs a) {
  extern __shared__ __align__(128) uint8_t smem[];
  constexpr int WORDS = q_words(BITS), R = q_record_bytes(BITS, NSUB), SB = qmm_stage_bytes<BITS, WM, WN, NSUB, FX>();
  constexpr int XOFF = kWarps * WM * R, SPS = 4 / NSUB;  // k32 super-steps per sub-group
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int tile0 = (blockIdx.x * kWarps + wid) * WM;
  const bool active = tile0 < a.ntiles;  // every warp keeps to the block's barriers
  const int S = gridDim.y, stages = a.stages;
  const int kb0 = static_cast<int>(static_cast<int64_t>(a.nkb) * blockIdx.y / S);
  const int kb1 = static_cast<int>(static_cast<int64_t>(a.nkb) * (blockIdx.y + 1) / S);
  const int tok0 = blockIdx.z * 8 * WN;
  const T* x = static_cast<const T*>(a.x);
  const int xrows = max(0, min(8 * WN, a.M - tok0));  // the block's real tokens
  pdl_launch_dependents();

#if LB_QMM_BULK
  // Hopper: lane 0 of warp 0 hands each stage to the bulk-copy engine (the block's records of block kb are one
  // contiguous run; x one 256-byte run per token) and the stage's mbarrier counts the bytes in.
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + stages * SB);
  const int blk_tile0 = blockIdx.x * kWarps * WM;
  const int ntile_blk = min(kWarps * WM, a.ntiles - blk_tile0);
  if (threadIdx.x == 0) {
    for (int i = 0; i < stages; ++i) mbar_init(bars + i, 1);
    fence_mbar_init();
  }
  if constexpr (!FX) {
    for (int i = threadIdx.x; i < stages * (8 * WN - xrows) * 16; i += blockDim.x) {  // rows no copy fills: zero
      const int per = (8 * WN - xrows) * 16, sl = i / per, r = xrows + (i % per) / 16, c = i % 16;
      *reinterpret_cast<uint4*>(smem + sl * SB + XOFF + r * kXStride * 2 + c * 16) = make_uint4(0, 0, 0, 0);
    }
  }
  __syncthreads();
  // A stage's records (which the previous grid does not write) and its x rows (which it does) are issued apart,
  // so that the prologue's records are on their way before pdl_wait.
  auto issue_w = [&](int kb, int slot) {
    if (kb >= kb1 || threadIdx.x != 0) return;
    uint8_t* st = smem + slot * SB;
    mbar_expect_tx(bars + slot, static_cast<uint32_t>(ntile_blk * R + (FX ? 0 : xrows * 256)));
    bulk_g2s(st, a.w + q_record_offset(blk_tile0, kb, a.ntiles, BITS, NSUB), static_cast<uint32_t>(ntile_blk * R), bars + slot);
  };
  auto issue_x = [&](int kb, int slot) {
    if (FX || kb >= kb1 || wid != 0) return;
    uint8_t* st = smem + slot * SB;
    for (int r = lane; r < xrows; r += 32)
      bulk_g2s(st + XOFF + r * kXStride * 2, x + static_cast<int64_t>(tok0 + r) * a.kpad + kb * 128, 256, bars + slot);
  };
  auto issue = [&](int kb, int slot) {
    issue_w(kb, slot);
    __syncwarp();
    issue_x(kb, slot);
  };
  // With FX the prologue fills every slot (the first iteration issues none), so that while the block converts x
  // two stages of records are on their way, not one (H100, batch 1: kernel 0.4–1.0 µs shorter; without FX the
  // same order made batch 16 slower).
  const int pre = FX ? stages : stages - 1;
  for (int i = 0; i < pre; ++i) issue_w(kb0 + i, i);
  pdl_wait();
  for (int i = 0; i < pre; ++i) issue_x(kb0 + i, i);
#else
  // sm_80..89: cp.async, 16 bytes per thread; this warp copies its records, all threads the x tile.
  auto issue = [&](int kb, int slot) {
    if (kb < kb1) {
      uint8_t* st = smem + slot * SB;
      if (active) {
#pragma unroll
        for (int m = 0; m < WM; ++m) {
          const uint8_t* src = a.w + q_record_offset(tile0 + m, kb, a.ntiles, BITS, NSUB);
          uint8_t* dst = st + (wid * WM + m) * R;
          for (int c = lane; c < R / 16; c += 32) cp_async16(dst + 16 * c, src + 16 * c, 16);
        }
      }
      T* xs = reinterpret_cast<T*>(st + XOFF);
      for (int c = threadIdx.x; c < (FX ? 0 : 8 * WN * 16); c += kWarps * 32) {
        const int r = c >> 4, col = (c & 15) * 8;
        const bool ok = tok0 + r < a.M;
        const T* src = ok ? x + static_cast<int64_t>(tok0 + r) * a.kpad + kb * 128 + col : x;
        cp_async16(xs + r * kXStride + col, src, ok ? 16 : 0);
      }
    }
    cp_async_commit();  // empty groups keep the count uniform
  };
  for (int i = 0; i < stages - 1; ++i) issue(kb0 + i, i);
#endif
  // FX: this block's x (the main loop's first barrier orders these writes before any read).
  T* xsh = nullptr;
  float* xsum = nullptr;
  if constexpr (FX) {
    const int fx = qmm_fx_offset(stages, SB);
    xsh = reinterpret_cast<T*>(smem + fx);
    xsum = reinterpret_cast<float*>(smem + fx + min(a.M, 8 * WN) * a.xstride * 2);
    qmm_convert_x<T, WN, NSUB>(a, tok0, xrows, kb0, kb1, xsh, xsum);
  }

  float acc[WM][WN][4];
#pragma unroll
  for (int m = 0; m < WM; ++m)
#pragma unroll
    for (int n = 0; n < WN; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[m][n][e] = 0.f;

  int slot = 0, fill = stages - 1;  // slot of block kb, slot refilled with block kb + stages − 1
  uint32_t phase = 0;
  for (int kb = kb0; kb < kb1; ++kb) {
#if LB_QMM_BULK
    __syncthreads();  // everyone is done with the slot refilled next
    if (!FX || kb > kb0) issue(kb + stages - 1, fill);
    mbar_wait(bars + slot, phase);
#else
    cp_async_wait_n(stages - 2);
    __syncthreads();  // block kb is in for everyone, and everyone is done with the slot refilled next
    issue(kb + stages - 1, fill);
#endif
    if (active) {
      const uint8_t* st = smem + slot * SB;
      const uint8_t* rec = st + wid * WM * R;
      const T* xsm = reinterpret_cast<const T*>(st + XOFF);
      uint32_t w[WM][WORDS];
#pragma unroll
      for (int m = 0; m < WM; ++m) load_words<BITS>(rec + m * R, lane, w[m]);
      float2 xs[NSUB][WN];  // Σx of each sub-group for tokens 2t, 2t+1 of each n-tile (fetched early)
#pragma unroll
      for (int j = 0; j < NSUB; ++j)
#pragma unroll
        for (int n = 0; n < WN; ++n) {
          if constexpr (FX) xs[j][n] = *reinterpret_cast<const float2*>(xsum + ((kb - kb0) * NSUB + j) * 8 * WN + 8 * n + 2 * t);
          else
            xs[j][n] = tok0 + 8 * n < a.Mpad
                           ? __ldg(reinterpret_cast<const float2*>(a.xs + static_cast<int64_t>(kb * NSUB + j) * a.Mpad + tok0 + 8 * n + 2 * t))
                           : make_float2(0.f, 0.f);
        }
      float tmp[WM][WN][4];
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        if (s % SPS == 0) {
#pragma unroll
          for (int m = 0; m < WM; ++m)
#pragma unroll
            for (int n = 0; n < WN; ++n)
#pragma unroll
              for (int e = 0; e < 4; ++e) tmp[m][n][e] = 0.f;
        }
        uint4 xv[WN];
#pragma unroll
        for (int n = 0; n < WN; ++n) {
          if constexpr (FX)  // tokens past the batch multiply zeros, not shared memory
            xv[n] = 8 * n + g < xrows ? *reinterpret_cast<const uint4*>(xsh + (8 * n + g) * a.xstride + (kb - kb0) * 128 + 32 * s + 8 * t)
                                      : make_uint4(0, 0, 0, 0);
          else
            xv[n] = *reinterpret_cast<const uint4*>(xsm + (8 * n + g) * kXStride + 32 * s + 8 * t);
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int m = 0; m < WM; ++m) {
            uint32_t af[4];
            dq_step<BITS, T>(w[m], 2 * s + h, af);
#pragma unroll
            for (int n = 0; n < WN; ++n) mma16816<T>(tmp[m][n], af, h ? xv[n].z : xv[n].x, h ? xv[n].w : xv[n].y);
          }
        }
        if ((s + 1) % SPS == 0) {  // end of a sub-group: acc += s·(Σ q·x − z·Σx)
          const int j = s / SPS;
#pragma unroll
          for (int m = 0; m < WM; ++m) {
            const GroupSz sz = group_sz<BITS>(rec + m * R, j, g);
#pragma unroll
            for (int n = 0; n < WN; ++n) scale_group(acc[m][n], tmp[m][n], sz, xs[j][n]);
          }
        }
      }
    }
    fill = slot;
    if (++slot == stages) {
      slot = 0;
      phase ^= 1u;
    }
  }
#if !LB_QMM_BULK
  cp_async_wait<0>();
#endif
  if (!active) return;

  float* o = a.out + blockIdx.y * a.split_stride;
#pragma unroll
  for (int m = 0; m < WM; ++m) {
    const int row = (tile0 + m) * 16 + g;
#pragma unroll
    for (int n = 0; n < WN; ++n) {
      const int tok = tok0 + 8 * n + 2 * t;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = row + (e >= 2 ? 8 : 0), k = tok + (e & 1);
        if (r < a.N && k < a.M) o[static_cast<int64_t>(k) * a.N + r] = acc[m][n][e] * a.oscale;
      }
    }
  }
}

// xT[m, j] = T(x[m, perm[j]]) (0 past cols, and for the padding tokens m ≥ M), xs[sub, m] = Σ of those T values
// over the sub-group. One warp per (sub-group, token).
template <class T>
__global__ void qmm_prep_kernel(const float* __restrict__ x, const int32_t* __restrict__ perm, T* __restrict__ xT,
                                float* __restrict__ xs, int M, int Mpad, int cols, int kpad, int sub, int nsubtot) {
  pdl_launch_dependents();
  const int64_t wg = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (wg >= static_cast<int64_t>(nsubtot) * Mpad) return;
  const int sidx = static_cast<int>(wg / Mpad), m = static_cast<int>(wg % Mpad);
  float sum = 0.f;
  for (int c = lane; c < sub; c += 32) {
    const int j = sidx * sub + c;
    float v = 0.f;
    if (m < M && j < cols) v = x[static_cast<int64_t>(m) * cols + (perm ? perm[j] : j)];
    const T r = from_f<T>(v);
    if (m < M) xT[static_cast<int64_t>(m) * kpad + j] = r;
    sum += to_f(r);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) xs[static_cast<int64_t>(sidx) * Mpad + m] = sum;
}

__global__ void sum_splits_kernel(const float* __restrict__ parts, float* __restrict__ y, int64_t n, int S) {
  pdl_wait();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = 0.f;
    for (int s = 0; s < S; ++s) v += parts[s * n + i];
    y[i] = v;
  }
}

// The dense weight [rows, cols] (original column order) from the records, element by element through the
// layout's definition (q_slot/q_bitpos) — independent of the kernel's register tricks; the baseline's weights.
template <class T>
__global__ void qdequant_kernel(const uint8_t* __restrict__ w, const int32_t* __restrict__ perm, T* __restrict__ out,
                                int bits, int rows, int cols, int ntiles, int nsub, float oscale) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<int64_t>(rows) * cols) return;
  const int r = static_cast<int>(i / cols), j = static_cast<int>(i % cols);
  const int tile = r / 16, ti = r % 16, kb = j / 128, c = j % 128;
  const uint8_t* rec = w + q_record_offset(tile, kb, ntiles, bits, nsub);
  const QSlot sl = q_slot(ti, c);
  const QBits b = q_bitpos(bits, sl.st, sl.j, sl.e);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(rec);
  const int width = bits == 3 ? 2 : bits;
  uint32_t q = (words[q_word_index(bits, b.word, sl.lane)] >> b.bit) & ((1u << width) - 1);
  if (bits == 3) q |= ((words[q_word_index(bits, b.hi_word, sl.lane)] >> b.hi_bit) & 1u) << 2;
  const int sub = 128 / nsub, jsub = c / sub;
  const __half2 sz = reinterpret_cast<const __half2*>(rec + 128 * q_words(bits))[(jsub * 8 + ti % 8) * 2 + ti / 8];
  const float v = __low2float(sz) * (static_cast<float>(q) - __high2float(sz)) * oscale;
  out[static_cast<int64_t>(r) * cols + (perm ? perm[j] : j)] = from_f<T>(v);
}

// ---- W8A8 ----
// u[m, :] = nearbyint(x/s) as int8 (zero padded to kpad), s = max(max|x|, 1e-5)/127 — quantize_rows_u8's integers.
__global__ void int8_quant_rows_kernel(const float* __restrict__ x, int8_t* __restrict__ u, float* __restrict__ sx, int cols, int kpad) {
  const int m = blockIdx.x;
  const float* v = x + static_cast<int64_t>(m) * cols;
  __shared__ float red[32];
  float mx = 0.f;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) mx = fmaxf(mx, fabsf(v[i]));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
  __syncthreads();
  if (threadIdx.x < 32) {
    mx = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (threadIdx.x == 0) red[0] = mx;
  }
  __syncthreads();
  const float s = fmaxf(red[0], 1e-5f) / 127.f;
  int8_t* o = u + static_cast<int64_t>(m) * kpad;
  for (int i = threadIdx.x; i < kpad; i += blockDim.x) o[i] = i < cols ? static_cast<int8_t>(__float2int_rn(__fdiv_rn(v[i], s))) : 0;
  if (threadIdx.x == 0) sx[m] = s;
}

__global__ void int8_scale_kernel(const int32_t* __restrict__ acc, const float* __restrict__ sx, const float* __restrict__ sw,
                                  float* __restrict__ y, int M, int N) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<int64_t>(M) * N) return;
  y[i] = sx[i / N] * sw[i % N] * static_cast<float>(acc[i]);
}

// Reads n words (an L2 flush that leaves no dirty lines to write back during the next timed launch).
__global__ void read_flush_kernel(const uint4* __restrict__ p, int64_t n, uint32_t* sink) {
  uint32_t v = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint4 w = __ldcs(p + i);
    v ^= w.x ^ w.y ^ w.z ^ w.w;
  }
  if (v == 0x9E3779B9u) *sink = v;  // practically never: keeps the loads
}

__global__ void int8_dequant_kernel(const int8_t* __restrict__ w, const float* __restrict__ sw, f16* __restrict__ out,
                                    int rows, int cols, int kpad) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<int64_t>(rows) * cols) return;
  const int64_t r = i / cols, c = i % cols;
  out[i] = __float2half_rn(sw[r] * static_cast<float>(w[r * kpad + c]));
}

struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int d) {
    cudaGetDevice(&prev);
    LB_CK(cudaSetDevice(d));
  }
  ~DeviceGuard() {
    if (prev >= 0) cudaSetDevice(prev);
  }
};

}  // namespace

class GpuQLinear {
 public:
  QLinearInfo info;
  DevBuf w, perm, scales;  // packed: records, perm; int8: weights, per-row scales
  DevBuf x32, xq, xs, parts, y, acc, sx;
  cudaStream_t st = nullptr;
  cublasHandle_t blas = nullptr;
  bool pdl = false;  // programmatic dependent launch between the packed path's kernels (compute capability ≥ 9)
  std::mutex mu;  // one call at a time uses the workspace
  ~GpuQLinear() {
    if (blas) cublasDestroy(blas);
    if (st) cudaStreamDestroy(st);
  }
};

namespace {

void init_common(GpuQLinear& q, int device) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || device < 0 || device >= n)
    throw std::runtime_error("cuda:" + std::to_string(device) + " does not exist (" + std::to_string(n) + " CUDA devices)");
  q.info.device = device;
  // Only where the kernels run sm_90 code: an sm_80 build on a Hopper GPU would skip griddepcontrol.wait.
  cudaFuncAttributes fa{};
  LB_CK(cudaFuncGetAttributes(&fa, sum_splits_kernel));
  q.pdl = fa.binaryVersion >= 90;
  LB_CK(cudaStreamCreateWithFlags(&q.st, cudaStreamNonBlocking));
}

void fits(uint64_t need, const char* what) {
  size_t fr = 0, tot = 0;
  LB_CK(cudaMemGetInfo(&fr, &tot));
  if (need + (64ull << 20) > fr)
    throw std::runtime_error(std::string(what) + ": needs " + std::to_string(need >> 20) + " MiB of GPU memory, " +
                             std::to_string(fr >> 20) + " MiB free");
}

// Warp tile per batch size: tokens in n-tiles of 8 (WN of them per pass over the weights), WM row tiles per warp.
struct Shape {
  int wm, wn;
};
Shape shape_for(int64_t M) {
  if (M <= 8) return {2, 1};
  if (M <= 16) return {2, 2};
  if (M <= 32) return {2, 4};
  return {1, 8};
}

// Calls f(kernel, dynamic shared memory bytes) with the instantiation that serves (bits, activation type, warp
// tile, sub-groups per block, stages); fx_bytes ≥ 0: the one converting x itself (up to 16 tokens), with that
// much shared memory for x (qmm_fx_bytes).
template <class F>
void with_qmm(int bits, int act, Shape sh, int nsub, int stages, int fx_bytes, F&& f) {
  dispatch_packed(bits, act, nsub, [&](auto b, auto tt, auto ns) {
    auto go = [&](auto wm, auto wn, auto fx) {
      constexpr int B = decltype(b)::value, WM = decltype(wm)::value, WN = decltype(wn)::value, NS = decltype(ns)::value;
      constexpr bool FX = decltype(fx)::value;
      using T = typename decltype(tt)::type;
      constexpr int SB = qmm_stage_bytes<B, WM, WN, NS, FX>();
      f(qmm_kernel<B, T, WM, WN, NS, FX>, FX ? qmm_fx_offset(stages, SB) + fx_bytes : stages * (SB + 8));  // + the stages' mbarriers
    };
    const bool fx = fx_bytes >= 0;
    if (sh.wn == 1) fx ? go(IC<2>{}, IC<1>{}, std::true_type{}) : go(IC<2>{}, IC<1>{}, std::false_type{});
    else if (sh.wn == 2) fx ? go(IC<2>{}, IC<2>{}, std::true_type{}) : go(IC<2>{}, IC<2>{}, std::false_type{});
    else if (sh.wn == 4) go(IC<2>{}, IC<4>{}, std::false_type{});
    else go(IC<1>{}, IC<8>{}, std::false_type{});
  });
}

void launch_qmm(int bits, int act, const QmmArgs& a, Shape sh, int fx_bytes, dim3 grid, cudaStream_t st, bool pdl) {
  with_qmm(bits, act, sh, a.nsub, a.stages, fx_bytes, [&](auto k, int smem) {
    LB_CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    launch_pdl(k, grid, dim3(kWarps * 32), smem, st, pdl, a);
  });
}

// Blocks of that instantiation one SM holds at once (0: not even one).
int qmm_blocks_per_sm(int device, int bits, int act, Shape sh, int nsub, int stages, int fx_bytes = -1) {
  int nb = 0, optin = 0;
  LB_CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  with_qmm(bits, act, sh, nsub, stages, fx_bytes, [&](auto k, int smem) {
    if (smem > optin) return;
    LB_CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    LB_CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, k, kWarps * 32, smem));
  });
  return nb;
}

int sm_count(int device) {
  int n = 0;
  LB_CK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

// The K split for `base` blocks when `cap` fit on the GPU at once: as many as fill it in one wave (the kernels are
// latency-bound at small batches: every resident block keeps its stages of bytes in flight, and a partial second
// wave would double the time of its blocks), at least 4 column blocks per split, at most 64 splits.
int choose_splits(int64_t base, int64_t cap, int64_t nkb) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({cap / base, nkb / 4, 64})));
}

// A packed launch: x converted, the kernel, its grid and where the partial sums go.
struct PackedPlan {
  bool gemm = false;  // the Hopper wgmma kernel (qgemm.cu), else the mma.sync kernel
  bool pdl = false;   // the main kernel may start while the x conversion finishes
  Shape sh;           // mma.sync: warp tile
  int fx_bytes = -1;  // mma.sync: ≥ 0 when it converts x itself (no conversion launch), the shared memory for it
  int bn = 0;         // wgmma: tokens per block
  int stages = 0;     // wgmma: ring slots
  dim3 grid;
  QmmArgs args;
  QgemmArgs gargs;
};

// The wgmma kernel's ring depth: at 128 tokens two slots, so that two blocks share an SM (one warpgroup's
// dequantization runs beside another's wgmma; H100: 105 vs 130 µs kernel at 4 slots, 8192 × 28672); else 4.
int gemm_stages_for(const QLinearInfo& L, int bn) { return L.gemm_stages > 0 ? L.gemm_stages : bn == 128 ? 2 : 4; }

// Which kernel runs a batch of M: kernel 1 forces the mma.sync one, 2 the wgmma one (an error where this device
// or build has none), 0 picks wgmma from info.gemm_from tokens on where it exists.
bool use_gemm(const QLinearInfo& L, int64_t M, int kernel) {
  if (kernel == 2 && !L.wgmma)
    throw std::invalid_argument("the wgmma packed kernel needs a compute-capability-9.0 GPU (H100/H200) and a build with sm_90a");
  return kernel == 2 || (kernel == 0 && L.wgmma && L.gemm_from > 0 && M >= L.gemm_from);
}

// x_dev [M, cols] fp32 → q.xq (T, the kernel's order) and q.xs (group sums), unless the mma.sync kernel converts x
// itself; the plan of the main kernel writing y. fuse_x: let it do so where that costs no blocks per SM.
PackedPlan packed_prep(GpuQLinear& q, const float* x, int64_t M, int act, float* y, int kernel, bool fuse_x) {
  const QLinearInfo& L = q.info;
  PackedPlan p;
  p.gemm = use_gemm(L, M, kernel);
  const int nsubtot = static_cast<int>(L.nkb * L.nsub);
  const int64_t sms = sm_count(L.device);
  int64_t row_blocks, zc, per_sm;
  if (p.gemm) {
    p.bn = qgemm_bn(M);
    zc = (M + p.bn - 1) / p.bn;
    q.xq.alloc(static_cast<size_t>(zc) * p.bn * L.kpad * 2);
    qgemm_prep(x, q.perm.as<int32_t>(), q.xq.p, static_cast<int>(M), static_cast<int>(L.cols), static_cast<int>(L.nkb), p.bn,
               static_cast<int>(zc), act, q.st);
    row_blocks = (L.ntiles + kQgemmTiles - 1) / kQgemmTiles;
    p.stages = gemm_stages_for(L, p.bn);
    per_sm = qgemm_blocks_per_sm(L.bits, act, p.bn, static_cast<int>(L.nsub), p.stages);
  } else {
    p.sh = shape_for(M);
    row_blocks = (L.ntiles + kWarps * p.sh.wm - 1) / (kWarps * p.sh.wm);
    zc = (M + 8 * p.sh.wn - 1) / (8 * p.sh.wn);
    per_sm = qmm_blocks_per_sm(L.device, L.bits, act, p.sh, static_cast<int>(L.nsub), L.stages);
    if (per_sm < 1) throw std::runtime_error("the packed kernel does not fit on an SM (" + std::to_string(L.stages) + " stages)");
  }
  const int64_t slots = per_sm * sms;  // blocks the GPU holds at once
  if (!p.gemm && L.warps_per_sm > 0) per_sm = std::max<int64_t>(1, std::min<int64_t>(per_sm, L.warps_per_sm / kWarps));  // the split aims lower
  const int S = choose_splits(row_blocks * zc, per_sm * sms, L.nkb);
  int xstride = 0;
  if (!p.gemm && fuse_x && p.sh.wn <= 2) {
    const int maxnk = static_cast<int>((L.nkb + S - 1) / S);  // the longest K range of a split
    xstride = maxnk * 128 + 32;
    const int bytes = qmm_fx_bytes(static_cast<int>(std::min<int64_t>(M, 8 * p.sh.wn)), xstride, maxnk, static_cast<int>(L.nsub), p.sh.wn);
    if (qmm_blocks_per_sm(L.device, L.bits, act, p.sh, static_cast<int>(L.nsub), L.stages, bytes) >= per_sm) p.fx_bytes = bytes;
  }
  if (!p.gemm && p.fx_bytes < 0) {
    const int Mpad = static_cast<int>((M + 7) / 8 * 8);
    const int sub = 128 / static_cast<int>(L.nsub);
    q.xq.alloc(static_cast<size_t>(M) * L.kpad * 2);
    q.xs.alloc(static_cast<size_t>(nsubtot) * Mpad * 4);
    const int64_t warps = static_cast<int64_t>(nsubtot) * Mpad;
    const unsigned pb = static_cast<unsigned>((warps * 32 + 255) / 256);
    if (act == 1)
      qmm_prep_kernel<bf16><<<pb, 256, 0, q.st>>>(x, q.perm.as<int32_t>(), q.xq.as<bf16>(), q.xs.as<float>(), static_cast<int>(M), Mpad,
                                                  static_cast<int>(L.cols), static_cast<int>(L.kpad), sub, nsubtot);
    else
      qmm_prep_kernel<f16><<<pb, 256, 0, q.st>>>(x, q.perm.as<int32_t>(), q.xq.as<f16>(), q.xs.as<float>(), static_cast<int>(M), Mpad,
                                                 static_cast<int>(L.cols), static_cast<int>(L.kpad), sub, nsubtot);
    LB_LAUNCHED();
  }
  // Programmatic launch only when the grid fills ≥ 90% of the GPU's block slots — the hardware's, whatever split
  // the tuning aimed for: a grid that leaves slots empty, placed while the x conversion still holds SMs, runs far
  // slower than the launch latency it would hide (H200: +20 µs at 224 blocks for 396 slots; H100, batch 8 as 512
  // blocks for 1056 slots: 77.6 µs against 53.2 launched plainly). The split sum is launched early regardless.
  p.pdl = q.pdl && p.fx_bytes < 0 && 10 * row_blocks * zc * S >= 9 * slots;  // a fused kernel is the call's first launch
  q.info.last_splits = S;
  q.info.last_wgmma = p.gemm;
  q.info.last_fused_x = p.fx_bytes >= 0;
  float* out = y;
  if (S > 1) {
    q.parts.alloc(static_cast<size_t>(S) * M * L.rows * 4);
    out = q.parts.as<float>();
  }
  if (p.gemm)
    p.gargs = QgemmArgs{q.w.as<uint8_t>(), q.xq.p, out, static_cast<int>(M), static_cast<int>(L.rows), static_cast<int>(L.ntiles),
                        static_cast<int>(L.nkb), static_cast<int>(zc), p.stages, M * L.rows, L.gemm_fold, L.oscale / L.gemm_fold};
  else
    p.args = QmmArgs{q.w.as<uint8_t>(), q.xq.p, q.xs.as<float>(), out, static_cast<int>(M), static_cast<int>((M + 7) / 8 * 8),
                     static_cast<int>(L.rows), static_cast<int>(L.ntiles), static_cast<int>(L.nkb), static_cast<int>(L.nsub),
                     static_cast<int>(L.kpad), L.stages, M * L.rows, L.oscale, x, q.perm.as<int32_t>(), static_cast<int>(L.cols), xstride};
  p.grid = dim3(static_cast<unsigned>(row_blocks), S, static_cast<unsigned>(zc));
  return p;
}

// The main kernel; pdl: it may start while the x conversion finishes (the bench times it alone without).
void packed_main(GpuQLinear& q, const PackedPlan& p, int act, bool pdl) {
  if (p.gemm) qgemm_launch(q.info.bits, act, p.bn, static_cast<int>(q.info.nsub), p.gargs, p.grid, q.st, pdl);
  else launch_qmm(q.info.bits, act, p.args, p.sh, p.fx_bytes, p.grid, q.st, pdl);
}

// The sum of K splits into y; pdl: it may start while the main kernel finishes.
void packed_finish(GpuQLinear& q, const PackedPlan& p, float* y, bool pdl) {
  if (p.grid.y == 1) return;
  const int64_t n = static_cast<int64_t>(p.gemm ? p.gargs.M : p.args.M) * q.info.rows;
  launch_pdl(sum_splits_kernel, dim3(blocks_for(n, 256, 4096)), dim3(256), 0, q.st, pdl, static_cast<const float*>(q.parts.as<float>()), y, n,
             static_cast<int>(p.grid.y));
}

// y_dev [M, rows] = x_dev [M, cols] · Wᵀ on q.st.
void packed_forward(GpuQLinear& q, const float* x, int64_t M, int act, float* y, int kernel, bool fuse_x) {
  const PackedPlan p = packed_prep(q, x, M, act, y, kernel, fuse_x);
  packed_main(q, p, act, p.pdl);
  packed_finish(q, p, y, q.pdl);
}

void int8_forward(GpuQLinear& q, const float* x, int64_t M, float* y) {
  const QLinearInfo& L = q.info;
  q.xq.alloc(static_cast<size_t>(M) * L.kpad);
  q.sx.alloc(static_cast<size_t>(M) * 4);
  q.acc.alloc(static_cast<size_t>(M) * L.rows * 4);
  int8_quant_rows_kernel<<<static_cast<unsigned>(M), 256, 0, q.st>>>(x, q.xq.as<int8_t>(), q.sx.as<float>(), static_cast<int>(L.cols),
                                                                     static_cast<int>(L.kpad));
  LB_LAUNCHED();
  const int32_t one = 1, zero = 0;
  LB_CKB(cublasGemmEx(q.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(L.rows), static_cast<int>(M), static_cast<int>(L.kpad), &one,
                      q.w.p, CUDA_R_8I, static_cast<int>(L.kpad), q.xq.p, CUDA_R_8I, static_cast<int>(L.kpad), &zero, q.acc.p,
                      CUDA_R_32I, static_cast<int>(L.rows), CUBLAS_COMPUTE_32I, CUBLAS_GEMM_DEFAULT));
  int8_scale_kernel<<<blocks_for(M * L.rows, 256), 256, 0, q.st>>>(q.acc.as<int32_t>(), q.sx.as<float>(), q.scales.as<float>(), y,
                                                                   static_cast<int>(M), static_cast<int>(L.rows));
  LB_LAUNCHED();
}

void forward(GpuQLinear& q, const float* x, int64_t M, int act, float* y, int kernel, bool fuse_x) {
  if (q.info.int8) int8_forward(q, x, M, y);
  else packed_forward(q, x, M, act, y, kernel, fuse_x);
}

}  // namespace

std::shared_ptr<GpuQLinear> qlinear_create(const QLayout& l, int device) {
  if (l.bits != 2 && l.bits != 3 && l.bits != 4 && l.bits != 8) throw std::invalid_argument("packed weights: bits must be 2, 3, 4 or 8");
  DeviceGuard dg(device);
  auto q = std::make_shared<GpuQLinear>();
  init_common(*q, device);
  QLinearInfo& L = q->info;
  L.bits = l.bits;
  L.rows = l.rows;
  L.cols = l.cols;
  L.kpad = l.nkb * 128;
  L.ntiles = l.ntiles;
  L.nkb = l.nkb;
  L.nsub = l.nsub;
  L.oscale = l.oscale;
  // Scales or zeros that are not finite (no fold keeps them in range) leave such weights to the mma.sync kernel.
  L.gemm_fold = qgemm_available(device) ? qgemm_fold(l) : 0.f;
  L.wgmma = L.gemm_fold > 0;
  const uint64_t need = l.records.size() + l.perm.size() * 4;
  fits(need, "packed weights");
  q->w.alloc(l.records.size());
  LB_CK(cudaMemcpy(q->w.p, l.records.data(), l.records.size(), cudaMemcpyHostToDevice));
  if (!l.perm.empty()) {
    q->perm.alloc(l.perm.size() * 4);
    LB_CK(cudaMemcpy(q->perm.p, l.perm.data(), l.perm.size() * 4, cudaMemcpyHostToDevice));
  }
  L.device_bytes = need;
  return q;
}

std::shared_ptr<GpuQLinear> qlinear_create_int8(const Int8Host& h, int device) {
  DeviceGuard dg(device);
  auto q = std::make_shared<GpuQLinear>();
  init_common(*q, device);
  LB_CKB(cublasCreate(&q->blas));
  LB_CKB(cublasSetStream(q->blas, q->st));
  QLinearInfo& L = q->info;
  L.int8 = true;
  L.bits = 8;
  L.rows = h.rows;
  L.cols = h.cols;
  L.kpad = h.kpad;
  const uint64_t need = static_cast<uint64_t>(h.rows) * h.kpad + h.rows * 4;
  fits(need, "int8 weights");
  q->w.alloc(static_cast<size_t>(h.rows) * h.kpad);
  LB_CK(cudaMemcpy(q->w.p, h.w, static_cast<size_t>(h.rows) * h.kpad, cudaMemcpyHostToDevice));
  q->scales.alloc(h.rows * 4);
  LB_CK(cudaMemcpy(q->scales.p, h.scales, h.rows * 4, cudaMemcpyHostToDevice));
  L.device_bytes = need;
  return q;
}

const QLinearInfo& qlinear_info(const GpuQLinear& q) { return q.info; }

void qlinear_matmul(GpuQLinear& q, const float* x, int64_t M, int act, float* y, int kernel, bool fuse_x) {
  if (M <= 0) return;
  std::lock_guard<std::mutex> lock(q.mu);
  DeviceGuard dg(q.info.device);
  const QLinearInfo& L = q.info;
  q.x32.alloc(static_cast<size_t>(M) * L.cols * 4);
  q.y.alloc(static_cast<size_t>(M) * L.rows * 4);
  LB_CK(cudaMemcpyAsync(q.x32.p, x, static_cast<size_t>(M) * L.cols * 4, cudaMemcpyHostToDevice, q.st));
  forward(q, q.x32.as<float>(), M, act, q.y.as<float>(), kernel, fuse_x);
  LB_CK(cudaMemcpyAsync(y, q.y.p, static_cast<size_t>(M) * L.rows * 4, cudaMemcpyDeviceToHost, q.st));
  LB_CK(cudaStreamSynchronize(q.st));
}

QBench qlinear_bench(GpuQLinear& q, int64_t M, int act, int iters, int kernel, int stages, int warps_per_sm, bool fuse_x) {
  std::lock_guard<std::mutex> lock(q.mu);
  DeviceGuard dg(q.info.device);
  const QLinearInfo saved = q.info;
  struct Restore {
    GpuQLinear& q;
    const QLinearInfo& s;
    ~Restore() {
      q.info.stages = s.stages;
      q.info.gemm_stages = s.gemm_stages;
      q.info.warps_per_sm = s.warps_per_sm;
    }
  } restore{q, saved};
  if (stages > 0) {
    if (use_gemm(q.info, M, kernel)) q.info.gemm_stages = std::max(2, std::min(8, stages));
    else q.info.stages = std::max(2, std::min(8, stages));
  }
  if (warps_per_sm > 0) q.info.warps_per_sm = warps_per_sm;
  const QLinearInfo& L = q.info;
  QBench r;
  if (!q.blas) {
    LB_CKB(cublasCreate(&q.blas));
    LB_CKB(cublasSetStream(q.blas, q.st));
  }
  // Inputs: a fixed pseudo-random x (uniform in [-1, 1)).
  std::vector<float> hx(static_cast<size_t>(M) * L.cols);
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (float& v : hx) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<float>(static_cast<double>(s >> 11) / 9007199254740992.0 * 2 - 1);
  }
  q.x32.alloc(hx.size() * 4);
  q.y.alloc(static_cast<size_t>(M) * L.rows * 4);
  LB_CK(cudaMemcpy(q.x32.p, hx.data(), hx.size() * 4, cudaMemcpyHostToDevice));
  // Baseline: the same weights dense in fp16 (bf16 for bf16 activations), cuBLAS, fp32 out.
  const bool bf = act == 1 && !L.int8;
  const size_t dense = static_cast<size_t>(L.rows) * L.cols;
  fits(dense * 2 + (256ull << 20), "bench baseline");
  DevBuf wd, xd, yd, flush;
  wd.alloc(dense * 2);
  xd.alloc(hx.size() * 2);
  yd.alloc(static_cast<size_t>(M) * L.rows * 4);
  flush.alloc(256ull << 20);
  if (L.int8) {
    int8_dequant_kernel<<<blocks_for(dense, 256, 1ll << 31), 256, 0, q.st>>>(q.w.as<int8_t>(), q.scales.as<float>(), wd.as<f16>(),
                                                                           static_cast<int>(L.rows), static_cast<int>(L.cols), static_cast<int>(L.kpad));
  } else if (bf) {
    qdequant_kernel<bf16><<<blocks_for(dense, 256, 1ll << 31), 256, 0, q.st>>>(q.w.as<uint8_t>(), q.perm.as<int32_t>(), wd.as<bf16>(), L.bits,
                                                                             static_cast<int>(L.rows), static_cast<int>(L.cols),
                                                                             static_cast<int>(L.ntiles), static_cast<int>(L.nsub), L.oscale);
  } else {
    qdequant_kernel<f16><<<blocks_for(dense, 256, 1ll << 31), 256, 0, q.st>>>(q.w.as<uint8_t>(), q.perm.as<int32_t>(), wd.as<f16>(), L.bits,
                                                                            static_cast<int>(L.rows), static_cast<int>(L.cols),
                                                                            static_cast<int>(L.ntiles), static_cast<int>(L.nsub), L.oscale);
  }
  LB_LAUNCHED();
  if (bf) cast_from_f32<bf16>(q.x32.as<float>(), xd.as<bf16>(), static_cast<int64_t>(hx.size()), q.st);
  else cast_from_f32<f16>(q.x32.as<float>(), xd.as<f16>(), static_cast<int64_t>(hx.size()), q.st);
  const cudaDataType_t dt = bf ? CUDA_R_16BF : CUDA_R_16F;
  const float one = 1.f, zero = 0.f;
  auto dense_run = [&] {
    LB_CKB(cublasGemmEx(q.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(L.rows), static_cast<int>(M), static_cast<int>(L.cols), &one, wd.p, dt,
                        static_cast<int>(L.cols), xd.p, dt, static_cast<int>(L.cols), &zero, yd.p, CUDA_R_32F, static_cast<int>(L.rows),
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  auto ours_run = [&] { forward(q, q.x32.as<float>(), M, act, q.y.as<float>(), kernel, fuse_x); };
  cudaEvent_t e0, e1;
  LB_CK(cudaEventCreate(&e0));
  LB_CK(cudaEventCreate(&e1));
  LB_CK(cudaMemsetAsync(flush.p, 1, flush.bytes, q.st));
  // Median of `iters` launches, each timed alone after 256 MiB read elsewhere (no weights left in L2).
  auto time_it = [&](auto&& fn) {
    for (int i = 0; i < 3; ++i) fn();
    std::vector<float> ms;
    for (int i = 0; i < iters; ++i) {
      read_flush_kernel<<<1024, 256, 0, q.st>>>(flush.as<uint4>(), static_cast<int64_t>(flush.bytes / 16) - 1, flush.as<uint32_t>());
      LB_LAUNCHED();
      LB_CK(cudaEventRecord(e0, q.st));
      fn();
      LB_CK(cudaEventRecord(e1, q.st));
      LB_CK(cudaEventSynchronize(e1));
      float t = 0;
      LB_CK(cudaEventElapsedTime(&t, e0, e1));
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return static_cast<double>(ms[ms.size() / 2]) * 1000.0;
  };
  r.ours_us = time_it(ours_run);
  r.dense_us = time_it(dense_run);
  if (!L.int8) {  // each launch of the whole call alone: where its time goes
    const PackedPlan p = packed_prep(q, q.x32.as<float>(), M, act, q.y.as<float>(), kernel, fuse_x);
    if (p.fx_bytes < 0) r.prep_us = time_it([&] { packed_prep(q, q.x32.as<float>(), M, act, q.y.as<float>(), kernel, fuse_x); });
    r.kernel_us = time_it([&] { packed_main(q, p, act, false); });
    if (p.grid.y > 1) r.finish_us = time_it([&] { packed_finish(q, p, q.y.as<float>(), false); });  // leaves y summed
  }
  r.splits = q.info.last_splits;
  r.wgmma = q.info.last_wgmma;
  r.fused_x = q.info.last_fused_x;
  // Agreement of the two on the same weights.
  std::vector<float> ya(static_cast<size_t>(M) * L.rows), yb(ya.size());
  LB_CK(cudaMemcpyAsync(ya.data(), q.y.p, ya.size() * 4, cudaMemcpyDeviceToHost, q.st));
  LB_CK(cudaMemcpyAsync(yb.data(), yd.p, yb.size() * 4, cudaMemcpyDeviceToHost, q.st));
  LB_CK(cudaStreamSynchronize(q.st));
  double num = 0, den = 0;
  for (size_t i = 0; i < ya.size(); ++i) {
    num += (static_cast<double>(ya[i]) - yb[i]) * (static_cast<double>(ya[i]) - yb[i]);
    den += static_cast<double>(yb[i]) * yb[i];
  }
  r.rel_err = den > 0 ? std::sqrt(num / den) : 0;
  // Copy bandwidth: bytes read + written by a 1 GiB device-to-device copy (flush buffer reused as scratch).
  {
    const size_t n = 1ull << 30;
    size_t fr = 0, tot = 0;
    LB_CK(cudaMemGetInfo(&fr, &tot));
    const size_t cn = fr > 2 * n + (256ull << 20) ? n : std::min<size_t>(n, (fr - (256ull << 20)) / 2);
    DevBuf a, b;
    a.alloc(cn);
    b.alloc(cn);
    std::vector<float> ms;
    for (int i = 0; i < 7; ++i) {
      LB_CK(cudaEventRecord(e0, q.st));
      LB_CK(cudaMemcpyAsync(b.p, a.p, cn, cudaMemcpyDeviceToDevice, q.st));
      LB_CK(cudaEventRecord(e1, q.st));
      LB_CK(cudaEventSynchronize(e1));
      float t = 0;
      LB_CK(cudaEventElapsedTime(&t, e0, e1));
      if (i > 0) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    r.copy_gbs = 2.0 * cn / (ms[ms.size() / 2] * 1e-3) / 1e9;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  const double xbytes = static_cast<double>(M) * L.cols * 4, ybytes = static_cast<double>(M) * L.rows * 4;
  r.ours_bytes = static_cast<double>(L.device_bytes) + xbytes + ybytes;
  r.dense_bytes = dense * 2.0 + static_cast<double>(M) * L.cols * 2 + ybytes;
  return r;
}

}  // namespace cuda
}  // namespace lowbit
