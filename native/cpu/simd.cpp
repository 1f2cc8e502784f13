#include "simd.h"

#include <cstdlib>
#include <cstring>

#include "registry.h"

namespace lowbit {
namespace {

SimdLevel detect() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return SimdLevel::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SimdLevel::Avx2;
#endif
  return SimdLevel::Scalar;
}

SimdLevel parse(const char* s, SimdLevel fallback) {
  if (!s) return fallback;
  if (!std::strcmp(s, "scalar")) return SimdLevel::Scalar;
  if (!std::strcmp(s, "avx2")) return SimdLevel::Avx2;
  if (!std::strcmp(s, "avx512")) return SimdLevel::Avx512;
  return fallback;
}

SimdLevel& current() {
  static SimdLevel lvl = [] {
    SimdLevel hw = detect();
    SimdLevel want = parse(std::getenv("LOWBIT_SIMD"), hw);
    return want < hw ? want : hw;
  }();
  return lvl;
}

}  // namespace

SimdLevel simd_level() { return current(); }

void set_simd_level(SimdLevel cap) {
  SimdLevel hw = detect();
  current() = cap < hw ? cap : hw;
}

const char* simd_name(SimdLevel l) {
  switch (l) {
    case SimdLevel::Avx512: return "avx512";
    case SimdLevel::Avx2: return "avx2";
    default: return "scalar";
  }
}

LOWBIT_EXPORTS {
  exports.Set("simdLevel", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
    if (info.Length() > 0 && info[0].IsString()) {
      std::string s = info[0].As<Napi::String>();
      set_simd_level(parse(s.c_str(), SimdLevel::Avx512));
    }
    return Napi::String::New(info.Env(), simd_name(simd_level()));
  }));
}

}  // namespace lowbit
