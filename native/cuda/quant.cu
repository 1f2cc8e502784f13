// Layer-by-layer calibration on the GPU. The calibration windows' hidden states stay on the device for the
// whole run; one decoder layer's weights (fp32) are uploaded at a time, so a model larger than the GPU
// still quantizes. The layer forward is the evaluation forward's (forward.cu) in fp32, cut short after the
// last linear input a step needs; inputs are never stored, only folded into Hessians (fp32 SYRK).
#include <algorithm>
#include <cmath>
#include <vector>

#include "quant.cuh"

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

void col_absmax(const float* x, int64_t T, int64_t n, float* amax, cudaStream_t st) {
  dim3 grid(static_cast<unsigned>((n + 31) / 32), static_cast<unsigned>(std::min<int64_t>(256, (T + 7) / 8)));
  col_absmax_kernel<<<grid, dim3(32, 8), 0, st>>>(x, T, n, amax);
  LB_LAUNCHED();
}

template <class T>
__global__ void to_f32_kernel(const T* __restrict__ x, float* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * static_cast<int64_t>(blockDim.x))
    y[i] = to_f(x[i]);
}

size_t dtype_bytes(int dtype) { return dtype == 0 ? 4 : 2; }

}  // namespace

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

class QuantSession {
 public:
  QuantCtx cx;
  ModelCfg cfg;
  int64_t nseq = 0, L = 0, bs = 1;
  DevBuf hs;  // [nseq*L, hidden] hidden states entering the current layer
  // the current layer, fp32; q|k|v and gate|up fused as in forward.cu
  DevBuf in_norm, post_norm, q_norm, k_norm, w_qkv, w_o, w_gu, w_down, b_qkv, b_o, b_gu, b_down;
  bool loaded = false;
  // one batch of bs sequences
  DevBuf xn, qkv, q, k, v, att, res, gu, act, cosv, sinv, staging;
  DevBuf H[4];  // attnIn, oIn, mlpIn, downIn
  // The attention output of every window: it depends only on the layer input and q/k/v, which stop changing
  // once [k, v, q] are quantized, so the later passes (o, gate/up, down inputs, propagation) reuse it.
  DevBuf att_all;
  bool att_cached = false, att_valid = false;
  // The residual stream after attention (h + o(att)) of every window: fixed once o is quantized too, so the
  // gate/up → down Hessian pass and the propagation skip the o GEMM.
  DevBuf res_all;
  bool res_cached = false, res_valid = false;
  // SmoothQuant statistics: per-channel max |x| of the attention and MLP inputs (after their norms), when on.
  DevBuf amax_attn, amax_mlp;
  bool want_amax = false;

  QuantSession(int device) : cx(device) {}

  int64_t dqkv() const { return (cfg.nh + 2 * cfg.nkv) * cfg.hd; }
  int64_t in_dim(int cap) const { return cap == 0 || cap == 2 ? cfg.hidden : (cap == 1 ? cfg.nh * cfg.hd : cfg.inter); }

  void gemm(const float* X, const float* W, float* Y, int64_t T, int64_t out, int64_t in, float beta) {
    const float alpha = 1.f;
    LB_CKB(cublasSgemm(cx.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(T), static_cast<int>(in),
                       &alpha, W, static_cast<int>(in), X, static_cast<int>(in), &beta, Y, static_cast<int>(out)));
  }

  // Attention and the o projection for one batch (xn holds the normed layer input): folds the attention
  // output into H[1] when asked; for upto >= 2 leaves the residual h + o(att) in *r: h itself when propagating
  // (upto 4), else the residual cache (rc, when there is one) or the batch buffer.
  void attention_residual(float* h, float* rc, int64_t T, int64_t s0, int64_t ns, int upto, unsigned caps, float alpha, float*& r) {
    const ModelCfg& c = cfg;
    cudaStream_t st = cx.st;
    float* a = att_cached ? att_all.as<float>() + s0 * L * c.nh * c.hd : att.as<float>();
    if (!(att_cached && att_valid)) {
      gemm(xn.as<float>(), w_qkv.as<float>(), qkv.as<float>(), T, dqkv(), c.hidden, 0.f);
      qkv_post<float>(qkv.as<float>(), b_qkv.as<float>(), q_norm.as<float>(), k_norm.as<float>(), cosv.as<float>(),
                      sinv.as<float>(), q.as<float>(), k.as<float>(), v.as<float>(), T, L, static_cast<int>(c.nh),
                      static_cast<int>(c.nkv), static_cast<int>(c.hd), c.eps, st);
      attention<float>(q.as<float>(), k.as<float>(), v.as<float>(), a, ns, L, static_cast<int>(c.nh),
                       static_cast<int>(c.nkv), static_cast<int>(c.hd), true, st);
    }
    if (caps & 2) syrk_acc(cx, H[1].as<float>(), a, T, c.nh * c.hd, alpha);
    if (upto == 1) return;
    r = h;
    if (upto < 4) {
      r = rc ? rc : res.as<float>();
      LB_CK(cudaMemcpyAsync(r, h, T * c.hidden * 4, cudaMemcpyDeviceToDevice, st));
    }
    gemm(a, w_o.as<float>(), r, T, c.hidden, c.nh * c.hd, 1.f);
    if (b_o.p) add_bias(r, b_o.as<float>(), T, c.hidden, st);
  }

  // Sequences [s0, s0 + ns) through the layer up to the input of capture `upto` (4: the whole layer, in
  // place), folding the inputs flagged in `caps` into the Hessians.
  void run_batch(int64_t s0, int64_t ns, int upto, unsigned caps) {
    const ModelCfg& c = cfg;
    cudaStream_t st = cx.st;
    const int64_t T = ns * L;
    const float alpha = 2.f / static_cast<float>(nseq);
    float* h = hs.as<float>() + s0 * L * c.hidden;
    rmsnorm<float>(h, in_norm.as<float>(), xn.as<float>(), T, c.hidden, c.eps, st);
    if (caps & 1) syrk_acc(cx, H[0].as<float>(), xn.as<float>(), T, c.hidden, alpha);
    if (want_amax) col_absmax(xn.as<float>(), T, c.hidden, amax_attn.as<float>(), st);
    if (upto == 0) return;
    float* rc = res_cached ? res_all.as<float>() + s0 * L * c.hidden : nullptr;
    float* r = h;  // the residual: in place only when propagating
    if (res_valid && upto >= 2 && !(caps & 2)) {
      if (upto < 4) r = rc;
      else LB_CK(cudaMemcpyAsync(h, rc, T * c.hidden * 4, cudaMemcpyDeviceToDevice, st));
    } else {
      attention_residual(h, rc, T, s0, ns, upto, caps, alpha, r);
      if (upto == 1) return;
    }
    rmsnorm<float>(r, post_norm.as<float>(), xn.as<float>(), T, c.hidden, c.eps, st);
    if (caps & 4) syrk_acc(cx, H[2].as<float>(), xn.as<float>(), T, c.hidden, alpha);
    if (want_amax) col_absmax(xn.as<float>(), T, c.hidden, amax_mlp.as<float>(), st);
    if (upto == 2) return;
    gemm(xn.as<float>(), w_gu.as<float>(), gu.as<float>(), T, 2 * c.inter, c.hidden, 0.f);
    if (b_gu.p) add_bias(gu.as<float>(), b_gu.as<float>(), T, 2 * c.inter, st);
    silu_mul<float, float>(gu.as<float>(), act.as<float>(), T, c.inter, st);
    if (caps & 8) syrk_acc(cx, H[3].as<float>(), act.as<float>(), T, c.inter, alpha);
    if (upto == 3) return;
    gemm(act.as<float>(), w_down.as<float>(), r, T, c.hidden, c.inter, 1.f);
    if (b_down.p) add_bias(r, b_down.as<float>(), T, c.hidden, st);
  }

  void all_batches(int upto, unsigned caps, const CancelCheck& cancel) {
    if (!loaded) throw std::logic_error("no layer loaded on the GPU quantization session");
    for (int64_t s0 = 0; s0 < nseq; s0 += bs) {
      cancel();
      run_batch(s0, std::min(bs, nseq - s0), upto, caps);
      LB_CK(cudaStreamSynchronize(cx.st));
    }
    if (att_cached && upto >= 1) att_valid = true;
    if (res_cached && upto >= 2 && upto < 4) res_valid = true;  // written (or reused) in this pass
    cx.sample_memory();
  }

  float* weight(int lin) {
    const ModelCfg& c = cfg;
    switch (lin) {
      case 0: return w_qkv.as<float>();
      case 1: return w_qkv.as<float>() + c.nh * c.hd * c.hidden;
      case 2: return w_qkv.as<float>() + (c.nh + c.nkv) * c.hd * c.hidden;
      case 3: return w_o.as<float>();
      case 4: return w_gu.as<float>();
      case 5: return w_gu.as<float>() + c.inter * c.hidden;
      case 6: return w_down.as<float>();
    }
    throw std::invalid_argument("linear index must be 0..6");
  }
  void shape(int lin, int64_t& rows, int64_t& cols) const {
    const ModelCfg& c = cfg;
    const int64_t r[7] = {c.nh * c.hd, c.nkv * c.hd, c.nkv * c.hd, c.hidden, c.inter, c.inter, c.hidden};
    const int64_t k[7] = {c.hidden, c.hidden, c.hidden, c.nh * c.hd, c.hidden, c.hidden, c.inter};
    rows = r[lin];
    cols = k[lin];
  }
};

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

void quant_session_hessians(QuantSession& s, unsigned caps, const CancelCheck& cancel) {
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
  for (int k = 0; k < 4; ++k)
    if (caps & (1u << k)) symmetrize(s.cx, s.H[k].as<float>(), s.in_dim(k));
  LB_CK(cudaStreamSynchronize(s.cx.st));
}

void quant_session_gptq(QuantSession& s, int lin, const GptqOpts& o, GptqOut& r, const CancelCheck& cancel) {
  LB_CK(cudaSetDevice(s.cx.dev));
  if (lin < 0 || lin > 6) throw std::invalid_argument("linear index must be 0..6");
  static const int input_of[7] = {0, 0, 0, 1, 2, 2, 3};
  DevBuf& H = s.H[input_of[lin]];
  if (!H.p) throw std::logic_error("GPTQ on the GPU: no Hessian collected for this linear's input");
  int64_t rows = 0, cols = 0;
  s.shape(lin, rows, cols);
  if (lin <= 2) s.att_valid = false;  // q, k or v changes: the cached attention output is stale
  if (lin <= 3) s.res_valid = false;  // … and with o, the residual after attention
  gptq_device(s.cx, s.weight(lin), rows, cols, H.as<float>(), o, r, cancel);
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
