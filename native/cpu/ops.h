// Elementwise and row-wise pieces of the transformer forward, fp32, matching transformers' math order.
#pragma once
#include <cstdint>

#include "tensor.h"

namespace lowbit {

// y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, over rows of length n (y may alias x).
void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps, int64_t ldx, int64_t ldy);
// In place on [T, nheads*hd]: rotate-half RoPE with position = t % seqLen (sequences packed back to back).
void rope(float* x, int64_t T, int64_t seqLen, int64_t nheads, int64_t hd, float theta);
// g[i] = silu(g[i]) * u[i]
void silu_mul(float* g, const float* u, int64_t n);
// Per-row dynamic symmetric fake quantization to `bits` (SmoothQuant's per-token activation quantizer):
// s = max(|x|)/(2^(bits-1)-1) (s floored at 1e-5/qmax), x = round(x/s)*s with round-half-even.
void fake_quant_rows_sym(float* x, int64_t rows, int64_t n, int bits);
// Rows of an embedding table gathered and upcast.
void embed_rows(const MatView& table, const int32_t* ids, int64_t n, int64_t hidden, float* out);

}  // namespace lowbit
