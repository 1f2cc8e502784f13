// The calibration session's state (quant.cu builds and drives it; awq.cu searches AWQ's scales on it): the
// hidden states of every calibration window on the device, one decoder layer's fp32 weights, the per-batch
// workspace, and the layer forward cut short after the last linear input a step needs.
#pragma once
#include <algorithm>

#include "quant.cuh"

namespace lowbit {
namespace cuda {

// amax[c] = max(amax[c], max_r |x[r, c]|) for x [T, n] row-major (non-finite values count as +Inf).
void col_absmax(const float* x, int64_t T, int64_t n, float* amax, cudaStream_t st);

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
  // AWQ's captures: where set, every window's input of attnIn / oIn / mlpIn / downIn is kept here ([nseq*L, in]).
  float* feat[4] = {};

  QuantSession(int device) : cx(device) {}

  int64_t dqkv() const { return (cfg.nh + 2 * cfg.nkv) * cfg.hd; }
  int64_t in_dim(int cap) const { return cap == 0 || cap == 2 ? cfg.hidden : (cap == 1 ? cfg.nh * cfg.hd : cfg.inter); }

  void keep(int cap, const float* x, int64_t s0, int64_t T) {
    if (!feat[cap]) return;
    const int64_t n = in_dim(cap);
    LB_CK(cudaMemcpyAsync(feat[cap] + s0 * L * n, x, T * n * 4, cudaMemcpyDeviceToDevice, cx.st));
  }

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
    keep(1, a, s0, T);
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
    keep(0, xn.as<float>(), s0, T);
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
    keep(2, xn.as<float>(), s0, T);
    if (upto == 2) return;
    gemm(xn.as<float>(), w_gu.as<float>(), gu.as<float>(), T, 2 * c.inter, c.hidden, 0.f);
    if (b_gu.p) add_bias(gu.as<float>(), b_gu.as<float>(), T, 2 * c.inter, st);
    silu_mul<float, float>(gu.as<float>(), act.as<float>(), T, c.inter, st);
    if (caps & 8) syrk_acc(cx, H[3].as<float>(), act.as<float>(), T, c.inter, alpha);
    keep(3, act.as<float>(), s0, T);
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

}  // namespace cuda
}  // namespace lowbit
