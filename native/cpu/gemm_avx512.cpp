// AVX-512 GEMM kernels. Compiled with a function-level target so the addon stays loadable on any
// x86-64; gemm.cpp only calls these when simd_level() says the CPU has AVX-512.
// Every header is included before the target pragma: inline code from headers must keep the
// baseline ISA, or the linker could pick an AVX-512 copy of it for the whole addon.
#include <immintrin.h>

#include <array>
#include <cstdint>
#include <utility>

#include "tensor.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")
// GCC 12 flags the deliberate _mm*_undefined_*() pass-through operands inside its own intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace lowbit {
namespace gemm_detail {

constexpr int kMR512 = 14, kNR512 = 32;

static inline __m512 load_cvt16(const void* src, int dtype, int64_t i) {
  if (dtype == static_cast<int>(DType::F32)) return _mm512_loadu_ps(static_cast<const float*>(src) + i);
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(src) + i));
  if (dtype == static_cast<int>(DType::BF16)) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return _mm512_cvtph_ps(h);
}

static inline __m512 load_cvt16_mask(const void* src, int dtype, int64_t i, __mmask16 m) {
  if (dtype == static_cast<int>(DType::F32)) return _mm512_maskz_loadu_ps(m, static_cast<const float*>(src) + i);
  __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(src) + i);
  if (dtype == static_cast<int>(DType::BF16)) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return _mm512_cvtph_ps(h);
}

void cvt_avx512(const void* src, int dtype, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, load_cvt16(src, dtype, i));
  if (i < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(out + i, m, load_cvt16_mask(src, dtype, i, m));
  }
}

// y in its stored type, widened in registers (exact), so a GEMV over bf16/f16 weights reads them once.
float dot_avx512(const float* x, const void* y, int dtype, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), load_cvt16(y, dtype, i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), load_cvt16(y, dtype, i + 16), s1);
    s2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), load_cvt16(y, dtype, i + 32), s2);
    s3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), load_cvt16(y, dtype, i + 48), s3);
  }
  for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), load_cvt16(y, dtype, i), s0);
  if (i < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), load_cvt16_mask(y, dtype, i, m), s1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

void axpy_avx512(int64_t n, float a, const float* x, float* y) {
  __m512 va = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  if (i < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

static inline __mmask16 lanes(int64_t n) { return static_cast<__mmask16>(n >= 16 ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1); }

static inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 8; ++i) {
    int lo = (i / 4) * 8 + (i % 4), hi = lo + 4;
    t[lo] = _mm512_shuffle_f32x4(r[lo], r[hi], 0x88);
    t[hi] = _mm512_shuffle_f32x4(r[lo], r[hi], 0xDD);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
  }
}

// Panel packing, k-major: dst[k*width + j] for j < width (zero-padded past n), width <= 32.
// pack_t reads a matrix stored with j as its row index (transB's B, non-transposed A): the
// transpose goes through 16x16 register blocks instead of scalar strided stores.
void pack_t_avx512(const void* src, int dtype, int64_t ld, int64_t j0, int n, int64_t k0, int64_t kc, float* dst, int width) {
  for (int jb = 0; jb < width; jb += 16) {
    int rows = n - jb;
    __mmask16 wm = lanes(width - jb);
    for (int64_t k = 0; k < kc; k += 16) {
      __mmask16 km = lanes(kc - k);
      __m512 r[16];
      for (int j = 0; j < 16; ++j) {
        const int64_t off = (j0 + jb + j) * ld + k0 + k;
        r[j] = j >= rows ? _mm512_setzero_ps() : km == 0xFFFF ? load_cvt16(src, dtype, off) : load_cvt16_mask(src, dtype, off, km);
      }
      transpose16(r);
      int kn = kc - k < 16 ? static_cast<int>(kc - k) : 16;
      for (int kk = 0; kk < kn; ++kk) _mm512_mask_storeu_ps(dst + (k + kk) * width + jb, wm, r[kk]);
    }
  }
}

// pack_t's counterpart for a matrix stored with k as its row index (B, transposed A).
void pack_n_avx512(const void* src, int dtype, int64_t ld, int64_t j0, int n, int64_t k0, int64_t kc, float* dst, int width) {
  for (int jb = 0; jb < width; jb += 16) {
    __mmask16 m = lanes(n - jb), wm = lanes(width - jb);
    for (int64_t k = 0; k < kc; ++k) {
      const int64_t off = (k0 + k) * ld + j0 + jb;
      __m512 v = m == 0xFFFF ? load_cvt16(src, dtype, off) : load_cvt16_mask(src, dtype, off, m);
      _mm512_mask_storeu_ps(dst + k * width + jb, wm, v);
    }
  }
}

// C[R, nr] = alpha * (A panel · B panel) + beta * C. a: kc x 14 (k-major, rows past R unused), b: kc x 32 (k-major).
// With R = 14, 28 accumulators + 2 B vectors fill the 32 zmm registers; A is broadcast straight from memory.
// Short panels (the last rows of M) get their own instance: a 2-row remainder then costs 4 FMAs per k, not 28.
// Every element's sum runs over k in the same order whatever R is, so results do not depend on the panel's height.
template <int R>
static void ukr_rows(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha, float beta, int nr) {
  __m512 acc[R][2];
  // C is written once per KC block; on large problems its tile has left the caches by then, so
  // start fetching it while the k loop runs.
#pragma GCC unroll 14
  for (int i = 0; i < R; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 31), _MM_HINT_T0);
  }
#pragma GCC unroll 14
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * kNR512), _MM_HINT_T0);
#pragma GCC unroll 14
    for (int i = 0; i < R; ++i) {
      __m512 ai = _mm512_set1_ps(a[i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += kMR512;
    b += kNR512;
  }
  __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  __mmask16 m0 = lanes(nr), m1 = lanes(nr - 16);
#pragma GCC unroll 14
  for (int i = 0; i < R; ++i) {
    float* ci = c + i * ldc;
    __m512 r0 = _mm512_mul_ps(va, acc[i][0]), r1 = _mm512_mul_ps(va, acc[i][1]);
    if (beta != 0.f) {  // BLAS: beta == 0 never reads C, so NaN/garbage there is overwritten
      r0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, ci), r0);
      r1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, ci + 16), r1);
    }
    _mm512_mask_storeu_ps(ci, m0, r0);
    _mm512_mask_storeu_ps(ci + 16, m1, r1);
  }
}

using RowsFn = void (*)(int64_t, const float*, const float*, float*, int64_t, float, float, int);
template <int... R>
static constexpr std::array<RowsFn, sizeof...(R)> rows_table(std::integer_sequence<int, R...>) {
  return {ukr_rows<R + 1>...};
}

void ukr_avx512(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha, float beta, int mr, int nr) {
  static constexpr auto table = rows_table(std::make_integer_sequence<int, kMR512>{});
  table[mr - 1](kc, a, b, c, ldc, alpha, beta, nr);
}

}  // namespace gemm_detail
}  // namespace lowbit

#pragma GCC pop_options
#endif
