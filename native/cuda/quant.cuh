// Shared by the GPU quantizers (gptq.cu) and the calibration session (quant.cu): the handles one device
// stream needs, the Hessian accumulation and the device-resident GPTQ.
#pragma once
#include <cusolverDn.h>

#include "common.cuh"
#include "gpu.h"

namespace lowbit {
namespace cuda {

#define LB_CKS(x)                                                                                          \
  do {                                                                                                     \
    cusolverStatus_t lb_s_ = (x);                                                                          \
    if (lb_s_ != CUSOLVER_STATUS_SUCCESS)                                                                  \
      throw std::runtime_error(std::string("cuSOLVER error ") + std::to_string(static_cast<int>(lb_s_)) + \
                               " in " #x " at " __FILE__ ":" + std::to_string(__LINE__));                 \
  } while (0)

// One stream with its cuBLAS (fp32, default math: no TF32) and cuSOLVER handles.
struct QuantCtx {
  int dev = 0;
  cudaStream_t st = nullptr;
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t sol = nullptr;
  cusolverDnParams_t sp = nullptr;
  DevBuf blas_ws;
  uint64_t used0 = 0, peak = 0;  // device memory in use at creation, and the most seen since
  explicit QuantCtx(int device);
  ~QuantCtx();
  QuantCtx(const QuantCtx&) = delete;
  QuantCtx& operator=(const QuantCtx&) = delete;
  void sample_memory();
};

// H [n, n] += alpha · XᵀX for device X [T, n] row-major; only the lower triangle (column-major) is
// written: call symmetrize() once all batches are in.
void syrk_acc(QuantCtx& cx, float* H, const float* X, int64_t T, int64_t n, float alpha);
void symmetrize(QuantCtx& cx, float* H, int64_t n);

// GPTQ of device W [rows, cols] (fp32, overwritten with the dequantized result in the original column order)
// from device H [cols, cols] (fp32, left unchanged). Fills r (host copies of everything).
void gptq_device(QuantCtx& cx, float* W, int64_t rows, int64_t cols, const float* H, const GptqOpts& o, GptqOut& r,
                 const CancelCheck& cancel);

// y = T → fp32 for a host weight of any dtype, through a device staging buffer.
void upload_f32(QuantCtx& cx, const HostMat& m, float* dst, DevBuf& staging);

}  // namespace cuda
}  // namespace lowbit
