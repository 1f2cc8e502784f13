// Packed int4 GEMV with groups of 128 along the input (asymmetric, fp16 scale and zero per group):
// y[n] = Σ_k (q[n,k] - z[n,k/128]) · s[n,k/128] · x[k].  Memory-bound: the packed weights are read once.
//
// Layout (chosen for the dequantization): row n is K/8 uint32 words; word j holds k = 8j..8j+7 with the nibbles
// interleaved as q0 | q2<<4 | q4<<8 | q6<<12 | q1<<16 | q3<<20 | q5<<24 | q7<<28, so that
// (w >> 4i) & 0x000F000F | 0x64006400 is the half2 (1024 + q_2i, 1024 + q_2i+1) with no conversion instruction.
// sz: [N, K/128] half2 (scale, zero).  K must be a multiple of 1024, N of ROWS * 8.
#pragma once
#include <cuda_fp16.h>
#include <cstdint>

namespace lowbit {
namespace cuda {

inline uint32_t pack_int4_word(const uint8_t q[8]) {
  return uint32_t(q[0]) | uint32_t(q[2]) << 4 | uint32_t(q[4]) << 8 | uint32_t(q[6]) << 12 | uint32_t(q[1]) << 16 |
         uint32_t(q[3]) << 20 | uint32_t(q[5]) << 24 | uint32_t(q[7]) << 28;
}

// One warp per ROWS consecutive rows; per step a lane takes 32 consecutive k (one 16-byte load per row, one
// group), so a warp step covers 1024 k. The next step's weights are loaded into registers before the current
// step is computed, x too (2 × (ROWS + 4) 16-byte loads in flight per lane). gridDim.y > 1 splits K among that many warps
// per row block (more warps for short N); then y must be zeroed first and partial sums are added atomically.
template <int ROWS>
__global__ void __launch_bounds__(256) gemv_int4_g128(const uint4* __restrict__ Wq, const __half2* __restrict__ sz,
                                                      const __half* __restrict__ x, float* __restrict__ y, int N, int K) {
  const int lane = threadIdx.x & 31;
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int r0 = warp * ROWS;
  if (r0 >= N) return;
  const int G = K / 128, W4 = K / 32;  // groups per row, uint4 per row
  const int kc = K / gridDim.y, kbeg = blockIdx.y * kc, kend = kbeg + kc;
  const uint4* wrow = Wq + static_cast<int64_t>(r0) * W4;
  const __half2* srow = sz + static_cast<int64_t>(r0) * G;
  float acc[ROWS];
  uint4 wc[ROWS], wn[ROWS];
  __half2 sc[ROWS], sn[ROWS];
  int k0 = kbeg + lane * 32;
  uint4 xc[4], xn[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) xc[i] = __ldg(reinterpret_cast<const uint4*>(x + k0) + i);
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    acc[r] = 0.f;
    wc[r] = __ldcs(wrow + static_cast<int64_t>(r) * W4 + k0 / 32);
    sc[r] = __ldg(srow + static_cast<int64_t>(r) * G + k0 / 128);
  }
  for (; k0 < kend; k0 += 1024) {
    const int k1 = k0 + 1024;
    if (k1 < kend) {
#pragma unroll
      for (int i = 0; i < 4; ++i) xn[i] = __ldg(reinterpret_cast<const uint4*>(x + k1) + i);
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        wn[r] = __ldcs(wrow + static_cast<int64_t>(r) * W4 + k1 / 32);
        sn[r] = __ldg(srow + static_cast<int64_t>(r) * G + k1 / 128);
      }
    }
    __half2 xv[16];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      uint4 t = xc[i];
      xv[4 * i + 0] = *reinterpret_cast<__half2*>(&t.x);
      xv[4 * i + 1] = *reinterpret_cast<__half2*>(&t.y);
      xv[4 * i + 2] = *reinterpret_cast<__half2*>(&t.z);
      xv[4 * i + 3] = *reinterpret_cast<__half2*>(&t.w);
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const __half zb = __hadd(__high2half(sc[r]), __float2half(1024.f));
      const __half2 z2 = __half2half2(zb);
      __half2 d = __float2half2_rn(0.f);
      const uint32_t w[4] = {wc[r].x, wc[r].y, wc[r].z, wc[r].w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          uint32_t b = ((w[j] >> (4 * i)) & 0x000F000Fu) | 0x64006400u;
          __half2 q = __hsub2(*reinterpret_cast<__half2*>(&b), z2);
          d = __hfma2(q, xv[4 * j + i], d);
        }
      }
      const float2 df = __half22float2(d);
      acc[r] += (df.x + df.y) * __low2float(sc[r]);
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      wc[r] = wn[r];
      sc[r] = sn[r];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) xc[i] = xn[i];
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    float v = acc[r];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) {
      if (gridDim.y > 1) atomicAdd(y + r0 + r, v);
      else y[r0 + r] = v;
    }
  }
}

}  // namespace cuda
}  // namespace lowbit
