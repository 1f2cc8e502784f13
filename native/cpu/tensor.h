// Views over weight memory in the dtypes checkpoints store (memory-mapped, never copied whole).
#pragma once
#include <napi.h>

#include "half.h"

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace lowbit {

enum class DType : int { F32 = 0, BF16 = 1, F16 = 2 };

// A row-major matrix [rows, cols] with leading dimension ld (elements), in one of the weight dtypes.
struct MatView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t ld = 0;

  float at(int64_t r, int64_t c) const {
    int64_t i = r * ld + c;
    switch (dtype) {
      case DType::F32: return static_cast<const float*>(data)[i];
      case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(data)[i]);
      default: return f16_to_f32(static_cast<const uint16_t*>(data)[i]);
    }
  }
  // Converts cols [c0, c0+n) of row r to fp32.
  void row_to_f32(int64_t r, int64_t c0, int64_t n, float* out) const;
};

// JS side passes weights as {data: TypedArray, dtype: 'F32'|'BF16'|'F16'} or a bare Float32Array.
MatView mat_from_js(const Napi::Value& v, int64_t rows, int64_t cols, const char* what);
float* f32_from_js(const Napi::Value& v, int64_t expect, const char* what);
const float* cf32_from_js(const Napi::Value& v, int64_t expect, const char* what);

}  // namespace lowbit
