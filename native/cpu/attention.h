#pragma once
#include <cstdint>

namespace lowbit {

// Causal grouped-query attention over sequences packed back to back ([T = nseq*seqLen] rows).
// q: [T, nh*hd], k/v: [T, nkv*hd] (RoPE already applied), out: [T, nh*hd].
// Works a block of queries at a time so no [seqLen, seqLen] matrix is ever materialised.
void causal_attention(const float* q, const float* k, const float* v, float* out, int64_t T, int64_t seqLen,
                      int64_t nh, int64_t nkv, int64_t hd);

}  // namespace lowbit
