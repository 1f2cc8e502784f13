// JS model objects → the CUDA backend's host views (gpu.h), shared by the N-API bindings of the CUDA
// backend (binding.cpp, quant_binding.cpp). Throws std::invalid_argument naming what is wrong.
#pragma once
#include <string>

#include "cpu/binary.h"
#include "cpu/packed.h"
#include "cpu/registry.h"
#include "cpu/tensor.h"
#include "gpu.h"

namespace lowbit {
namespace cuda_js {

inline int64_t num(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw std::invalid_argument(std::string("missing numeric option '") + key + "'");
  return v.As<Napi::Number>().Int64Value();
}

inline cuda::HostMat host_mat(const Napi::Value& v, int64_t rows, int64_t cols, const char* what) {
  MatView mv = mat_from_js(v, rows, cols, what);
  cuda::HostMat m;
  m.data = mv.data;
  m.dtype = static_cast<int>(mv.dtype);
  m.rows = rows;
  m.cols = cols;
  return m;
}

// A linear held packed, with no dense weight: 2/3/4/8-bit integers (lin.packed of kind 'packed'), BiLLM binary
// codes ('binary') or W8A8 int8 rows ('int8'); its rows are expanded on demand by the CPU kernels' scalar
// definitions (packed_dense_rows, binary_dense_rows, int8_dense_rows), so the device gets the values the CPU path
// computes with.
inline cuda::HostMat packed_mat(const Napi::Object& packed, int64_t rows, int64_t cols, const char* what) {
  const std::string kind = packed.Get("kind").IsString() ? packed.Get("kind").As<Napi::String>().Utf8Value() : "";
  if (kind != "packed" && kind != "binary" && kind != "int8")
    throw std::invalid_argument(std::string(what) + ": '" + kind + "' weights have no CUDA path; evaluate this model with --device cpu");
  cuda::HostMat m;
  m.rows = rows;
  m.cols = cols;
  int64_t pr = 0, pc = 0;
  if (kind == "binary") {
    const BinaryView p = binary_from_js(packed);
    pr = p.rows;
    pc = p.cols;
    m.dense_rows = [p](int64_t r0, int64_t n, float* out) { binary_dense_rows(p, r0, n, out); };
  } else if (kind == "int8") {
    const Int8View p = int8_from_js(packed);
    pr = p.rows;
    pc = p.cols;
    m.dense_rows = [p](int64_t r0, int64_t n, float* out) { int8_dense_rows(p, r0, n, out); };
  } else {
    const PackedView p = packed_from_js(packed);
    pr = p.rows;
    pc = p.cols;
    m.dense_rows = [p](int64_t r0, int64_t n, float* out) { packed_dense_rows(p, r0, n, out); };
  }
  if (pr != rows || pc != cols)
    throw std::invalid_argument(std::string(what) + ": packed weight is " + std::to_string(pr) + "×" + std::to_string(pc) +
                                ", expected " + std::to_string(rows) + "×" + std::to_string(cols));
  return m;
}

inline cuda::HostLinear host_linear(const Napi::Object& lin, const char* name, int64_t out, int64_t in) {
  cuda::HostLinear l;
  Napi::Value w = lin.Get("weight");
  if ((w.IsUndefined() || w.IsNull()) && lin.Get("packed").IsObject()) l.w = packed_mat(lin.Get("packed").As<Napi::Object>(), out, in, name);
  else l.w = host_mat(w, out, in, name);
  Napi::Value b = lin.Get("bias");
  if (!b.IsUndefined() && !b.IsNull()) l.bias = cf32_from_js(b, out, name);
  return l;
}

// A ModelConfig (lib/load/types.ts) → ModelCfg.
inline cuda::ModelCfg model_cfg(const Napi::Object& c) {
  cuda::ModelCfg g;
  g.hidden = num(c, "hiddenSize");
  g.inter = num(c, "intermediateSize");
  g.nh = num(c, "numHeads");
  g.nkv = num(c, "numKvHeads");
  g.hd = num(c, "headDim");
  g.vocab = num(c, "vocabSize");
  g.eps = c.Get("rmsNormEps").As<Napi::Number>().FloatValue();
  g.theta = c.Get("ropeTheta").As<Napi::Number>().FloatValue();
  if (g.nkv <= 0 || g.nh % g.nkv) throw std::invalid_argument("numHeads must be a multiple of numKvHeads");
  return g;
}

// A LayerWeights (lib/load/types.ts) → HostLayer; the pointers stay valid while the JS object lives.
inline cuda::HostLayer host_layer(const Napi::Object& L, const cuda::ModelCfg& g) {
  cuda::HostLayer hl;
  hl.in_norm = cf32_from_js(L.Get("inputNorm"), g.hidden, "inputNorm");
  hl.post_norm = cf32_from_js(L.Get("postAttnNorm"), g.hidden, "postAttnNorm");
  if (L.Has("qNorm") && L.Get("qNorm").IsTypedArray()) hl.q_norm = cf32_from_js(L.Get("qNorm"), g.hd, "qNorm");
  if (L.Has("kNorm") && L.Get("kNorm").IsTypedArray()) hl.k_norm = cf32_from_js(L.Get("kNorm"), g.hd, "kNorm");
  Napi::Object lins = L.Get("linears").As<Napi::Object>();
  hl.q = host_linear(lins.Get("q").As<Napi::Object>(), "q_proj", g.nh * g.hd, g.hidden);
  hl.k = host_linear(lins.Get("k").As<Napi::Object>(), "k_proj", g.nkv * g.hd, g.hidden);
  hl.v = host_linear(lins.Get("v").As<Napi::Object>(), "v_proj", g.nkv * g.hd, g.hidden);
  hl.o = host_linear(lins.Get("o").As<Napi::Object>(), "o_proj", g.hidden, g.nh * g.hd);
  hl.gate = host_linear(lins.Get("gate").As<Napi::Object>(), "gate_proj", g.inter, g.hidden);
  hl.up = host_linear(lins.Get("up").As<Napi::Object>(), "up_proj", g.inter, g.hidden);
  hl.down = host_linear(lins.Get("down").As<Napi::Object>(), "down_proj", g.hidden, g.inter);
  return hl;
}

}  // namespace cuda_js
}  // namespace lowbit
