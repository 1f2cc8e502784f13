// The decoder-model forward for evaluation on one CUDA device. Weights are uploaded once (bf16, fp16 or
// fp32) and stay resident; activations between layers stay on the device; the residual stream is fp32;
// linears are cuBLAS GEMMs with fp32 accumulation (the o/down projections accumulate straight into the
// residual, beta = 1); the LM head is applied a block of rows at a time and reduced to per-position NLL
// on the device, so only T doubles come back.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <vector>

#include "common.cuh"
#include "cpu/half.h"
#include "gpu.h"

namespace lowbit {
namespace cuda {
namespace {

size_t esize(int dtype) { return dtype == 0 ? 4 : 2; }

}  // namespace

struct GpuLayer {
  DevBuf in_norm, post_norm, q_norm, k_norm;  // fp32
  DevBuf w_qkv, w_o, w_gu, w_down;            // dtype
  DevBuf b_qkv, b_o, b_gu, b_down;            // fp32 (empty: none)
};

class GpuModel {
 public:
  int dev = 0, dtype = 1;
  bool act32 = false;  // fp32 activations with 16-bit weights (split GEMMs, fp32 attention)
  int act_bits = 0;    // > 0: every linear input fake-quantized per token to this many bits (HostModel)
  bool first = true, last = true;  // pipeline stage: embeds the ids / applies the head (HostModel)
  ModelCfg cfg;
  int64_t nlayers = 0;
  std::vector<std::unique_ptr<GpuLayer>> layers;
  DevBuf embed, head, final_norm;
  bool tied = false;
  uint64_t weight_bytes = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  DevBuf blas_ws;
  cudaEvent_t ev0 = nullptr, ev1 = nullptr;
  std::mutex mu;
  // workspace
  int64_t wsT = 0, rope_L = 0, rb = 0;
  DevBuf h, xn, qkv, q, k, v, att, gu, act, logits, ids, tgt, nll, cosv, sinv, split_hi, split_lo;
  // the head on chosen rows (HeadSelect): their indices, their normed states gathered, the greedy flags
  DevBuf sel_rows, xsel, greedy;
  int64_t nsel = 0;

  ~GpuModel() {
    cudaSetDevice(dev);
    if (stream) cudaStreamSynchronize(stream);
    if (blas) cublasDestroy(blas);
    if (ev0) cudaEventDestroy(ev0);
    if (ev1) cudaEventDestroy(ev1);
    if (stream) cudaStreamDestroy(stream);
  }

  // Host weight → device buffer at byte offset `off` of dst, converted to this model's dtype.
  void upload(const HostMat& m, DevBuf& dst, size_t off, DevBuf& staging) {
    const int64_t n = m.rows * m.cols;
    char* d = static_cast<char*>(dst.p) + off;
    if (m.dense_rows) {  // packed: expanded on the host a run of rows at a time, cast on the device
      const int64_t nr = std::max<int64_t>(1, (int64_t(1) << 22) / m.cols);
      staging.alloc(nr * m.cols * 4);
      std::vector<float> tmp(static_cast<size_t>(std::min(nr, m.rows) * m.cols));
      for (int64_t r0 = 0; r0 < m.rows; r0 += nr) {
        const int64_t r = std::min(nr, m.rows - r0), c = r * m.cols, i0 = r0 * m.cols;
        m.dense_rows(r0, r, tmp.data());
        LB_CK(cudaMemcpyAsync(staging.p, tmp.data(), c * 4, cudaMemcpyHostToDevice, stream));
        if (dtype == 0) LB_CK(cudaMemcpyAsync(d + i0 * 4, staging.p, c * 4, cudaMemcpyDeviceToDevice, stream));
        else if (dtype == 1) cast_from_f32<bf16>(staging.as<float>(), reinterpret_cast<bf16*>(d) + i0, c, stream);
        else cast_from_f32<f16>(staging.as<float>(), reinterpret_cast<f16*>(d) + i0, c, stream);
        LB_CK(cudaStreamSynchronize(stream));
      }
      return;
    }
    if (m.dtype == dtype) {
      LB_CK(cudaMemcpyAsync(d, m.data, n * esize(dtype), cudaMemcpyHostToDevice, stream));
      LB_CK(cudaStreamSynchronize(stream));  // the host pointers stay valid anyway; bounded staging below
      return;
    }
    // Convert on the host to fp32 in chunks, then cast on the device.
    const int64_t chunk = 1 << 22;
    staging.alloc(chunk * 4);
    std::vector<float> tmp(static_cast<size_t>(std::min<int64_t>(chunk, n)));
    for (int64_t i0 = 0; i0 < n; i0 += chunk) {
      const int64_t c = std::min(chunk, n - i0);
      if (m.dtype == 0) std::memcpy(tmp.data(), static_cast<const float*>(m.data) + i0, c * 4);
      else if (m.dtype == 1)
        for (int64_t i = 0; i < c; ++i) tmp[i] = bf16_to_f32(static_cast<const uint16_t*>(m.data)[i0 + i]);
      else
        for (int64_t i = 0; i < c; ++i) tmp[i] = f16_to_f32(static_cast<const uint16_t*>(m.data)[i0 + i]);
      LB_CK(cudaMemcpyAsync(staging.p, tmp.data(), c * 4, cudaMemcpyHostToDevice, stream));
      if (dtype == 0) LB_CK(cudaMemcpyAsync(d + i0 * 4, staging.p, c * 4, cudaMemcpyDeviceToDevice, stream));
      else if (dtype == 1) cast_from_f32<bf16>(staging.as<float>(), reinterpret_cast<bf16*>(d) + i0, c, stream);
      else cast_from_f32<f16>(staging.as<float>(), reinterpret_cast<f16*>(d) + i0, c, stream);
      LB_CK(cudaStreamSynchronize(stream));
    }
  }

  void upload_f32(const float* src, int64_t n, DevBuf& dst) {
    dst.alloc(n * 4);
    LB_CK(cudaMemcpy(dst.p, src, n * 4, cudaMemcpyHostToDevice));
  }

  // Device bytes per token of what ensure_workspace allocates (the LM head's logit block aside).
  uint64_t token_bytes() const {
    const ModelCfg& c = cfg;
    const uint64_t es = act32 ? 4 : esize(dtype), dqkv = (c.nh + 2 * c.nkv) * c.hd;
    uint64_t b = c.hidden * 4 + c.hidden * es + dqkv * 4 + (2 * c.nh + 2 * c.nkv) * c.hd * es + 3 * c.inter * es + 16;
    if (act32 && dtype != 0) b += 2 * std::max(std::max(c.hidden, c.inter), c.nh * c.hd) * esize(dtype);
    return b;
  }

  void ensure_workspace(int64_t T, int64_t L) {
    const ModelCfg& c = cfg;
    const size_t es = act32 ? 4 : esize(dtype);
    if (T > wsT) {
      if (act32 && dtype != 0) {
        const int64_t maxin = std::max(std::max(c.hidden, c.inter), c.nh * c.hd);
        split_hi.alloc(T * maxin * esize(dtype));
        split_lo.alloc(T * maxin * esize(dtype));
      }
      const int64_t dqkv = (c.nh + 2 * c.nkv) * c.hd;
      h.alloc(T * c.hidden * 4);
      xn.alloc(T * c.hidden * es);
      qkv.alloc(T * dqkv * 4);
      q.alloc(T * c.nh * c.hd * es);
      k.alloc(T * c.nkv * c.hd * es);
      v.alloc(T * c.nkv * c.hd * es);
      att.alloc(T * c.nh * c.hd * es);
      gu.alloc(T * 2 * c.inter * es);
      act.alloc(T * c.inter * es);
      ids.alloc(T * 4);
      tgt.alloc(T * 4);
      nll.alloc(T * 8);
      // LM-head logits: a block of rows (≤ 1 GiB of fp32 logits).
      rb = std::max<int64_t>(1, std::min<int64_t>(T, (int64_t(1) << 30) / (c.vocab * 4)));
      if (last) logits.alloc(rb * c.vocab * 4);
      wsT = T;
    }
    if (L != rope_L) {
      const int64_t half = c.hd / 2;
      std::vector<float> inv_freq(half), cs(L * half), sn(L * half);
      for (int64_t i = 0; i < half; ++i) {
        float e = static_cast<float>(2 * i) / static_cast<float>(c.hd);
        float p = static_cast<float>(std::pow(static_cast<double>(c.theta), static_cast<double>(e)));
        inv_freq[i] = 1.0f / p;
      }
      for (int64_t p = 0; p < L; ++p)
        for (int64_t i = 0; i < half; ++i) {
          float a = static_cast<float>(p) * inv_freq[i];
          cs[p * half + i] = static_cast<float>(std::cos(static_cast<double>(a)));
          sn[p * half + i] = static_cast<float>(std::sin(static_cast<double>(a)));
        }
      cosv.release();
      sinv.release();
      upload_f32(cs.data(), L * half, cosv);
      upload_f32(sn.data(), L * half, sinv);
      rope_L = L;
    }
  }
};

namespace {

void gemm_raw(GpuModel& m, const void* X, const void* W, void* Y, cudaDataType_t yt, int64_t T, int64_t out, int64_t in,
              float beta) {
  const cudaDataType_t ab = m.dtype == 0 ? CUDA_R_32F : (m.dtype == 1 ? CUDA_R_16BF : CUDA_R_16F);
  const float alpha = 1.0f;
  LB_CKB(cublasGemmEx(m.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(T), static_cast<int>(in),
                      &alpha, W, ab, static_cast<int>(in), X, ab, static_cast<int>(in), &beta, Y, yt,
                      static_cast<int>(out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// Y = X·Wᵀ (+ beta·Y). X in the activation type TA; with fp32 activations and 16-bit weights X is split
// into hi + lo in the weights' type (x = hi + lo to ~2^-17 relative) and applied as two GEMMs.
template <class TW, class TA>
void gemm(GpuModel& m, const TA* X, const void* W, void* Y, cudaDataType_t yt, int64_t T, int64_t out, int64_t in,
          float beta) {
  if constexpr (std::is_same<TW, TA>::value) {
    gemm_raw(m, X, W, Y, yt, T, out, in, beta);
  } else {
    split_hi_lo<TW>(X, m.split_hi.as<TW>(), m.split_lo.as<TW>(), T * in, m.stream);
    gemm_raw(m, m.split_hi.p, W, Y, yt, T, out, in, beta);
    gemm_raw(m, m.split_lo.p, W, Y, yt, T, out, in, 1.f);
  }
}

template <class TW, class T>
void forward_impl(GpuModel& m, int64_t nseq, int64_t L) {
  const ModelCfg& c = m.cfg;
  const int64_t Tn = nseq * L;
  cudaStream_t st = m.stream;
  const cudaDataType_t tt = CudaType<T>::value;
  float* h = m.h.as<float>();
  T* xn = m.xn.as<T>();
  if (m.first) embed<TW>(m.embed.as<TW>(), m.ids.as<int32_t>(), h, Tn, c.hidden, st);  // else h was uploaded
  const bool fast = !std::getenv("LOWBIT_CUDA_REF_ATTENTION");  // fp32 T: always the fp32 kernel
  const bool aq = m.act_bits > 0;  // the CPU forward's activation fake-quantization before every linear
  for (int64_t l = 0; l < m.nlayers; ++l) {
    GpuLayer& w = *m.layers[l];
    rmsnorm<T>(h, w.in_norm.as<float>(), xn, Tn, c.hidden, c.eps, st);
    if (aq) fake_quant_rows<T>(xn, Tn, c.hidden, m.act_bits, st);
    const int64_t dqkv = (c.nh + 2 * c.nkv) * c.hd;
    gemm<TW, T>(m, xn, w.w_qkv.p, m.qkv.p, CUDA_R_32F, Tn, dqkv, c.hidden, 0.f);
    qkv_post<T>(m.qkv.as<float>(), w.b_qkv.as<float>(), w.q_norm.as<float>(), w.k_norm.as<float>(),
                m.cosv.as<float>(), m.sinv.as<float>(), m.q.as<T>(), m.k.as<T>(), m.v.as<T>(), Tn, L,
                static_cast<int>(c.nh), static_cast<int>(c.nkv), static_cast<int>(c.hd), c.eps, st);
    attention<T>(m.q.as<T>(), m.k.as<T>(), m.v.as<T>(), m.att.as<T>(), nseq, L, static_cast<int>(c.nh),
                 static_cast<int>(c.nkv), static_cast<int>(c.hd), fast, st);
    if (aq) fake_quant_rows<T>(m.att.as<T>(), Tn, c.nh * c.hd, m.act_bits, st);
    gemm<TW, T>(m, m.att.as<T>(), w.w_o.p, h, CUDA_R_32F, Tn, c.hidden, c.nh * c.hd, 1.f);
    if (w.b_o.p) add_bias(h, w.b_o.as<float>(), Tn, c.hidden, st);
    rmsnorm<T>(h, w.post_norm.as<float>(), xn, Tn, c.hidden, c.eps, st);
    if (aq) fake_quant_rows<T>(xn, Tn, c.hidden, m.act_bits, st);
    gemm<TW, T>(m, xn, w.w_gu.p, m.gu.p, tt, Tn, 2 * c.inter, c.hidden, 0.f);
    if (w.b_gu.p) add_bias_t<T>(m.gu.as<T>(), w.b_gu.as<float>(), Tn, 2 * c.inter, st);
    silu_mul<T, T>(m.gu.as<T>(), m.act.as<T>(), Tn, c.inter, st);
    if (aq) fake_quant_rows<T>(m.act.as<T>(), Tn, c.inter, m.act_bits, st);
    gemm<TW, T>(m, m.act.as<T>(), w.w_down.p, h, CUDA_R_32F, Tn, c.hidden, c.inter, 1.f);
    if (w.b_down.p) add_bias(h, w.b_down.as<float>(), Tn, c.hidden, st);
  }
  if (!m.last) return;
  rmsnorm<T>(h, m.final_norm.as<float>(), xn, Tn, c.hidden, c.eps, st);
  const void* headw = m.tied ? m.embed.p : m.head.p;
  const T* hx = xn;
  int64_t nrows = Tn;
  uint8_t* greedy = nullptr;
  if (m.nsel != 0) {  // chosen rows (-1: none)
    nrows = std::max<int64_t>(m.nsel, 0);
    gather_rows<T>(xn, m.sel_rows.as<int32_t>(), m.xsel.as<T>(), nrows, c.hidden, st);
    hx = m.xsel.as<T>();
    greedy = m.greedy.as<uint8_t>();
  }
  for (int64_t r0 = 0; r0 < nrows; r0 += m.rb) {
    const int64_t nr = std::min(m.rb, nrows - r0);
    gemm<TW, T>(m, hx + r0 * c.hidden, headw, m.logits.p, CUDA_R_32F, nr, c.vocab, c.hidden, 0.f);
    lse_nll(m.logits.as<float>(), m.tgt.as<int32_t>() + r0, m.nll.as<double>() + r0, greedy ? greedy + r0 : nullptr, nr, c.vocab, st);
  }
}

}  // namespace

std::vector<DeviceInfo> list_devices(std::string* why) {
  std::vector<DeviceInfo> out;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    cudaGetLastError();
    return out;
  }
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    DeviceInfo d;
    d.index = i;
    d.name = p.name;
    d.major = p.major;
    d.minor = p.minor;
    d.multiProcessors = p.multiProcessorCount;
    d.totalMemory = p.totalGlobalMem;
    out.push_back(d);
  }
  if (out.empty() && why && why->empty()) *why = "no CUDA device found";
  return out;
}

int runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) { cudaGetLastError(); return 0; }
  return v;
}
int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) { cudaGetLastError(); return 0; }
  return v;
}

std::shared_ptr<GpuModel> create_model(const HostModel& hm, int device, int dtype, bool act32) {
  if (dtype < 0 || dtype > 2) throw std::invalid_argument("dtype must be fp32, bf16 or fp16");
  const ModelCfg& c = hm.cfg;
  int ndev = 0;
  LB_CK(cudaGetDeviceCount(&ndev));
  if (device < 0 || device >= ndev)
    throw std::invalid_argument("no CUDA device " + std::to_string(device) + " (found " + std::to_string(ndev) + ")");
  LB_CK(cudaSetDevice(device));
  auto m = std::make_shared<GpuModel>();
  m->dev = device;
  m->dtype = dtype;
  m->act32 = act32 || dtype == 0;
  if (hm.act_bits < 0 || hm.act_bits == 1 || hm.act_bits > 16) throw std::invalid_argument("actBits must be 2..16 (or 0 for none)");
  m->act_bits = hm.act_bits;
  m->cfg = c;
  m->nlayers = static_cast<int64_t>(hm.layers.size());
  m->first = hm.first;
  m->last = hm.last;
  const size_t es = esize(dtype);
  // Everything must fit with room for activations: check before allocating anything big.
  uint64_t elems = 0;
  for (const auto& L : hm.layers)
    for (const HostLinear* lin : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) elems += lin->w.rows * lin->w.cols;
  m->tied = hm.head.data == hm.embed.data;
  const bool need_embed = m->first || (m->last && m->tied), need_head = m->last && !m->tied;
  elems += (need_embed ? hm.embed.rows * hm.embed.cols : 0) + (need_head ? hm.head.rows * hm.head.cols : 0);
  size_t free_b = 0, total_b = 0;
  LB_CK(cudaMemGetInfo(&free_b, &total_b));
  const uint64_t need = elems * es;
  if (need + (uint64_t(1) << 30) > free_b)
    throw std::runtime_error("the model's weights need " + std::to_string(need >> 20) + " MiB as " +
                             (dtype == 0 ? "fp32" : dtype == 1 ? "bf16" : "fp16") + " but device " +
                             std::to_string(device) + " has " + std::to_string(free_b >> 20) +
                             " MiB free (1 GiB is kept for activations)");
  m->weight_bytes = need;
  LB_CK(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking));
  LB_CK(cudaEventCreate(&m->ev0));
  LB_CK(cudaEventCreate(&m->ev1));
  LB_CKB(cublasCreate(&m->blas));
  LB_CKB(cublasSetStream(m->blas, m->stream));
  m->blas_ws.alloc(32u << 20);
  LB_CKB(cublasSetWorkspace(m->blas, m->blas_ws.p, m->blas_ws.bytes));
  DevBuf staging;
  auto cat = [&](std::initializer_list<const HostLinear*> parts, DevBuf& w, DevBuf& b) {
    int64_t rows = 0, cols = (*parts.begin())->w.cols;
    bool any_bias = false;
    for (auto* p : parts) {
      if (p->w.cols != cols) throw std::invalid_argument("fused linears must share their input size");
      rows += p->w.rows;
      any_bias = any_bias || p->bias;
    }
    w.alloc(rows * cols * es);
    size_t off = 0;
    for (auto* p : parts) {
      m->upload(p->w, w, off, staging);
      off += p->w.rows * cols * es;
    }
    if (any_bias) {
      std::vector<float> bb(rows, 0.f);
      int64_t r = 0;
      for (auto* p : parts) {
        if (p->bias) std::memcpy(bb.data() + r, p->bias, p->w.rows * 4);
        r += p->w.rows;
      }
      m->upload_f32(bb.data(), rows, b);
    }
  };
  for (const auto& L : hm.layers) {
    auto g = std::make_unique<GpuLayer>();
    m->upload_f32(L.in_norm, c.hidden, g->in_norm);
    m->upload_f32(L.post_norm, c.hidden, g->post_norm);
    if (L.q_norm) m->upload_f32(L.q_norm, c.hd, g->q_norm);
    if (L.k_norm) m->upload_f32(L.k_norm, c.hd, g->k_norm);
    cat({&L.q, &L.k, &L.v}, g->w_qkv, g->b_qkv);
    cat({&L.o}, g->w_o, g->b_o);
    cat({&L.gate, &L.up}, g->w_gu, g->b_gu);
    cat({&L.down}, g->w_down, g->b_down);
    m->layers.push_back(std::move(g));
  }
  if (need_embed) {
    m->embed.alloc(hm.embed.rows * hm.embed.cols * es);
    m->upload(hm.embed, m->embed, 0, staging);
  }
  if (need_head) {
    m->head.alloc(hm.head.rows * hm.head.cols * es);
    m->upload(hm.head, m->head, 0, staging);
  }
  if (m->last) m->upload_f32(hm.final_norm, c.hidden, m->final_norm);
  LB_CK(cudaDeviceSynchronize());
  return m;
}

uint64_t model_bytes(const GpuModel& m) { return m.weight_bytes; }
int model_device(const GpuModel& m) { return m.dev; }
int model_dtype(const GpuModel& m) { return m.dtype; }
bool model_act32(const GpuModel& m) { return m.act32; }
int model_act_bits(const GpuModel& m) { return m.act_bits; }
bool model_last_stage(const GpuModel& m) { return m.last; }
int64_t model_hidden(const GpuModel& m) { return m.cfg.hidden; }

int64_t batch_tokens(GpuModel& m, int64_t cap) {
  std::lock_guard<std::mutex> lk(m.mu);
  LB_CK(cudaSetDevice(m.dev));
  size_t free_b = 0, total_b = 0;
  LB_CK(cudaMemGetInfo(&free_b, &total_b));
  // The workspace may grow into the free memory (plus what it holds now), keeping room for the largest logit
  // block and 512 MiB for everything else (cuBLAS, the driver, other allocations).
  const uint64_t per = m.token_bytes();
  const uint64_t have = free_b + m.wsT * per + m.logits.bytes;
  const uint64_t keep = (m.last ? uint64_t(1) << 30 : 0) + (uint64_t(512) << 20);
  return have > keep ? std::min<int64_t>(cap, static_cast<int64_t>((have - keep) / per)) : 0;
}

void score(GpuModel& m, const int32_t* ids, int64_t nseq, int64_t L, double* nll, float* gpu_ms, float* hidden,
           const HeadSelect* sel) {
  if ((!m.first || !m.last) && !hidden) throw std::invalid_argument("a pipeline stage needs the hidden-state buffer");
  if (sel && !m.last) throw std::invalid_argument("only the last pipeline stage runs the head");
  std::lock_guard<std::mutex> lk(m.mu);
  LB_CK(cudaSetDevice(m.dev));
  const int64_t Tn = nseq * L;
  if (Tn <= 0) return;
  for (int64_t i = 0; i < Tn; ++i)
    if (ids[i] < 0 || ids[i] >= m.cfg.vocab)
      throw std::invalid_argument("token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                                  " is outside the vocabulary (size " + std::to_string(m.cfg.vocab) + ")");
  m.ensure_workspace(Tn, L);
  int64_t nout = Tn;
  m.nsel = 0;
  if (sel) {
    for (int64_t i = 0; i < sel->n; ++i) {
      if (sel->rows[i] < 0 || sel->rows[i] >= Tn)
        throw std::invalid_argument("selected row " + std::to_string(sel->rows[i]) + " is outside the batch's " + std::to_string(Tn) + " positions");
      if (sel->targets[i] < 0 || sel->targets[i] >= m.cfg.vocab)
        throw std::invalid_argument("target id " + std::to_string(sel->targets[i]) + " is outside the vocabulary (size " +
                                    std::to_string(m.cfg.vocab) + ")");
    }
    nout = sel->n;
    m.sel_rows.alloc(std::max<int64_t>(nout, 1) * 4);
    m.xsel.alloc(std::max<int64_t>(nout, 1) * m.cfg.hidden * 4);  // ≥ the activation type's size
    m.greedy.alloc(std::max<int64_t>(nout, 1));
    m.tgt.alloc(std::max(Tn, nout) * 4);
    m.nll.alloc(std::max(Tn, nout) * 8);
    LB_CK(cudaMemcpyAsync(m.sel_rows.p, sel->rows, nout * 4, cudaMemcpyHostToDevice, m.stream));
    LB_CK(cudaMemcpyAsync(m.tgt.p, sel->targets, nout * 4, cudaMemcpyHostToDevice, m.stream));
    m.nsel = nout;
    if (nout == 0) m.nsel = -1;  // nothing to score: the head is skipped
  } else {
    std::vector<int32_t> tg(Tn);
    for (int64_t s = 0; s < nseq; ++s)
      for (int64_t t = 0; t < L; ++t) tg[s * L + t] = t + 1 < L ? ids[s * L + t + 1] : -1;
    LB_CK(cudaMemcpyAsync(m.tgt.p, tg.data(), Tn * 4, cudaMemcpyHostToDevice, m.stream));
  }
  LB_CK(cudaMemcpyAsync(m.ids.p, ids, Tn * 4, cudaMemcpyHostToDevice, m.stream));
  if (!m.first) LB_CK(cudaMemcpyAsync(m.h.p, hidden, Tn * m.cfg.hidden * 4, cudaMemcpyHostToDevice, m.stream));
  LB_CK(cudaEventRecord(m.ev0, m.stream));
  if (m.dtype == 0) forward_impl<float, float>(m, nseq, L);
  else if (m.dtype == 1 && m.act32) forward_impl<bf16, float>(m, nseq, L);
  else if (m.dtype == 1) forward_impl<bf16, bf16>(m, nseq, L);
  else if (m.act32) forward_impl<f16, float>(m, nseq, L);
  else forward_impl<f16, f16>(m, nseq, L);
  LB_CK(cudaEventRecord(m.ev1, m.stream));
  if (!m.last) {
    LB_CK(cudaMemcpyAsync(hidden, m.h.p, Tn * m.cfg.hidden * 4, cudaMemcpyDeviceToHost, m.stream));
  } else if (nout > 0) {
    LB_CK(cudaMemcpyAsync(nll, m.nll.p, nout * 8, cudaMemcpyDeviceToHost, m.stream));
    if (sel) LB_CK(cudaMemcpyAsync(sel->greedy, m.greedy.p, nout, cudaMemcpyDeviceToHost, m.stream));
  }
  LB_CK(cudaStreamSynchronize(m.stream));
  if (gpu_ms) LB_CK(cudaEventElapsedTime(gpu_ms, m.ev0, m.ev1));
}

namespace {
template <class T>
double selftest_t(int nseq, int L, int nh, int nkv, int hd, std::string* report) {
  const int64_t nq = int64_t(nseq) * nh * L * hd, nk = int64_t(nseq) * nkv * L * hd, no = int64_t(nseq) * L * nh * hd;
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> hq(nq), hk(nk), hv(nk);
  for (auto& x : hq) x = nd(rng) * 1.5f;
  for (auto& x : hk) x = nd(rng) * 1.5f;
  for (auto& x : hv) x = nd(rng);
  DevBuf fq, fk, fv, q, k, v, o1, o2;
  cudaStream_t st = nullptr;
  auto up = [&](const std::vector<float>& h, DevBuf& f, DevBuf& d) {
    f.alloc(h.size() * 4);
    d.alloc(h.size() * sizeof(T));
    LB_CK(cudaMemcpy(f.p, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
    cast_from_f32<T>(f.as<float>(), d.as<T>(), static_cast<int64_t>(h.size()), st);
  };
  up(hq, fq, q);
  up(hk, fk, k);
  up(hv, fv, v);
  o1.alloc(no * sizeof(T));
  o2.alloc(no * sizeof(T));
  LB_CK(cudaMemset(o1.p, 0xff, no * sizeof(T)));  // poison: NaN in every float type
  LB_CK(cudaMemset(o2.p, 0xff, no * sizeof(T)));
  attention<T>(q.as<T>(), k.as<T>(), v.as<T>(), o1.as<T>(), nseq, L, nh, nkv, hd, false, st);
  attention<T>(q.as<T>(), k.as<T>(), v.as<T>(), o2.as<T>(), nseq, L, nh, nkv, hd, true, st);
  // time the fast kernel
  cudaEvent_t e0, e1;
  LB_CK(cudaEventCreate(&e0));
  LB_CK(cudaEventCreate(&e1));
  LB_CK(cudaEventRecord(e0, st));
  const int reps = 5;
  for (int i = 0; i < reps; ++i) attention<T>(q.as<T>(), k.as<T>(), v.as<T>(), o2.as<T>(), nseq, L, nh, nkv, hd, true, st);
  LB_CK(cudaEventRecord(e1, st));
  LB_CK(cudaDeviceSynchronize());
  float ms = 0;
  LB_CK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  ms /= reps;
  // compare (both back as fp32 through the cast in reverse: copy raw and convert on host)
  std::vector<T> r1(no), r2(no);
  LB_CK(cudaMemcpy(r1.data(), o1.p, no * sizeof(T), cudaMemcpyDeviceToHost));
  LB_CK(cudaMemcpy(r2.data(), o2.p, no * sizeof(T), cudaMemcpyDeviceToHost));
  double maxd = 0, maxr = 0;
  int64_t bad = 0;
  for (int64_t i = 0; i < no; ++i) {
    float a, b;
    if constexpr (std::is_same<T, float>::value) { a = r1[i]; b = r2[i]; }
    else if constexpr (std::is_same<T, bf16>::value) {
      a = bf16_to_f32(*reinterpret_cast<const uint16_t*>(&r1[i]));
      b = bf16_to_f32(*reinterpret_cast<const uint16_t*>(&r2[i]));
    } else {
      a = f16_to_f32(*reinterpret_cast<const uint16_t*>(&r1[i]));
      b = f16_to_f32(*reinterpret_cast<const uint16_t*>(&r2[i]));
    }
    if (!std::isfinite(a) || !std::isfinite(b)) { ++bad; continue; }
    maxd = std::max(maxd, static_cast<double>(std::fabs(a - b)));
    maxr = std::max(maxr, static_cast<double>(std::fabs(a)));
  }
  const double rel = bad ? 1e30 : maxd / std::max(maxr, 1e-30);
  const double flops = 4.0 * nseq * nh * (double(L) * (L + 1) / 2) * hd;
  if (report)
    *report = "attention selftest nseq=" + std::to_string(nseq) + " L=" + std::to_string(L) + " nh=" +
              std::to_string(nh) + " nkv=" + std::to_string(nkv) + " hd=" + std::to_string(hd) +
              ": max|fast-ref|/max|ref| = " + std::to_string(rel) + ", non-finite = " + std::to_string(bad) +
              ", fast kernel " + std::to_string(ms) + " ms = " + std::to_string(flops / (ms * 1e-3) / 1e12) +
              " TFLOP/s (causal)";
  return rel;
}
}  // namespace

double selftest_attention(int device, int dtype, int nseq, int L, int nh, int nkv, int hd, std::string* report) {
  LB_CK(cudaSetDevice(device));
  if (dtype == 0) return attention_fast_ok<float>(hd) ? selftest_t<float>(nseq, L, nh, nkv, hd, report) : -1;
  if (dtype == 1) return attention_fast_ok<bf16>(hd) ? selftest_t<bf16>(nseq, L, nh, nkv, hd, report) : -1;
  if (dtype == 2) return attention_fast_ok<f16>(hd) ? selftest_t<f16>(nseq, L, nh, nkv, hd, report) : -1;
  return -1;
}

}  // namespace cuda
}  // namespace lowbit
