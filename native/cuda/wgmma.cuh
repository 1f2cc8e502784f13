// Hopper warpgroup MMA (wgmma, sm_90a only): A from registers, B from shared memory through a matrix
// descriptor, fp32 accumulators. Used by qgemm.cu. The A fragment of each warp is the one mma.sync m16n8k16 takes
// (rows 16w..16w+15 of the 64 for warp w of the warpgroup), and the accumulators of each 8-column chunk i are
// d[4i..4i+3] laid out as mma.sync's C — so the packed records of qlayout.h feed both kernels unchanged.
#pragma once
#include "common.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LB_WGMMA 1
#else
#define LB_WGMMA 0
#endif

namespace lowbit {
namespace cuda {

// Shared-memory matrix descriptor, no swizzle: 8 × 16-byte core matrices; lbo = bytes between core matrices
// along K, sbo = bytes between core matrices along M/N (both multiples of 16, start 16-byte aligned).
__device__ __forceinline__ uint64_t wgmma_desc(const void* smem, uint32_t lbo, uint32_t sbo) {
  const uint64_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return ((a & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32);
}

#if LB_WGMMA
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// The tensor cores read A and write the accumulators behind the compiler's back. Touching them after the wait
// makes the compiler treat them as used and rewritten there: no read of an accumulator moves above the wait, and
// no A register is reused for something else while an issued wgmma may still read it.
template <int R>
__device__ __forceinline__ void wgmma_touch(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int R>
__device__ __forceinline__ void wgmma_touch(uint32_t (&a)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

// d (64 × N per warpgroup, N/2 floats per thread) = A·B (+ d when acc != 0); A: 64 × 16 from registers, B: 16 × N
// from shared memory, K-major.
template <class T, int N>
struct WgmmaRS;
template <class T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b, int acc) {
  WgmmaRS<T, N>::run(d, a, b, acc);
}
// One specialization per N for both 16-bit types (PTX names them f16 / bf16): the operand lists differ only in
// length.
#define LB_WGMMA_RS_16(TY, PTX)                                                                                     \
  template <>                                                                                                       \
  struct WgmmaRS<TY, 16> {                                                                                          \
    static __device__ __forceinline__ void run(float (&d)[8], const uint32_t (&a)[4], uint64_t b, int acc) {        \
      asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %13, 0;\n"                                                   \
                   " wgmma.mma_async.sync.aligned.m64n16k16.f32." PTX "." PTX " {"                                  \
                   "%0, %1, %2, %3, %4, %5, %6, %7"                                                                 \
                   "}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"                                                   \
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]) \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(acc));                                 \
    }                                                                                                               \
  };
LB_WGMMA_RS_16(f16, "f16")
LB_WGMMA_RS_16(bf16, "bf16")
#undef LB_WGMMA_RS_16
#define LB_WGMMA_RS_32(TY, PTX)                                                                                           \
  template <>                                                                                                             \
  struct WgmmaRS<TY, 32> {                                                                                                \
    static __device__ __forceinline__ void run(float (&d)[16], const uint32_t (&a)[4], uint64_t b, int acc) {             \
      asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %21, 0;\n"                                                         \
                   " wgmma.mma_async.sync.aligned.m64n32k16.f32." PTX "." PTX " {"                                        \
                   "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"                                 \
                   "}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"                                                       \
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),      \
                     "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]) \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(acc));                                       \
    }                                                                                                                     \
  };
LB_WGMMA_RS_32(f16, "f16")
LB_WGMMA_RS_32(bf16, "bf16")
#undef LB_WGMMA_RS_32
#define LB_WGMMA_RS_64(TY, PTX)                                                                                              \
  template <>                                                                                                                \
  struct WgmmaRS<TY, 64> {                                                                                                   \
    static __device__ __forceinline__ void run(float (&d)[32], const uint32_t (&a)[4], uint64_t b, int acc) {                \
      asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %37, 0;\n"                                                            \
                   " wgmma.mma_async.sync.aligned.m64n64k16.f32." PTX "." PTX " {"                                           \
                   "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"                                   \
                   "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"                          \
                   "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                                                          \
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),         \
                     "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),   \
                     "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
                     "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])  \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(acc));                                          \
    }                                                                                                                        \
  };
LB_WGMMA_RS_64(f16, "f16")
LB_WGMMA_RS_64(bf16, "bf16")
#undef LB_WGMMA_RS_64
#define LB_WGMMA_RS_128(TY, PTX)                                                                                             \
  template <>                                                                                                                \
  struct WgmmaRS<TY, 128> {                                                                                                  \
    static __device__ __forceinline__ void run(float (&d)[64], const uint32_t (&a)[4], uint64_t b, int acc) {                \
      asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %69, 0;\n"                                                            \
                   " wgmma.mma_async.sync.aligned.m64n128k16.f32." PTX "." PTX " {"                                          \
                   "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"                                   \
                   "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"                         \
                   "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"                         \
                   "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"                          \
                   "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"                                                          \
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),         \
                     "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),   \
                     "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
                     "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
                     "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
                     "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
                     "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
                     "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])  \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(acc));                                          \
    }                                                                                                                        \
  };
LB_WGMMA_RS_128(f16, "f16")
LB_WGMMA_RS_128(bf16, "bf16")
#undef LB_WGMMA_RS_128
#endif  // LB_WGMMA

}  // namespace cuda
}  // namespace lowbit
