// Round-to-nearest weight quantization (per output channel or per group of input columns), returning the
// dequantized weights together with the integers, scales and zeros a packed format needs.
#include <cstring>
#include <memory>
#include <vector>

#include "async.h"
#include "quantizer.h"
#include "registry.h"
#include "tensor.h"
#include "threads.h"

namespace lowbit {
namespace {

struct QuantOut {
  std::vector<float> w, scales, zeros;
  std::vector<uint8_t> q;
};

Napi::Object quant_out_to_js(Napi::Env env, QuantOut& r) {
  Napi::Object o = Napi::Object::New(env);
  auto w = Napi::Float32Array::New(env, r.w.size());
  std::memcpy(w.Data(), r.w.data(), r.w.size() * 4);
  auto q = Napi::Uint8Array::New(env, r.q.size());
  std::memcpy(q.Data(), r.q.data(), r.q.size());
  auto s = Napi::Float32Array::New(env, r.scales.size());
  std::memcpy(s.Data(), r.scales.data(), r.scales.size() * 4);
  auto z = Napi::Float32Array::New(env, r.zeros.size());
  std::memcpy(z.Data(), r.zeros.data(), r.zeros.size() * 4);
  o.Set("weight", w);
  o.Set("qweight", q);
  o.Set("scales", s);
  o.Set("zeros", z);
  return o;
}

// quantizeRtn(W, {rows, cols, bits, groupSize, sym, grid: 'gptq'|'awq'}) → Promise<{weight, qweight, scales, zeros}>
// grid: gptq (range includes 0), awq (llm-awq's), absmax (SmoothQuant's symmetric per-channel).
// scales/zeros are [rows, ngroups]; qweight [rows, cols] integers in [0, 2^bits).
Napi::Value QuantizeRtn(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Object o = info[1].As<Napi::Object>();
    int64_t rows = o.Get("rows").As<Napi::Number>().Int64Value(), cols = o.Get("cols").As<Napi::Number>().Int64Value();
    int bits = o.Get("bits").As<Napi::Number>().Int32Value();
    int64_t group = o.Get("groupSize").As<Napi::Number>().Int64Value();
    bool sym = o.Has("sym") && o.Get("sym").ToBoolean();
    std::string grid = o.Has("grid") ? o.Get("grid").As<Napi::String>().Utf8Value() : "gptq";
    if (grid != "gptq" && grid != "awq" && grid != "absmax") throw std::invalid_argument("grid must be gptq, awq or absmax");
    bool awq = grid == "awq", absmax = grid == "absmax";
    if (absmax && bits < 2) throw std::invalid_argument("symmetric absmax weights need bits >= 2");
    if (bits < 1 || bits > 8) throw std::invalid_argument("bits must be 1..8");
    if (group <= 0) group = cols;
    if (cols % group) throw std::invalid_argument("group size " + std::to_string(group) + " does not divide " + std::to_string(cols) + " columns");
    MatView W = mat_from_js(info[0], rows, cols, "weight");
    auto r = std::make_shared<QuantOut>();
    return run_async(info.Env(), [=] {
      int64_t ng = cols / group;
      r->w.resize(rows * cols);
      r->q.resize(rows * cols);
      r->scales.resize(rows * ng);
      r->zeros.resize(rows * ng);
      float maxq = static_cast<float>((1 << bits) - 1);
      parallel_for(rows, [&](std::size_t r0, std::size_t r1, int) {
        std::vector<float> row(cols);
        for (int64_t i = r0; i < static_cast<int64_t>(r1); ++i) {
          W.row_to_f32(i, 0, cols, row.data());
          for (int64_t g = 0; g < ng; ++g) {
            const float* blk = row.data() + g * group;
            QParams p = awq ? awq_params(blk, group, bits) : absmax ? absmax_params(blk, group, bits) : gptq_params(blk, group, 1, bits, sym);
            r->scales[i * ng + g] = p.scale;
            r->zeros[i * ng + g] = p.zero;
            for (int64_t j = 0; j < group; ++j) {
              float qi = quant_int(blk[j], p, maxq);
              r->q[i * cols + g * group + j] = static_cast<uint8_t>(qi);
              r->w[i * cols + g * group + j] = p.scale * (qi - p.zero);
            }
          }
        }
      }, 4);
    }, [r](Napi::Env env) -> Napi::Value { return quant_out_to_js(env, *r); }, {info[0], info[1]});
  });
}

}  // namespace

LOWBIT_EXPORTS { exports.Set("quantizeRtn", Napi::Function::New(env, QuantizeRtn)); }

}  // namespace lowbit
