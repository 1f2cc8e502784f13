// The CUDA backend's host-side interface: plain C++ (no CUDA or N-API types), so the N-API binding
// (binding.cpp, built by the host compiler) and the kernels (*.cu, built by nvcc) meet only here.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cpu/billm_options.h"
#include "cpu/gptq_options.h"

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
  // A weight held packed (data null, dtype 0): writes rows [row0, row0 + n) of the dense fp32 matrix into out
  // (n · cols floats), so an upload expands it a chunk at a time instead of from a second copy on the host.
  std::function<void(int64_t row0, int64_t n, float* out)> dense_rows;
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
  // A pipeline stage holds a run of the layers: the first embeds the ids, the last applies the final norm and
  // the LM head; a whole model is both.
  bool first = true, last = true;
  // > 0: activation fake-quantization before every linear, per token, symmetric, to this many bits (the CPU
  // forward's fake_quant_rows_sym; W8A8 int8 weights come expanded to the GPU's dtype).
  int act_bits = 0;
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
int model_act_bits(const GpuModel& m);
bool model_last_stage(const GpuModel& m);
int64_t model_hidden(const GpuModel& m);

// Per-position next-token NLL of ids [nseq, L]: nll[s*L+t] for the target ids[s*L+t+1]; the last position
// of every sequence gets 0. gpu_ms (optional) receives the device time of the whole forward (events).
// A stage that is not first reads the hidden states entering its layers from hidden [nseq·L, hidden] (host,
// fp32); one that is not last writes the states leaving them there instead of the NLL.
// With sel (last stage only) the head runs on the chosen rows instead, as loglikelihood requests need: nll[i] =
// the NLL of sel->targets[i] at row sel->rows[i] (= s·L + t; a row may appear with several targets), and
// sel->greedy[i] = 1 where that target is the first index of the row's largest logit (torch.argmax).
struct HeadSelect {
  const int32_t* rows = nullptr;
  const int32_t* targets = nullptr;
  int64_t n = 0;
  uint8_t* greedy = nullptr;  // host [n]
};
void score(GpuModel& m, const int32_t* ids, int64_t nseq, int64_t L, double* nll, float* gpu_ms, float* hidden = nullptr,
           const HeadSelect* sel = nullptr);

// Tokens (at most cap) a score call can take in the device memory free now, the weights already resident.
int64_t batch_tokens(GpuModel& m, int64_t cap);

// Kernel self-test on random data: the fast attention of dtype (the tiled fp32 kernel, or tensor cores for
// bf16/fp16) vs the one-warp-per-row reference kernel (max |diff| / max |ref|), written into *report. Returns that relative error (or -1 when the fast path does not apply).
double selftest_attention(int device, int dtype, int nseq, int L, int nh, int nkv, int hd, std::string* report);


// ---- quantization on the GPU (quant.cu, gptq.cu) ----

// Polled between units of work; throws (the binding's Cancelled) to stop.
using CancelCheck = std::function<void()>;

// native/cpu/gptq.cpp's options and result: the same semantics, computed on the device.
struct GptqOpts : GptqOptions {
  bool weight = true;  // copy the dequantized weight back (GptqOut::w); the integers, scales and zeros always come
};

struct GptqOut {
  std::vector<float> w, scales, zeros;  // w [rows, cols] dequantized (empty unless opts.weight); scales/zeros [rows, ngroups]
  std::vector<uint8_t> q;               // [rows, cols], original column order
  std::vector<int32_t> g_idx, perm;     // perm empty without act-order
  double loss = 0;
  int64_t dead = 0;
};

// Standalone (tests): W [rows, cols] host (any weight dtype), H [cols, cols] fp32 host.
void gptq_host(int device, const HostMat& W, const float* H, const GptqOpts& o, GptqOut& r, const CancelCheck& cancel);
// Standalone BiLLM (tests), as billmQuantize: W [rows, cols] host (any weight dtype), H [cols, cols] fp32 host.
void billm_host(int device, const HostMat& W, const float* H, const BillmOptions& o, BillmResult& r, const CancelCheck& cancel);
// H [n, n] += alpha · XᵀX for host X [T, n] (fp32 SYRK on the device, no TF32).
void hessian_host(int device, float* H, const float* X, int64_t T, int64_t n, float alpha);

// Layer-by-layer calibration: the calibration windows' hidden states live on the device; one layer's
// weights (fp32) at a time; linear inputs are never stored, only their Hessians accumulated.
class QuantSession;
// Linear indices: 0 q, 1 k, 2 v, 3 o, 4 gate, 5 up, 6 down. Capture bits: 1 attnIn, 2 oIn, 4 mlpIn, 8 downIn.
std::shared_ptr<QuantSession> quant_session_create(const ModelCfg& cfg, const HostMat& embed, const int32_t* ids,
                                                   int64_t nseq, int64_t L, int device);
void quant_session_load_layer(QuantSession& s, const HostLayer& layer);
// H_k = 2/nseq · Σ XᵀX of the inputs named by `captures`, through the layer as it is now. Returns the captures
// whose Hessian is not finite (an overflow in the layer, or non-finite weights).
unsigned quant_session_hessians(QuantSession& s, unsigned captures, const CancelCheck& cancel);
// GPTQ of one linear from its input's Hessian; the device copy of the weight becomes the quantized one.
void quant_session_gptq(QuantSession& s, int linear, const GptqOpts& o, GptqOut& r, const CancelCheck& cancel);
// BiLLM of one linear from its input's Hessian; the device copy of the weight becomes the binarized one.
void quant_session_billm(QuantSession& s, int linear, const BillmOptions& o, BillmResult& r, const CancelCheck& cancel);
// The hidden states become the outputs of the (quantized) layer.
void quant_session_propagate(QuantSession& s, const CancelCheck& cancel);
// The same, recording SmoothQuant's statistics on the way: per-channel max |x| of the attention input (after
// input_layernorm) and of the MLP input (after post_attention_layernorm), hidden floats each (NaN/Inf → +Inf).
void quant_session_absmax_propagate(QuantSession& s, float* attn_max, float* mlp_max, const CancelCheck& cancel);
// AWQ (lib/quant/awq.ts's semantics) of the loaded layer: captures its four linear inputs over every window
// while moving the states through it (full precision, as llm-awq), searches each scale group's scales and
// folds them, searches the clip ranges of v, o, gate, up and down, and quantizes every linear (llm-awq's grid).
// The device weights become the scaled, clipped ones. Not followed by propagate.
struct AwqOpts {
  int bits = 4;
  int64_t group_size = 128;  // ≤ 0: one group per row
  int grid = 20;             // scale ratios r/grid, r < grid; the clip search tries grid/2 ranges
  int64_t clip_tokens = 512;
  bool weights = false;      // also return the scaled, clipped fp32 weights that were quantized
};
struct AwqOut {
  // by linear index: q [rows, cols], scales/zeros [rows, ngroups], w [rows, cols] (only with opts.weights), bias
  // (empty where the linear has none)
  std::vector<uint8_t> q[7];
  std::vector<float> scales[7], zeros[7], w[7], bias[7];
  std::vector<float> in_norm, post_norm;
  // per scale group (0 q,k,v; 1 o; 2 gate,up; 3 down): the chosen r and its loss; -1 where the group was skipped
  int best_ratio[4] = {-1, -1, -1, -1};
  double loss[4] = {-1, -1, -1, -1};
  // ≥ 0: the layer's output (the next layer's states) is not finite from this element on ([nseq·L, hidden]
  // row-major); nothing was searched and the weights are unchanged.
  int64_t nonfinite_at = -1;
  float nonfinite_value = 0;
};
void quant_session_awq(QuantSession& s, const AwqOpts& o, AwqOut& out, const CancelCheck& cancel);
struct QuantSessionInfo {
  int device = 0;
  int64_t batch_seqs = 0;
  uint64_t peak_bytes = 0;  // device memory in use at the fullest sampled point, minus the use at creation
};
QuantSessionInfo quant_session_info(const QuantSession& s);
const ModelCfg& quant_session_cfg(const QuantSession& s);
int64_t quant_session_linear_cols(const QuantSession& s, int linear);

// ---- packed low-bit linears (qmatmul.cu; layout in qlayout.h) ----

// A packed weight repacked into the device layout on the host (qmatmul_binding.cpp).
struct QLayout {
  int bits = 4;
  int64_t rows = 0, cols = 0;
  int64_t ntiles = 0, nkb = 0, nsub = 1;  // 16-row tiles (even), 128-column blocks, sub-groups per block
  float oscale = 1.f;                     // 1/P (the fp16 scales are the CPU's times P)
  std::vector<uint8_t> records;           // ntiles · nkb · q_record_bytes(bits, nsub)
  std::vector<int32_t> perm;              // act-order: packed column j = original column perm[j]; empty: identity
};
// W8A8 weights as the CPU's Int8View: int8 [rows, kpad] (zero padded), per-row fp32 scales.
struct Int8Host {
  int64_t rows = 0, cols = 0, kpad = 0;
  const int8_t* w = nullptr;
  const float* scales = nullptr;
};
struct QLinearInfo {
  int device = 0, bits = 4;
  bool int8 = false;
  int64_t rows = 0, cols = 0, kpad = 0, ntiles = 0, nkb = 0, nsub = 1;
  float oscale = 1.f;
  uint64_t device_bytes = 0;
  int last_splits = 1;      // K splits of the last packed launch
  bool last_wgmma = false;  // and whether it ran the wgmma kernel
  bool last_fused_x = false;  // and whether the mma.sync kernel converted x itself (no conversion launch)
  // The Hopper wgmma kernel (qgemm.cu) is in this build for this device; it runs batches from gemm_from tokens on.
  bool wgmma = false;
  int gemm_from = 17;
  float gemm_fold = 1.f;  // qgemm_fold of the records
  // Launch tuning: copy stages in flight (mma.sync kernel, wgmma kernel); K is split to fill the GPU with blocks, at
  // most warps_per_sm warps per SM (mma.sync kernel) when > 0.
  int stages = 2, gemm_stages = 0, warps_per_sm = 0;  // gemm_stages 0: by tokens per block (gemm_stages_for)
};
class GpuQLinear;
std::shared_ptr<GpuQLinear> qlinear_create(const QLayout& l, int device);
std::shared_ptr<GpuQLinear> qlinear_create_int8(const Int8Host& h, int device);
const QLinearInfo& qlinear_info(const GpuQLinear& q);
// y [M, rows] = x [M, cols] · Wᵀ (host fp32 in and out; original column order). act: activations rounded to
// 1 bf16 or 2 fp16 for the packed kernels (int8 weights quantize them to int8 per token instead). kernel: 0 the
// one that serves M, 1 the mma.sync kernel, 2 the wgmma kernel (an error where there is none). fuse_x: the mma.sync
// kernel converts x itself where that costs it no blocks per SM (false: always a separate conversion launch).
void qlinear_matmul(GpuQLinear& q, const float* x, int64_t M, int act, float* y, int kernel = 0, bool fuse_x = true);
// Kernel time (median of `iters`, L2 flushed before each) vs cuBLAS on the same weights dense in fp16/bf16, and
// the device-to-device copy bandwidth (bytes read + written), all in the same call.
struct QBench {
  // prep_us / finish_us: the x conversion and the sum of K splits, each timed alone (0 where there is none)
  double ours_us = 0, kernel_us = 0, prep_us = 0, finish_us = 0, dense_us = 0, copy_gbs = 0, ours_bytes = 0, dense_bytes = 0,
         rel_err = 0;
  int splits = 1;
  bool wgmma = false, fused_x = false;
};
// kernel as for qlinear_matmul; stages / warps_per_sm > 0 override the launch tuning for this call (to compare settings).
QBench qlinear_bench(GpuQLinear& q, int64_t M, int act, int iters, int kernel = 0, int stages = 0, int warps_per_sm = 0, bool fuse_x = true);

}  // namespace cuda
}  // namespace lowbit
