// AVX2 1-bit kernels for BiLLM binary weights (layout and scheme in binary.h): 8 columns (half a code
// word) a step, one block's LUT per register (vpermps uses the low 3 bits of the index, so cm's odd-block
// bit 8 is ignored). Needs F16C besides AVX2/FMA (binary.cpp checks). Every header is included before the
// target pragma.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "binary.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace lowbit {
namespace binary_detail {
namespace {

// The LUT of one block of a row from its 8 scales in the unit; see lut2 in binary_avx512.cpp.
inline __m256 lut1(const uint16_t* sc) {
  const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)));
  const __m256i ia = _mm256_setr_epi32(4, 4, 6, 6, 0, 0, 0, 0), im = _mm256_setr_epi32(5, 5, 7, 7, 1, 1, 1, 1);
  const __m256 s1 = _mm256_setr_ps(-1, 1, -1, 1, -1, 1, -1, 1);
  const __m256 s2 = _mm256_setr_ps(0, 0, 0, 0, -1, -1, 1, 1);
  const __m256 sal = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, 0, 0, -1, -1, -1, -1));
  const __m256 t1 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(v, ia), s1, _mm256_permutevar8x32_ps(v, im));
  const __m256 t2 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(v, _mm256_set1_epi32(2)), s2,
                                    _mm256_and_ps(_mm256_permutevar8x32_ps(v, _mm256_set1_epi32(3)), sal));
  return _mm256_add_ps(t1, t2);
}

// The weights of the 8 columns whose codes are the 16 bits `half` of one row.
inline __m256 weights8(uint32_t half, __m256i cmv, __m256 lut) {
  const __m256i t = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(half)), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
  return _mm256_permutevar8x32_ps(lut, _mm256_or_si256(_mm256_and_si256(t, _mm256_set1_epi32(3)), cmv));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// R rows from r0 (inside one row block) × MR tokens over all columns; y written for rows < r1.
template <int R, int MR>
void rows_block(const BinaryView& p, const float* xp, int64_t ldx, const int32_t* cm, float* y, int64_t r0, int64_t r1) {
  __m256 acc[MR][R];
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < R; ++i) acc[m][i] = _mm256_setzero_ps();
  for (int64_t q = 0; q < p.npairs; ++q) {
    const uint16_t* sc = p.unit_scales(r0, q);
    // A row's codes as 16-bit halves of its words: 8 columns each.
    const uint16_t* ch = reinterpret_cast<const uint16_t*>(p.unit_codes(r0, q));
    for (int h = 0; h < 2; ++h) {
      __m256 lut[R];
      for (int i = 0; i < R; ++i) lut[i] = lut1(sc + i * 16 + 8 * h);
      const int64_t c0 = (2 * q + h) * p.block, k0 = h * p.block / 8;  // first column, first half-word
      for (int64_t k = 0; k < p.block / 8; ++k) {
        const int64_t c = c0 + 8 * k;
        const __m256i cmv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cm + c));
        __m256 xv[MR];
        for (int m = 0; m < MR; ++m) xv[m] = _mm256_loadu_ps(xp + m * ldx + c);
        for (int i = 0; i < R; ++i) {
          const __m256 w = weights8(ch[i * 2 * p.wpp + k0 + k], cmv, lut[i]);
          for (int m = 0; m < MR; ++m) acc[m][i] = _mm256_fmadd_ps(w, xv[m], acc[m][i]);
        }
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < R && r0 + i < r1; ++i) y[m * p.rows + r0 + i] = hsum(acc[m][i]);
}

void gemv(const BinaryView& p, const float* xp, int64_t ldx, int64_t, const int32_t* cm, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; r += 4) rows_block<4, 1>(p, xp, ldx, cm, y, r, r1);
}

template <int MR>
void tile_mr(const BinaryView& p, const float* xp, int64_t ldx, const int32_t* cm, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; r += 2) rows_block<2, MR>(p, xp, ldx, cm, y, r, r1);
}

void tile(const BinaryView& p, const float* xp, int64_t ldx, int64_t M, const int32_t* cm, float* y, int64_t r0, int64_t r1) {
  for (int64_t m0 = 0; m0 < M; m0 += 3) {
    const float* x = xp + m0 * ldx;
    float* yy = y + m0 * p.rows;
    switch (std::min<int64_t>(3, M - m0)) {
      case 1: tile_mr<1>(p, x, ldx, cm, yy, r0, r1); break;
      case 2: tile_mr<2>(p, x, ldx, cm, yy, r0, r1); break;
      default: tile_mr<3>(p, x, ldx, cm, yy, r0, r1); break;
    }
  }
}

void dequant(const BinaryView& p, const int32_t* cm, int64_t r0, int64_t n, int64_t k0, int64_t kc, float* out) {
  for (int64_t r = r0; r < r0 + n; ++r) {
    float* o = out + (r - r0) * kc - k0;
    int64_t b = -1;
    __m256 lut = _mm256_setzero_ps();
    const uint16_t* ch = nullptr;
    for (int64_t c = k0; c < k0 + kc; c += 8) {
      if (c / p.block != b) {
        b = c / p.block;
        lut = lut1(p.unit_scales(r, b / 2) + 8 * (b % 2));
        ch = reinterpret_cast<const uint16_t*>(p.unit_codes(r, b / 2));
      }
      _mm256_storeu_ps(o + c, weights8(ch[(c - (b / 2) * 2 * p.block) / 8], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cm + c)), lut));
    }
  }
}

const Kernels kKernels{gemv, tile, dequant};

}  // namespace

const Kernels* kernels_avx2() { return &kKernels; }

}  // namespace binary_detail
}  // namespace lowbit

#pragma GCC pop_options
#endif
