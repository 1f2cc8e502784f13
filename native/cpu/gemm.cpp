#include "gemm.h"

#include <vector>

#include "async.h"
#include "registry.h"
#include "threads.h"

namespace lowbit {

void gemm_reference(const GemmArgs& a) {
  for (int64_t i = 0; i < a.M; ++i)
    for (int64_t j = 0; j < a.N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < a.K; ++k) {
        float av = a.transA ? a.A[k * a.lda + i] : a.A[i * a.lda + k];
        float bv = a.transB ? a.B.at(j, k) : a.B.at(k, j);
        s += static_cast<double>(av) * bv;
      }
      float& c = a.C[i * a.ldc + j];
      c = static_cast<float>(a.alpha * s + (a.beta == 0.f ? 0.0 : static_cast<double>(a.beta) * c));
    }
}

// Placeholder blocked kernel; replaced by the packed SIMD implementation.
void gemm(const GemmArgs& a) {
  auto body = [&](std::size_t r0, std::size_t r1, int) {
    std::vector<float> brow(a.K);
    for (int64_t j = 0; j < a.N; ++j) {
      if (a.transB) a.B.row_to_f32(j, 0, a.K, brow.data());
      else for (int64_t k = 0; k < a.K; ++k) brow[k] = a.B.at(k, j);
      for (int64_t i = r0; i < static_cast<int64_t>(r1); ++i) {
        float s = 0;
        for (int64_t k = 0; k < a.K; ++k) s += (a.transA ? a.A[k * a.lda + i] : a.A[i * a.lda + k]) * brow[k];
        float& c = a.C[i * a.ldc + j];
        c = a.alpha * s + (a.beta == 0.f ? 0.f : a.beta * c);
      }
    }
  };
  if (a.parallel) parallel_for(a.M, body, 16);
  else body(0, a.M, 0);
}

}  // namespace lowbit
