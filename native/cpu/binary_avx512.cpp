// AVX-512 1-bit kernels for BiLLM binary weights (layout and scheme in binary.h). Compiled with a
// function-level target like packed_avx512.cpp; binary.cpp only calls them when simd_level() is Avx512.
// Every header is included before the target pragma.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "binary.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace lowbit {
namespace binary_detail {
namespace {

constexpr int64_t kPrefetchBytes = 1024;

// The LUTs of blocks 2q (lanes 0..7) and 2q+1 (lanes 8..15) of row r; zero for a block past the end.
// Lane l holds code l & 7 (binary.h): t1 = ±α + μ of the first term (one rounding, as the quantizer's
// α·(±1) + μ), t2 = ±α2 + μ2 for the salient codes 4..7 and 0 elsewhere, lut = t1 + t2.
inline __m512 lut2(const BinaryView& p, int64_t r, int64_t q) {
  const int64_t b = 2 * q;
  const __mmask16 k = b + 1 < p.nblocks ? 0xffff : b < p.nblocks ? 0x00ff : 0;
  const __m512 v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p.scales + (r * p.nblocks + b) * kBinaryScales));
  const __m512i ia = _mm512_setr_epi32(4, 4, 6, 6, 0, 0, 0, 0, 12, 12, 14, 14, 8, 8, 8, 8);
  const __m512i im = _mm512_add_epi32(ia, _mm512_set1_epi32(1));
  const __m512i ia2 = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 10, 10, 10, 10, 10, 10, 10, 10);
  const __m512i im2 = _mm512_add_epi32(ia2, _mm512_set1_epi32(1));
  const __m512 s1 = _mm512_setr_ps(-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1);
  const __m512 s2 = _mm512_setr_ps(0, 0, 0, 0, -1, -1, 1, 1, 0, 0, 0, 0, -1, -1, 1, 1);
  const __mmask16 sal = 0xf0f0;
  const __m512 t1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(ia, v), s1, _mm512_permutexvar_ps(im, v));
  const __m512 t2 = _mm512_fmadd_ps(_mm512_maskz_permutexvar_ps(sal, ia2, v), s2, _mm512_maskz_permutexvar_ps(sal, im2, v));
  return _mm512_add_ps(t1, t2);
}

// The weights of 16 columns at c of one row: plane slices → k-masks, idx = cm | p0 | p1·2, w = lut[idx].
inline __m512 weights16(const uint16_t* pl, int64_t c, __m512i cmv, __m512 lut) {
  const int64_t o = (c >> 5) * 4 + ((c >> 4) & 1);  // plane 0's 16-bit slice; plane 1's is 2 further
  const __mmask16 k0 = _cvtu32_mask16(pl[o]), k1 = _cvtu32_mask16(pl[o + 2]);
  __m512i idx = _mm512_mask_or_epi32(cmv, k0, cmv, _mm512_set1_epi32(1));
  idx = _mm512_mask_or_epi32(idx, k1, idx, _mm512_set1_epi32(2));
  return _mm512_permutexvar_ps(idx, lut);
}

// R rows from r0 × MR tokens over all columns.
template <int R, int MR>
void rows_block(const BinaryView& p, const float* xp, int64_t ldx, const int32_t* cm, float* y, int64_t r0) {
  const int64_t kpad = p.wpr * 32, span = 2 * p.block, npairs = (kpad + span - 1) / span;
  __m512 acc[MR][R];
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < R; ++i) acc[m][i] = _mm512_setzero_ps();
  const uint16_t* pl[R];
  for (int i = 0; i < R; ++i) pl[i] = reinterpret_cast<const uint16_t*>(p.planes + (r0 + i) * p.wpr * 2);
  for (int64_t q = 0; q < npairs; ++q) {
    __m512 lut[R];
    for (int i = 0; i < R; ++i) lut[i] = lut2(p, r0 + i, q);
    const int64_t c0 = q * span, c1 = std::min(kpad, c0 + span);
    for (int64_t c = c0; c < c1; c += 16) {
      // One cache line of planes covers 256 columns of a row: fetch the rows' next lines ahead.
      if ((c & 255) == 0)
        for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(pl[i] + (c >> 5) * 4) + kPrefetchBytes, _MM_HINT_T0);
      const __m512i cmv = _mm512_loadu_si512(cm + c);
      __m512 xv[MR];
      for (int m = 0; m < MR; ++m) xv[m] = _mm512_loadu_ps(xp + m * ldx + c);
      for (int i = 0; i < R; ++i) {
        const __m512 w = weights16(pl[i], c, cmv, lut[i]);
        for (int m = 0; m < MR; ++m) acc[m][i] = _mm512_fmadd_ps(w, xv[m], acc[m][i]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < R; ++i) y[m * p.rows + r0 + i] = _mm512_reduce_add_ps(acc[m][i]);
}

void gemv(const BinaryView& p, const float* xp, int64_t ldx, int64_t, const int32_t* cm, float* y, int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + 8 <= r1; r += 8) rows_block<8, 1>(p, xp, ldx, cm, y, r);
  for (; r < r1; ++r) rows_block<1, 1>(p, xp, ldx, cm, y, r);
}

template <int MR>
void tile_mr(const BinaryView& p, const float* xp, int64_t ldx, const int32_t* cm, float* y, int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) rows_block<4, MR>(p, xp, ldx, cm, y, r);
  for (; r < r1; ++r) rows_block<1, MR>(p, xp, ldx, cm, y, r);
}

void tile(const BinaryView& p, const float* xp, int64_t ldx, int64_t M, const int32_t* cm, float* y, int64_t r0, int64_t r1) {
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    const float* x = xp + m0 * ldx;
    float* yy = y + m0 * p.rows;
    switch (std::min<int64_t>(4, M - m0)) {
      case 1: tile_mr<1>(p, x, ldx, cm, yy, r0, r1); break;
      case 2: tile_mr<2>(p, x, ldx, cm, yy, r0, r1); break;
      case 3: tile_mr<3>(p, x, ldx, cm, yy, r0, r1); break;
      default: tile_mr<4>(p, x, ldx, cm, yy, r0, r1); break;
    }
  }
}

void dequant(const BinaryView& p, const int32_t* cm, int64_t r0, int64_t n, int64_t k0, int64_t kc, float* out) {
  const int64_t span = 2 * p.block;
  for (int64_t r = r0; r < r0 + n; ++r) {
    const uint16_t* pl = reinterpret_cast<const uint16_t*>(p.planes + r * p.wpr * 2);
    float* o = out + (r - r0) * kc - k0;
    int64_t q = -1;
    __m512 lut = _mm512_setzero_ps();
    for (int64_t c = k0; c < k0 + kc; c += 16) {
      if (c / span != q) lut = lut2(p, r, q = c / span);
      _mm512_storeu_ps(o + c, weights16(pl, c, _mm512_loadu_si512(cm + c), lut));
    }
  }
}

const Kernels kKernels{gemv, tile, dequant, 8};

}  // namespace

const Kernels* kernels_avx512() { return &kKernels; }

}  // namespace binary_detail
}  // namespace lowbit

#pragma GCC pop_options
#endif
