#include "tensor.h"

namespace lowbit {

void MatView::row_to_f32(int64_t r, int64_t c0, int64_t n, float* out) const {
  int64_t base = r * ld + c0;
  switch (dtype) {
    case DType::F32: std::memcpy(out, static_cast<const float*>(data) + base, n * sizeof(float)); break;
    case DType::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(data) + base;
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(p[i]);
      break;
    }
    default: {
      const uint16_t* p = static_cast<const uint16_t*>(data) + base;
      for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(p[i]);
    }
  }
}

static void typed_array_span(const Napi::Value& v, const char* what, void** data, size_t* bytes) {
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    *data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    *bytes = ta.ByteLength();
    return;
  }
  throw std::invalid_argument(std::string(what) + ": expected a typed array");
}

MatView mat_from_js(const Napi::Value& v, int64_t rows, int64_t cols, const char* what) {
  MatView m;
  m.ld = cols;
  Napi::Value data = v;
  std::string dt = "F32";
  if (v.IsObject() && !v.IsTypedArray()) {
    auto o = v.As<Napi::Object>();
    data = o.Get("data");
    if (o.Has("dtype")) dt = o.Get("dtype").As<Napi::String>().Utf8Value();
  }
  void* p;
  size_t bytes;
  typed_array_span(data, what, &p, &bytes);
  size_t esize;
  if (dt == "F32") { m.dtype = DType::F32; esize = 4; }
  else if (dt == "BF16") { m.dtype = DType::BF16; esize = 2; }
  else if (dt == "F16") { m.dtype = DType::F16; esize = 2; }
  else throw std::invalid_argument(std::string(what) + ": unsupported dtype " + dt);
  if (bytes < static_cast<size_t>(rows * cols) * esize)
    throw std::invalid_argument(std::string(what) + ": buffer holds " + std::to_string(bytes / esize) +
                                " elements, need " + std::to_string(rows * cols));
  m.data = p;
  return m;
}

float* f32_from_js(const Napi::Value& v, int64_t expect, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw std::invalid_argument(std::string(what) + ": expected a Float32Array");
  auto a = v.As<Napi::Float32Array>();
  if (expect >= 0 && static_cast<int64_t>(a.ElementLength()) < expect)
    throw std::invalid_argument(std::string(what) + ": has " + std::to_string(a.ElementLength()) +
                                " elements, need " + std::to_string(expect));
  return a.Data();
}

const float* cf32_from_js(const Napi::Value& v, int64_t expect, const char* what) { return f32_from_js(v, expect, what); }

}  // namespace lowbit
