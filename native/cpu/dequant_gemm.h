// y = x·Wᵀ for weights held only in a compressed form (packed integers, BiLLM codes) at larger batches:
// lowbit::gemm with W expanded to fp32 one micro-panel at a time as the GEMM packs it (BlockDequant), so the
// product runs at the fp32 GEMM's speed while no more of W than a micro-panel per thread exists in fp32.
#pragma once
#include <cstdint>

#include "gemm.h"

namespace lowbit {

// dequant(r0, n, k0, kc, out): rows [r0, r0 + n), columns [k0, k0 + kc) of W into out[n, kc] row-major; k0 and
// kc come as multiples of k_align. x: [M, ldx]; y: [M, rows].
void dequant_gemm(int64_t rows, int64_t cols, int64_t k_align, const float* x, int64_t ldx, int64_t M, float* y, bool parallel,
                  const std::function<void(int64_t r0, int64_t n, int64_t k0, int64_t kc, float* out)>& dequant);

}  // namespace lowbit
