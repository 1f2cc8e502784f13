// y = x·Wᵀ for weights held only in a compressed form (packed integers, BiLLM codes) at larger batches:
// per thread, a panel of up to kPanelRows rows × kc columns is dequantized to fp32 and multiplied with
// lowbit::gemm, accumulating over K. The packed and binary kernels both take this path where they have no
// L1-tile kernel (AVX2 and scalar; BiLLM from 128 tokens).
#pragma once
#include <cstdint>
#include <functional>

namespace lowbit {

constexpr int64_t kPanelRows = 128, kPanelK = 1024;

// dequant(r0, n, k0, kc, out): rows [r0, r0 + n), columns [k0, k0 + kc) of W into out[n, kc] row-major.
using PanelDequant = std::function<void(int64_t r0, int64_t n, int64_t k0, int64_t kc, float* out)>;

// x: [M, ldx], columns past `cols` zero up to kpad; y: [M, rows]. Panels start at multiples of kPanelRows and
// reach rows_pad (≥ rows: the dequantizer's row granularity); only rows < rows are written. kc_max: columns per
// panel, a multiple of what dequant needs.
void panel_gemm(int64_t rows, int64_t rows_pad, int64_t cols, int64_t kpad, int64_t kc_max, const float* x, int64_t ldx, int64_t M,
                float* y, bool parallel, const PanelDequant& dequant);

}  // namespace lowbit
