// The Hopper tensor-core GEMM for packed weights (qgemm.cu): what qmatmul.cu calls for batches of 16 tokens and
// up when the device runs it (sm_90a code for a compute-capability-9.0 GPU).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace lowbit {
namespace cuda {

struct QLayout;

constexpr int kQgemmTiles = 8;  // 16-row tiles per block: two warpgroups of four warps, a tile per warp

struct QgemmArgs {
  const uint8_t* w;  // records (qlayout.h)
  const void* x;     // x tiles: [nkb][nzb][bn × 128] T in the wgmma k order (qgemm_prep)
  float* out;        // [splits][M, rows]
  int M, N, ntiles, nkb, nzb, stages;
  int64_t split_stride;
  float fold;    // the records' scales times fold are the kernel's S (qgemm_fold)
  float oscale;  // y = acc · oscale (1 / (P · fold))
};

// Whether this build has the wgmma kernels for `device` (asked of the device once, by a probe kernel).
bool qgemm_available(int device);
// Tokens per block for a batch of M: 16, 32, 64 or 128 (larger batches take several blocks of 128).
int qgemm_bn(int64_t M);
int qgemm_blocks_per_sm(int bits, int act, int bn, int nsub, int stages);
// x [M, cols] fp32 → the x tiles (T = fp16 for act 2, bf16 for act 1; columns gathered through perm when given,
// zero past cols and for the padding tokens up to nzb·bn).
void qgemm_prep(const float* x, const int32_t* perm, void* xt, int M, int cols, int nkb, int bn, int nzb, int act, cudaStream_t st);
// The power of two f ≤ 1 that keeps every dequantized weight S·f·(q − z) and C = −z·S·f of these records within
// ±2^15 (fp16 range with room), or 0 where a scale or zero is not finite (the GEMM then cannot run them).
float qgemm_fold(const QLayout& l);
// grid: (row blocks of kQgemmTiles tiles, K splits, nzb). pdl: may start while qgemm_prep finishes (mma.cuh).
void qgemm_launch(int bits, int act, int bn, int nsub, const QgemmArgs& a, dim3 grid, cudaStream_t st, bool pdl);

}  // namespace cuda
}  // namespace lowbit
