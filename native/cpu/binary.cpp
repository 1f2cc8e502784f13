// BiLLM binary weights: the layout's LUT, the scalar reference kernels, dispatch by SIMD level and batch
// size, and the JS bindings binaryMatmul / binaryMatmulSync. Layout and kernels: binary.h.
#include "binary.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "async.h"
#include "matmul_binding.h"
#include "dequant_gemm.h"
#include "packed.h"
#include "registry.h"
#include "scratch.h"
#include "simd.h"
#include "tensor.h"
#include "threads.h"

namespace lowbit {

void binary_lut(const BinaryView& p, int64_t r, int64_t b, float lut[8]) {
  const uint16_t* s = p.scales + (r * p.nblocks + b) * kBinaryScales;
  float v[kBinaryScales];
  for (int k = 0; k < kBinaryScales; ++k) v[k] = f16_to_f32(s[k]);
  const float a1 = v[0], m1 = v[1], a2 = v[2], m2 = v[3], ac = v[4], mc = v[5], as = v[6], ms = v[7];
  lut[0] = -ac + mc;
  lut[1] = ac + mc;
  lut[2] = -as + ms;
  lut[3] = as + ms;
  lut[4] = (-a1 + m1) + (-a2 + m2);
  lut[5] = (a1 + m1) + (-a2 + m2);
  lut[6] = (-a1 + m1) + (a2 + m2);
  lut[7] = (a1 + m1) + (a2 + m2);
}

namespace {

// ---- scalar kernels (SimdLevel::Scalar, and blocks that are not a multiple of 16 columns) -------------
void rows_scalar(const BinaryView& p, const float* xp, int64_t ldx, int64_t M, const int32_t*, float* y, int64_t r0, int64_t r1) {
  float lut[8];
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t m = 0; m < M; ++m) {
      const float* x = xp + m * ldx;
      float acc = 0;
      for (int64_t b = 0; b < p.nblocks; ++b) {
        binary_lut(p, r, b, lut);
        const int64_t c1 = std::min(p.cols, (b + 1) * p.block);
        for (int64_t c = b * p.block; c < c1; ++c) acc += lut[binary_code(p, r, c)] * x[c];
      }
      y[m * p.rows + r] = acc;
    }
}

void dequant_scalar(const BinaryView& p, const int32_t*, int64_t r0, int64_t n, int64_t k0, int64_t kc, float* out) {
  float lut[8];
  for (int64_t r = r0; r < r0 + n; ++r) {
    int64_t b = -1;
    for (int64_t c = k0; c < k0 + kc; ++c) {
      if (c >= p.cols) {
        out[(r - r0) * kc + (c - k0)] = 0.f;
        continue;
      }
      if (c / p.block != b) binary_lut(p, r, b = c / p.block, lut);
      out[(r - r0) * kc + (c - k0)] = lut[binary_code(p, r, c)];
    }
  }
}

const binary_detail::Kernels kScalar{rows_scalar, rows_scalar, dequant_scalar};

// The SIMD kernels run from the packed layout; without it, or at SimdLevel::Scalar, the scalar ones.
const binary_detail::Kernels* kernels_for(const BinaryView& p) {
  if (!p.packed) return nullptr;
#if defined(__x86_64__) && defined(__GNUC__)
  switch (simd_level()) {
    case SimdLevel::Avx512: return binary_detail::kernels_avx512();
    case SimdLevel::Avx2: return __builtin_cpu_supports("f16c") ? binary_detail::kernels_avx2() : nullptr;
    default: return nullptr;
  }
#else
  return nullptr;
#endif
}

constexpr int64_t kSmallM = 8;  // below: register tiles; from here: an L1 tile (AVX-512) or lowbit::gemm on expanded weights
// The L1 tile re-reads every token's activations for each row block, which stop fitting L2 at a few hundred tokens;
// the blocked GEMM on dequantized weights does not. Around 128 tokens the two are within ~10% either way (tile/GEMM
// time, 1 thread, 2026-12-07, commit a93463b with the threshold switched: 0.91–0.93 at 128 tokens on 4096×1024 and
// 1024×4096, 0.98–1.0 at 256; on 256-column rows 0.92–1.14 at 128, 0.99–1.26 at 256).
constexpr int64_t kL1TileMaxM = 128;

}  // namespace

int64_t binary_packed_bytes(const BinaryView& p) {
  return cdiv(p.rows, kBinRB) * cdiv(p.nblocks, 2) * (kBinRB * 16 * 2 + kBinRB * (p.block / 8) * 4);
}

void binary_matmul(const BinaryView& p, const float* x, int64_t M, float* y, bool parallel) {
  if (M <= 0 || p.rows <= 0) return;
  const binary_detail::Kernels* simd = kernels_for(p);
  const binary_detail::Kernels* kr = simd ? simd : &kScalar;
  const int64_t kpad = simd ? p.npairs * 2 * p.block : p.wpr * 16;
  // Rows of xp a cache line more than kpad apart (kpad is often a multiple of 4 KiB: set conflicts).
  const int64_t ldx = M > 1 ? kpad + 16 : kpad;
  std::vector<float> xp(static_cast<std::size_t>(M * ldx), 0.f);
  for (int64_t m = 0; m < M; ++m) std::memcpy(&xp[m * ldx], x + m * p.cols, sizeof(float) * p.cols);
  std::vector<int32_t> cm(kpad, 0);
  for (int64_t c = 0; c < p.cols; ++c) cm[c] = 4 * ((p.salient[c / 8] >> (c % 8)) & 1);
  for (int64_t c = 0; c < kpad; ++c) cm[c] |= ((c / p.block) & 1) << 3;
  auto run = [&](std::size_t n, std::size_t min_chunk, const std::function<void(std::size_t, std::size_t, int)>& fn) {
    if (parallel) parallel_for(n, fn, min_chunk);
    else fn(0, n, 0);
  };
  if (M < kSmallM || (kr->gemm && M < kL1TileMaxM)) {
    // Units of kBinRB rows; enough units per chunk (~64k weights) to be worth a thread handoff.
    const int64_t unit = kBinRB, units = cdiv(p.rows, unit);
    const std::size_t chunk = static_cast<std::size_t>(std::max<int64_t>(1, 65536 / (unit * kpad * M)));
    const binary_detail::RowsFn fn = M == 1 ? kr->gemv : M < kSmallM ? kr->tile : kr->gemm;
    run(units, chunk, [&](std::size_t b, std::size_t e, int) {
      fn(p, xp.data(), ldx, M, cm.data(), y, b * unit, std::min<int64_t>(p.rows, e * unit));
    });
    return;
  }
  dequant_gemm(p.rows, p.cols, 16, xp.data(), ldx, M, y, parallel,
             [&](int64_t r0, int64_t n, int64_t k0, int64_t kc, float* out) { kr->dequant(p, cm.data(), r0, n, k0, kc, out); });
}

void binary_dense_rows(const BinaryView& p, int64_t r0, int64_t n, float* out) {
  parallel_for(static_cast<std::size_t>(n), [&](std::size_t a, std::size_t b, int) {
    dequant_scalar(p, nullptr, r0 + static_cast<int64_t>(a), static_cast<int64_t>(b - a), 0, p.cols, out + a * p.cols);
  });
}

void binary_matmul_reference(const BinaryView& p, const float* x, int64_t M, float* y) {
  std::vector<float> w(p.cols);
  float lut[8];
  for (int64_t r = 0; r < p.rows; ++r) {
    for (int64_t c = 0; c < p.cols; ++c) {
      if (c % p.block == 0) binary_lut(p, r, c / p.block, lut);
      w[c] = lut[binary_code(p, r, c)];
    }
    for (int64_t m = 0; m < M; ++m) {
      double s = 0;
      for (int64_t c = 0; c < p.cols; ++c) s += static_cast<double>(w[c]) * x[m * p.cols + c];
      y[m * p.rows + r] = static_cast<float>(s);
    }
  }
}

namespace {

int64_t get_int(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw std::invalid_argument(std::string("binary weight: missing numeric '") + key + "'");
  return v.As<Napi::Number>().Int64Value();
}

template <class T>
const T* typed(const Napi::Object& o, const char* key, napi_typedarray_type type, const char* tname, int64_t expect) {
  Napi::Value v = o.Get(key);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
    throw std::invalid_argument(std::string("binary weight: '") + key + "' must be a " + tname);
  auto ta = v.As<Napi::TypedArray>();
  if (static_cast<int64_t>(ta.ElementLength()) != expect)
    throw std::invalid_argument(std::string("binary weight: '") + key + "' has " + std::to_string(ta.ElementLength()) + " elements, expected " +
                                std::to_string(expect));
  return reinterpret_cast<const T*>(static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
}

}  // namespace

namespace {

void fill_geometry(BinaryView& p) {
  p.nblocks = cdiv(p.cols, p.block);
  p.wpr = cdiv(p.cols, 16);
  p.rows_pad = cdiv(p.rows, kBinRB) * kBinRB;
  p.npairs = cdiv(p.nblocks, 2);
  p.wpp = p.block / 8;
  p.unit_bytes = kBinRB * 16 * 2 + kBinRB * p.wpp * 4;
}

// The SIMD layout (binary.h) of the stored tensors.
void binary_pack(const BinaryView& p, uint8_t* out) {
  std::memset(out, 0, binary_packed_bytes(p));
  parallel_for(p.rows, [&](std::size_t r0, std::size_t r1, int) {
    for (int64_t r = r0; r < static_cast<int64_t>(r1); ++r)
      for (int64_t q = 0; q < p.npairs; ++q) {
        uint8_t* u = out + ((r / kBinRB) * p.npairs + q) * p.unit_bytes;
        uint16_t* sc = reinterpret_cast<uint16_t*>(u) + (r % kBinRB) * 16;
        for (int64_t h = 0; h < 2 && 2 * q + h < p.nblocks; ++h)
          std::memcpy(sc + 8 * h, p.scales + (r * p.nblocks + 2 * q + h) * kBinaryScales, kBinaryScales * 2);
        uint32_t* cw = reinterpret_cast<uint32_t*>(u + kBinRB * 16 * 2) + (r % kBinRB) * p.wpp;
        const int64_t w0 = q * 2 * p.block / 16;  // block is a multiple of 16: pairs start on word boundaries
        for (int64_t j = 0; j < p.wpp && w0 + j < p.wpr; ++j) cw[j] = p.codes[r * p.wpr + w0 + j];
      }
  }, 64);
}

}  // namespace

BinaryView binary_from_js(const Napi::Value& v) {
  if (!v.IsObject()) throw std::invalid_argument("binary weight: expected a BinaryWeight object");
  Napi::Object o = v.As<Napi::Object>();
  BinaryView p;
  p.rows = get_int(o, "rows");
  p.cols = get_int(o, "cols");
  p.block = get_int(o, "block");
  if (p.rows <= 0 || p.cols <= 0 || p.block <= 0) throw std::invalid_argument("binary weight: rows, cols and block must be positive");
  fill_geometry(p);
  p.salient = typed<uint8_t>(o, "salient", napi_uint8_array, "Uint8Array", cdiv(p.cols, 8));
  p.codes = typed<uint32_t>(o, "codes", napi_int32_array, "Int32Array", p.rows * p.wpr);
  p.scales = typed<uint16_t>(o, "scales", napi_uint16_array, "Uint16Array", p.rows * p.nblocks * kBinaryScales);
  Napi::Value pk = o.Get("packed");
  if (!pk.IsUndefined() && !pk.IsNull()) {
    if (!binary_packable(p.block)) throw std::invalid_argument("binary weight: 'packed' needs a block that is a multiple of 16");
    p.packed = typed<uint8_t>(o, "packed", napi_uint8_array, "Uint8Array", binary_packed_bytes(p));
  }
  return p;
}

namespace {

// binaryMatmul(x: Float32Array [M, cols], weight, {reference?}) → Promise<Float32Array [M, rows]>
Napi::Value BinaryMatmul(const Napi::CallbackInfo& info) {
  return matmul_async<BinaryView>(info, "binaryMatmul", binary_from_js,
      [](const BinaryView& p, const float* x, int64_t M, float* y) { binary_matmul(p, x, M, y); }, binary_matmul_reference);
}

// binaryMatmulSync(x, weight, y) — y written in place; for benchmarks (no promise/worker overhead).
Napi::Value BinaryMatmulSync(const Napi::CallbackInfo& info) {
  return matmul_sync<BinaryView>(info, binary_from_js, [](const BinaryView& p, const float* x, int64_t M, float* y) { binary_matmul(p, x, M, y); });
}

}  // namespace

// packBinary(weight) → Uint8Array: the SIMD layout of a BinaryWeight's stored tensors (block % 16 == 0).
Napi::Value PackBinary(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    BinaryView p = binary_from_js(info[0]);
    if (!binary_packable(p.block)) throw std::invalid_argument("packBinary: block " + std::to_string(p.block) + " is not a multiple of 16");
    auto out = Napi::Uint8Array::New(info.Env(), binary_packed_bytes(p));
    advise_huge_pages(out.Data(), binary_packed_bytes(p));
    binary_pack(p, out.Data());
    return out;
  });
}

LOWBIT_EXPORTS {
  exports.Set("packBinary", Napi::Function::New(env, PackBinary));
  exports.Set("binaryMatmul", Napi::Function::New(env, BinaryMatmul));
  exports.Set("binaryMatmulSync", Napi::Function::New(env, BinaryMatmulSync));
}

}  // namespace lowbit
