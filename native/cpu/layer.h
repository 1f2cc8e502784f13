// The pieces of a decoder layer's forward shared by the dense path (forward.cpp) and the sparse MoE MLP
// (moe.cpp): the config, linears in any weight layout (dense, packed low-bit, int8) and their product.
#pragma once
#include <napi.h>

#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <new>
#include <utility>
#include <vector>

#include "binary.h"
#include "packed.h"
#include "tensor.h"

namespace lowbit {

struct LinearW {
  MatView w;
  const float* bias = nullptr;
  int64_t out = 0, in = 0;
  // `packed` on the JS linear: low-bit packed weights (packLinear), W8A8 int8 weights (packInt8) or BiLLM
  // binary weights (kind 'binary').
  enum class Kind { Dense, Packed, Int8, Binary } kind = Kind::Dense;
  PackedView packed;
  Int8View int8;
  BinaryView binary;
};

struct Cfg {
  int64_t hidden, inter, nh, nkv, hd;
  float eps, theta;
  // Qwen3-MoE (cfg.moe); n_experts == 0 for dense models.
  int64_t n_experts = 0, topk = 0, moe_inter = 0;
  bool norm_topk = false;
};

int64_t num(const Napi::Object& o, const char* key);
Cfg parse_cfg(const Napi::Object& c);
LinearW parse_linear(const Napi::Object& lin, const char* name, int64_t out, int64_t in);

// Heap buffer handed to JS without a copy once the work is done.
struct Buf {
  float* p = nullptr;
  int64_t n = 0;
  explicit Buf(int64_t count = 0) : n(count) {
    if (count) {
      p = static_cast<float*>(std::malloc(sizeof(float) * count));
      if (!p) throw std::bad_alloc();
    }
  }
  Buf(Buf&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr; o.n = 0; }
  Buf& operator=(Buf&& o) noexcept { std::swap(p, o.p); std::swap(n, o.n); return *this; }
  ~Buf() { std::free(p); }
  Napi::Value to_js(Napi::Env env) {
    auto ab = Napi::ArrayBuffer::New(env, p, n * sizeof(float), [](Napi::Env, void* d) { std::free(d); });
    int64_t count = n;
    p = nullptr;
    n = 0;
    return Napi::Float32Array::New(env, count, ab, 0);
  }
};

// Per-token int8 activations of one linear input, shared by the linears reading it (q/k/v, gate/up).
struct QAct {
  std::vector<uint8_t> u;  // [T, kpad] x/s + 128
  std::vector<float> s;    // [T]
  int64_t kpad = 0;
};

void apply_linear(const LinearW& l, const float* x, int64_t T, float* y, QAct* qa = nullptr);

// True when every linear reading an input has int8 weights and the activations are 8-bit: those
// linears then quantize the input themselves (real int8) instead of reading a fake-quantized copy.
bool native_int8(int abits, std::initializer_list<const LinearW*> ls);

// What the first linears of a block see: the input, fake-quantized per token when activations are
// quantized (abits > 0, into `scratch`), and copied into `capture` when calibration asks for it.
const float* linear_input(const float* x, int64_t T, int64_t n, int abits, Buf& scratch, Buf* capture);

}  // namespace lowbit
