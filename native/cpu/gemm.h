// Single-precision GEMM, BLAS semantics: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C.
// All matrices row-major. B may be stored in BF16/F16 (checkpoint weights, memory-mapped) and is
// upcast while packing, so weights are never expanded to fp32 as a whole.
#pragma once
#include <cstdint>
#include <functional>

#include "tensor.h"

namespace lowbit {

// A B held only in a compressed form (packed integers, binary codes), expanded a block at a time as gemm packs
// it, so that no fp32 copy of the whole matrix exists: fn(j0, n, k0, kc, out) writes rows [j0, j0 + n) ×
// columns [k0, k0 + kc) of the [N, K] matrix (the transB layout) row-major into out. gemm asks for k0 and kc
// multiples of k_align (the source's column granularity), so it may read columns up to round_up(K, k_align).
struct BlockDequant {
  std::function<void(int64_t j0, int64_t n, int64_t k0, int64_t kc, float* out)> fn;
  int64_t k_align = 1;
};

struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  bool transA = false;  // A stored [K, M] instead of [M, K]
  bool transB = false;  // B stored [N, K] instead of [K, N]  (x·Wᵀ for nn.Linear weights is transB = true)
  const float* A = nullptr;
  int64_t lda = 0;
  MatView B;  // B.ld is its leading dimension
  const BlockDequant* Bq = nullptr;  // instead of B: B expanded block by block (transB only)
  float* C = nullptr;
  int64_t ldc = 0;
  float alpha = 1.0f, beta = 0.0f;
  bool parallel = true;  // false: run on the calling thread only (for callers that parallelize outside)
};

void gemm(const GemmArgs& a);
// The scalar reference: straightforward triple loop with fp64 accumulation, for tests.
void gemm_reference(const GemmArgs& a);

// y[M,N] = x[M,K] · W[N,K]ᵀ  — the nn.Linear product.
inline void linear(int64_t M, int64_t N, int64_t K, const float* x, const MatView& W, float* y, bool accumulate = false) {
  GemmArgs g;
  g.M = M; g.N = N; g.K = K; g.transB = true;
  g.A = x; g.lda = K; g.B = W; g.C = y; g.ldc = N; g.beta = accumulate ? 1.f : 0.f;
  gemm(g);
}

}  // namespace lowbit
