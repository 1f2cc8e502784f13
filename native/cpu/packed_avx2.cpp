// AVX2 packed-weight kernels (the templates of packed_kernels.h with 8 fp32 lanes: each 16-column step
// is two halves). Compiled with a function-level target like gemm_avx2.cpp; every header is included
// before the target pragma.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "packed.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace lowbit {
namespace packed_detail {
namespace {

struct V256 {
  using F = __m256;
  using I = __m256i;
  static constexpr int L = 8;
  static constexpr int GEMV_NA = 1, GEMV_NB = 1;  // GEMV accumulator sets, row blocks per pass
  static constexpr int64_t TILE_KCHUNK = 1024;  // columns per K chunk of the M > 4 tiles
  static constexpr int DOT_MR = 2;  // tokens per dot_tile
  static constexpr int MRMAX = 2;  // 16 ymm registers: 2 tokens × 4 rows × 2 halves of accumulators
  static inline F zero() { return _mm256_setzero_ps(); }
  static inline F loadu(const float* p) { return _mm256_loadu_ps(p); }
  static inline void storeu(float* p, F v) { _mm256_storeu_ps(p, v); }
  static inline I loadi(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
  static inline F set1(float v) { return _mm256_set1_ps(v); }
  static inline F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static inline F add(F a, F b) { return _mm256_add_ps(a, b); }
  static inline float hsum(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  template <int SH>
  static inline I sh(I v) {
    if constexpr (SH > 0) return _mm256_slli_epi32(v, SH);
    else if constexpr (SH < 0) return _mm256_srli_epi32(v, -SH);
    else return v;
  }
  static inline F field(I v, uint32_t mask) {
    return _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(mask))), _mm256_set1_epi32(0x3F800000)));
  }
  static inline F field2(I a, I b, uint32_t sel, uint32_t mask) {
    I t = _mm256_or_si256(_mm256_and_si256(a, _mm256_set1_epi32(static_cast<int>(sel))),
                          _mm256_and_si256(b, _mm256_set1_epi32(static_cast<int>(mask & ~sel))));
    return _mm256_castsi256_ps(_mm256_or_si256(t, _mm256_set1_epi32(0x3F800000)));
  }
};

#include "packed_kernels.h"

}  // namespace

const Kernels* kernels_avx2(int bits) { return kernels_for_bits<V256>(bits); }

}  // namespace packed_detail
}  // namespace lowbit

#pragma GCC pop_options
#endif
