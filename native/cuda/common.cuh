// Shared by the CUDA translation units: error checks, element types, launch helpers.
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace lowbit {
namespace cuda {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ") in " +
                           what + " at " + file + ":" + std::to_string(line));
}
[[noreturn]] inline void throw_cublas(cublasStatus_t s, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("cuBLAS error ") + std::to_string(static_cast<int>(s)) + " in " + what + " at " +
                           file + ":" + std::to_string(line));
}

#define LB_CK(x)                                                                       \
  do {                                                                                 \
    cudaError_t lb_e_ = (x);                                                           \
    if (lb_e_ != cudaSuccess) ::lowbit::cuda::throw_cuda(lb_e_, #x, __FILE__, __LINE__); \
  } while (0)
#define LB_CKB(x)                                                                                  \
  do {                                                                                             \
    cublasStatus_t lb_s_ = (x);                                                                    \
    if (lb_s_ != CUBLAS_STATUS_SUCCESS) ::lowbit::cuda::throw_cublas(lb_s_, #x, __FILE__, __LINE__); \
  } while (0)
// After every kernel launch.
#define LB_LAUNCHED() LB_CK(cudaGetLastError())

using bf16 = __nv_bfloat16;
using f16 = __half;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(f16 x) { return __half2float(x); }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ f16 from_f<f16>(float x) { return __float2half_rn(x); }

// V consecutive elements as one load or store (16 bytes at V = 16 / sizeof(T)); the address must be V-aligned.
template <class T, int V>
struct alignas(sizeof(T) * V) VecT {
  T v[V];
};
template <int V, class T>
__device__ __forceinline__ void load_f(const T* p, float (&f)[V]) {
  const VecT<T, V> a = *reinterpret_cast<const VecT<T, V>*>(p);
#pragma unroll
  for (int i = 0; i < V; ++i) f[i] = to_f(a.v[i]);
}
template <int V, class T>
__device__ __forceinline__ void store_f(T* p, const float (&f)[V]) {
  VecT<T, V> a;
#pragma unroll
  for (int i = 0; i < V; ++i) a.v[i] = from_f<T>(f[i]);
  *reinterpret_cast<VecT<T, V>*>(p) = a;
}

// Reductions over a warp's xor butterfly, in a fixed order; every lane ends with the same bits (a + b == b + a, so
// each pair of partners computes the same sum).
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_min(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <class T> struct CudaType;
template <> struct CudaType<float> { static constexpr cudaDataType_t value = CUDA_R_32F; };
template <> struct CudaType<bf16> { static constexpr cudaDataType_t value = CUDA_R_16BF; };
template <> struct CudaType<f16> { static constexpr cudaDataType_t value = CUDA_R_16F; };

// A device allocation that grows on demand and frees itself.
struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  DevBuf() = default;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  ~DevBuf() { release(); }
  void release() {
    if (p) cudaFree(p);  // errors at teardown have nowhere to go
    p = nullptr;
    bytes = 0;
  }
  void alloc(size_t n) {
    if (n <= bytes) return;
    release();
    LB_CK(cudaMalloc(&p, n));
    bytes = n;
  }
  template <class T> T* as() const { return static_cast<T*>(p); }
};

inline unsigned blocks_for(int64_t n, int threads, int64_t cap = 65535LL * 16) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > cap ? cap : b));
}

// ---- kernels (ops.cu, attention.cu, nll.cu); every launcher checks its launch ----
// y[r] = w * (x[r] / sqrt(mean(x[r]^2) + eps)), x fp32 [rows, n]
template <class TOut>
void rmsnorm(const float* x, const float* w, TOut* y, int64_t rows, int64_t n, float eps, cudaStream_t st);
// h[i, :] = table[ids[i], :] (upcast)
template <class TW>
void embed(const TW* table, const int32_t* ids, float* h, int64_t n, int64_t hidden, cudaStream_t st);
// qkv fp32 [T, (nh+2nkv)*hd] (+bias) → q [nseq, nh, L, hd], k/v [nseq, nkv, L, hd] in T; q/k RMSNorm (when
// given) then rotate-half RoPE at position t % L from cos/sin tables [L, hd/2].
template <class TQ>
void qkv_post(const float* qkv, const float* bias, const float* q_norm, const float* k_norm, const float* cosv,
              const float* sinv, TQ* q, TQ* k, TQ* v, int64_t T, int64_t L, int nh, int nkv, int hd, float eps,
              cudaStream_t st);
// gu [T, 2*inter] (gate | up) → out [T, inter] = silu(gate) * up
template <class TIn, class TOut>
void silu_mul(const TIn* gu, TOut* out, int64_t T, int64_t inter, cudaStream_t st);
// y[t, :] += b
void add_bias(float* y, const float* b, int64_t T, int64_t n, cudaStream_t st);
template <class T>
void add_bias_t(T* y, const float* b, int64_t T_, int64_t n, cudaStream_t st);
// x ≈ hi + lo with hi = T(x), lo = T(x - hi)
template <class T>
void split_hi_lo(const float* x, T* hi, T* lo, int64_t n, cudaStream_t st);
// float → T cast (weights upload)
template <class T>
void cast_from_f32(const float* x, T* y, int64_t n, cudaStream_t st);

// Causal GQA attention: q [nseq, nh, L, hd], k/v [nseq, nkv, L, hd] → out [nseq*L, nh*hd].
// fast=true uses the tensor-core kernel (bf16/f16, hd 64 or 128); otherwise the fp32-math reference kernel.
template <class T>
void attention(const T* q, const T* k, const T* v, T* out, int64_t nseq, int64_t L, int nh, int nkv, int hd, bool fast,
               cudaStream_t st);
template <class T>
bool attention_fast_ok(int hd);

// nll[r] = logsumexp(logits[r]) - logits[r, target[r]] (0 where target < 0); logits fp32 [rows, V]. greedy
// (optional): 1 where the target's logit is the row's largest.
void lse_nll(const float* logits, const int32_t* target, double* nll, uint8_t* greedy, int64_t rows, int64_t V, cudaStream_t st);
// Per-row symmetric fake quantization of activations x [rows, n] to `bits`, in place (the CPU forward's).
template <class T>
void fake_quant_rows(T* x, int64_t rows, int64_t n, int bits, cudaStream_t st);
// out[i, :] = x[rows[i], :] for x [*, n].
template <class T>
void gather_rows(const T* x, const int32_t* rows, T* out, int64_t nrows, int64_t n, cudaStream_t st);

}  // namespace cuda
}  // namespace lowbit
