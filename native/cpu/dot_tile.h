// y (+)= x·wᵀ for a tile of weights already in fp32 in L1: MR tokens × kDotRows rows, one accumulator per
// (token, row). The packed and binary kernels dequantize a few rows × ~1024 columns once and run every token
// through them here (M >= 5 / 8), so the dequantization is amortized over the batch. Include as vec_avx512.h.
constexpr int kDotRows = 4;

// y[m, rb*RB + i] (+)= Σ_k w[i, k]·x[m, k] for MR tokens, the RB rows of w [RB, kc] (fp32, in L1).
template <class V, int MR>
void dot_tile(const float* w, int64_t kc, const float* x, int64_t ldx, float* y, int64_t ldy, int nrows, bool acc_y) {
  using F = typename V::F;
  constexpr int RB = kDotRows;
  F acc[MR][RB];
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < RB; ++i) acc[m][i] = V::zero();
  for (int64_t k = 0; k < kc; k += V::L) {
    F wv[RB];
    for (int i = 0; i < RB; ++i) wv[i] = V::loadu(w + i * kc + k);
    for (int m = 0; m < MR; ++m) {
      const F xv = V::loadu(x + m * ldx + k);
      for (int i = 0; i < RB; ++i) acc[m][i] = V::fma(wv[i], xv, acc[m][i]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < nrows; ++i) {
      const float v = V::hsum(acc[m][i]);
      float& out = y[m * ldy + i];
      out = acc_y ? out + v : v;
    }
}

