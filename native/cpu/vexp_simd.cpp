// AVX2 and AVX-512 exp kernels, compiled with function-level targets (headers first, as in gemm_avx512.cpp).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "vexp.h"

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 flags the deliberate _mm*_undefined_*() pass-through operands inside its own intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace lowbit {

// exp(x) = 2^n · p(r), x = n·ln2 + r, |r| ≤ ln2/2 (Cephes expf coefficients).
#define LOWBIT_EXP_BODY(V, SET1, MUL, ADD, FMA, ROUND, CVT, SLLI, ADDI, CAST, MIN, MAX)           \
  V x = MIN(MAX(xin, SET1(-87.3365f)), SET1(88.3762f));                                            \
  V fx = ROUND(MUL(x, SET1(1.44269504088896341f)));                                               \
  V r = FMA(fx, SET1(-0.693359375f), x);                                                          \
  r = FMA(fx, SET1(2.12194440e-4f), r);                                                           \
  V y = SET1(1.9875691500e-4f);                                                                   \
  y = FMA(y, r, SET1(1.3981999507e-3f));                                                          \
  y = FMA(y, r, SET1(8.3334519073e-3f));                                                          \
  y = FMA(y, r, SET1(4.1665795894e-2f));                                                          \
  y = FMA(y, r, SET1(1.6666665459e-1f));                                                          \
  y = FMA(y, r, SET1(5.0000001201e-1f));                                                          \
  y = FMA(y, MUL(r, r), ADD(r, SET1(1.0f)));                                                      \
  V e = MUL(y, CAST(SLLI(ADDI(CVT(fx), 127), 23)));

#pragma GCC push_options
#pragma GCC target("avx2,fma")
static inline __m256 exp256(__m256 xin) {
#define R256(v) _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define ADDI256(a, b) _mm256_add_epi32(a, _mm256_set1_epi32(b))
  LOWBIT_EXP_BODY(__m256, _mm256_set1_ps, _mm256_mul_ps, _mm256_add_ps, _mm256_fmadd_ps, R256, _mm256_cvtps_epi32,
                  _mm256_slli_epi32, ADDI256, _mm256_castsi256_ps, _mm256_min_ps, _mm256_max_ps)
  // Below the clamp the true value underflows to 0 (exp of a large negative logit gap).
  return _mm256_and_ps(e, _mm256_cmp_ps(xin, _mm256_set1_ps(-87.3365f), _CMP_GE_OQ));
#undef R256
#undef ADDI256
}

double exp_shift_sum_avx2(const float* x, float* out, int64_t n, float shift) {
  __m256 sh = _mm256_set1_ps(shift), acc = _mm256_setzero_ps();
  double total = 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), sh));
    if (out) _mm256_storeu_ps(out + i, e);
    acc = _mm256_add_ps(acc, e);
    if ((i & 1023) == 1016) {  // flush to double every 1024 elements to keep the float sum exact enough
      alignas(32) float t[8];
      _mm256_store_ps(t, acc);
      for (float v : t) total += v;
      acc = _mm256_setzero_ps();
    }
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, acc);
  for (float v : t) total += v;
  for (; i < n; ++i) {
    float e = std::exp(x[i] - shift);
    if (out) out[i] = e;
    total += e;
  }
  return total;
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,fma")
static inline __m512 exp512(__m512 xin) {
#define R512(v) _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define ADDI512(a, b) _mm512_add_epi32(a, _mm512_set1_epi32(b))
  LOWBIT_EXP_BODY(__m512, _mm512_set1_ps, _mm512_mul_ps, _mm512_add_ps, _mm512_fmadd_ps, R512, _mm512_cvtps_epi32,
                  _mm512_slli_epi32, ADDI512, _mm512_castsi512_ps, _mm512_min_ps, _mm512_max_ps)
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(xin, _mm512_set1_ps(-87.3365f), _CMP_GE_OQ), e);
#undef R512
#undef ADDI512
}

double exp_shift_sum_avx512(const float* x, float* out, int64_t n, float shift) {
  __m512 sh = _mm512_set1_ps(shift), acc = _mm512_setzero_ps();
  double total = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), sh));
    if (out) _mm512_storeu_ps(out + i, e);
    acc = _mm512_add_ps(acc, e);
    if ((i & 1023) == 1008) {
      total += _mm512_reduce_add_ps(acc);
      acc = _mm512_setzero_ps();
    }
  }
  if (i < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), sh));
    e = _mm512_maskz_mov_ps(m, e);
    if (out) _mm512_mask_storeu_ps(out + i, m, e);
    acc = _mm512_add_ps(acc, e);
  }
  return total + _mm512_reduce_add_ps(acc);
}
#pragma GCC pop_options

}  // namespace lowbit
#else
namespace lowbit {
double exp_shift_sum_avx2(const float* x, float* out, int64_t n, float shift) { return exp_shift_sum_scalar(x, out, n, shift); }
double exp_shift_sum_avx512(const float* x, float* out, int64_t n, float shift) { return exp_shift_sum_scalar(x, out, n, shift); }
}  // namespace lowbit
#endif
