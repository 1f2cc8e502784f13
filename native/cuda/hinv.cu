// The preamble GPTQ (gptq.cu) and BiLLM (billm.cu) share: a Hessian's diagonal, the dead columns' weights
// zeroed, and the upper Cholesky factor of the damped inverse Hessian in float64 (cuSOLVER), with the CPU
// path's (linalg.cpp) steps; plus the first non-finite value of a device array.
#include <algorithm>
#include <vector>

#include "quant.cuh"

namespace lowbit {
namespace cuda {
namespace {

__global__ void zero_cols_kernel(float* __restrict__ W, int64_t rows, int64_t cols, const int32_t* __restrict__ dead,
                                 int64_t ndead) {
  const int64_t n = rows * ndead;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * static_cast<int64_t>(blockDim.x))
    W[(i / ndead) * cols + dead[i % ndead]] = 0.f;
}

// Hd[i, j] = H[perm[i], perm[j]] in float64, dead diagonals set to 1, damp added to the diagonal.
__global__ void permute_hessian_kernel(const float* __restrict__ H, double* __restrict__ Hd, const int32_t* __restrict__ perm,
                                       const uint8_t* __restrict__ dead, int64_t n, double damp) {
  const int64_t total = n * n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += gridDim.x * static_cast<int64_t>(blockDim.x)) {
    const int64_t a = i / n, b = i - a * n;
    const int64_t pa = perm[a], pb = perm[b];
    double v = static_cast<double>(H[pa * n + pb]);
    if (a == b) v = (dead[pa] ? 1.0 : v) + damp;
    Hd[i] = v;
  }
}

__global__ void identity_kernel(double* __restrict__ A, int64_t n) {
  const int64_t total = n * n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += gridDim.x * static_cast<int64_t>(blockDim.x))
    A[i] = (i / n == i % n) ? 1.0 : 0.0;
}

__global__ void to_float_kernel(const double* __restrict__ x, float* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * static_cast<int64_t>(blockDim.x))
    y[i] = static_cast<float>(x[i]);
}

// *first = min(*first, the index of every non-finite x[i]).
__global__ void first_nonfinite_kernel(const float* __restrict__ x, int64_t n, unsigned long long* __restrict__ first) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * static_cast<int64_t>(blockDim.x))
    if (!isfinite(x[i])) atomicMin(first, static_cast<unsigned long long>(i));
}

void launch_check() { LB_LAUNCHED(); }

}  // namespace

std::vector<float> diagonal(QuantCtx& cx, const float* A, int64_t n) {
  std::vector<float> d(n);
  LB_CK(cudaMemcpy2DAsync(d.data(), sizeof(float), A, (n + 1) * sizeof(float), sizeof(float), n, cudaMemcpyDeviceToHost, cx.st));
  LB_CK(cudaStreamSynchronize(cx.st));
  return d;
}

void zero_columns(QuantCtx& cx, float* W, int64_t rows, int64_t cols, const std::vector<int32_t>& list) {
  if (list.empty()) return;
  DevBuf d;
  d.alloc(list.size() * 4);
  LB_CK(cudaMemcpyAsync(d.p, list.data(), list.size() * 4, cudaMemcpyHostToDevice, cx.st));
  const int64_t n = static_cast<int64_t>(list.size());
  zero_cols_kernel<<<blocks_for(rows * n, 256), 256, 0, cx.st>>>(W, rows, cols, d.as<int32_t>(), n);
  launch_check();
  LB_CK(cudaStreamSynchronize(cx.st));  // d is freed on return
}

// Hinv = upper Cholesky factor of H⁻¹ (float64): potrf, H⁻¹ from potrs on I, potrf again. Symmetric
// matrices read the same in either layout; the column-major lower factor read row-major is the upper one.
void hinv_upper(QuantCtx& cx, const float* H, int64_t cols, const int32_t* perm, const uint8_t* dead, double damp,
                const char* not_pd, DevBuf& Hinv) {
  cudaStream_t st = cx.st;
  DevBuf Hd, Binv, info, dws;
  Hd.alloc(cols * cols * 8);
  Binv.alloc(cols * cols * 8);
  info.alloc(sizeof(int));
  permute_hessian_kernel<<<blocks_for(cols * cols, 256), 256, 0, st>>>(H, Hd.as<double>(), perm, dead, cols, damp);
  launch_check();
  identity_kernel<<<blocks_for(cols * cols, 256), 256, 0, st>>>(Binv.as<double>(), cols);
  launch_check();
  size_t dbytes = 0, hbytes = 0;
  LB_CKS(cusolverDnXpotrf_bufferSize(cx.sol, cx.sp, CUBLAS_FILL_MODE_LOWER, cols, CUDA_R_64F, Hd.p, cols, CUDA_R_64F,
                                     &dbytes, &hbytes));
  dws.alloc(std::max<size_t>(dbytes, 8));
  std::vector<char> hws(std::max<size_t>(hbytes, 8));
  auto potrf = [&](DevBuf& A) {
    LB_CKS(cusolverDnXpotrf(cx.sol, cx.sp, CUBLAS_FILL_MODE_LOWER, cols, CUDA_R_64F, A.p, cols, CUDA_R_64F, dws.p, dbytes,
                            hws.data(), hbytes, info.as<int>()));
    int h_info = 0;
    LB_CK(cudaMemcpyAsync(&h_info, info.p, sizeof(int), cudaMemcpyDeviceToHost, st));
    LB_CK(cudaStreamSynchronize(st));
    if (h_info != 0) throw std::runtime_error(not_pd);
  };
  potrf(Hd);
  LB_CKS(cusolverDnXpotrs(cx.sol, cx.sp, CUBLAS_FILL_MODE_LOWER, cols, cols, CUDA_R_64F, Hd.p, cols, CUDA_R_64F, Binv.p,
                          cols, info.as<int>()));
  potrf(Binv);
  Hd.release();
  Hinv.alloc(cols * cols * 4);
  to_float_kernel<<<blocks_for(cols * cols, 256), 256, 0, st>>>(Binv.as<double>(), Hinv.as<float>(), cols * cols);
  launch_check();
  LB_CK(cudaStreamSynchronize(st));  // Binv is freed on return
}

int64_t first_nonfinite(QuantCtx& cx, const float* x, int64_t n) {
  DevBuf first;
  first.alloc(8);
  LB_CK(cudaMemsetAsync(first.p, 0xff, 8, cx.st));
  first_nonfinite_kernel<<<blocks_for(n, 256, 4096), 256, 0, cx.st>>>(x, n, first.as<unsigned long long>());
  launch_check();
  unsigned long long i = 0;
  LB_CK(cudaMemcpyAsync(&i, first.p, 8, cudaMemcpyDeviceToHost, cx.st));
  LB_CK(cudaStreamSynchronize(cx.st));
  return i == ~0ull ? -1 : static_cast<int64_t>(i);
}

}  // namespace cuda
}  // namespace lowbit
