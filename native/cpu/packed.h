// Packed low-bit weights (2/3/4/8-bit integers with per-group fp32 scales/zeros) and the CPU kernels
// that multiply by them without ever expanding the whole matrix to fp32.
//
// Quantized weight: w[r, c] = scale[r, g] * (q[r, c] - zero[r, g]), q in [0, 2^bits), g = c / groupSize
// (groupSize = cols: one group per row), or g = gIdx[c] for act-order (GPTQ desc_act) weights.
//
// ---- Layout (PackedView::data) -------------------------------------------------------------------
// Columns are first put in "packed order": identity, or for act-order the stable sort of the columns
// by gIdx (perm[j] = original column of packed column j), which makes every group contiguous.
// The kernels gather the activations into the same order once per call (xp[j] = x[perm[j]]), so
// act-order costs one gather of M×cols floats and nothing inside the inner loops. Every group must
// then hold exactly groupSize columns (what GPTQ's act-order produces); packLinear checks it.
//
// Packed columns are padded with q = 0 to kpad, a multiple of the unit width unit_k(bits), and rows to
// a multiple of RB = 4 (zero data, zero scales). A unit holds RB rows × unit_k columns, the RB rows one
// after the other, unit_bytes each. Units are stored K chunk by K chunk (kPackChunkCols = 4096 columns,
// cunits = 4096 / unit_k units): chunk c holds, for every row block in order, its cunits units (fewer in the
// last chunk: uc = min(cunits, nunits − c·cunits)):
//   data[packed_unit_offset(rb, u) + i * unit_bytes ...]  = row rb*RB+i, columns [u*unit_k, (u+1)*unit_k)
//   packed_unit_offset(rb, u) = (c·cunits·nrb + rb·uc + u − c·cunits) · RB · unit_bytes,  c = u / cunits
// The GEMV walks one chunk at a time over all its row blocks, so the 16 KiB of fp32 activations of a chunk
// stay in L1 while the weights stream past as one sequential run (with whole rows of 14336 columns x was
// 56 KiB, re-read from L2 for every 8 rows: as many bytes as the weights).
// Inside a unit, columns go in steps of 16 (one AVX-512 vector of fp32): step j, lane l <-> column
// u*unit_k + 16*j + l. A unit is 16 little-endian uint32 "lanes" (per bit plane):
//   bits 2, 4, 8: one plane, 16 dwords; dword l holds F = 32/bits fields, field j (bits [j*b, j*b+b))
//                 is the q of step j, lane l.     unit_k = 16*F (256 / 128 / 64), unit_bytes = 64
//   bits 3:       two 2-bit planes (steps 0..15, then 16..31: the low 2 bits of q, as above) followed
//                 by a 1-bit plane (bit j of dword l = bit 2 of q at step j, lane l).
//                 unit_k = 512, unit_bytes = 192
// Scales and zeros are fp32 [rows_pad/RB, ngroups, RB]: those of row rb*RB+i, group g at (rb*ngroups + g)*RB + i,
// so the GEMV reads each row block's scales and zeros as two sequential streams (per-row arrays made 16
// interleaved streams for the 8 rows of a pass, which the hardware prefetchers did not follow on long rows).
// So a vector of 16 consecutive columns is unpacked with one shift and one mask per plane: no
// cross-lane shuffles. The shift places q at the top of a float mantissa: or-ing exponent bits of 1.0
// gives f = 1 + q / 2^bits exactly, and w = A*f + B with A = scale*2^bits, B = -scale*(2^bits + zero),
// i.e. one FMA per 16 weights replaces int→float conversion plus zero subtraction.
//
// ---- Kernels ----------------------------------------------------------------------------------------
// GEMV (M = 1): x is prepared as x·2^bits (exact), so with f = 1 + q/2^bits a group's Σ f·x' is
//   2^bits·Σ f·x and w·x sums to s·Σ f·x' − s·(2^bits + z)·Σx. Two row blocks (8 rows) per pass, so every x
//   vector is loaded once per 8 rows; per group Σ f·x' accumulates in vectors per row, scaled by s (one FMA,
//   s broadcast from memory) at the end of the group; the zero-point terms (Σx of each group computed once
//   per call) are summed per row after the pass, and one horizontal sum per row. 3 vector ops per 16
//   weights for 2/4/8-bit. The passes go one K chunk at a time (all row blocks of the thread's range for
//   chunk 0, then chunk 1, …; later chunks add to y), so x is read from L1 and the weights in one run.
// Small GEMM (M = 2..4): a tile of up to 4 tokens × RB rows, weights dequantized in registers (A*f+B)
//   once per step and used for every token of the tile.
// Tiles (AVX-512, M >= 5 up to the GEMM below): K in chunks of 1024 columns; per row block and chunk the RB×1024 weights are
//   dequantized once into an fp32 buffer in L1 (16 KiB) and multiplied with every token (tiles of
//   6 tokens × 4 rows: 24 accumulators), so dequantization is amortized over all M tokens and every
//   token's x chunk stays in L2 while the row blocks go by. Activation rows are kpad+16 floats apart
//   (kpad is often a multiple of 4 KiB: set conflicts).
// GEMM (AVX-512 from 64 tokens on rows under 1024 columns, from 256 on longer ones; AVX2 and scalar from 8):
//   lowbit::gemm itself, its B expanded from the packed units one 32/16-row micro-panel at a time as the GEMM
//   packs it (dequant_gemm.h), so it runs at the fp32 GEMM's speed with no fp32 copy of the weights.
// Multithreading: lowbit::parallel_for over row blocks (the GEMM splits its own way). Every SIMD kernel has a scalar
// reference (packed.cpp), which is also what SimdLevel::Scalar runs.
//
// W8A8 (int8gemm.cpp): weights int8 row-major [rows, kpad8] (kpad8 multiple of 64, zero padded) with
// per-channel fp32 scales and per-row sums Σw; activations quantized per token (absmax/127, round half
// to even, as fake_quant_rows_sym) to int8 and stored +128 as uint8 for VNNI vpdpbusd (u8×s8):
// Σ(x+128)·w − 128·Σw = Σx·w exactly in int32. AVX2 fallback (vpmaddubsw-free: widening madd) and
// a scalar reference.
#pragma once
#include <napi.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace lowbit {

constexpr int kPackRB = 4;  // rows per row block
constexpr int64_t kPackChunkCols = 4096;  // columns per K chunk of the data layout

inline int pack_unit_k(int bits) { return bits == 3 ? 512 : 16 * (32 / bits); }
inline int pack_unit_bytes(int bits) { return bits == 3 ? 192 : 64; }

struct PackedView {
  int bits = 4;
  int64_t rows = 0, cols = 0;
  int64_t group = 0;    // actual group size in columns (cols for one group per row)
  int64_t ngroups = 1;
  int64_t kpad = 0, rows_pad = 0, nunits = 0;
  int64_t cunits = 0;   // units per K chunk
  const uint8_t* data = nullptr;
  const float* scales = nullptr;  // [rows_pad/RB, ngroups, RB] (rows past `rows` are zero)
  const float* zeros = nullptr;   // [rows_pad/RB, ngroups, RB]
  const int32_t* perm = nullptr;  // [cols] packed column j = original column perm[j]; null: identity
};

// y[M, rows] = x[M, cols] · Wᵀ (fp32 activations, original column order). Uses the SIMD level in force
// and the thread pool (parallel = false: the calling thread only).
void packed_matmul(const PackedView& p, const float* x, int64_t M, float* y, bool parallel = true);
// The float64 reference, for tests of the kernels themselves.
void packed_matmul_reference(const PackedView& p, const float* x, int64_t M, float* y);
// Rows [r0, r0 + n) of the dense weight, w = scale·(q − zero) in fp32, original column order, into out [n, cols]
// (the CUDA upload of a packed linear expands it a run of rows at a time with this). Uses the thread pool.
void packed_dense_rows(const PackedView& p, int64_t r0, int64_t n, float* out);

// Index of (row r, group g) in scales/zeros.
inline int64_t packed_sz(const PackedView& p, int64_t r, int64_t g) { return ((r / kPackRB) * p.ngroups + g) * kPackRB + r % kPackRB; }

// Byte offset of unit u of row block rb (its row 0; row i follows at i·unit_bytes).
inline int64_t packed_unit_offset(const PackedView& p, int64_t rb, int64_t u) {
  const int64_t c = u / p.cunits, u0 = c * p.cunits, uc = std::min(p.cunits, p.nunits - u0);
  return (u0 * (p.rows_pad / kPackRB) + rb * uc + (u - u0)) * kPackRB * pack_unit_bytes(p.bits);
}

// q of (row r, packed column j) — the layout's definition, used by unpack and the scalar kernels.
inline int packed_q(const PackedView& p, int64_t r, int64_t j) {
  const int64_t rb = r / kPackRB, i = r % kPackRB, u = j / pack_unit_k(p.bits), c = j % pack_unit_k(p.bits);
  const int step = static_cast<int>(c / 16), lane = static_cast<int>(c % 16);
  const uint32_t* d = reinterpret_cast<const uint32_t*>(p.data + packed_unit_offset(p, rb, u) + i * pack_unit_bytes(p.bits));
  if (p.bits == 3) {
    uint32_t lo = (d[(step / 16) * 16 + lane] >> (2 * (step % 16))) & 3u;
    uint32_t hi = (d[32 + lane] >> step) & 1u;
    return static_cast<int>(lo | (hi << 2));
  }
  return static_cast<int>((d[lane] >> (p.bits * step)) & ((1u << p.bits) - 1));
}

// ---- W8A8 --------------------------------------------------------------------------------------------
struct Int8View {
  int64_t rows = 0, cols = 0, kpad = 0;  // kpad: multiple of 64
  const int8_t* w = nullptr;             // [rows, kpad]
  const float* scales = nullptr;         // [rows]
  const int32_t* wsum = nullptr;         // [rows] Σ_k w
};
// Per-token symmetric int8: s = max(max|x|, 1e-5)/127, xq = nearbyint(x/s); stored as xq+128 in
// u[M, kpad] (padding 128 ≡ 0). Same integers and scale as fake_quant_rows_sym(x, M, cols, 8).
void quantize_rows_u8(const float* x, int64_t M, int64_t cols, int64_t kpad, uint8_t* u, float* sx, bool parallel = true);
// acc[M, rows] = Σ_k (u−128)·w exactly (int32). Uses the SIMD level in force.
void int8_gemm_i32(const Int8View& w, const uint8_t* u, int64_t M, int32_t* acc, bool parallel = true);
// y[M, rows] = sx[m]·sw[n]·acc (+ nothing else; callers add bias).
void int8_matmul(const Int8View& w, const uint8_t* u, const float* sx, int64_t M, float* y, bool parallel = true);

// Rows [r0, r0 + n) of the weight as fp32 values sw·q into out [n, cols]: what the CUDA backend's upload expands
// a W8A8 linear to (its activations are then fake-quantized per token as quantize_rows_u8 quantizes them).
void int8_dense_rows(const Int8View& w, int64_t r0, int64_t n, float* out);

// madvise(MADV_HUGEPAGE) on the whole 2 MiB pages of a freshly allocated, not yet touched weight buffer.
void advise_huge_pages(void* p, std::size_t n);

// Views of the JS objects packLinear / packInt8 return (validated; the buffers stay owned by JS).
PackedView packed_from_js(const Napi::Value& v);
Int8View int8_from_js(const Napi::Value& v);

namespace packed_detail {
// Per-ISA kernels over row blocks [rb0, rb1). xp: [M, kpad] packed-order, zero padded activations.
// xsum: [M, ngroups] Σ of xp over each group (GEMV only).
using GemvFn = void (*)(const PackedView&, const float* xp, const float* xsum, float* y, int64_t rb0, int64_t rb1);
// Multi-token tiles: y[m, row] (ldy = rows) for m < M; xp rows ldx floats apart.
using TileFn = void (*)(const PackedView&, const float* xp, int64_t ldx, int64_t M, float* y, int64_t rb0, int64_t rb1);
// Dequantizes rows [r0, r0+n) (n multiple of RB), packed columns [k0, k0+kc) (k0, kc multiples of
// unit_k) into out[n, kc] row-major.
using DequantFn = void (*)(const PackedView&, int64_t r0, int64_t n, int64_t k0, int64_t kc, float* out);

struct Kernels {
  GemvFn gemv;
  TileFn tile;
  DequantFn dequant;
};
#if defined(__x86_64__) && defined(__GNUC__)
const Kernels* kernels_avx512(int bits);
const Kernels* kernels_avx2(int bits);
#endif
}  // namespace packed_detail

}  // namespace lowbit
