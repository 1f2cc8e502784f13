#include "registry.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  for (auto& fn : lowbit::export_registry()) fn(env, exports);
  return exports;
}

NODE_API_MODULE(lowbit, Init)
