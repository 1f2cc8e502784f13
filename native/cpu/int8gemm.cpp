// W8A8: int8 weights (per-output-channel scales) × per-token int8 activations, exact int32 sums.
// AVX-512 VNNI vpdpbusd multiplies u8 × s8, so activations are stored offset by +128 and the product is
// corrected with 128·Σw per row; AVX2 sign-extends both to int16 and uses vpmaddwd (no saturation);
// the scalar reference sums (u − 128)·w. See packed.h for the layout.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "async.h"
#include "packed.h"
#include "registry.h"
#include "simd.h"
#include "tensor.h"
#include "threads.h"

namespace lowbit {
namespace int8_detail {

constexpr int kNR = 4;  // rows per tile (every path)

// acc[m*ldc + n] for m < mr, n < nr; w rows r0..r0+nr-1 (w points at row r0), u rows m0.. (ldu = kpad).
void tile_scalar(const int8_t* w, int64_t kpad, const uint8_t* u, int mr, int nr, int32_t* acc, int64_t ldc) {
  for (int m = 0; m < mr; ++m)
    for (int n = 0; n < nr; ++n) {
      int32_t s = 0;
      const uint8_t* x = u + m * kpad;
      const int8_t* wr = w + n * kpad;
      for (int64_t k = 0; k < kpad; ++k) s += (static_cast<int32_t>(x[k]) - 128) * wr[k];
      acc[m * ldc + n] = s;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define LOWBIT_INT8_X86 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// MR tokens × 4 rows, 64 columns a step: 16 vpdpbusd accumulators.
template <int MR>
static void tile_vnni_mr(const int8_t* w, int64_t kpad, const uint8_t* u, int nr, const int32_t* wsum, int32_t* acc, int64_t ldc) {
  __m512i a[MR][kNR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < kNR; ++n) a[m][n] = _mm512_setzero_si512();
  const int8_t* wr[kNR];
  for (int n = 0; n < kNR; ++n) wr[n] = w + (n < nr ? n : 0) * kpad;
  for (int64_t k = 0; k < kpad; k += 64) {
    __m512i wv[kNR];
    for (int n = 0; n < kNR; ++n) wv[n] = _mm512_loadu_si512(wr[n] + k);
    for (int m = 0; m < MR; ++m) {
      const __m512i xv = _mm512_loadu_si512(u + m * kpad + k);
      for (int n = 0; n < kNR; ++n) a[m][n] = _mm512_dpbusd_epi32(a[m][n], xv, wv[n]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < nr; ++n) acc[m * ldc + n] = _mm512_reduce_add_epi32(a[m][n]) - 128 * wsum[n];
}

void tile_vnni(const int8_t* w, int64_t kpad, const uint8_t* u, int mr, int nr, const int32_t* wsum, int32_t* acc, int64_t ldc) {
  switch (mr) {
    case 1: tile_vnni_mr<1>(w, kpad, u, nr, wsum, acc, ldc); break;
    case 2: tile_vnni_mr<2>(w, kpad, u, nr, wsum, acc, ldc); break;
    case 3: tile_vnni_mr<3>(w, kpad, u, nr, wsum, acc, ldc); break;
    default: tile_vnni_mr<4>(w, kpad, u, nr, wsum, acc, ldc); break;
  }
}

#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")

// MR tokens × 4 rows, 16 columns a step, int16 × int16 → int32 pair sums (exact, no saturation).
template <int MR>
static void tile_avx2_mr(const int8_t* w, int64_t kpad, const uint8_t* u, int nr, int32_t* acc, int64_t ldc) {
  __m256i a[MR][kNR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < kNR; ++n) a[m][n] = _mm256_setzero_si256();
  const int8_t* wr[kNR];
  for (int n = 0; n < kNR; ++n) wr[n] = w + (n < nr ? n : 0) * kpad;
  const __m128i off = _mm_set1_epi8(static_cast<char>(0x80));
  for (int64_t k = 0; k < kpad; k += 16) {
    __m256i wv[kNR];
    for (int n = 0; n < kNR; ++n) wv[n] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr[n] + k)));
    for (int m = 0; m < MR; ++m) {
      const __m128i xb = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(u + m * kpad + k)), off);  // u − 128 as s8
      const __m256i xv = _mm256_cvtepi8_epi16(xb);
      for (int n = 0; n < kNR; ++n) a[m][n] = _mm256_add_epi32(a[m][n], _mm256_madd_epi16(xv, wv[n]));
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < nr; ++n) {
      __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a[m][n]), _mm256_extracti128_si256(a[m][n], 1));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
      acc[m * ldc + n] = _mm_cvtsi128_si32(s);
    }
}

void tile_avx2(const int8_t* w, int64_t kpad, const uint8_t* u, int mr, int nr, int32_t* acc, int64_t ldc) {
  if (mr == 1) tile_avx2_mr<1>(w, kpad, u, nr, acc, ldc);
  else tile_avx2_mr<2>(w, kpad, u, nr, acc, ldc);
}

#pragma GCC pop_options
#endif

bool has_vnni() {
#ifdef LOWBIT_INT8_X86
  static const bool v = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") != 0;
  }();
  return v;
#else
  return false;
#endif
}

}  // namespace int8_detail

void quantize_rows_u8(const float* x, int64_t M, int64_t cols, int64_t kpad, uint8_t* u, float* sx, bool parallel) {
  auto body = [&](std::size_t r0, std::size_t r1, int) {
    for (int64_t r = r0; r < static_cast<int64_t>(r1); ++r) {
      const float* v = x + r * cols;
      float m = 0;
      for (int64_t i = 0; i < cols; ++i) m = std::fmax(m, std::fabs(v[i]));
      const float s = std::fmax(m, 1e-5f) / 127.f;  // exactly fake_quant_rows_sym's scale (bits = 8)
      uint8_t* o = u + r * kpad;
      for (int64_t i = 0; i < cols; ++i) o[i] = static_cast<uint8_t>(static_cast<int>(std::nearbyint(v[i] / s)) + 128);
      std::memset(o + cols, 128, kpad - cols);
      sx[r] = s;
    }
  };
  if (parallel) parallel_for(M, body, 16);
  else body(0, M, 0);
}

void int8_gemm_i32(const Int8View& w, const uint8_t* u, int64_t M, int32_t* acc, bool parallel) {
  using namespace int8_detail;
  const SimdLevel lvl = simd_level();
  const int64_t nrb = (w.rows + kNR - 1) / kNR;
  auto body = [&](std::size_t b, std::size_t e, int) {
    for (int64_t rb = b; rb < static_cast<int64_t>(e); ++rb) {
      const int64_t r0 = rb * kNR;
      const int nr = static_cast<int>(std::min<int64_t>(kNR, w.rows - r0));
      const int8_t* wp = w.w + r0 * w.kpad;
#ifdef LOWBIT_INT8_X86
      if (lvl == SimdLevel::Avx512 && has_vnni()) {
        for (int64_t m0 = 0; m0 < M; m0 += 4)
          tile_vnni(wp, w.kpad, u + m0 * w.kpad, static_cast<int>(std::min<int64_t>(4, M - m0)), nr, w.wsum + r0, acc + m0 * w.rows + r0, w.rows);
        continue;
      }
      if (lvl >= SimdLevel::Avx2) {
        for (int64_t m0 = 0; m0 < M; m0 += 2)
          tile_avx2(wp, w.kpad, u + m0 * w.kpad, static_cast<int>(std::min<int64_t>(2, M - m0)), nr, acc + m0 * w.rows + r0, w.rows);
        continue;
      }
#endif
      for (int64_t m0 = 0; m0 < M; m0 += 4)
        tile_scalar(wp, w.kpad, u + m0 * w.kpad, static_cast<int>(std::min<int64_t>(4, M - m0)), nr, acc + m0 * w.rows + r0, w.rows);
    }
  };
  (void)lvl;
  const std::size_t chunk = static_cast<std::size_t>(std::max<int64_t>(1, 65536 / (kNR * w.kpad * std::max<int64_t>(M, 1))));
  if (parallel) parallel_for(nrb, body, chunk);
  else body(0, nrb, 0);
}

void int8_matmul(const Int8View& w, const uint8_t* u, const float* sx, int64_t M, float* y, bool parallel) {
  std::vector<int32_t> acc(static_cast<std::size_t>(M * w.rows));
  int8_gemm_i32(w, u, M, acc.data(), parallel);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < w.rows; ++n) y[m * w.rows + n] = sx[m] * w.scales[n] * static_cast<float>(acc[m * w.rows + n]);
}

namespace {

template <class T>
T* typed(const Napi::Value& v, napi_typedarray_type type, int64_t expect, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
    throw std::invalid_argument(std::string("int8: ") + what + " has the wrong array type");
  auto ta = v.As<Napi::TypedArray>();
  if (expect >= 0 && static_cast<int64_t>(ta.ElementLength()) != expect)
    throw std::invalid_argument(std::string("int8: ") + what + " has " + std::to_string(ta.ElementLength()) + " elements, expected " + std::to_string(expect));
  return reinterpret_cast<T*>(static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
}

int64_t num(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw std::invalid_argument(std::string("int8: missing numeric '") + key + "'");
  return v.As<Napi::Number>().Int64Value();
}

int64_t kpad_for(int64_t cols) { return (cols + 63) / 64 * 64; }

// packInt8(qweight, scales, zeros, {rows, cols}) → {kind: 'int8', rows, cols, kpad, data: Int8Array, scales, wsum}
// qweight/zeros as a per-channel 8-bit QuantizedTensor (groupSize −1): w = q − zero must be an integer in [−128, 127].
Napi::Value PackInt8(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    Napi::Object o = info[3].As<Napi::Object>();
    const int64_t rows = num(o, "rows"), cols = num(o, "cols"), kpad = kpad_for(cols);
    if (rows <= 0 || cols <= 0) throw std::invalid_argument("int8: rows and cols must be positive");
    const uint8_t* q = typed<uint8_t>(info[0], napi_uint8_array, rows * cols, "qweight");
    const float* sc = typed<float>(info[1], napi_float32_array, rows, "scales (per channel)");
    const float* zr = typed<float>(info[2], napi_float32_array, rows, "zeros (per channel)");
    auto data = Napi::Int8Array::New(env, rows * kpad);
    advise_huge_pages(data.Data(), rows * kpad);
    auto scales = Napi::Float32Array::New(env, rows);
    auto wsum = Napi::Int32Array::New(env, rows);
    std::memset(data.Data(), 0, rows * kpad);
    for (int64_t r = 0; r < rows; ++r) {
      const float z = zr[r];
      if (z != std::floor(z)) throw std::invalid_argument("int8: zero of row " + std::to_string(r) + " is not an integer");
      int32_t s = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const int v = static_cast<int>(q[r * cols + c]) - static_cast<int>(z);
        if (v < -128 || v > 127) throw std::invalid_argument("int8: q − zero = " + std::to_string(v) + " at row " + std::to_string(r) + " is outside int8");
        data.Data()[r * kpad + c] = static_cast<int8_t>(v);
        s += v;
      }
      wsum.Data()[r] = s;
      scales.Data()[r] = sc[r];
    }
    Napi::Object r = Napi::Object::New(env);
    r.Set("kind", "int8");
    r.Set("rows", Napi::Number::New(env, static_cast<double>(rows)));
    r.Set("cols", Napi::Number::New(env, static_cast<double>(cols)));
    r.Set("kpad", Napi::Number::New(env, static_cast<double>(kpad)));
    r.Set("data", data);
    r.Set("scales", scales);
    r.Set("wsum", wsum);
    return r;
  });
}

// quantizeActInt8(x: Float32Array, cols) → {xq: Int8Array [M, cols], scales: Float32Array [M]}
Napi::Value QuantizeActInt8(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    auto xa = info[0].As<Napi::Float32Array>();
    const int64_t cols = info[1].As<Napi::Number>().Int64Value(), M = xa.ElementLength() / cols;
    std::vector<uint8_t> u(M * cols);
    auto xq = Napi::Int8Array::New(env, M * cols);
    auto sx = Napi::Float32Array::New(env, M);
    quantize_rows_u8(xa.Data(), M, cols, cols, u.data(), sx.Data());
    for (int64_t i = 0; i < M * cols; ++i) xq.Data()[i] = static_cast<int8_t>(static_cast<int>(u[i]) - 128);
    Napi::Object r = Napi::Object::New(env);
    r.Set("xq", xq);
    r.Set("scales", sx);
    return r;
  });
}

// int8MatmulI32(xq: Int8Array [M, cols], packed) → Int32Array [M, rows] (exact integer sums; tests)
Napi::Value Int8MatmulI32(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Int8View w = int8_from_js(info[1]);
    auto xa = info[0].As<Napi::Int8Array>();
    const int64_t M = xa.ElementLength() / w.cols;
    if (M * w.cols != static_cast<int64_t>(xa.ElementLength())) throw std::invalid_argument("int8MatmulI32: xq length is not a multiple of cols");
    std::vector<uint8_t> u(M * w.kpad, 128);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t c = 0; c < w.cols; ++c) u[m * w.kpad + c] = static_cast<uint8_t>(xa.Data()[m * w.cols + c] + 128);
    auto out = Napi::Int32Array::New(info.Env(), M * w.rows);
    int8_gemm_i32(w, u.data(), M, out.Data());
    return out;
  });
}

// int8Matmul(x: Float32Array [M, cols], packed) → Promise<Float32Array [M, rows]>: per-token int8
// activations (as fake_quant_rows_sym with 8 bits), int8 GEMM, scaled by sx·sw.
Napi::Value Int8Matmul(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Int8View w = int8_from_js(info[1]);
    const float* x = cf32_from_js(info[0], -1, "x");
    const int64_t n = info[0].As<Napi::Float32Array>().ElementLength(), M = n / w.cols;
    if (M * w.cols != n) throw std::invalid_argument("int8Matmul: x length is not a multiple of cols");
    auto out = std::make_shared<std::vector<float>>(static_cast<std::size_t>(M * w.rows));
    return run_async(info.Env(), [=] {
      std::vector<uint8_t> u(M * w.kpad);
      std::vector<float> sx(M);
      quantize_rows_u8(x, M, w.cols, w.kpad, u.data(), sx.data());
      int8_matmul(w, u.data(), sx.data(), M, out->data());
    }, [out](Napi::Env env) -> Napi::Value {
      auto a = Napi::Float32Array::New(env, out->size());
      std::memcpy(a.Data(), out->data(), out->size() * 4);
      return a;
    }, {info[0], info[1]});
  });
}

}  // namespace

void int8_dense_rows(const Int8View& w, int64_t r0, int64_t n, float* out) {
  parallel_for(static_cast<std::size_t>(n), [&](std::size_t a, std::size_t b, int) {
    for (int64_t r = r0 + static_cast<int64_t>(a); r < r0 + static_cast<int64_t>(b); ++r)
      for (int64_t c = 0; c < w.cols; ++c) out[(r - r0) * w.cols + c] = static_cast<float>(w.w[r * w.kpad + c]) * w.scales[r];
  });
}

Int8View int8_from_js(const Napi::Value& v) {
  if (!v.IsObject()) throw std::invalid_argument("int8: expected a packed int8 weight object");
  Napi::Object o = v.As<Napi::Object>();
  Int8View w;
  w.rows = num(o, "rows");
  w.cols = num(o, "cols");
  w.kpad = num(o, "kpad");
  if (w.kpad != kpad_for(w.cols)) throw std::invalid_argument("int8: kpad does not match cols");
  w.w = typed<int8_t>(o.Get("data"), napi_int8_array, w.rows * w.kpad, "data");
  w.scales = typed<float>(o.Get("scales"), napi_float32_array, w.rows, "scales");
  w.wsum = typed<int32_t>(o.Get("wsum"), napi_int32_array, w.rows, "wsum");
  return w;
}

LOWBIT_EXPORTS {
  exports.Set("packInt8", Napi::Function::New(env, PackInt8));
  exports.Set("quantizeActInt8", Napi::Function::New(env, QuantizeActInt8));
  exports.Set("int8MatmulI32", Napi::Function::New(env, Int8MatmulI32));
  exports.Set("int8Matmul", Napi::Function::New(env, Int8Matmul));
}

}  // namespace lowbit
