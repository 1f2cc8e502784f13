// The CUDA backend's host-side interface: plain C++ (no CUDA or N-API types), so the N-API binding
// (binding.cpp, built by the host compiler) and the kernels (*.cu, built by nvcc) meet only here.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lowbit {
namespace cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0, multiProcessors = 0;
  uint64_t totalMemory = 0;
};

// Never throws: no driver / no device gives an empty list and a reason in *why.
std::vector<DeviceInfo> list_devices(std::string* why);
// "13000" style versions; 0 when unknown.
int runtime_version();
int driver_version();

// Weight element types, as in tensor.h's DType: 0 = F32, 1 = BF16, 2 = F16.
struct HostMat {
  const void* data = nullptr;
  int dtype = 0;
  int64_t rows = 0, cols = 0;
};

struct HostLinear {
  HostMat w;
  const float* bias = nullptr;
};

struct HostLayer {
  const float *in_norm = nullptr, *post_norm = nullptr, *q_norm = nullptr, *k_norm = nullptr;
  HostLinear q, k, v, o, gate, up, down;
};

struct ModelCfg {
  int64_t hidden = 0, inter = 0, nh = 0, nkv = 0, hd = 0, vocab = 0;
  float eps = 1e-6f, theta = 10000.f;
};

struct HostModel {
  ModelCfg cfg;
  std::vector<HostLayer> layers;
  HostMat embed, head;
  const float* final_norm = nullptr;
};

class GpuModel;

// Uploads every weight to device `device` as `dtype` (0 fp32, 1 bf16, 2 fp16); throws std::runtime_error
// (with the CUDA/cuBLAS error named) on failure, including "does not fit" before allocating.
// act32: fp32 activations with 16-bit weights (each GEMM input split into hi + lo 16-bit halves, two GEMMs;
// fp32 attention): close to the fp32 result at 2× the GEMM cost. Ignored (always on) for fp32 weights.
std::shared_ptr<GpuModel> create_model(const HostModel& m, int device, int dtype, bool act32 = false);
uint64_t model_bytes(const GpuModel& m);
int model_device(const GpuModel& m);
int model_dtype(const GpuModel& m);
bool model_act32(const GpuModel& m);

// Per-position next-token NLL of ids [nseq, L]: nll[s*L+t] for the target ids[s*L+t+1]; the last position
// of every sequence gets 0. gpu_ms (optional) receives the device time of the whole forward (events).
void score(GpuModel& m, const int32_t* ids, int64_t nseq, int64_t L, double* nll, float* gpu_ms);

// Kernel self-test on random data: the tensor-core attention vs the fp32 reference kernel (max |diff| /
// max |ref|), written into *report. Returns that relative error (or -1 when the fast path does not apply).
double selftest_attention(int device, int dtype, int nseq, int L, int nh, int nkv, int hd, std::string* report);

}  // namespace cuda
}  // namespace lowbit
