// BiLLM binary weights (lowbit's "binary" checkpoint layout, docs/formats.md) and the 1-bit kernels that
// compute y = x·Wᵀ straight from the 2-bit codes (the two bit planes) and fp16 scales, never expanding the
// matrix.
//
// ---- Layout ------------------------------------------------------------------------------------------
// W [rows, cols], blocks of `block` columns (nblocks = ceil(cols/block)), wpr = ceil(cols/16) words a row.
//   salient[c/8] bit c%8                 column c is salient (shared by all rows)
//   codes[r·wpr + c/16] bits 2(c%16)..+1  the 2-bit code of weight (r, c): bit 0 = p0, bit 1 = p1 (1 = +)
//   scales[(r·nblocks + b)·8 + k] fp16, k = α1 μ1 α2 μ2 αc μc αs μs (row r, block b)
// (the two bit planes p0, p1 interleaved weight by weight: the 2-bit little-endian stream of GPTQ packing).
// With ±α = α if the bit is 1 else −α, evaluated in fp32 exactly as written (one rounding per + ):
//   salient column:  w = (±α1 + μ1) + (±α2 + μ2)          p0 gives the first sign, p1 the second
//   other columns:   w = p1 ? ±αs + μs : ±αc + μc           p1 = the sparse (large-|w|) group, p0 the sign
// So a row takes one of 8 values per block; with code = p0 | p1<<1 | salient<<2, w = lut[code] where
//   lut = {μc−αc, μc+αc, μs−αs, μs+αs, (μ1−α1)+(μ2−α2), (μ1+α1)+(μ2−α2), (μ1−α1)+(μ2+α2), (μ1+α1)+(μ2+α2)}.
// Padding bits (columns ≥ cols) are 0.
//
// ---- Kernels -----------------------------------------------------------------------------------------
// The SIMD kernels read a copy in their own layout (binary_pack; needs block % 16 == 0): rows in blocks of
// kBinRB = 8 (zero rows up to rows_pad), columns in pairs of blocks (npairs = ceil(nblocks/2), kpad =
// npairs·2·block, zero codes past cols, zero scales past nblocks). Unit (rb, q), 8 rows × the columns of
// blocks 2q and 2q+1, is unit_bytes contiguous bytes, units in (rb, q) order:
//   uint16 scales[8][16]  row i: the 8 scales of block 2q, then those of block 2q+1
//   uint32 codes[8][wpp]  row i: its code words for those columns (wpp = block/8)
// so a pass over 8 rows reads one sequential stream. (Reading the row-major layout in place made 16
// interleaved streams per pass, too short on short rows for the hardware prefetchers: 1.5–2.5× slower.)
//
// Every kernel builds the LUT of a row and block from its 8 fp16 scales (exact, as above) and, per 16
// columns (one code word), the indices idx = (word >> 2l) & 3 | cm[c] (one variable shift of the broadcast
// word, one ternary-logic op; cm[c] = 4·salient, + 8 in odd blocks: AVX-512 keeps two blocks' LUTs in one
// register, vpermps reads the low 4 index bits), then w = lut[idx] with one permute and one FMA: the weights
// are the fake-quant ones bit for bit, and only the summation order differs from a dense GEMM on them.
// (Loading the planes as AVX-512 k-masks instead measured 1.9× slower: two GPR→mask moves per 16 weights.)
//   AVX-512: 8 rows per pass (M = 1) or 4 rows × up to 4 tokens (M = 2..7).
//   AVX2: 8 columns (half a word) a step, one block's LUT per register; 4 rows per pass (M = 1) or 2 rows ×
//     up to 3 tokens.
//   M = 8..127 on AVX-512: per ~1024-column chunk and 8-row block, the weights dequantized once into an L1
//     buffer and every token run through them (dot_tile.h). Otherwise (M >= 128, AVX2, scalar): lowbit::gemm
//     with the weights expanded to fp32 (same LUTs) one micro-panel at a time as it packs them (dequant_gemm.h).
// Without the packed copy (block % 16 != 0), and at SimdLevel::Scalar, the scalar kernels run on the
// stored layout (binary.cpp: the reference beside them).
#pragma once
#include <napi.h>

#include <cstdint>

namespace lowbit {

constexpr int kBinaryScales = 8;
constexpr int kBinRB = 8;  // rows per row block of the SIMD layout

struct BinaryView {
  int64_t rows = 0, cols = 0, block = 0, nblocks = 0, wpr = 0;
  const uint8_t* salient = nullptr;  // [ceil(cols/8)]
  const uint32_t* codes = nullptr;   // [rows, wpr]
  const uint16_t* scales = nullptr;  // [rows, nblocks, 8] fp16
  // The SIMD layout (null without it): units of kBinRB rows × 2 blocks.
  const uint8_t* packed = nullptr;
  int64_t rows_pad = 0, npairs = 0, wpp = 0, unit_bytes = 0;

  const uint16_t* unit_scales(int64_t r, int64_t q) const {
    return reinterpret_cast<const uint16_t*>(packed + ((r / kBinRB) * npairs + q) * unit_bytes) + (r % kBinRB) * 16;
  }
  const uint32_t* unit_codes(int64_t r, int64_t q) const {
    return reinterpret_cast<const uint32_t*>(packed + ((r / kBinRB) * npairs + q) * unit_bytes + kBinRB * 16 * 2) + (r % kBinRB) * wpp;
  }
};

// Whether the SIMD layout exists for this geometry, and its size in bytes.
inline bool binary_packable(int64_t block) { return block % 16 == 0; }
int64_t binary_packed_bytes(const BinaryView& p);

// The 8 values row r takes in block b (the layout's definition; scalar fp32).
void binary_lut(const BinaryView& p, int64_t r, int64_t b, float lut[8]);

inline int binary_code(const BinaryView& p, int64_t r, int64_t c) {
  return static_cast<int>(((p.codes[r * p.wpr + c / 16] >> (2 * (c % 16))) & 3u) | (((p.salient[c / 8] >> (c % 8)) & 1u) << 2));
}

// Rows [r0, r0 + n) decoded into out [n, cols] (the layout's scalar definition; the thread pool): what the CUDA
// backend's upload expands a binary linear to.
void binary_dense_rows(const BinaryView& p, int64_t r0, int64_t n, float* out);

// y[M, rows] = x[M, cols] · Wᵀ. Uses the SIMD level in force and the thread pool (parallel = false: the
// calling thread only).
void binary_matmul(const BinaryView& p, const float* x, int64_t M, float* y, bool parallel = true);
// float64 sums over the decoded weights, for tests of the kernels themselves.
void binary_matmul_reference(const BinaryView& p, const float* x, int64_t M, float* y);

// The view of a JS BinaryWeight ({kind: 'binary', rows, cols, block, salient, codes, scales, packed?}),
// validated; the buffers stay owned by JS (or by the mapped checkpoint).
BinaryView binary_from_js(const Napi::Value& v);

namespace binary_detail {
// Rows [r0, r1) (r0 a multiple of kBinRB) for all M tokens, from the SIMD layout: xp [M, ldx] activations
// zero padded to kpad columns, cm [kpad].
using RowsFn = void (*)(const BinaryView&, const float* xp, int64_t ldx, int64_t M, const int32_t* cm, float* y, int64_t r0, int64_t r1);
// Rows [r0, r0+n), columns [k0, k0+kc) (multiples of 16) as fp32 into out[n, kc].
using DequantFn = void (*)(const BinaryView&, const int32_t* cm, int64_t r0, int64_t n, int64_t k0, int64_t kc, float* out);

struct Kernels {
  RowsFn gemv;  // M = 1
  RowsFn tile;  // M = 2..7
  DequantFn dequant;
  RowsFn gemm = nullptr;  // M = 8..127 from an L1 tile (null: lowbit::gemm on expanded weights)
};
#if defined(__x86_64__) && defined(__GNUC__)
const Kernels* kernels_avx512();
const Kernels* kernels_avx2();
#endif
}  // namespace binary_detail

}  // namespace lowbit
