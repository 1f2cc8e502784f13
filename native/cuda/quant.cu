// Layer-by-layer calibration on the GPU. The calibration windows' hidden states stay on the device for the
// whole run; one decoder layer's weights (fp32) are uploaded at a time, so a model larger than the GPU
// still quantizes. The layer forward is the evaluation forward's (forward.cu) in fp32, cut short after the
// last linear input a step needs; inputs are never stored, only folded into Hessians (fp32 SYRK).
#include <algorithm>
#include <cmath>
#include <vector>

#include "quant_session.cuh"

namespace lowbit {
namespace cuda {
namespace {

// amax[c] = max(amax[c], max_r |x[r, c]|) for x [T, n] row-major; a non-finite value counts as +Inf, so the
// caller's finiteness check sees it (fmaxf alone would drop a NaN). Values are ≥ 0: their bits order as ints.
__global__ void col_absmax_kernel(const float* __restrict__ x, int64_t T, int64_t n, float* __restrict__ amax) {
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  __shared__ float part[8][32];
  float m = 0.f;
  if (c < n)
    for (int64_t r = blockIdx.y * 8 + threadIdx.y; r < T; r += gridDim.y * 8) {
      const float v = x[r * n + c];
      m = fmaxf(m, isfinite(v) ? fabsf(v) : INFINITY);
    }
  part[threadIdx.y][threadIdx.x] = m;
  __syncthreads();
  if (threadIdx.y == 0 && c < n) {
    for (int y = 1; y < 8; ++y) m = fmaxf(m, part[y][threadIdx.x]);
    atomicMax(reinterpret_cast<int*>(amax + c), __float_as_int(m));
  }
}

template <class T>
__global__ void to_f32_kernel(const T* __restrict__ x, float* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * static_cast<int64_t>(blockDim.x))
    y[i] = to_f(x[i]);
}

size_t dtype_bytes(int dtype) { return dtype == 0 ? 4 : 2; }

}  // namespace

void col_absmax(const float* x, int64_t T, int64_t n, float* amax, cudaStream_t st) {
  dim3 grid(static_cast<unsigned>((n + 31) / 32), static_cast<unsigned>(std::min<int64_t>(256, (T + 7) / 8)));
  col_absmax_kernel<<<grid, dim3(32, 8), 0, st>>>(x, T, n, amax);
  LB_LAUNCHED();
}

void upload_f32(QuantCtx& cx, const HostMat& m, float* dst, DevBuf& staging) {
  if (m.dense_rows) throw std::invalid_argument("calibration needs full-precision weights, not packed ones");
  const int64_t n = m.rows * m.cols;
  if (m.dtype == 0) {
    LB_CK(cudaMemcpyAsync(dst, m.data, n * 4, cudaMemcpyHostToDevice, cx.st));
    LB_CK(cudaStreamSynchronize(cx.st));
    return;
  }
  staging.alloc(n * dtype_bytes(m.dtype));
  LB_CK(cudaMemcpyAsync(staging.p, m.data, n * 2, cudaMemcpyHostToDevice, cx.st));
  if (m.dtype == 1) to_f32_kernel<bf16><<<blocks_for(n, 256), 256, 0, cx.st>>>(staging.as<bf16>(), dst, n);
  else to_f32_kernel<f16><<<blocks_for(n, 256), 256, 0, cx.st>>>(staging.as<f16>(), dst, n);
  LB_LAUNCHED();
  LB_CK(cudaStreamSynchronize(cx.st));
}

void upload_problem(QuantCtx& cx, const HostMat& Wh, const float* Hh, DevBuf& W, DevBuf& H) {
  const int64_t rows = Wh.rows, cols = Wh.cols;
  DevBuf staging;
  W.alloc(rows * cols * 4);
  upload_f32(cx, Wh, W.as<float>(), staging);
  H.alloc(cols * cols * 4);
  LB_CK(cudaMemcpyAsync(H.p, Hh, cols * cols * 4, cudaMemcpyHostToDevice, cx.st));
}

std::shared_ptr<QuantSession> quant_session_create(const ModelCfg& cfg, const HostMat& embed_w, const int32_t* ids,
                                                   int64_t nseq, int64_t L, int device) {
  if (nseq <= 0 || L <= 0) throw std::invalid_argument("calibration needs at least one window");
  for (int64_t i = 0; i < nseq * L; ++i)
    if (ids[i] < 0 || ids[i] >= cfg.vocab)
      throw std::invalid_argument("calibration token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                                  " is outside the vocabulary (size " + std::to_string(cfg.vocab) + ")");
  auto s = std::make_shared<QuantSession>(device);
  s->cfg = cfg;
  s->nseq = nseq;
  s->L = L;
  const ModelCfg& c = cfg;
  const int64_t Tn = nseq * L;
  size_t fr = 0, tot = 0;
  LB_CK(cudaMemGetInfo(&fr, &tot));
  const uint64_t states = static_cast<uint64_t>(Tn) * c.hidden * 4;
  if (states + (uint64_t(1) << 30) > fr)
    throw std::runtime_error("the calibration hidden states need " + std::to_string(states >> 20) + " MiB but device " +
                             std::to_string(device) + " has " + std::to_string(fr >> 20) + " MiB free");
  s->hs.alloc(states);
  {  // embeddings on the device: the table once (any dtype), gathered, then freed
    DevBuf table, d_ids;
    table.alloc(embed_w.rows * embed_w.cols * dtype_bytes(embed_w.dtype));
    LB_CK(cudaMemcpyAsync(table.p, embed_w.data, table.bytes, cudaMemcpyHostToDevice, s->cx.st));
    d_ids.alloc(Tn * 4);
    LB_CK(cudaMemcpyAsync(d_ids.p, ids, Tn * 4, cudaMemcpyHostToDevice, s->cx.st));
    if (embed_w.dtype == 0) embed<float>(table.as<float>(), d_ids.as<int32_t>(), s->hs.as<float>(), Tn, c.hidden, s->cx.st);
    else if (embed_w.dtype == 1) embed<bf16>(table.as<bf16>(), d_ids.as<int32_t>(), s->hs.as<float>(), Tn, c.hidden, s->cx.st);
    else embed<f16>(table.as<f16>(), d_ids.as<int32_t>(), s->hs.as<float>(), Tn, c.hidden, s->cx.st);
    LB_CK(cudaStreamSynchronize(s->cx.st));
    s->cx.sample_memory();
  }
  // Batch workspace: ≤ 2 GiB of per-token buffers.
  const int64_t per_tok = (c.hidden * 2 + (c.nh + 2 * c.nkv) * c.hd + (2 * c.nh + 2 * c.nkv) * c.hd + 3 * c.inter) * 4;
  s->bs = std::max<int64_t>(1, std::min<int64_t>(nseq, (int64_t(2) << 30) / (per_tok * L)));
  const int64_t T = s->bs * L;
  {  // cache the attention output when it fits beside the batch workspace and a solve (≈ 4 GiB kept free)
    const uint64_t att_bytes = static_cast<uint64_t>(Tn) * c.nh * c.hd * 4;
    LB_CK(cudaMemGetInfo(&fr, &tot));
    if (att_bytes + static_cast<uint64_t>(per_tok) * T + (uint64_t(4) << 30) < fr) {
      s->att_all.alloc(att_bytes);
      s->att_cached = true;
      const uint64_t res_bytes = static_cast<uint64_t>(Tn) * c.hidden * 4;  // and the residual after attention
      LB_CK(cudaMemGetInfo(&fr, &tot));
      if (res_bytes + static_cast<uint64_t>(per_tok) * T + (uint64_t(4) << 30) < fr) {
        s->res_all.alloc(res_bytes);
        s->res_cached = true;
      }
    }
  }
  s->xn.alloc(T * c.hidden * 4);
  s->res.alloc(T * c.hidden * 4);
  s->qkv.alloc(T * s->dqkv() * 4);
  s->q.alloc(T * c.nh * c.hd * 4);
  s->k.alloc(T * c.nkv * c.hd * 4);
  s->v.alloc(T * c.nkv * c.hd * 4);
  if (!s->att_cached) s->att.alloc(T * c.nh * c.hd * 4);
  s->gu.alloc(T * 2 * c.inter * 4);
  s->act.alloc(T * c.inter * 4);
  // RoPE tables exactly as forward.cu builds them.
  const int64_t half = c.hd / 2;
  std::vector<float> inv_freq(half), cs(L * half), sn(L * half);
  for (int64_t i = 0; i < half; ++i) {
    float e = static_cast<float>(2 * i) / static_cast<float>(c.hd);
    inv_freq[i] = 1.0f / static_cast<float>(std::pow(static_cast<double>(c.theta), static_cast<double>(e)));
  }
  for (int64_t p = 0; p < L; ++p)
    for (int64_t i = 0; i < half; ++i) {
      float a = static_cast<float>(p) * inv_freq[i];
      cs[p * half + i] = static_cast<float>(std::cos(static_cast<double>(a)));
      sn[p * half + i] = static_cast<float>(std::sin(static_cast<double>(a)));
    }
  s->cosv.alloc(L * half * 4);
  s->sinv.alloc(L * half * 4);
  LB_CK(cudaMemcpy(s->cosv.p, cs.data(), L * half * 4, cudaMemcpyHostToDevice));
  LB_CK(cudaMemcpy(s->sinv.p, sn.data(), L * half * 4, cudaMemcpyHostToDevice));
  s->cx.sample_memory();
  return s;
}

void quant_session_load_layer(QuantSession& s, const HostLayer& L) {
  LB_CK(cudaSetDevice(s.cx.dev));
  const ModelCfg& c = s.cfg;
  auto vec = [&](const float* src, int64_t n, DevBuf& dst) {
    if (!src) {
      dst.release();
      return;
    }
    dst.alloc(n * 4);
    LB_CK(cudaMemcpyAsync(dst.p, src, n * 4, cudaMemcpyHostToDevice, s.cx.st));
  };
  vec(L.in_norm, c.hidden, s.in_norm);
  vec(L.post_norm, c.hidden, s.post_norm);
  vec(L.q_norm, c.hd, s.q_norm);
  vec(L.k_norm, c.hd, s.k_norm);
  auto cat = [&](std::initializer_list<const HostLinear*> parts, DevBuf& w, DevBuf& b) {
    int64_t rows = 0;
    bool any_bias = false;
    for (auto* p : parts) {
      rows += p->w.rows;
      any_bias = any_bias || p->bias;
    }
    const int64_t cols = (*parts.begin())->w.cols;
    w.alloc(rows * cols * 4);
    int64_t r0 = 0;
    for (auto* p : parts) {
      if (p->w.cols != cols) throw std::invalid_argument("fused linears must share their input size");
      upload_f32(s.cx, p->w, w.as<float>() + r0 * cols, s.staging);
      r0 += p->w.rows;
    }
    if (!any_bias) {
      b.release();
      return;
    }
    std::vector<float> bb(rows, 0.f);
    int64_t r = 0;
    for (auto* p : parts) {
      if (p->bias) std::copy(p->bias, p->bias + p->w.rows, bb.begin() + r);
      r += p->w.rows;
    }
    b.alloc(rows * 4);
    LB_CK(cudaMemcpyAsync(b.p, bb.data(), rows * 4, cudaMemcpyHostToDevice, s.cx.st));
    LB_CK(cudaStreamSynchronize(s.cx.st));
  };
  cat({&L.q, &L.k, &L.v}, s.w_qkv, s.b_qkv);
  cat({&L.o}, s.w_o, s.b_o);
  cat({&L.gate, &L.up}, s.w_gu, s.b_gu);
  cat({&L.down}, s.w_down, s.b_down);
  s.staging.release();
  LB_CK(cudaStreamSynchronize(s.cx.st));
  s.loaded = true;
  s.att_valid = false;
  s.res_valid = false;
}

unsigned quant_session_hessians(QuantSession& s, unsigned caps, const CancelCheck& cancel) {
  LB_CK(cudaSetDevice(s.cx.dev));
  if (!caps || caps > 15) throw std::invalid_argument("captures must name at least one linear input");
  int upto = 0;
  for (int k = 0; k < 4; ++k) {
    if (!(caps & (1u << k))) {
      s.H[k].release();
      continue;
    }
    const int64_t n = s.in_dim(k);
    s.H[k].alloc(n * n * 4);
    LB_CK(cudaMemsetAsync(s.H[k].p, 0, n * n * 4, s.cx.st));
    upto = k;
  }
  s.all_batches(upto, caps, cancel);
  unsigned bad = 0;
  for (int k = 0; k < 4; ++k)
    if (caps & (1u << k)) {
      symmetrize(s.cx, s.H[k].as<float>(), s.in_dim(k));
      if (first_nonfinite(s.cx, s.H[k].as<float>(), s.in_dim(k) * s.in_dim(k)) >= 0) bad |= 1u << k;
    }
  LB_CK(cudaStreamSynchronize(s.cx.st));
  return bad;
}

namespace {
// The linear's Hessian, its shape, and the attention/residual caches it makes stale.
const float* solver_inputs(QuantSession& s, int lin, const char* method, int64_t& rows, int64_t& cols) {
  if (lin < 0 || lin > 6) throw std::invalid_argument("linear index must be 0..6");
  static const int input_of[7] = {0, 0, 0, 1, 2, 2, 3};
  DevBuf& H = s.H[input_of[lin]];
  if (!H.p) throw std::logic_error(std::string(method) + " on the GPU: no Hessian collected for this linear's input");
  s.shape(lin, rows, cols);
  if (lin <= 2) s.att_valid = false;  // q, k or v changes: the cached attention output is stale
  if (lin <= 3) s.res_valid = false;  // … and with o, the residual after attention
  return H.as<float>();
}
}  // namespace

void quant_session_gptq(QuantSession& s, int lin, const GptqOpts& o, GptqOut& r, const CancelCheck& cancel) {
  LB_CK(cudaSetDevice(s.cx.dev));
  int64_t rows = 0, cols = 0;
  const float* H = solver_inputs(s, lin, "GPTQ", rows, cols);
  gptq_device(s.cx, s.weight(lin), rows, cols, H, o, r, cancel);
}

void quant_session_billm(QuantSession& s, int lin, const BillmOptions& o, BillmResult& r, const CancelCheck& cancel) {
  LB_CK(cudaSetDevice(s.cx.dev));
  int64_t rows = 0, cols = 0;
  const float* H = solver_inputs(s, lin, "BiLLM", rows, cols);
  billm_device(s.cx, s.weight(lin), rows, cols, H, o, true, r, cancel);
}

void quant_session_propagate(QuantSession& s, const CancelCheck& cancel) {
  LB_CK(cudaSetDevice(s.cx.dev));
  for (auto& h : s.H) h.release();
  s.all_batches(4, 0, cancel);
}

void quant_session_absmax_propagate(QuantSession& s, float* attn_max, float* mlp_max, const CancelCheck& cancel) {
  LB_CK(cudaSetDevice(s.cx.dev));
  for (auto& h : s.H) h.release();
  const int64_t n = s.cfg.hidden;
  for (DevBuf* b : {&s.amax_attn, &s.amax_mlp}) {
    b->alloc(n * 4);
    LB_CK(cudaMemsetAsync(b->p, 0, n * 4, s.cx.st));
  }
  s.want_amax = true;
  try {
    s.all_batches(4, 0, cancel);
  } catch (...) {
    s.want_amax = false;
    throw;
  }
  s.want_amax = false;
  LB_CK(cudaMemcpyAsync(attn_max, s.amax_attn.p, n * 4, cudaMemcpyDeviceToHost, s.cx.st));
  LB_CK(cudaMemcpyAsync(mlp_max, s.amax_mlp.p, n * 4, cudaMemcpyDeviceToHost, s.cx.st));
  LB_CK(cudaStreamSynchronize(s.cx.st));
}

QuantSessionInfo quant_session_info(const QuantSession& s) {
  QuantSessionInfo i;
  i.device = s.cx.dev;
  i.batch_seqs = s.bs;
  i.peak_bytes = s.cx.peak;
  return i;
}

const ModelCfg& quant_session_cfg(const QuantSession& s) { return s.cfg; }

int64_t quant_session_linear_cols(const QuantSession& s, int lin) {
  if (lin < 0 || lin > 6) throw std::invalid_argument("linear index must be 0..6");
  int64_t rows = 0, cols = 0;
  s.shape(lin, rows, cols);
  return cols;
}

}  // namespace cuda
}  // namespace lowbit
