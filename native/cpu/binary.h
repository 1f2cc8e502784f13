// BiLLM binary weights (lowbit's "binary" checkpoint layout, docs/formats.md) and the 1-bit kernels that
// compute y = x·Wᵀ straight from the bit planes and fp16 scales. The kernels read the layout exactly as the
// checkpoint stores it, so a loaded model runs from the memory-mapped tensors without any copy.
//
// ---- Layout ------------------------------------------------------------------------------------------
// W [rows, cols], blocks of `block` columns (nblocks = ceil(cols/block)), wpr = ceil(cols/32) words a row.
//   salient[c/8] bit c%8         column c is salient (shared by all rows)
//   planes[(r·wpr + c/32)·2 + p] bit c%32, p = 0, 1: the two bits of weight (r, c) (1 = +)
//   scales[(r·nblocks + b)·8 + k] fp16, k = α1 μ1 α2 μ2 αc μc αs μs (row r, block b)
// With ±α = α if the bit is 1 else −α, evaluated in fp32 exactly as written (one rounding per + ):
//   salient column:  w = (±α1 + μ1) + (±α2 + μ2)          p0 gives the first sign, p1 the second
//   other columns:   w = p1 ? ±αs + μs : ±αc + μc           p1 = the sparse (large-|w|) group, p0 the sign
// So a row takes one of 8 values per block; with code = p0 | p1<<1 | salient<<2, w = lut[code] where
//   lut = {μc−αc, μc+αc, μs−αs, μs+αs, (μ1−α1)+(μ2−α2), (μ1+α1)+(μ2−α2), (μ1−α1)+(μ2+α2), (μ1+α1)+(μ2+α2)}.
// Padding bits (columns ≥ cols) are 0.
//
// ---- Kernels -----------------------------------------------------------------------------------------
// Every kernel builds the LUT of a row and block from its 8 fp16 scales (exact, as above) and, per 16
// columns, the codes from the two 16-bit slices of the row's planes plus the column's salient bit
// (precomputed once per call as cm[c] = 4·salient, + 8 in odd blocks: AVX-512 keeps two blocks' LUTs in one
// register), then w = lut[code] with one permute: the weights are the fake-quant ones bit for bit, and only
// the summation order differs from a dense GEMM on them.
//   AVX-512: the 16-bit slices are loaded straight into k-masks; idx = cm | k0·1 | k1·2 (two masked ors),
//     w = vpermps(idx, lut), one FMA. 8 rows per pass (M = 1) or 4 rows × up to 4 tokens (M = 2..7).
//   AVX2: 8 columns per step; a byte of each plane expands to lane values through two 256-entry tables,
//     idx = cm | t0 | t1, w = vpermps(lut, idx). 4 rows per pass (M = 1) or 2 rows × up to 3 tokens.
//   M >= 8: 128-row × 1024-column panels dequantized to fp32 (same LUTs) and multiplied with lowbit::gemm.
// The SIMD kernels need block % 16 == 0; otherwise, and at SimdLevel::Scalar, the scalar kernels run
// (binary.cpp: the reference beside them).
#pragma once
#include <napi.h>

#include <cstdint>

namespace lowbit {

constexpr int kBinaryScales = 8;

struct BinaryView {
  int64_t rows = 0, cols = 0, block = 0, nblocks = 0, wpr = 0;
  const uint8_t* salient = nullptr;  // [ceil(cols/8)]
  const uint32_t* planes = nullptr;  // [rows, wpr, 2]
  const uint16_t* scales = nullptr;  // [rows, nblocks, 8] fp16
};

// The 8 values row r takes in block b (the layout's definition; scalar fp32).
void binary_lut(const BinaryView& p, int64_t r, int64_t b, float lut[8]);

inline int binary_code(const BinaryView& p, int64_t r, int64_t c) {
  const uint32_t* w = p.planes + (r * p.wpr + c / 32) * 2;
  return static_cast<int>(((w[0] >> (c % 32)) & 1u) | (((w[1] >> (c % 32)) & 1u) << 1) | (((p.salient[c / 8] >> (c % 8)) & 1u) << 2));
}

// y[M, rows] = x[M, cols] · Wᵀ. Uses the SIMD level in force and the thread pool (parallel = false: the
// calling thread only).
void binary_matmul(const BinaryView& p, const float* x, int64_t M, float* y, bool parallel = true);
// float64 sums over the decoded weights, for tests of the kernels themselves.
void binary_matmul_reference(const BinaryView& p, const float* x, int64_t M, float* y);

// The view of a JS BinaryWeight ({kind: 'binary', rows, cols, block, salient, planes, scales}), validated;
// the buffers stay owned by JS (or by the mapped checkpoint).
BinaryView binary_from_js(const Napi::Value& v);

namespace binary_detail {
// Rows [r0, r1) for all M tokens: xp [M, ldx] activations zero padded to wpr·32 columns, cm [wpr·32].
using RowsFn = void (*)(const BinaryView&, const float* xp, int64_t ldx, int64_t M, const int32_t* cm, float* y, int64_t r0, int64_t r1);
// Rows [r0, r0+n), columns [k0, k0+kc) (multiples of 16) as fp32 into out[n, kc].
using DequantFn = void (*)(const BinaryView&, const int32_t* cm, int64_t r0, int64_t n, int64_t k0, int64_t kc, float* out);

struct Kernels {
  RowsFn gemv;  // M = 1
  RowsFn tile;  // M = 2..7
  DequantFn dequant;
  int gemv_rows;  // rows per GEMV pass (thread chunks are multiples of it)
};
#if defined(__x86_64__) && defined(__GNUC__)
const Kernels* kernels_avx512();
const Kernels* kernels_avx2();
#endif
}  // namespace binary_detail

}  // namespace lowbit
