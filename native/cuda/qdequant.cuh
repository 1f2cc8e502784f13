// Packed records (qlayout.h) → tensor-core A fragments: a lane's words into registers, and one mma step's four
// A registers as exact integers q in fp16/bf16 pairs. Shared by the mma.sync kernel (qmatmul.cu) and the Hopper
// wgmma kernel (qgemm.cu), whose A fragments have the same layout.
#pragma once
#include <type_traits>

#include "mma.cuh"
#include "qlayout.h"

namespace lowbit {
namespace cuda {

// 16-bit pair constants as bit patterns (T2 of (v, v)); fp16 | bf16.
template <class T> struct K2;
template <> struct K2<f16> {
  static constexpr uint32_t magic = 0x64006400u;  // 1024: or-ing q into the mantissa gives 1024 + q
  static constexpr uint32_t base = 0x64006400u, inv4 = 0x34003400u, inv16 = 0x2C002C00u, inv64 = 0x24002400u,
                            nb4 = 0xDC00DC00u /* -256 */, nb16 = 0xD400D400u /* -64 */, nb64 = 0xCC00CC00u /* -16 */;
};
template <> struct K2<bf16> {
  static constexpr uint32_t magic = 0x43004300u;  // 128
  static constexpr uint32_t base = 0x43004300u, inv4 = 0x3E803E80u, inv16 = 0x3D803D80u, nb4 = 0xC200C200u /* -32 */,
                            nb16 = 0xC100C100u /* -8 */;
};

template <class T> __device__ __forceinline__ uint32_t sub2(uint32_t a, uint32_t b);
template <> __device__ __forceinline__ uint32_t sub2<f16>(uint32_t a, uint32_t b) {
  __half2 r = __hsub2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}
template <> __device__ __forceinline__ uint32_t sub2<bf16>(uint32_t a, uint32_t b) {
  __nv_bfloat162 r = __hsub2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}
template <class T> __device__ __forceinline__ uint32_t fma2(uint32_t a, uint32_t m, uint32_t c);
template <> __device__ __forceinline__ uint32_t fma2<f16>(uint32_t a, uint32_t m, uint32_t c) {
  __half2 r = __hfma2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&m), *reinterpret_cast<__half2*>(&c));
  return *reinterpret_cast<uint32_t*>(&r);
}
template <> __device__ __forceinline__ uint32_t fma2<bf16>(uint32_t a, uint32_t m, uint32_t c) {
  __nv_bfloat162 r = __hfma2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&m),
                             *reinterpret_cast<__nv_bfloat162*>(&c));
  return *reinterpret_cast<uint32_t*>(&r);
}

// Bytes lo and hi of w as an exact bfloat162 (8-bit q does not fit 128 + q in bf16's mantissa): via fp32
// 2^23 + q.
__device__ __forceinline__ uint32_t bytes_bf162(uint32_t w, int lo, int hi) {
  const float f0 = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540 | lo)) - 8388608.f;
  const float f1 = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540 | hi)) - 8388608.f;
  return pack2<bf16>(f0, f1);
}

// The A registers (exact integers q as T pairs) of mma step st from this lane's words of the record.
template <int BITS, class T>
__device__ __forceinline__ void dq_step(const uint32_t* w, int st, uint32_t (&a)[4]) {
  using K = K2<T>;
  // A field may sit at mantissa bits 0..9 of an fp16 (1024 + m·q) but only 0..6 of a bf16 (bit 7 is the
  // exponent's lowest): there the high fields are shifted down first.
  constexpr bool F16 = std::is_same<T, f16>::value;
  if constexpr (BITS == 4) {
    const uint32_t u = w[st], v = u >> 8;
    a[0] = sub2<T>((u & 0x000F000Fu) | K::magic, K::base);
    a[2] = sub2<T>((v & 0x000F000Fu) | K::magic, K::base);
    if constexpr (F16) {
      a[1] = fma2<T>((u & 0x00F000F0u) | K::magic, K::inv16, K::nb16);
      a[3] = fma2<T>((v & 0x00F000F0u) | K::magic, K::inv16, K::nb16);
    } else {
      a[1] = sub2<T>(((u >> 4) & 0x000F000Fu) | K::magic, K::base);
      a[3] = sub2<T>(((v >> 4) & 0x000F000Fu) | K::magic, K::base);
    }
  } else if constexpr (BITS == 2) {
    const uint32_t u = w[st / 2] >> (8 * (st % 2));
    a[0] = sub2<T>((u & 0x00030003u) | K::magic, K::base);
    a[1] = fma2<T>((u & 0x000C000Cu) | K::magic, K::inv4, K::nb4);
    a[2] = fma2<T>((u & 0x00300030u) | K::magic, K::inv16, K::nb16);
    if constexpr (F16) a[3] = fma2<T>((u & 0x00C000C0u) | K::magic, K::inv64, K::nb64);
    else a[3] = sub2<T>(((u >> 6) & 0x00030003u) | K::magic, K::base);
  } else if constexpr (BITS == 3) {
    const uint32_t lo = w[st / 2] >> (8 * (st % 2)), hw = w[4 + st / 4] >> (4 * (st % 4));
#pragma unroll
    for (int j = 0; j < 4; ++j)
      a[j] = sub2<T>(((lo >> (2 * j)) & 0x00030003u) | (((hw >> j) & 0x00010001u) << 2) | K::magic, K::base);
  } else {  // 8 bits
    const uint32_t w0 = w[2 * st], w1 = w[2 * st + 1];
    if constexpr (F16) {
      a[0] = sub2<T>((w0 & 0x00FF00FFu) | K::magic, K::base);
      a[1] = sub2<T>(((w0 >> 8) & 0x00FF00FFu) | K::magic, K::base);
      a[2] = sub2<T>((w1 & 0x00FF00FFu) | K::magic, K::base);
      a[3] = sub2<T>(((w1 >> 8) & 0x00FF00FFu) | K::magic, K::base);
    } else {
      a[0] = bytes_bf162(w0, 0, 2);
      a[1] = bytes_bf162(w0, 1, 3);
      a[2] = bytes_bf162(w1, 0, 2);
      a[3] = bytes_bf162(w1, 1, 3);
    }
  }
}

// This lane's words of a record (in shared memory) into registers, one LDS.128 (LDS.64 for 3 bits) per vector.
template <int BITS>
__device__ __forceinline__ void load_words(const uint8_t* rec, int lane, uint32_t (&w)[q_words(BITS)]) {
  if constexpr (q_vec_words(BITS) == 4) {
#pragma unroll
    for (int v = 0; v < q_words(BITS) / 4; ++v) {
      const uint4 u = reinterpret_cast<const uint4*>(rec)[v * 32 + lane];
      w[4 * v] = u.x, w[4 * v + 1] = u.y, w[4 * v + 2] = u.z, w[4 * v + 3] = u.w;
    }
  } else {
#pragma unroll
    for (int v = 0; v < q_words(BITS) / 2; ++v) {
      const uint2 u = reinterpret_cast<const uint2*>(rec)[v * 32 + lane];
      w[2 * v] = u.x, w[2 * v + 1] = u.y;
    }
  }
}

// Scale and zero (fp32, (s, z)) of rows g and g + 8 for sub-group j of a record in shared memory (qlayout.h).
struct GroupSz {
  float2 r0, r8;
};
template <int BITS>
__device__ __forceinline__ GroupSz group_sz(const uint8_t* rec, int j, int g) {
  const uint2 w = *reinterpret_cast<const uint2*>(rec + 128 * q_words(BITS) + (j * 8 + g) * 8);
  return GroupSz{__half22float2(*reinterpret_cast<const __half2*>(&w.x)), __half22float2(*reinterpret_cast<const __half2*>(&w.y))};
}

// One mma C fragment (rows g, g + 8 × tokens 2t, 2t + 1) of a sub-group's integer sums Σq·x scaled into the result:
// acc += s·(Σq·x − z·Σx), xs = the two tokens' Σx over the sub-group. The mma.sync kernel ends each sub-group here,
// so scales and zeros are applied in fp32 and never rounded into its weights.
__device__ __forceinline__ void scale_group(float* acc, const float* tmp, const GroupSz& sz, float2 xs) {
  acc[0] += sz.r0.x * (tmp[0] - sz.r0.y * xs.x);
  acc[1] += sz.r0.x * (tmp[1] - sz.r0.y * xs.y);
  acc[2] += sz.r8.x * (tmp[2] - sz.r8.y * xs.x);
  acc[3] += sz.r8.x * (tmp[3] - sz.r8.y * xs.y);
}

// Host-side dispatch to the compile-time parameters both packed kernels take: f(IC<bits>, TypeTag<f16 | bf16>,
// IC<sub-groups per 128-column block>) for bits 2/3/4/8, act 2 (fp16) or 1 (bf16), nsub 1/2/4.
template <int V>
using IC = std::integral_constant<int, V>;
template <class T>
struct TypeTag {
  using type = T;
};
template <class F>
void dispatch_packed(int bits, int act, int nsub, F&& f) {
  auto by_nsub = [&](auto b, auto tt) {
    if (nsub == 1) f(b, tt, IC<1>{});
    else if (nsub == 2) f(b, tt, IC<2>{});
    else f(b, tt, IC<4>{});
  };
  auto by_type = [&](auto b) {
    if (act == 1) by_nsub(b, TypeTag<bf16>{});
    else by_nsub(b, TypeTag<f16>{});
  };
  switch (bits) {
    case 2: return by_type(IC<2>{});
    case 3: return by_type(IC<3>{});
    case 4: return by_type(IC<4>{});
    default: return by_type(IC<8>{});
  }
}

}  // namespace cuda
}  // namespace lowbit
