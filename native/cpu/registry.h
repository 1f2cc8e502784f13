// Each native module registers its exports from its own translation unit, so adding a kernel
// never means editing a central list.
#pragma once
#include <napi.h>
#include <functional>
#include <string>
#include <vector>

namespace lowbit {

using ExportFn = std::function<void(Napi::Env, Napi::Object)>;

inline std::vector<ExportFn>& export_registry() {
  static std::vector<ExportFn> fns;
  return fns;
}

struct Registrar {
  explicit Registrar(ExportFn fn) { export_registry().push_back(std::move(fn)); }
};

}  // namespace lowbit

#define LOWBIT_CAT2(a, b) a##b
#define LOWBIT_CAT(a, b) LOWBIT_CAT2(a, b)
// LOWBIT_EXPORTS { exports.Set("name", Napi::Function::New(env, Fn)); }
#define LOWBIT_EXPORTS                                                                 \
  static void LOWBIT_CAT(lowbit_exports_, __LINE__)(Napi::Env env, Napi::Object exports); \
  static ::lowbit::Registrar LOWBIT_CAT(lowbit_registrar_, __LINE__)(LOWBIT_CAT(lowbit_exports_, __LINE__)); \
  static void LOWBIT_CAT(lowbit_exports_, __LINE__)(Napi::Env env, Napi::Object exports)
