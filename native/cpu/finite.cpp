// Counts NaN/Inf values in a weight tensor (fp32, or the bits of bf16/fp16) on the thread pool: quantize checks
// every layer before it starts, and at 8B scale a layer is ~200M values, too many for a JS loop on the main thread.
#include <napi.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "async.h"
#include "registry.h"
#include "threads.h"

namespace lowbit {
namespace {

// An exponent field of all ones is Inf or NaN.
template <class U>
int64_t count_exp_all_ones(const U* bits, std::size_t n, U mask) {
  std::atomic<int64_t> total{0};
  parallel_for(n, [&](std::size_t b, std::size_t e, int) {
    int64_t c = 0;
    for (std::size_t i = b; i < e; ++i) c += (bits[i] & mask) == mask;
    total += c;
  }, 1 << 16);
  return total.load();
}

// countNonFinite(values: Float32Array | Uint16Array, dtype: 'F32' | 'BF16' | 'F16') → number
Napi::Value CountNonFinite(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (!info[0].IsTypedArray()) throw std::invalid_argument("countNonFinite: expected a typed array");
    auto ta = info[0].As<Napi::TypedArray>();
    const std::string dtype = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
    const void* p = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    const std::size_t n = ta.ElementLength();
    int64_t c;
    if (dtype == "F32" && ta.TypedArrayType() == napi_float32_array) c = count_exp_all_ones(static_cast<const uint32_t*>(p), n, 0x7f800000u);
    else if (dtype == "BF16" && ta.TypedArrayType() == napi_uint16_array) c = count_exp_all_ones(static_cast<const uint16_t*>(p), n, uint16_t{0x7f80});
    else if (dtype == "F16" && ta.TypedArrayType() == napi_uint16_array) c = count_exp_all_ones(static_cast<const uint16_t*>(p), n, uint16_t{0x7c00});
    else throw std::invalid_argument("countNonFinite: expected (Float32Array, 'F32') or (Uint16Array, 'BF16' | 'F16'), got dtype '" + dtype + "'");
    return Napi::Number::New(info.Env(), static_cast<double>(c));
  });
}

}  // namespace

LOWBIT_EXPORTS { exports.Set("countNonFinite", Napi::Function::New(env, CountNonFinite)); }

}  // namespace lowbit
