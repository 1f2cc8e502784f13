// The device layout of packed low-bit weights (2/3/4/8 bits, group scales and zeros, act-order): what the
// host repacks a CPU PackedView into (qmatmul_binding.cpp) and the kernels of qmatmul.cu read. Plain C++,
// compiled by both the host compiler and nvcc.
//
// The kernels compute yᵀ = W·xᵀ with W as the A operand of mma.sync m16n8k16 (16 weight rows per tile) and
// the tokens as B (8 per n-tile), so one layout serves batch 1 and batch 128 alike. Columns are in the CPU
// layout's packed order (act-order: sorted by group, x gathered into that order), padded to a multiple of 128.
//
// A record holds one tile of 16 rows × one block of 128 columns, everything one warp needs for that block:
//   words:  q_words(bits) 32-bit words per lane in vectors of q_vec_words(bits) (4, or 2 for 3 bits): word w of
//           lane l is word w % V of vector (w / V)·32 + l, so a lane loads its words with conflict-free LDS.128/64;
//   scales: at byte 128·q_words(bits), for each sub-group j of the block (nsub = 128 / min(group, 128)) and
//           each g = 0..7: half2 (s, z) of row g, then half2 (s, z) of row g + 8 (8 bytes each).
// Records are stored block-major: record (tile, kb) at (kb·ntiles + tile)·q_record_bytes, so the records of a
// thread block's consecutive tiles for one 128-column block are one contiguous run (one bulk copy per stage). The fp16 scales are the CPU scales times a power of two P (largest
// with max |s|·P ≤ 2^15, so small scales keep full fp16 precision); the kernels multiply the sums by 1/P.
//
// Inside a block, lane l = 4g + t covers, for each k32 super-step s (0..3), columns 32s + 8t .. 32s + 8t + 7: the
// mma step 2s takes the first four, step 2s+1 the last four. Which columns an mma k-index stands for does not
// matter as long as A and B agree, and this choice lets each lane load its x for two steps with one 16-byte
// load. In step st (columns c0..c0+3, c0 = 32s + 8t + 4h) the A registers are the pairs
//   a0 = (row g, c0..c0+1), a1 = (row g+8, c0..c0+1), a2 = (row g, c0+2..c0+3), a3 = (row g+8, c0+2..c0+3),
// each stored as two fields 16 bits apart (element e at bit b + 16e), so that masking a word and or-ing an
// exponent gives the half2/bfloat162 of the pair with no conversion instruction (q_bitpos):
//   4 bits: word st, pair j at bit 4j              8 bits: word 2st + j/2, pair j at bit 8·(j%2)
//   2 bits: word st/2, pair j at bit 8·(st%2) + 2j  3 bits: low 2 bits as for 2 bits; bit 2 in word 4 + st/4,
//                                                           at bit 4·(st%4) + j
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define LB_QHD __host__ __device__ __forceinline__ constexpr
#else
#define LB_QHD inline constexpr
#endif

namespace lowbit {
namespace cuda {

constexpr int kQTileRows = 16, kQBlockK = 128;

LB_QHD int q_words(int bits) { return bits == 2 ? 4 : bits == 3 ? 6 : bits == 4 ? 8 : 16; }
LB_QHD int q_vec_words(int bits) { return bits == 3 ? 2 : 4; }
// Index (in 32-bit words from the record's start) of word w of lane l.
LB_QHD int q_word_index(int bits, int w, int lane) {
  return ((w / q_vec_words(bits)) * 32 + lane) * q_vec_words(bits) + w % q_vec_words(bits);
}
LB_QHD int q_record_bytes(int bits, int nsub) { return 128 * q_words(bits) + 64 * nsub; }
LB_QHD int64_t q_record_offset(int64_t tile, int64_t kb, int64_t ntiles, int bits, int nsub) {
  return (kb * ntiles + tile) * q_record_bytes(bits, nsub);
}

// Where q of (row i of a tile, column c of a block) goes: lane, mma step, pair j (register a_j), element e.
struct QSlot {
  int lane, st, j, e;
};
LB_QHD QSlot q_slot(int i, int c) {
  const int s = c / 32, t = (c % 32) / 8, h = (c % 8) / 4, v = c % 4;
  return QSlot{(i % 8) * 4 + t, 2 * s + h, (v >= 2 ? 2 : 0) + i / 8, v & 1};
}

// Word and bit of a field (the low 2 bits for 3-bit weights; hi_word/hi_bit: its bit 2).
struct QBits {
  int word, bit, hi_word, hi_bit;
};
LB_QHD QBits q_bitpos(int bits, int st, int j, int e) {
  return bits == 4   ? QBits{st, 4 * j + 16 * e, -1, 0}
         : bits == 8 ? QBits{2 * st + j / 2, 8 * (j % 2) + 16 * e, -1, 0}
         : bits == 2 ? QBits{st / 2, 8 * (st % 2) + 2 * j + 16 * e, -1, 0}
                     : QBits{st / 2, 8 * (st % 2) + 2 * j + 16 * e, 4 + st / 4, 4 * (st % 4) + j + 16 * e};
}

// The Hopper GEMM (qgemm.cu) takes the tokens as wgmma's B operand from shared memory, so its x tiles must hold a
// block's columns in the order the A fragments above take them: k index kap (0..15) of mma step st is
//   kap = 2t + e      (a0/a1: columns c0, c0 + 1)     kap = 8 + 2t + e  (a2/a3: columns c0 + 2, c0 + 3)
// with c0 = 32(st/2) + 8t + 4(st%2). Its x tile stores step st's 16 values as chunks 2st and 2st + 1 of 8 (one
// 16-byte core-matrix row per token each).
LB_QHD int q_wgmma_col(int st, int kap) {
  return 32 * (st / 2) + 8 * ((kap % 8) / 2) + 4 * (st % 2) + 2 * (kap / 8) + kap % 2;
}

}  // namespace cuda
}  // namespace lowbit
