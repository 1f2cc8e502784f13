// AVX-512 1-bit kernels for BiLLM binary weights (layout and scheme in binary.h). Compiled with a
// function-level target like packed_avx512.cpp; binary.cpp only calls them when simd_level() is Avx512.
// Every header is included before the target pragma.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "binary.h"
#include "scratch.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace lowbit {
namespace binary_detail {
namespace {

#include "vec_avx512.h"
#include "dot_tile.h"

// The LUTs of blocks 2q (lanes 0..7) and 2q+1 (lanes 8..15) of a row from its 16 scales in the unit.
// Lane l holds code l & 7 (binary.h): t1 = ±α + μ of the first term (one rounding, as the quantizer's
// α·(±1) + μ), t2 = ±α2 + μ2 for the salient codes 4..7 and 0 elsewhere, lut = t1 + t2.
inline __m512 lut2(const uint16_t* sc) {
  const __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc)));
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

// The weights of the 16 columns of code word `word` of one row: idx = (word >> 2l) & 3 | cm, w = lut[idx].
inline __m512 weights16(uint32_t word, __m512i cmv, __m512 lut) {
  const __m512i sh = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i t = _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(word)), sh);
  return _mm512_permutexvar_ps(_mm512_ternarylogic_epi32(t, _mm512_set1_epi32(3), cmv, 0xEA), lut);  // (t & 3) | cm
}

// R rows from r0 (inside one row block) × MR tokens over all columns; y written for rows < r1.
template <int R, int MR>
void rows_block(const BinaryView& p, const float* xp, int64_t ldx, const int32_t* cm, float* y, int64_t r0, int64_t r1) {
  const int64_t span = 2 * p.block;
  __m512 acc[MR][R];
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < R; ++i) acc[m][i] = _mm512_setzero_ps();
  for (int64_t q = 0; q < p.npairs; ++q) {
    const uint16_t* sc = p.unit_scales(r0, q);
    const uint32_t* cw = p.unit_codes(r0, q);
    __m512 lut[R];
    for (int i = 0; i < R; ++i) lut[i] = lut2(sc + i * 16);
    const int64_t c0 = q * span;
    for (int64_t j = 0; j < p.wpp; ++j) {
      const int64_t c = c0 + 16 * j;
      const __m512i cmv = _mm512_loadu_si512(cm + c);
      __m512 xv[MR];
      for (int m = 0; m < MR; ++m) xv[m] = _mm512_loadu_ps(xp + m * ldx + c);
      for (int i = 0; i < R; ++i) {
        const __m512 w = weights16(cw[i * p.wpp + j], cmv, lut[i]);
        for (int m = 0; m < MR; ++m) acc[m][i] = _mm512_fmadd_ps(w, xv[m], acc[m][i]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < R && r0 + i < r1; ++i) y[m * p.rows + r0 + i] = _mm512_reduce_add_ps(acc[m][i]);
}

void gemv(const BinaryView& p, const float* xp, int64_t ldx, int64_t, const int32_t* cm, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; r += kBinRB) rows_block<kBinRB, 1>(p, xp, ldx, cm, y, r, r1);
}

template <int MR>
void tile_mr(const BinaryView& p, const float* xp, int64_t ldx, const int32_t* cm, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; r += 4) rows_block<4, MR>(p, xp, ldx, cm, y, r, r1);
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
    float* o = out + (r - r0) * kc - k0;
    int64_t q = -1;
    __m512 lut = _mm512_setzero_ps();
    const uint32_t* cw = nullptr;
    for (int64_t c = k0; c < k0 + kc; c += 16) {
      if (c / span != q) {
        q = c / span;
        lut = lut2(p.unit_scales(r, q));
        cw = p.unit_codes(r, q);
      }
      _mm512_storeu_ps(o + c, weights16(cw[(c - q * span) / 16], _mm512_loadu_si512(cm + c), lut));
    }
  }
}

// M >= 8: per K chunk (whole block pairs, ~1024 columns) and row block, the kBinRB rows' weights are
// dequantized once into an L1 buffer (fp32, the same values as the other kernels) and every token runs through
// them, 6 tokens × 4 rows of accumulators at a time (dot_tile.h). The activations of a chunk stay in L2 while the
// row blocks go by.
void gemm(const BinaryView& p, const float* xp, int64_t ldx, int64_t M, const int32_t* cm, float* y, int64_t r0, int64_t r1) {
  const int64_t span = 2 * p.block, kpad = p.npairs * span;
  const int64_t chunk = std::max<int64_t>(span, 1024 / span * span);
  static thread_local AlignedScratch t_tile;
  float* buf = t_tile.get(static_cast<std::size_t>(kBinRB * chunk));  // 32 KiB at block 128: stays in L1
  for (int64_t k0 = 0; k0 < kpad; k0 += chunk) {
    const int64_t kc = std::min(chunk, kpad - k0);
    for (int64_t rb = r0; rb < r1; rb += kBinRB) {
      dequant(p, cm, rb, kBinRB, k0, kc, buf);
      for (int64_t q = 0; q < kBinRB && rb + q < r1; q += kDotRows) {
        const int nrows = static_cast<int>(std::min<int64_t>(kDotRows, r1 - rb - q));
        const float* w = buf + q * kc;
        int64_t m0 = 0;
        auto run = [&](auto mr) {
          constexpr int T = decltype(mr)::value;
          for (; m0 + T <= M; m0 += T) dot_tile<V512, T>(w, kc, xp + m0 * ldx + k0, ldx, y + m0 * p.rows + rb + q, p.rows, nrows, k0 > 0);
        };
        run(std::integral_constant<int, 6>{});
        run(std::integral_constant<int, 4>{});
        run(std::integral_constant<int, 2>{});
        run(std::integral_constant<int, 1>{});
      }
    }
  }
}

const Kernels kKernels{gemv, tile, dequant, gemm};

}  // namespace

const Kernels* kernels_avx512() { return &kKernels; }

}  // namespace binary_detail
}  // namespace lowbit

#pragma GCC pop_options
#endif
