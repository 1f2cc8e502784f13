// AVX2 1-bit kernels for BiLLM binary weights (layout and scheme in binary.h): 8 columns a step, one
// block's LUT per register (vpermps uses the low 3 bits of the index, so cm's odd-block bit 8 is ignored).
// A byte of each plane expands to 8 lanes through a 256-entry table. Needs F16C besides AVX2/FMA
// (binary.cpp checks). Every header is included before the target pragma.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "binary.h"

namespace {
// kBits.v[v][l] = bit l of the byte v. Built at compile time, outside the target region: a static
// initializer compiled for AVX2 would run at load time on any CPU.
struct BitTable {
  alignas(32) int32_t v[256][8] = {};
  constexpr BitTable() {
    for (int b = 0; b < 256; ++b)
      for (int l = 0; l < 8; ++l) v[b][l] = (b >> l) & 1;
  }
};
constexpr BitTable kBits;
}  // namespace

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace lowbit {
namespace binary_detail {
namespace {

constexpr int64_t kPrefetchBytes = 1024;

// The LUT of block b of row r (zero for a block past the end); see lut2 in binary_avx512.cpp.
inline __m256 lut1(const BinaryView& p, int64_t r, int64_t b) {
  if (b >= p.nblocks) return _mm256_setzero_ps();
  const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p.scales + (r * p.nblocks + b) * kBinaryScales)));
  const __m256i ia = _mm256_setr_epi32(4, 4, 6, 6, 0, 0, 0, 0), im = _mm256_setr_epi32(5, 5, 7, 7, 1, 1, 1, 1);
  const __m256 s1 = _mm256_setr_ps(-1, 1, -1, 1, -1, 1, -1, 1);
  const __m256 s2 = _mm256_setr_ps(0, 0, 0, 0, -1, -1, 1, 1);
  const __m256 sal = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, 0, 0, -1, -1, -1, -1));
  const __m256 t1 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(v, ia), s1, _mm256_permutevar8x32_ps(v, im));
  const __m256 t2 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(v, _mm256_set1_epi32(2)), s2,
                                    _mm256_and_ps(_mm256_permutevar8x32_ps(v, _mm256_set1_epi32(3)), sal));
  return _mm256_add_ps(t1, t2);
}

// The weights of 8 columns at c of one row (pb: the row's planes as bytes).
inline __m256 weights8(const uint8_t* pb, int64_t c, __m256i cmv, __m256 lut) {
  const int64_t o = (c >> 5) * 8 + ((c >> 3) & 3);  // plane 0's byte; plane 1's is 4 further
  const __m256i t0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(kBits.v[pb[o]]));
  const __m256i t1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(kBits.v[pb[o + 4]]));
  const __m256i idx = _mm256_or_si256(_mm256_or_si256(cmv, t0), _mm256_add_epi32(t1, t1));
  return _mm256_permutevar8x32_ps(lut, idx);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R, int MR>
void rows_block(const BinaryView& p, const float* xp, int64_t ldx, const int32_t* cm, float* y, int64_t r0) {
  const int64_t kpad = p.wpr * 32, nb = (kpad + p.block - 1) / p.block;
  __m256 acc[MR][R];
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < R; ++i) acc[m][i] = _mm256_setzero_ps();
  const uint8_t* pb[R];
  for (int i = 0; i < R; ++i) pb[i] = reinterpret_cast<const uint8_t*>(p.planes + (r0 + i) * p.wpr * 2);
  for (int64_t b = 0; b < nb; ++b) {
    __m256 lut[R];
    for (int i = 0; i < R; ++i) lut[i] = lut1(p, r0 + i, b);
    const int64_t c1 = std::min(kpad, (b + 1) * p.block);
    for (int64_t c = b * p.block; c < c1; c += 8) {
      if ((c & 255) == 0)
        for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(pb[i] + (c >> 5) * 8) + kPrefetchBytes, _MM_HINT_T0);
      const __m256i cmv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cm + c));
      __m256 xv[MR];
      for (int m = 0; m < MR; ++m) xv[m] = _mm256_loadu_ps(xp + m * ldx + c);
      for (int i = 0; i < R; ++i) {
        const __m256 w = weights8(pb[i], c, cmv, lut[i]);
        for (int m = 0; m < MR; ++m) acc[m][i] = _mm256_fmadd_ps(w, xv[m], acc[m][i]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < R; ++i) y[m * p.rows + r0 + i] = hsum(acc[m][i]);
}

void gemv(const BinaryView& p, const float* xp, int64_t ldx, int64_t, const int32_t* cm, float* y, int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) rows_block<4, 1>(p, xp, ldx, cm, y, r);
  for (; r < r1; ++r) rows_block<1, 1>(p, xp, ldx, cm, y, r);
}

template <int MR>
void tile_mr(const BinaryView& p, const float* xp, int64_t ldx, const int32_t* cm, float* y, int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) rows_block<2, MR>(p, xp, ldx, cm, y, r);
  for (; r < r1; ++r) rows_block<1, MR>(p, xp, ldx, cm, y, r);
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
    const uint8_t* pb = reinterpret_cast<const uint8_t*>(p.planes + r * p.wpr * 2);
    float* o = out + (r - r0) * kc - k0;
    int64_t b = -1;
    __m256 lut = _mm256_setzero_ps();
    for (int64_t c = k0; c < k0 + kc; c += 8) {
      if (c / p.block != b) lut = lut1(p, r, b = c / p.block);
      _mm256_storeu_ps(o + c, weights8(pb, c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cm + c)), lut));
    }
  }
}

const Kernels kKernels{gemv, tile, dequant, 4};

}  // namespace

const Kernels* kernels_avx2() { return &kKernels; }

}  // namespace binary_detail
}  // namespace lowbit

#pragma GCC pop_options
#endif
