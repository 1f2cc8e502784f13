// Shared by the GPU quantizers (gptq.cu) and the calibration session (quant.cu): the handles one device
// stream needs, the Hessian accumulation and the device-resident GPTQ.
#pragma once
#include <cusolverDn.h>

#include <vector>

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

// hinv.cu: the diagonal of device A [n, n] on the host; W[:, c] = 0 for the listed columns; Hinv (allocated
// here) = the upper Cholesky factor, fp32, of (H' + damp·I)⁻¹ where H'[i, j] = H[perm[i], perm[j]] with dead
// diagonals set to 1 (computed in float64; throws not_pd when the damped matrix is not positive definite);
// the index of the first non-finite x[i], or -1.
std::vector<float> diagonal(QuantCtx& cx, const float* A, int64_t n);
void zero_columns(QuantCtx& cx, float* W, int64_t rows, int64_t cols, const std::vector<int32_t>& list);
void hinv_upper(QuantCtx& cx, const float* H, int64_t cols, const int32_t* perm, const uint8_t* dead, double damp,
                const char* not_pd, DevBuf& Hinv);
int64_t first_nonfinite(QuantCtx& cx, const float* x, int64_t n);

// GPTQ of device W [rows, cols] (fp32, overwritten with the dequantized result in the original column order)
// from device H [cols, cols] (fp32, left unchanged). Fills r (host copies of everything).
void gptq_device(QuantCtx& cx, float* W, int64_t rows, int64_t cols, const float* H, const GptqOpts& o, GptqOut& r,
                 const CancelCheck& cancel);

// BiLLM (native/cpu/billm.cpp's semantics) of device W [rows, cols] (fp32, overwritten with the binarized weight)
// from device H [cols, cols] (left unchanged); r.w gets a host copy of the result only with want_weight.
void billm_device(QuantCtx& cx, float* W, int64_t rows, int64_t cols, const float* H, const BillmOptions& o, bool want_weight,
                  BillmResult& r, const CancelCheck& cancel);

// A standalone solver's inputs on the device: W [rows, cols] as fp32 (from any host dtype) and H [cols, cols].
void upload_problem(QuantCtx& cx, const HostMat& Wh, const float* Hh, DevBuf& W, DevBuf& H);

// y = T → fp32 for a host weight of any dtype, through a device staging buffer.
void upload_f32(QuantCtx& cx, const HostMat& m, float* dst, DevBuf& staging);

}  // namespace cuda
}  // namespace lowbit
