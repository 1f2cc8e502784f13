// The CPU-only build (node-gyp / LOWBIT_CUDA=OFF): the CUDA entry points exist and report no CUDA.
#include "cpu/registry.h"

namespace lowbit {
namespace {

Napi::Value CudaInfo(const Napi::CallbackInfo& info) {
  Napi::Object r = Napi::Object::New(info.Env());
  r.Set("built", false);
  r.Set("error", "lowbit was built without CUDA");
  return r;
}

Napi::Value CudaDevices(const Napi::CallbackInfo& info) { return Napi::Array::New(info.Env(), 0); }

}  // namespace

LOWBIT_EXPORTS {
  exports.Set("cudaInfo", Napi::Function::New(env, CudaInfo));
  exports.Set("cudaDevices", Napi::Function::New(env, CudaDevices));
}

}  // namespace lowbit
