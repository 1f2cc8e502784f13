// The Hopper tensor-core GEMM for packed weights (qgemm.cu): what qmatmul.cu calls for batches of 16 tokens and
// up when the device runs it (sm_90a code for a compute-capability-9.0 GPU).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace lowbit {
namespace cuda {

constexpr int kQgemmTiles = 8;  // 16-row tiles per block: two warpgroups of four warps, a tile per warp

struct QgemmArgs {
  const uint8_t* w;  // records (qlayout.h)
  const void* x;     // x tiles: [nkb][nzb][bn × 128] T in the wgmma k order (qgemm_prep)
  const float* xs;   // [nkb][nzb][nsub][bn] Σx per sub-group and token
  float* out;        // [splits][M, rows]
  int M, N, ntiles, nkb, nzb, stages;
  int64_t split_stride;
  float oscale;
};

// Whether this build has the wgmma kernels for `device` (asked of the device once, by a probe kernel).
bool qgemm_available(int device);
// Tokens per block for a batch of M: 16, 32, 64 or 128 (larger batches take several blocks of 128).
int qgemm_bn(int64_t M);
int qgemm_blocks_per_sm(int bits, int act, int bn, int nsub, int stages);
// x [M, cols] fp32 → the x tiles (T = fp16 for act 2, bf16 for act 1; columns gathered through perm when given,
// zero past cols and for the padding tokens up to nzb·bn) and their sub-group sums.
void qgemm_prep(const float* x, const int32_t* perm, void* xt, float* xs, int M, int cols, int nkb, int nsub, int bn, int nzb,
                int act, cudaStream_t st);
// grid: (row blocks of kQgemmTiles tiles, K splits, nzb). pdl: may start while qgemm_prep finishes (mma.cuh).
void qgemm_launch(int bits, int act, int bn, int nsub, const QgemmArgs& a, dim3 grid, cudaStream_t st, bool pdl);

}  // namespace cuda
}  // namespace lowbit
