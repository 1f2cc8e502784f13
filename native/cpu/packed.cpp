// Packed low-bit weights: packing/unpacking (layout in packed.h), the scalar reference kernels, dispatch
// by SIMD level and batch size, and the JS bindings packLinear / unpackLinear / packedMatmul.
#include "packed.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <sys/mman.h>

#include "async.h"
#include "matmul_binding.h"
#include "dequant_gemm.h"
#include "registry.h"
#include "scratch.h"
#include "simd.h"
#include "threads.h"

namespace lowbit {

// Asks for transparent huge pages on [p, p+n) (whole 2 MiB pages inside it), before its pages are first
// touched: the GEMV streams tens of MB, and with 4 KiB pages every 4 KiB of each stream costs a TLB miss
// (a nested page walk in a VM). Advice only: without THP (or with THP "never") nothing changes.
void advise_huge_pages(void* p, std::size_t n) {
  const uintptr_t huge = uintptr_t{2} << 20, b = (reinterpret_cast<uintptr_t>(p) + huge - 1) & ~(huge - 1),
                  e = (reinterpret_cast<uintptr_t>(p) + n) & ~(huge - 1);
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);
}

namespace {

// ---- scalar reference kernels (SimdLevel::Scalar) ------------------------------------------------
void dequant_scalar(const PackedView& p, int64_t r0, int64_t n, int64_t k0, int64_t kc, float* out) {
  for (int64_t r = r0; r < r0 + n; ++r)
    for (int64_t j = k0; j < k0 + kc; ++j) {
      const int64_t g = std::min(j / p.group, p.ngroups - 1);
      const float s = p.scales[packed_sz(p, r, g)], z = p.zeros[packed_sz(p, r, g)];
      out[(r - r0) * kc + (j - k0)] = s * (static_cast<float>(packed_q(p, r, j)) - z);
    }
}

// y[m, row] for rows of row blocks [rb0, rb1): Σ_g s·Σ_j (q − z)·x, fp32.
void small_scalar(const PackedView& p, const float* xp, int64_t ldx, int64_t M, float* y, int64_t rb0, int64_t rb1) {
  for (int64_t r = rb0 * kPackRB; r < std::min(p.rows, rb1 * kPackRB); ++r)
    for (int64_t m = 0; m < M; ++m) {
      const float* x = xp + m * ldx;
      float acc = 0;
      for (int64_t g = 0; g < p.ngroups; ++g) {
        const int64_t j0 = g * p.group, j1 = g == p.ngroups - 1 ? p.cols : j0 + p.group;
        const float z = p.zeros[packed_sz(p, r, g)];
        float s = 0;
        for (int64_t j = j0; j < j1; ++j) s += (static_cast<float>(packed_q(p, r, j)) - z) * x[j];
        acc += p.scales[packed_sz(p, r, g)] * s;
      }
      y[m * p.rows + r] = acc;
    }
}

// xp[m, j] = x[m, perm[j]], zero past cols; with xsum (the SIMD GEMV): xsum[m, g] = Σ x over group g and
// xp scaled by 2^bits (exact; see the GEMV in packed.h).
void prepare_x(const PackedView& p, const float* x, int64_t M, float* xp, int64_t ldx, float* xsum) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * p.cols;
    float* o = xp + m * ldx;
    if (p.perm)
      for (int64_t j = 0; j < p.cols; ++j) o[j] = xr[p.perm[j]];
    else
      std::memcpy(o, xr, sizeof(float) * p.cols);
    std::fill(o + p.cols, o + p.kpad, 0.f);
    if (!xsum) continue;
    for (int64_t g = 0; g < p.ngroups; ++g) {
      const int64_t j0 = g * p.group, j1 = g == p.ngroups - 1 ? p.cols : j0 + p.group;
      float s = 0;
      for (int64_t j = j0; j < j1; ++j) s += o[j];
      xsum[m * p.ngroups + g] = s;
    }
    const float two_b = static_cast<float>(1 << p.bits);
    for (int64_t j = 0; j < p.cols; ++j) o[j] *= two_b;
  }
}

const packed_detail::Kernels* simd_kernels(const PackedView& p) {
  // The SIMD kernels step through groups 16 columns at a time.
  if (p.ngroups > 1 && p.group % 16) return nullptr;
#if defined(__x86_64__) && defined(__GNUC__)
  switch (simd_level()) {
    case SimdLevel::Avx512: return packed_detail::kernels_avx512(p.bits);
    case SimdLevel::Avx2: return packed_detail::kernels_avx2(p.bits);
    default: return nullptr;
  }
#else
  return nullptr;
#endif
}

constexpr int64_t kSmallM = 8;  // below: register tiles

// From how many tokens the AVX-512 path runs lowbit::gemm on weights expanded block by block rather than its L1
// tiles. The tiles pay a horizontal sum per token, row and 1024-column chunk, which short rows do not amortize;
// on long rows they beat the GEMM up to ~256 tokens (bench/RESULTS.md, "Packed GEMM at larger batches").
int64_t gemm_from_m(const PackedView& p) { return p.kpad >= 1024 ? 256 : 64; }

}  // namespace

void packed_matmul(const PackedView& p, const float* x, int64_t M, float* y, bool parallel) {
  if (M <= 0 || p.rows <= 0) return;
  const packed_detail::Kernels* kr = simd_kernels(p);
  // Rows of xp one cache line more than kpad apart: kpad is often a multiple of 4 KiB, and the x chunks
  // of all tokens would then fall into the same cache sets.
  const int64_t ldx = M > 1 ? p.kpad + 16 : p.kpad;
  std::vector<float> xp(static_cast<std::size_t>(M * ldx)), xsum;
  const bool gemv = M == 1 && kr;
  if (gemv) xsum.resize(p.ngroups);
  prepare_x(p, x, M, xp.data(), ldx, gemv ? xsum.data() : nullptr);
  const int64_t nrb = p.rows_pad / kPackRB;
  auto run = [&](std::size_t n, std::size_t min_chunk, const std::function<void(std::size_t, std::size_t, int)>& fn) {
    if (parallel) parallel_for(n, fn, min_chunk);
    else fn(0, n, 0);
  };
  // AVX-512 runs the tile kernels up to gemm_from_m (from 8 tokens they dequantize RB×1024 weights into L1 once
  // and reuse them for all tokens); AVX2 has too few registers for that tile.
  if (M < kSmallM || (kr && simd_level() == SimdLevel::Avx512 && M < gemm_from_m(p))) {
    // Enough row blocks per chunk that a chunk is worth a thread handoff (~64k multiply-adds).
    const std::size_t chunk = static_cast<std::size_t>(std::max<int64_t>(1, 65536 / (kPackRB * p.kpad * M)));
    run(nrb, chunk, [&](std::size_t b, std::size_t e, int) {
      if (!kr) small_scalar(p, xp.data(), ldx, M, y, b, e);
      else if (gemv) kr->gemv(p, xp.data(), xsum.data(), y, b, e);
      else kr->tile(p, xp.data(), ldx, M, y, b, e);
    });
    return;
  }
  const packed_detail::DequantFn dq = kr ? kr->dequant : dequant_scalar;
  dequant_gemm(p.rows, p.cols, pack_unit_k(p.bits), xp.data(), ldx, M, y, parallel,
               [&](int64_t r0, int64_t n, int64_t k0, int64_t kc, float* out) { dq(p, r0, n, k0, kc, out); });
}

void packed_dense_rows(const PackedView& p, int64_t r0, int64_t n, float* out) {
  parallel_for(static_cast<std::size_t>(n), [&](std::size_t a, std::size_t b, int) {
    std::vector<float> row(p.perm ? p.cols : 0);
    for (int64_t r = r0 + static_cast<int64_t>(a); r < r0 + static_cast<int64_t>(b); ++r) {
      float* o = out + (r - r0) * p.cols;
      if (!p.perm) {
        dequant_scalar(p, r, 1, 0, p.cols, o);
        continue;
      }
      dequant_scalar(p, r, 1, 0, p.cols, row.data());  // packed column order
      for (int64_t j = 0; j < p.cols; ++j) o[p.perm[j]] = row[j];
    }
  });
}

void packed_matmul_reference(const PackedView& p, const float* x, int64_t M, float* y) {
  std::vector<int64_t> col(p.cols);
  for (int64_t j = 0; j < p.cols; ++j) col[j] = p.perm ? p.perm[j] : j;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t r = 0; r < p.rows; ++r) {
      double s = 0;
      for (int64_t j = 0; j < p.cols; ++j) {
        const int64_t g = std::min(j / p.group, p.ngroups - 1);
        const double w = static_cast<double>(p.scales[packed_sz(p, r, g)]) * (packed_q(p, r, j) - static_cast<double>(p.zeros[packed_sz(p, r, g)]));
        s += w * x[m * p.cols + col[j]];
      }
      y[m * p.rows + r] = static_cast<float>(s);
    }
}

namespace {

int64_t get_int(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw std::invalid_argument(std::string("packed: missing numeric '") + key + "'");
  return v.As<Napi::Number>().Int64Value();
}

template <class T>
T* typed_data(const Napi::Value& v, napi_typedarray_type type, int64_t expect, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
    throw std::invalid_argument(std::string("packed: ") + what + " has the wrong array type");
  auto ta = v.As<Napi::TypedArray>();
  if (expect >= 0 && static_cast<int64_t>(ta.ElementLength()) != expect)
    throw std::invalid_argument(std::string("packed: ") + what + " has " + std::to_string(ta.ElementLength()) + " elements, expected " +
                                std::to_string(expect));
  return reinterpret_cast<T*>(static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
}

void check_bits(int64_t bits) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) throw std::invalid_argument("packed: bits must be 2, 3, 4 or 8");
}

// Geometry shared by pack and parse.
PackedView geometry(int bits, int64_t rows, int64_t cols, int64_t group_size) {
  check_bits(bits);
  if (rows <= 0 || cols <= 0) throw std::invalid_argument("packed: rows and cols must be positive");
  PackedView p;
  p.bits = bits;
  p.rows = rows;
  p.cols = cols;
  p.group = group_size <= 0 ? cols : group_size;
  if (cols % p.group) throw std::invalid_argument("packed: groupSize " + std::to_string(group_size) + " does not divide cols " + std::to_string(cols));
  p.ngroups = cols / p.group;
  p.kpad = cdiv(cols, pack_unit_k(bits)) * pack_unit_k(bits);
  p.nunits = p.kpad / pack_unit_k(bits);
  p.cunits = kPackChunkCols / pack_unit_k(bits);
  p.rows_pad = cdiv(rows, kPackRB) * kPackRB;
  return p;
}

int64_t data_bytes(const PackedView& p) { return p.rows_pad / kPackRB * p.nunits * kPackRB * pack_unit_bytes(p.bits); }

// packLinear(qweight, scales, zeros, gIdx|null, {rows, cols, bits, groupSize}) → PackedWeight
Napi::Value PackLinear(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    Napi::Object o = info[4].As<Napi::Object>();
    const int64_t group_size = get_int(o, "groupSize");
    PackedView p = geometry(static_cast<int>(get_int(o, "bits")), get_int(o, "rows"), get_int(o, "cols"), group_size);
    const int64_t rows = p.rows, cols = p.cols, ng = p.ngroups;
    const uint8_t* q = typed_data<uint8_t>(info[0], napi_uint8_array, rows * cols, "qweight");
    const float* sc = typed_data<float>(info[1], napi_float32_array, rows * ng, "scales");
    const float* zr = typed_data<float>(info[2], napi_float32_array, rows * ng, "zeros");
    std::vector<int32_t> perm;
    if (!info[3].IsNull() && !info[3].IsUndefined()) {
      const int32_t* gidx = typed_data<int32_t>(info[3], napi_int32_array, cols, "gIdx");
      // Stable counting sort of the columns by group; every group must hold exactly `group` columns.
      std::vector<int64_t> count(ng, 0);
      for (int64_t c = 0; c < cols; ++c) {
        if (gidx[c] < 0 || gidx[c] >= ng) throw std::invalid_argument("packed: gIdx[" + std::to_string(c) + "] is outside [0, ngroups)");
        ++count[gidx[c]];
      }
      for (int64_t g = 0; g < ng; ++g)
        if (count[g] != p.group)
          throw std::invalid_argument("packed: act-order group " + std::to_string(g) + " has " + std::to_string(count[g]) + " columns, expected " +
                                      std::to_string(p.group));
      std::vector<int64_t> next(ng);
      for (int64_t g = 0; g < ng; ++g) next[g] = g * p.group;
      perm.resize(cols);
      bool identity = true;
      for (int64_t c = 0; c < cols; ++c) {
        int64_t j = next[gidx[c]]++;
        perm[j] = static_cast<int32_t>(c);
        identity &= j == c;
      }
      if (identity) perm.clear();
    }
    const uint8_t maxq = static_cast<uint8_t>((1 << p.bits) - 1);
    for (int64_t i = 0; i < rows * cols; ++i)
      if (q[i] > maxq) throw std::invalid_argument("packed: qweight[" + std::to_string(i) + "] = " + std::to_string(q[i]) + " does not fit in " + std::to_string(p.bits) + " bits");
    auto data = Napi::Uint8Array::New(env, data_bytes(p));
    advise_huge_pages(data.Data(), data_bytes(p));
    auto scales = Napi::Float32Array::New(env, p.rows_pad * ng);
    auto zeros = Napi::Float32Array::New(env, p.rows_pad * ng);
    std::memset(scales.Data(), 0, p.rows_pad * ng * 4);
    std::memset(zeros.Data(), 0, p.rows_pad * ng * 4);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < ng; ++g) {
        scales.Data()[packed_sz(p, r, g)] = sc[r * ng + g];
        zeros.Data()[packed_sz(p, r, g)] = zr[r * ng + g];
      }
    uint8_t* d = data.Data();
    std::memset(d, 0, data_bytes(p));
    const int bits = p.bits, UK = pack_unit_k(bits), UB = pack_unit_bytes(bits);
    const int32_t* pm = perm.empty() ? nullptr : perm.data();
    parallel_for(rows, [&](std::size_t r0, std::size_t r1, int) {
      for (int64_t r = r0; r < static_cast<int64_t>(r1); ++r) {
        const int64_t rb = r / kPackRB, i = r % kPackRB;
        const uint8_t* qr = q + r * cols;
        for (int64_t j = 0; j < cols; ++j) {
          const uint32_t v = qr[pm ? pm[j] : j];
          const int64_t u = j / UK, c = j % UK;
          const int step = static_cast<int>(c / 16), lane = static_cast<int>(c % 16);
          uint32_t* dw = reinterpret_cast<uint32_t*>(d + packed_unit_offset(p, rb, u) + i * UB);
          if (bits == 3) {
            dw[(step / 16) * 16 + lane] |= (v & 3u) << (2 * (step % 16));
            dw[32 + lane] |= ((v >> 2) & 1u) << step;
          } else {
            dw[lane] |= v << (bits * step);
          }
        }
      }
    }, 16);
    Napi::Object r = Napi::Object::New(env);
    r.Set("kind", "packed");
    r.Set("bits", p.bits);
    r.Set("rows", Napi::Number::New(env, static_cast<double>(rows)));
    r.Set("cols", Napi::Number::New(env, static_cast<double>(cols)));
    r.Set("groupSize", Napi::Number::New(env, static_cast<double>(group_size <= 0 ? -1 : group_size)));
    r.Set("data", data);
    r.Set("scales", scales);
    r.Set("zeros", zeros);
    if (!perm.empty()) {
      auto pa = Napi::Int32Array::New(env, cols);
      std::memcpy(pa.Data(), perm.data(), cols * 4);
      r.Set("perm", pa);
    }
    return r;
  });
}

}  // namespace

// The PackedView of a JS PackedWeight (shared with forward.cpp).
PackedView packed_from_js(const Napi::Value& v) {
  if (!v.IsObject()) throw std::invalid_argument("packed: expected a PackedWeight object");
  Napi::Object o = v.As<Napi::Object>();
  PackedView p = geometry(static_cast<int>(get_int(o, "bits")), get_int(o, "rows"), get_int(o, "cols"), get_int(o, "groupSize"));
  p.data = typed_data<uint8_t>(o.Get("data"), napi_uint8_array, data_bytes(p), "data");
  p.scales = typed_data<float>(o.Get("scales"), napi_float32_array, p.rows_pad * p.ngroups, "scales");
  p.zeros = typed_data<float>(o.Get("zeros"), napi_float32_array, p.rows_pad * p.ngroups, "zeros");
  Napi::Value perm = o.Get("perm");
  if (!perm.IsUndefined() && !perm.IsNull()) {
    p.perm = typed_data<int32_t>(perm, napi_int32_array, p.cols, "perm");
    for (int64_t j = 0; j < p.cols; ++j)
      if (p.perm[j] < 0 || p.perm[j] >= p.cols) throw std::invalid_argument("packed: perm entry out of range");
  }
  return p;
}

namespace {

// unpackLinear(packed) → {qweight, scales, zeros, gIdx?} in the original column order.
// packedDenseRows(packed, row0, n) → Float32Array [n, cols]: what the CUDA upload expands (packed_dense_rows).
Napi::Value PackedDenseRows(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    PackedView p = packed_from_js(info[0]);
    const int64_t r0 = info[1].As<Napi::Number>().Int64Value(), n = info[2].As<Napi::Number>().Int64Value();
    if (r0 < 0 || n < 0 || r0 + n > p.rows) throw std::invalid_argument("packedDenseRows: rows [" + std::to_string(r0) + ", " + std::to_string(r0 + n) + ") out of range");
    auto out = Napi::Float32Array::New(info.Env(), n * p.cols);
    packed_dense_rows(p, r0, n, out.Data());
    return out;
  });
}

Napi::Value UnpackLinear(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    PackedView p = packed_from_js(info[0]);
    auto q = Napi::Uint8Array::New(env, p.rows * p.cols);
    for (int64_t r = 0; r < p.rows; ++r)
      for (int64_t j = 0; j < p.cols; ++j) q.Data()[r * p.cols + (p.perm ? p.perm[j] : j)] = static_cast<uint8_t>(packed_q(p, r, j));
    auto s = Napi::Float32Array::New(env, p.rows * p.ngroups);
    auto z = Napi::Float32Array::New(env, p.rows * p.ngroups);
    for (int64_t r = 0; r < p.rows; ++r)
      for (int64_t g = 0; g < p.ngroups; ++g) {
        s.Data()[r * p.ngroups + g] = p.scales[packed_sz(p, r, g)];
        z.Data()[r * p.ngroups + g] = p.zeros[packed_sz(p, r, g)];
      }
    Napi::Object r = Napi::Object::New(env);
    r.Set("qweight", q);
    r.Set("scales", s);
    r.Set("zeros", z);
    if (p.perm) {
      auto gi = Napi::Int32Array::New(env, p.cols);
      for (int64_t j = 0; j < p.cols; ++j) gi.Data()[p.perm[j]] = static_cast<int32_t>(j / p.group);
      r.Set("gIdx", gi);
    }
    return r;
  });
}

// packedMatmul(x: Float32Array [M, cols], weight, {reference?}) → Promise<Float32Array [M, rows]>
Napi::Value PackedMatmul(const Napi::CallbackInfo& info) {
  return matmul_async<PackedView>(info, "packedMatmul", packed_from_js,
      [](const PackedView& p, const float* x, int64_t M, float* y) { packed_matmul(p, x, M, y); }, packed_matmul_reference);
}

// packedMatmulSync(x, weight, y) — y written in place; for benchmarks (no promise/worker overhead).
Napi::Value PackedMatmulSync(const Napi::CallbackInfo& info) {
  return matmul_sync<PackedView>(info, packed_from_js, [](const PackedView& p, const float* x, int64_t M, float* y) { packed_matmul(p, x, M, y); });
}

}  // namespace

LOWBIT_EXPORTS {
  exports.Set("packLinear", Napi::Function::New(env, PackLinear));
  exports.Set("unpackLinear", Napi::Function::New(env, UnpackLinear));
  exports.Set("packedDenseRows", Napi::Function::New(env, PackedDenseRows));
  exports.Set("packedMatmul", Napi::Function::New(env, PackedMatmul));
  exports.Set("packedMatmulSync", Napi::Function::New(env, PackedMatmulSync));
}

}  // namespace lowbit
