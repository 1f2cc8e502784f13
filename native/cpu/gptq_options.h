// GPTQ's options, shared by the CPU solver (gptq.cpp) and the GPU one (native/cuda): one struct, one parser of
// the JS options object, so both paths take and reject the same things with the same messages. Napi-free (the
// CUDA host header includes it); the parser is defined in gptq.cpp.
#pragma once
#include <cstdint>

namespace Napi {
class Object;
}

namespace lowbit {

struct GptqOptions {
  int bits = 4;
  int64_t group = -1;  // columns per group; ≤ 0: one group per row
  bool sym = false, act_order = true, static_groups = false;
  double damp = 0.01;   // fraction of the mean Hessian diagonal added to it
  int64_t block = 128;  // columns per lazy-update block
};

// {bits, groupSize, sym, actOrder, staticGroups, damp?, blockSize?} for a weight of `cols` input columns;
// throws std::invalid_argument naming the bad option.
GptqOptions gptq_options_from_js(const Napi::Object& o, int64_t cols);

}  // namespace lowbit
