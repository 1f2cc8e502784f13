// Packed low-bit GEMM on Hopper (batch 17 and up): y[M, rows] = x[M, cols] · Wᵀ with the weights dequantized in
// registers as wgmma's A operand and the tokens as B from shared memory.
//
// A block is two warpgroups, 8 warps, one 16-row tile of qlayout.h's records each (128 rows), and bn tokens (16, 32,
// 64 or 128; grid z walks larger batches). Per 128-column block, one thread hands the block's records and the x tile
// to the bulk-copy engine (a ring of `stages` shared-memory slots, each completing on an mbarrier). Each warp makes
// its tile's A fragments from the integers as the mma.sync kernel does (qdequant.cuh) — the wgmma A fragment of warp
// w is rows 16w..16w+15 in mma.sync's layout — and scales them in the same instruction stream: w = T(q·S + C), one
// fused multiply-add per pair, with S = T(s·f) and C = T(−z·S) per sub-group and row (f: the power of two
// qgemm_fold picks so that no weight overflows fp16), so the warpgroup's wgmma accumulate the whole K in one set of
// fp32 registers, y = acc / (P·f).
//
// Why the weights are rounded to T here but not in the mma.sync kernel: that kernel keeps the integer sums of each
// sub-group apart and scales them in fp32, which costs a second accumulator set and, for wgmma, waiting for every
// sub-group's products before scaling them. Here nothing waits for the tensor cores except a register set's reuse:
// each block is two commit groups of four wgmma, A double-buffered, so that the dequantization of the next half block
// can run while the tensor cores work on the last. That overlap needs the copies issued without a branch: a divergent
// branch of the issuing thread between a wgmma and its wait made ptxas serialize every wgmma (C7513, "non wgmma
// instructions defining input registers of a wgmma between start and end of the pipeline stage"), so issue_w/issue_x
// predicate the copy instructions instead (mma.cuh). At 128 tokens two blocks share an SM, hence the launch bounds.
// The rounding is that of the fp16/bf16 dense weights a PyTorch model multiplies with (w = T(s·(q − z)) to within
// one more rounding of C), and what the tests' reference reproduces.
//
// The x tile is stored as wgmma's K-major B without swizzle: for each step of 16 columns two 8-column chunks, each
// bn/8 core matrices of 8 tokens × 8 values (128 bytes). Which column a k index stands for follows the A side
// (qlayout.h: k indices 2t, 2t+1 of step st are columns 32(st/2) + 8t + 4(st%2) + {0,1}, k indices 2t+8, 2t+9 the
// next two), so qgemm_prep writes x in that order and the bulk copy lands it ready for the descriptors.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "cpu/half.h"
#include "gpu.h"
#include "qdequant.cuh"
#include "qgemm.h"
#include "wgmma.cuh"

namespace lowbit {
namespace cuda {

namespace {

constexpr int kThreads = kQgemmTiles * 32;

// One ring slot: the block's records, the x tile.
__host__ __device__ constexpr int stage_bytes(int bits, int bn, int nsub) { return kQgemmTiles * q_record_bytes(bits, nsub) + bn * 256; }

#if LB_WGMMA
constexpr int kHalf = 4;  // mma steps (16 columns each) per commit group: half a 128-column block

// (S, C) pairs for rows g and g + 8 of sub-group j: {S_g, C_g, S_g+8, C_g+8}, each value twice.
template <class T>
__device__ __forceinline__ void fold_pairs(const GroupSz& sz, float f, uint32_t (&sc)[4]) {
  const float s0 = to_f(from_f<T>(sz.r0.x * f)), s8 = to_f(from_f<T>(sz.r8.x * f));
  const float c0 = -sz.r0.y * s0, c8 = -sz.r8.y * s8;  // exact in fp32: 11-bit z times an 11-bit S
  sc[0] = pack2<T>(s0, s0);
  sc[1] = pack2<T>(c0, c0);
  sc[2] = pack2<T>(s8, s8);
  sc[3] = pack2<T>(c8, c8);
}

// Half h of a 128-column block: A fragments of steps 4h..4h+3 into af (free: the wgmma that read it are done),
// then four wgmma on them, one commit group.
template <int BITS, class T, int BN, int NSUB, int H>
__device__ __forceinline__ void qgemm_half(float (&acc)[BN / 2], uint32_t (&af)[kHalf][4], const uint32_t (&w)[q_words(BITS)],
                                           const uint32_t (&sc)[NSUB][4], const uint8_t* xtile) {
  constexpr int STEPS = 8 / NSUB;  // mma steps per sub-group
#pragma unroll
  for (int u = 0; u < kHalf; ++u) {
    const int st = H * kHalf + u, j = st / STEPS;
    dq_step<BITS, T>(w, st, af[u]);
    af[u][0] = fma2<T>(af[u][0], sc[j][0], sc[j][1]);
    af[u][1] = fma2<T>(af[u][1], sc[j][2], sc[j][3]);
    af[u][2] = fma2<T>(af[u][2], sc[j][0], sc[j][1]);
    af[u][3] = fma2<T>(af[u][3], sc[j][2], sc[j][3]);
  }
  wgmma_fence();
#pragma unroll
  for (int u = 0; u < kHalf; ++u) wgmma_rs<T, BN>(acc, af[u], wgmma_desc(xtile + (H * kHalf + u) * 2 * BN * 16, BN * 16, 128), 1);
  wgmma_commit();
}
#endif

template <int BITS, class T, int BN, int NSUB>
__global__ void __launch_bounds__(kThreads, BN == 128 ? 2 : 1) qgemm_kernel(QgemmArgs a) {
#if LB_WGMMA
  extern __shared__ __align__(128) uint8_t smem[];
  constexpr int WORDS = q_words(BITS), R = q_record_bytes(BITS, NSUB), SB = stage_bytes(BITS, BN, NSUB);
  constexpr int XOFF = kQgemmTiles * R, NR = BN / 2;
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int blk_tile0 = blockIdx.x * kQgemmTiles, tile = blk_tile0 + wid;
  const bool active = tile < a.ntiles;  // a warp past the last tile still takes part in its warpgroup's wgmma
  const int ntile_blk = min(kQgemmTiles, a.ntiles - blk_tile0);
  const int S = gridDim.y, stages = a.stages, zb = blockIdx.z;
  const int kb0 = static_cast<int>(static_cast<int64_t>(a.nkb) * blockIdx.y / S);
  const int kb1 = static_cast<int>(static_cast<int64_t>(a.nkb) * (blockIdx.y + 1) / S);
  const T* xt = static_cast<const T*>(a.x);
  pdl_launch_dependents();

  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + stages * SB);
  if (threadIdx.x == 0) {
    for (int i = 0; i < stages; ++i) mbar_init(bars + i, 1);
    fence_mbar_init();
  }
  __syncthreads();
  auto slot_of = [&](int kb) { return (kb - kb0) % stages; };
  // A stage's weights (which the previous grid does not write) and its x tile (which it does) are issued apart,
  // so that the prologue's weights are on their way before pdl_wait. Thread 0 issues, predicated (mma.cuh).
  auto issue_w = [&](int kb) {
    const bool go = kb < kb1 && threadIdx.x == 0;
    mbar_expect_tx(bars + slot_of(kb), static_cast<uint32_t>(ntile_blk * R + BN * 256), go);
    bulk_g2s(smem + slot_of(kb) * SB, a.w + q_record_offset(blk_tile0, kb, a.ntiles, BITS, NSUB), static_cast<uint32_t>(ntile_blk * R),
             bars + slot_of(kb), go);
  };
  auto issue_x = [&](int kb) {
    const int64_t xi = static_cast<int64_t>(kb) * a.nzb + zb;
    bulk_g2s(smem + slot_of(kb) * SB + XOFF, xt + xi * BN * 128, BN * 256, bars + slot_of(kb), kb < kb1 && threadIdx.x == 0);
  };
  for (int i = 0; i < stages - 1; ++i) issue_w(kb0 + i);
  pdl_wait();
  for (int i = 0; i < stages - 1; ++i) issue_x(kb0 + i);

  float acc[NR];
#pragma unroll
  for (int i = 0; i < NR; ++i) acc[i] = 0.f;
  uint32_t af0[kHalf][4] = {}, af1[kHalf][4] = {};
  for (int kb = kb0; kb < kb1; ++kb) {
    mbar_wait(bars + slot_of(kb), static_cast<uint32_t>(((kb - kb0) / stages) & 1));
    const uint8_t* st = smem + slot_of(kb) * SB;
    const uint8_t* rec = st + wid * R;
    uint32_t w[WORDS], sc[NSUB][4];
    if (active) {
      load_words<BITS>(rec, lane, w);
#pragma unroll
      for (int j = 0; j < NSUB; ++j) fold_pairs<T>(group_sz<BITS>(rec, j, g), a.fold, sc[j]);
    } else {  // w = T(0·0 + 0): an exact zero A
#pragma unroll
      for (int i = 0; i < WORDS; ++i) w[i] = 0u;
#pragma unroll
      for (int j = 0; j < NSUB; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0u;
    }
    wgmma_wait<1>();  // block kb − 1's first half is done with af0
    for (auto& r : af0) wgmma_touch(r);
    qgemm_half<BITS, T, BN, NSUB, 0>(acc, af0, w, sc, st + XOFF);
    wgmma_wait<1>();  // and its second half with af1 and with slot kb − 1
    for (auto& r : af1) wgmma_touch(r);
    __syncthreads();  // both warpgroups: slot kb − 1 is free for block kb + stages − 1
    issue_w(kb + stages - 1);
    issue_x(kb + stages - 1);
    qgemm_half<BITS, T, BN, NSUB, 1>(acc, af1, w, sc, st + XOFF);
  }
  wgmma_wait<0>();
  wgmma_touch(acc);
  for (auto& r : af0) wgmma_touch(r);
  for (auto& r : af1) wgmma_touch(r);
  if (!active) return;
  float* o = a.out + blockIdx.y * a.split_stride;
  const int row = tile * 16 + g, tok0 = zb * BN;
#pragma unroll
  for (int i = 0; i < BN / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = row + (e >= 2 ? 8 : 0), k = tok0 + 8 * i + 2 * t + (e & 1);
      if (r < a.N && k < a.M) o[static_cast<int64_t>(k) * a.N + r] = acc[4 * i + e] * a.oscale;
    }
#endif
}

// One thread per (column block, token, 8-column chunk): the chunk's columns rounded to T, stored as one 16-byte row
// of a core matrix (chunk c holds k indices 8(c%2)..8(c%2)+7 of step c/2: q_wgmma_col).
template <class T>
__global__ void qgemm_prep_kernel(const float* __restrict__ x, const int32_t* __restrict__ perm, T* __restrict__ xt, int M, int cols,
                                  int nkb, int bn, int nzb) {
  pdl_launch_dependents();
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int Mpad = nzb * bn;
  if (id >= static_cast<int64_t>(nkb) * Mpad * 16) return;
  const int c = static_cast<int>(id % 16), m = static_cast<int>((id / 16) % Mpad), kb = static_cast<int>(id / 16 / Mpad);
  const int zb = m / bn, mr = m % bn;
  alignas(16) T v[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int col = kb * 128 + q_wgmma_col(c / 2, 8 * (c % 2) + i);
    float f = 0.f;
    if (m < M && col < cols) f = x[static_cast<int64_t>(m) * cols + (perm ? perm[col] : col)];
    v[i] = from_f<T>(f);
  }
  T* dst = xt + (static_cast<int64_t>(kb) * nzb + zb) * bn * 128 + c * bn * 8 + (mr / 8) * 64 + (mr % 8) * 8;
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(v);
}

__global__ void qgemm_probe_kernel(int* out) { *out = LB_WGMMA; }

// Calls f(kernel, dynamic shared memory bytes) with the instantiation for (bits, activation type, bn, sub-groups).
template <class F>
void with_qgemm(int bits, int act, int bn, int nsub, int stages, F&& f) {
  dispatch_packed(bits, act, nsub, [&](auto b, auto tt, auto ns) {
    auto go = [&](auto n) {
      constexpr int B = decltype(b)::value, N = decltype(n)::value, NS = decltype(ns)::value;
      using T = typename decltype(tt)::type;
      f(qgemm_kernel<B, T, N, NS>, stages * (stage_bytes(B, N, NS) + 8));  // + the stages' mbarriers
    };
    if (bn == 16) go(IC<16>{});
    else if (bn == 32) go(IC<32>{});
    else if (bn == 64) go(IC<64>{});
    else go(IC<128>{});
  });
}

}  // namespace

bool qgemm_available(int device) {
  static std::mutex mu;
  static std::vector<int> known;  // −1 not asked yet, else 0/1
  std::lock_guard<std::mutex> lock(mu);
  if (device >= static_cast<int>(known.size())) known.resize(device + 1, -1);
  if (known[device] < 0) {
    int prev = 0, major = 0, minor = 0, yes = 0;
    LB_CK(cudaGetDevice(&prev));
    LB_CK(cudaSetDevice(device));
    LB_CK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    LB_CK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    if (major == 9 && minor == 0) {
      int* d = nullptr;
      LB_CK(cudaMalloc(&d, sizeof(int)));
      qgemm_probe_kernel<<<1, 1>>>(d);
      const cudaError_t e = cudaGetLastError();
      if (e == cudaSuccess) LB_CK(cudaMemcpy(&yes, d, sizeof(int), cudaMemcpyDeviceToHost));
      cudaFree(d);
      if (e != cudaSuccess && e != cudaErrorNoKernelImageForDevice) throw_cuda(e, "qgemm probe", __FILE__, __LINE__);
    }
    LB_CK(cudaSetDevice(prev));
    known[device] = yes ? 1 : 0;
  }
  return known[device] == 1;
}

int qgemm_bn(int64_t M) { return M <= 16 ? 16 : M <= 32 ? 32 : M <= 64 ? 64 : 128; }

int qgemm_blocks_per_sm(int bits, int act, int bn, int nsub, int stages) {
  int nb = 0;
  with_qgemm(bits, act, bn, nsub, stages, [&](auto k, int smem) {
    LB_CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    LB_CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, k, kThreads, smem));
  });
  if (nb < 1) throw std::runtime_error("the packed GEMM kernel does not fit on an SM (" + std::to_string(stages) + " stages)");
  return nb;
}

void qgemm_prep(const float* x, const int32_t* perm, void* xt, int M, int cols, int nkb, int bn, int nzb, int act, cudaStream_t st) {
  const int64_t threads = static_cast<int64_t>(nkb) * nzb * bn * 16;
  const unsigned blocks = static_cast<unsigned>((threads + 255) / 256);
  if (act == 1) qgemm_prep_kernel<bf16><<<blocks, 256, 0, st>>>(x, perm, static_cast<bf16*>(xt), M, cols, nkb, bn, nzb);
  else qgemm_prep_kernel<f16><<<blocks, 256, 0, st>>>(x, perm, static_cast<f16*>(xt), M, cols, nkb, bn, nzb);
  LB_LAUNCHED();
}

float qgemm_fold(const QLayout& l) {
  const int R = q_record_bytes(l.bits, static_cast<int>(l.nsub));
  const double qmax = (1 << l.bits) - 1;
  double m = 0;
  for (int64_t r = 0; r < l.ntiles * l.nkb; ++r) {
    const uint8_t* sz = l.records.data() + r * R + 128 * q_words(l.bits);
    for (int i = 0; i < 16 * l.nsub; ++i) {
      uint16_t s, z;
      std::memcpy(&s, sz + 4 * i, 2);
      std::memcpy(&z, sz + 4 * i + 2, 2);
      const double v = std::fabs(static_cast<double>(f16_to_f32(s))) * (qmax + std::fabs(static_cast<double>(f16_to_f32(z))));
      if (!(v <= 1e300)) return 0.f;  // inf or NaN: no fold makes these finite
      m = std::max(m, v);
    }
  }
  int e = 0;
  while (std::ldexp(m, -e) > 32768.0) ++e;
  return std::ldexp(1.f, -e);
}

void qgemm_launch(int bits, int act, int bn, int nsub, const QgemmArgs& a, dim3 grid, cudaStream_t st, bool pdl) {
  with_qgemm(bits, act, bn, nsub, a.stages, [&](auto k, int smem) {
    LB_CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    launch_pdl(k, grid, dim3(kThreads), smem, st, pdl, a);
  });
}

}  // namespace cuda
}  // namespace lowbit
