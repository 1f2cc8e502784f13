#pragma once
#include <cstdint>

#include "tensor.h"

namespace lowbit {

// For each row t of x [T, d] (already final-normed), logits = x[t] · headᵀ over the whole vocabulary,
// nll[t] = logsumexp(logits) - logits[target[t]]; rows with target < 0 are skipped (nll = 0).
// Logits are produced a block of rows at a time and never leave this function. When topk > 0 the
// top-k logit indices/values of each row are also written (for exactness tests against transformers).
void lm_head_nll(const float* x, const MatView& head, int64_t T, int64_t d, int64_t V, const int32_t* target,
                 double* nll, int topk, int32_t* top_idx, float* top_val);

}  // namespace lowbit
