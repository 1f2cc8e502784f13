#include "dequant_gemm.h"

namespace lowbit {

void dequant_gemm(int64_t rows, int64_t cols, int64_t k_align, const float* x, int64_t ldx, int64_t M, float* y, bool parallel,
                  const std::function<void(int64_t, int64_t, int64_t, int64_t, float*)>& dequant) {
  const BlockDequant bq{dequant, k_align};
  GemmArgs g;
  g.M = M;
  g.N = rows;
  g.K = cols;
  g.transB = true;
  g.A = x;
  g.lda = ldx;
  g.Bq = &bq;
  g.C = y;
  g.ldc = rows;
  g.parallel = parallel;
  gemm(g);
}

}  // namespace lowbit
