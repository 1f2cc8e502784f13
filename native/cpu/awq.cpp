// AWQ's weight-clipping search (llm-awq auto_clip): for each output channel and group, shrink the clip
// range over a grid and keep the one whose quantized group output on calibration tokens is closest.
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "async.h"
#include "gemm.h"
#include "quantizer.h"
#include "registry.h"
#include "threads.h"

namespace lowbit {
namespace {

// W [co, ci] fp32 (clipped in place), X [n, ci]. For group g of row o the error of clip value m is
// mean_t (Σ_{j∈g} x_tj (q_j(m) − w_j))², q = llm-awq pseudo-quantization of clamp(w, −m, m).
void awq_clip(float* W, int64_t co, int64_t ci, const float* X, int64_t n, int bits, int64_t gs, int grid, int steps,
              const CancelFlag& cancel) {
  const int64_t ng = ci / gs;
  const float maxq = static_cast<float>((1 << bits) - 1);
  // Transposed X (per group: [gs, n]) so the per-token dot products stream through memory.
  std::vector<float> Xt(ci * n);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < ci; ++j) Xt[j * n + t] = X[t * ci + j];
  parallel_for(co * ng, [&](std::size_t u0, std::size_t u1, int) {
    std::vector<float> org(n), out(n), wc(gs), best_w(gs);
    for (int64_t u = u0; u < static_cast<int64_t>(u1); ++u) {
      if (cancel.requested()) return;
      int64_t o = u / ng, g = u % ng;
      float* w = W + o * ci + g * gs;
      const float* xg = Xt.data() + g * gs * n;
      std::fill(org.begin(), org.end(), 0.f);
      float omax = 0.f;
      for (int64_t j = 0; j < gs; ++j) {
        omax = std::fmax(omax, std::fabs(w[j]));
        const float* xj = xg + j * n;
        for (int64_t t = 0; t < n; ++t) org[t] += xj[t] * w[j];
      }
      double min_err = 1e9;
      float best = omax;
      for (int s = 0; s < steps; ++s) {
        float mv = omax * (1.f - static_cast<float>(s) / grid);
        for (int64_t j = 0; j < gs; ++j) wc[j] = std::fmin(std::fmax(w[j], -mv), mv);
        QParams p = awq_params(wc.data(), gs, bits);
        std::fill(out.begin(), out.end(), 0.f);
        for (int64_t j = 0; j < gs; ++j) {
          float q = fake_quant(wc[j], p, maxq);
          const float* xj = xg + j * n;
          for (int64_t t = 0; t < n; ++t) out[t] += xj[t] * q;
        }
        double err = 0;
        for (int64_t t = 0; t < n; ++t) {
          double d = static_cast<double>(out[t]) - org[t];
          err += d * d;
        }
        err /= n;
        if (err < min_err) {
          min_err = err;
          best = mv;
        }
      }
      for (int64_t j = 0; j < gs; ++j) w[j] = std::fmin(std::fmax(w[j], -best), best);
    }
  }, 8);
  cancel.check();
}

// awqClip(W: Float32Array [co, ci] (clipped in place), X: Float32Array [n, ci], {co, ci, bits, groupSize, grid, steps, cancel})
Napi::Value AwqClip(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Object o = info[2].As<Napi::Object>();
    int64_t co = o.Get("co").As<Napi::Number>().Int64Value(), ci = o.Get("ci").As<Napi::Number>().Int64Value();
    int bits = o.Get("bits").As<Napi::Number>().Int32Value();
    int64_t gs = o.Get("groupSize").As<Napi::Number>().Int64Value();
    int grid = o.Get("grid").IsNumber() ? o.Get("grid").As<Napi::Number>().Int32Value() : 20;
    int steps = o.Get("steps").IsNumber() ? o.Get("steps").As<Napi::Number>().Int32Value() : grid / 2;
    if (gs <= 0) gs = ci;
    if (ci % gs) throw std::invalid_argument("group size does not divide in_features");
    float* W = f32_from_js(info[0], co * ci, "weight");
    auto Xv = info[1].As<Napi::Float32Array>();
    int64_t n = Xv.ElementLength() / ci;
    const float* X = Xv.Data();
    CancelFlag cancel(o.Get("cancel"));
    return run_async(info.Env(), [=] { awq_clip(W, co, ci, X, n, bits, gs, grid, steps, cancel); }, nullptr,
                     {info[0], info[1], info[2]});
  });
}

// linearForward(x [T, in], weight, {out, in, bias?}) → Promise<Float32Array [T, out]>
Napi::Value LinearForward(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Object o = info[2].As<Napi::Object>();
    int64_t out = o.Get("out").As<Napi::Number>().Int64Value(), in = o.Get("in").As<Napi::Number>().Int64Value();
    auto xv = info[0].As<Napi::Float32Array>();
    int64_t T = xv.ElementLength() / in;
    MatView W = mat_from_js(info[1], out, in, "weight");
    const float* x = xv.Data();
    const float* bias = o.Has("bias") && o.Get("bias").IsTypedArray() ? cf32_from_js(o.Get("bias"), out, "bias") : nullptr;
    auto y = std::make_shared<std::vector<float>>(T * out);
    return run_async(info.Env(), [=] {
      linear(T, out, in, x, W, y->data());
      if (bias)
        for (int64_t t = 0; t < T; ++t)
          for (int64_t i = 0; i < out; ++i) (*y)[t * out + i] += bias[i];
    }, [y](Napi::Env env) -> Napi::Value {
      auto a = Napi::Float32Array::New(env, y->size());
      std::memcpy(a.Data(), y->data(), y->size() * 4);
      return a;
    }, {info[0], info[1], info[2]});
  });
}

}  // namespace

LOWBIT_EXPORTS {
  exports.Set("awqClip", Napi::Function::New(env, AwqClip));
  exports.Set("linearForward", Napi::Function::New(env, LinearForward));
}

}  // namespace lowbit
