// The N-API shape shared by every weight format's x·Wᵀ entry points (packed integers, binary planes): an async
// `xxxMatmul(x, weight, {reference?})` on a worker thread and a synchronous `xxxMatmulSync(x, weight, y)` for
// benchmarks. Each format supplies its view parser and its SIMD and scalar-reference kernels.
#pragma once

#include <napi.h>

#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "async.h"
#include "tensor.h"

namespace lowbit {

template <class View, class FromJs, class Kernel, class Reference>
Napi::Value matmul_async(const Napi::CallbackInfo& info, const char* name, FromJs from_js, Kernel kernel, Reference reference) {
  return guarded(info, [&]() -> Napi::Value {
    View p = from_js(info[1]);
    const float* x = cf32_from_js(info[0], -1, "x");
    const int64_t n = info[0].As<Napi::Float32Array>().ElementLength();
    if (n % p.cols) throw std::invalid_argument(std::string(name) + ": x length " + std::to_string(n) + " is not a multiple of cols " + std::to_string(p.cols));
    const int64_t M = n / p.cols;
    const bool ref = info.Length() > 2 && info[2].IsObject() && info[2].As<Napi::Object>().Get("reference").ToBoolean();
    auto out = std::make_shared<std::vector<float>>(static_cast<std::size_t>(M * p.rows));
    return run_async(info.Env(), [=] {
      if (ref) reference(p, x, M, out->data());
      else kernel(p, x, M, out->data());
    }, [out](Napi::Env env) -> Napi::Value {
      auto a = Napi::Float32Array::New(env, out->size());
      std::memcpy(a.Data(), out->data(), out->size() * 4);
      return a;
    }, {info[0], info[1]});
  });
}

template <class View, class FromJs, class Kernel>
Napi::Value matmul_sync(const Napi::CallbackInfo& info, FromJs from_js, Kernel kernel) {
  return guarded(info, [&]() -> Napi::Value {
    View p = from_js(info[1]);
    const float* x = cf32_from_js(info[0], -1, "x");
    const int64_t M = info[0].As<Napi::Float32Array>().ElementLength() / p.cols;
    float* y = f32_from_js(info[2], M * p.rows, "y");
    kernel(p, x, M, y);
    return info.Env().Undefined();
  });
}

}  // namespace lowbit
