// AVX2+FMA GEMM kernels, compiled with a function-level target (see gemm_avx512.cpp for why the
// headers come before the pragma).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "tensor.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace lowbit {
namespace gemm_detail {

constexpr int kMR256 = 6, kNR256 = 16;

static inline __m256 load_cvt8(const void* src, int dtype, int64_t i) {
  if (dtype == static_cast<int>(DType::F32)) return _mm256_loadu_ps(static_cast<const float*>(src) + i);
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(src) + i));
  if (dtype == static_cast<int>(DType::BF16)) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  return _mm256_cvtph_ps(h);
}

static inline float cvt1(const void* src, int dtype, int64_t i) {
  if (dtype == static_cast<int>(DType::F32)) return static_cast<const float*>(src)[i];
  uint16_t h = static_cast<const uint16_t*>(src)[i];
  if (dtype == static_cast<int>(DType::BF16)) return bf16_to_f32(h);
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

void cvt_avx2(const void* src, int dtype, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, load_cvt8(src, dtype, i));
  for (; i < n; ++i) out[i] = cvt1(src, dtype, i);
}

// y in its stored type, widened in registers (exact), so a GEMV over bf16/f16 weights reads them once.
float dot_avx2(const float* x, const void* y, int dtype, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), load_cvt8(y, dtype, i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), load_cvt8(y, dtype, i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), load_cvt8(y, dtype, i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), load_cvt8(y, dtype, i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), load_cvt8(y, dtype, i), s0);
  __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float r = _mm_cvtss_f32(h);
  for (; i < n; ++i) r = std::fma(x[i], cvt1(y, dtype, i), r);  // fused: the compiler's contraction choice cannot move it
  return r;
}

void axpy_avx2(int64_t n, float a, const float* x, float* y) {
  __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

// Panel packing, k-major: dst[k*width + j] for j < width (zero-padded past n), width <= 16.
// pack_t reads a matrix stored with j as its row index (transB's B, non-transposed A), through 8x8
// register transposes where a whole block is available.
void pack_t_avx2(const void* src, int dtype, int64_t ld, int64_t j0, int n, int64_t k0, int64_t kc, float* dst, int width) {
  for (int jb = 0; jb < width; jb += 8) {
    int rows = n - jb, cols = width - jb < 8 ? width - jb : 8;
    int64_t k = 0;
    for (; rows >= 8 && cols == 8 && k + 8 <= kc; k += 8) {
      __m256 r[8], t[8];
      for (int j = 0; j < 8; ++j) r[j] = load_cvt8(src, dtype, (j0 + jb + j) * ld + k0 + k);
      for (int j = 0; j < 8; j += 2) {
        t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);
        t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
      }
      for (int j = 0; j < 8; j += 4) {
        r[j] = _mm256_shuffle_ps(t[j], t[j + 2], 0x44);
        r[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], 0xEE);
        r[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0x44);
        r[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0xEE);
      }
      for (int j = 0; j < 4; ++j) {
        t[j] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x20);
        t[j + 4] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x31);
      }
      for (int kk = 0; kk < 8; ++kk) _mm256_storeu_ps(dst + (k + kk) * width + jb, t[kk]);
    }
    for (; k < kc; ++k)
      for (int j = 0; j < cols; ++j) dst[k * width + jb + j] = j < rows ? cvt1(src, dtype, (j0 + jb + j) * ld + k0 + k) : 0.f;
  }
}

// pack_t's counterpart for a matrix stored with k as its row index (B, transposed A).
void pack_n_avx2(const void* src, int dtype, int64_t ld, int64_t j0, int n, int64_t k0, int64_t kc, float* dst, int width) {
  for (int64_t k = 0; k < kc; ++k) {
    const int64_t base = (k0 + k) * ld + j0;
    float* d = dst + k * width;
    int j = 0;
    for (; j + 8 <= n && j + 8 <= width; j += 8) _mm256_storeu_ps(d + j, load_cvt8(src, dtype, base + j));
    for (; j < width; ++j) d[j] = j < n ? cvt1(src, dtype, base + j) : 0.f;
  }
}

// C[mr, nr] = alpha * (A panel · B panel) + beta * C with a 6x16 register tile (12 accumulators).
void ukr_avx2(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha, float beta, int mr, int nr) {
  __m256 acc[kMR256][2];
#pragma GCC unroll 6
  for (int i = 0; i < kMR256; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < kMR256; ++i) {
      __m256 ai = _mm256_broadcast_ss(a + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += kMR256;
    b += kNR256;
  }
  __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  if (mr == kMR256 && nr == kNR256) {
#pragma GCC unroll 6
    for (int i = 0; i < kMR256; ++i) {
      float* ci = c + i * ldc;
      __m256 r0 = _mm256_mul_ps(va, acc[i][0]), r1 = _mm256_mul_ps(va, acc[i][1]);
      if (beta != 0.f) {  // BLAS: beta == 0 never reads C
        r0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci), r0);
        r1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci + 8), r1);
      }
      _mm256_storeu_ps(ci, r0);
      _mm256_storeu_ps(ci + 8, r1);
    }
    return;
  }
  alignas(32) float tile[kMR256][kNR256];
  for (int i = 0; i < kMR256; ++i) {
    _mm256_store_ps(tile[i], _mm256_mul_ps(va, acc[i][0]));
    _mm256_store_ps(tile[i] + 8, _mm256_mul_ps(va, acc[i][1]));
  }
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) {
      float& cij = c[i * ldc + j];
      cij = beta != 0.f ? tile[i][j] + beta * cij : tile[i][j];
    }
}

}  // namespace gemm_detail
}  // namespace lowbit

#pragma GCC pop_options
#endif
