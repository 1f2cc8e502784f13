#include "vexp.h"

#include <algorithm>
#include <cmath>

#include "registry.h"
#include "simd.h"

namespace lowbit {

double exp_shift_sum_scalar(const float* x, float* out, int64_t n, float shift) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    float e = std::exp(x[i] - shift);
    if (out) out[i] = e;
    s += e;
  }
  return s;
}

double exp_shift_sum(const float* x, float* out, int64_t n, float shift) {
  switch (simd_level()) {
    case SimdLevel::Avx512: return exp_shift_sum_avx512(x, out, n, shift);
    case SimdLevel::Avx2: return exp_shift_sum_avx2(x, out, n, shift);
    default: return exp_shift_sum_scalar(x, out, n, shift);
  }
}

float max_f32(const float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// expShiftSum(x: Float32Array, shift) → {out: Float32Array, sum} — for tests of every SIMD level.
LOWBIT_EXPORTS {
  exports.Set("expShiftSum", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    auto x = info[0].As<Napi::Float32Array>();
    float shift = info[1].As<Napi::Number>().FloatValue();
    auto out = Napi::Float32Array::New(info.Env(), x.ElementLength());
    double s = exp_shift_sum(x.Data(), out.Data(), x.ElementLength(), shift);
    Napi::Object r = Napi::Object::New(info.Env());
    r.Set("out", out);
    r.Set("sum", Napi::Number::New(info.Env(), s));
    return r;
  }));
}

}  // namespace lowbit
