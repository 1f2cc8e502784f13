// Packed int4 (g128, fp16 scale/zero) GEMV vs cuBLAS fp16 GEMV, against the card's copy bandwidth, one binary:
//   nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -Inative bench/cuda/gemv_int4_bench.cu -lcublas -o gemv
//   ./gemv [N=8192] [K=28672]
// Checks both against a float64 host reference on random data (relative L2 error), times with CUDA events
// (median of 100 after warm-up).
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cuda/gemv_int4.cuh"

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { std::printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e), __FILE__, __LINE__, #x); std::exit(1); } } while (0)
#define CKB(x) do { cublasStatus_t s = (x); if (s != CUBLAS_STATUS_SUCCESS) { std::printf("cuBLAS error %d at %s:%d\n", (int)s, __FILE__, __LINE__); std::exit(1); } } while (0)

using namespace lowbit::cuda;

template <class F>
float median_ms(F&& f, int reps = 100) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 10; ++i) f();
  CK(cudaDeviceSynchronize());
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(a));
    f();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return t[t.size() / 2];
}

int main(int argc, char** argv) {
  const int N = argc > 1 ? std::atoi(argv[1]) : 8192, K = argc > 2 ? std::atoi(argv[2]) : 28672, G = K / 128;
  if (K % 1024 || N % 32) { std::printf("need K %% 1024 == 0 and N %% 32 == 0\n"); return 1; }
  cudaDeviceProp p;
  CK(cudaGetDeviceProperties(&p, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", p.name, p.multiProcessorCount, p.l2CacheSize >> 20);
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> qd(0, 15);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint8_t> q(size_t(N) * K);
  for (auto& v : q) v = static_cast<uint8_t>(qd(rng));
  std::vector<__half2> sz(size_t(N) * G);
  std::vector<float> sf(size_t(N) * G), zf(size_t(N) * G);
  for (size_t i = 0; i < sz.size(); ++i) {
    sf[i] = __half2float(__float2half(0.01f + 0.02f * std::fabs(nd(rng))));
    zf[i] = float(qd(rng));
    sz[i] = __halves2half2(__float2half(sf[i]), __float2half(zf[i]));
  }
  std::vector<uint32_t> packed(size_t(N) * K / 8);
  for (size_t i = 0; i < packed.size(); ++i) packed[i] = pack_int4_word(&q[i * 8]);
  std::vector<__half> xh(K);
  std::vector<float> xf(K);
  for (int k = 0; k < K; ++k) { xh[k] = __float2half(nd(rng)); xf[k] = __half2float(xh[k]); }
  // dequantized fp16 weights for cuBLAS (the same matrix)
  std::vector<__half> wh(size_t(N) * K);
  std::vector<double> ref(N);
  for (int n = 0; n < N; ++n) {
    double acc = 0;
    for (int k = 0; k < K; ++k) {
      size_t g = size_t(n) * G + k / 128;
      float w = (float(q[size_t(n) * K + k]) - zf[g]) * sf[g];
      wh[size_t(n) * K + k] = __float2half(w);
      acc += double(w) * xf[k];
    }
    ref[n] = acc;
  }
  uint4* dW;
  __half2* dsz;
  __half *dx, *dwh;
  float *dy, *dy2;
  CK(cudaMalloc(&dW, packed.size() * 4));
  CK(cudaMalloc(&dsz, sz.size() * 4));
  CK(cudaMalloc(&dx, K * 2));
  CK(cudaMalloc(&dwh, wh.size() * 2));
  CK(cudaMalloc(&dy, N * 4));
  CK(cudaMalloc(&dy2, N * 4));
  CK(cudaMemcpy(dW, packed.data(), packed.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dsz, sz.data(), sz.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dx, xh.data(), K * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dwh, wh.data(), wh.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemset(dy, 0xff, N * 4));  // poison
  CK(cudaMemset(dy2, 0xff, N * 4));
  cublasHandle_t h;
  CKB(cublasCreate(&h));
  const float one = 1.f, zero = 0.f;
  auto run_blas = [&] {
    CKB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, N, 1, K, &one, dwh, CUDA_R_16F, K, dx, CUDA_R_16F, K, &zero, dy2,
                     CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  auto check = [&](float* d, const char* what) {
    std::vector<float> y(N);
    CK(cudaMemcpy(y.data(), d, N * 4, cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    int bad = 0;
    for (int n = 0; n < N; ++n) {
      if (!std::isfinite(y[n])) ++bad;
      num += (y[n] - ref[n]) * (y[n] - ref[n]);
      den += ref[n] * ref[n];
    }
    double rel = std::sqrt(num / den);
    std::printf("%-28s rel L2 err vs fp64 = %.3e, non-finite = %d\n", what, rel, bad);
    return rel;
  };
  // copy bandwidth: 1 GiB device-to-device, bytes read + written
  size_t cb = size_t(1) << 30;
  void *c0, *c1;
  CK(cudaMalloc(&c0, cb));
  CK(cudaMalloc(&c1, cb));
  CK(cudaMemset(c0, 1, cb));
  float copy_ms = median_ms([&] { CK(cudaMemcpyAsync(c1, c0, cb, cudaMemcpyDeviceToDevice)); }, 20);
  double copy_bw = 2.0 * cb / (copy_ms * 1e-3) / 1e9;
  CK(cudaFree(c0));
  CK(cudaFree(c1));

  struct Res { const char* name; float ms; double bytes; double rel; };
  std::vector<Res> res;
  static char names[16][64];
  int variant = 0;
  auto run_int4 = [&](int rows, int split) {
    const int warps = N / rows, threads = 256;
    if (K % (1024 * split)) return;
    dim3 grid((warps * 32 + threads - 1) / threads, split);
    auto f = [&] {
      if (split > 1) CK(cudaMemsetAsync(dy, 0, N * 4));
      if (rows == 1) gemv_int4_g128<1><<<grid, threads>>>(dW, dsz, dx, dy, N, K);
      else if (rows == 2) gemv_int4_g128<2><<<grid, threads>>>(dW, dsz, dx, dy, N, K);
            else gemv_int4_g128<4><<<grid, threads>>>(dW, dsz, dx, dy, N, K);
    };
    CK(cudaMemset(dy, 0xff, N * 4));
    f();
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    char* nm = names[variant++];
    std::snprintf(nm, 64, "int4 g128 (%d row/warp, splitK %d)", rows, split);
    double rel = check(dy, nm);
    float ms = median_ms(f);
    res.push_back({nm, ms, double(packed.size()) * 4 + sz.size() * 4.0 + K * 2.0 + N * 4.0, rel});
  };
  for (int rows : {1, 2, 4})
    for (int split : {1, 2, 4}) run_int4(rows, split);
  run_blas();
  CK(cudaDeviceSynchronize());
  double relb = check(dy2, "cuBLAS fp16 GEMV");
  float blas_ms = median_ms(run_blas);
  res.push_back({"cuBLAS fp16 GEMV (GemmEx)", blas_ms, double(wh.size()) * 2 + K * 2.0 + N * 4.0, relb});
  std::printf("\nN=%d K=%d; copy bandwidth (1 GiB D2D, read+write) = %.0f GB/s\n", N, K, copy_bw);
  std::printf("%-34s %9s %10s %9s %11s %9s\n", "kernel", "us", "MB moved", "GB/s", "% of copy", "rel err");
  for (auto& r : res)
    std::printf("%-34s %9.1f %10.1f %9.0f %10.1f%% %9.1e\n", r.name, r.ms * 1e3, r.bytes / 1e6, r.bytes / (r.ms * 1e-3) / 1e9,
                100.0 * r.bytes / (r.ms * 1e-3) / 1e9 / copy_bw, r.rel);
  float best = 1e9;
  for (auto& r : res) if (r.name[0] == 'i') best = std::min(best, r.ms);
  std::printf("int4 (best) vs cuBLAS fp16: %.2fx faster\n", blas_ms / best);
  return 0;
}
