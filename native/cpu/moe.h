// The sparse MLP of Qwen3-MoE: a full-precision router picks the top-k experts of each token; each expert
// is a SwiGLU MLP run on the tokens routed to it, its output scaled by the routing weight and summed.
#pragma once
#include <napi.h>

#include <cstdint>
#include <vector>

#include "layer.h"

namespace lowbit {

struct ExpertW {
  LinearW gate, up, down;
};

struct MoeW {
  MatView router;  // mlp.gate.weight [n_experts, hidden]
  std::vector<ExpertW> experts;
};

// moe: the JS {router, experts: [{gate, up, down}]} of a sparse layer.
MoeW parse_moe(const Napi::Object& moe, const Cfg& c);

// out [T, hidden] = the sparse MLP of x (its normed input). With abits the experts read x fake-quantized
// per token (the router never does); capture_in, if set, receives what the experts read.
void moe_block(const MoeW& m, const Cfg& c, const float* x, float* out, int64_t T, int abits, Buf* capture_in);

}  // namespace lowbit
