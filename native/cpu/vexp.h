// Vectorized exp for softmax and log-sum-exp rows: the attention softmax and the vocabulary-wide NLL
// evaluate billions of exponentials per evaluation run, which scalar std::exp made the bottleneck.
#pragma once
#include <cstdint>

namespace lowbit {

// out[i] = exp(x[i] - shift) (out may alias x, or be null to only sum); returns Σ exp(x[i] - shift).
// Cephes-style range reduction and polynomial: within 2 ulp of std::exp over the float range.
double exp_shift_sum(const float* x, float* out, int64_t n, float shift);
float max_f32(const float* x, int64_t n);

// Scalar reference and per-ISA kernels (selected by simd_level()).
double exp_shift_sum_scalar(const float* x, float* out, int64_t n, float shift);
double exp_shift_sum_avx2(const float* x, float* out, int64_t n, float shift);
double exp_shift_sum_avx512(const float* x, float* out, int64_t n, float shift);

}  // namespace lowbit
