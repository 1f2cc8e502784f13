// GPTQ (Frantar et al. 2022) as in the reference implementation: Cholesky of the inverse Hessian,
// column-by-column quantization with error feedback inside a block, lazy updates of the columns after it.
// Rows are independent, so each block's inner loop runs row-parallel; the tail update is one GEMM.
#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "async.h"
#include "gemm.h"
#include "gptq_options.h"
#include "linalg.h"
#include "quantizer.h"
#include "registry.h"
#include "threads.h"

namespace lowbit {
namespace {

struct GptqResult {
  std::vector<float> w, scales, zeros;  // scales/zeros [rows, ngroups]
  std::vector<uint8_t> q;               // [rows, cols], original column order
  std::vector<int32_t> g_idx;           // group of each original column
  std::vector<int32_t> perm;            // quantization order (act-order), empty otherwise
  double loss = 0;                      // Σ (w - q)² / Hinv_ii² / 2, as the reference reports
  int64_t dead = 0;
};

void gptq(const MatView& Win, int64_t rows, int64_t cols, const float* Hin, const GptqOptions& o, GptqResult& r,
          const CancelFlag& cancel) {
  std::vector<float> W(rows * cols);
  parallel_for(rows, [&](std::size_t b, std::size_t e, int) {
    for (std::size_t i = b; i < e; ++i) Win.row_to_f32(i, 0, cols, &W[i * cols]);
  }, 16);
  std::vector<double> H(Hin, Hin + cols * cols);
  for (int64_t i = 0; i < cols; ++i) {
    if (H[i * cols + i] == 0) {  // a column no calibration token touched: its weights cannot matter
      H[i * cols + i] = 1;
      for (int64_t rr = 0; rr < rows; ++rr) W[rr * cols + i] = 0;
      ++r.dead;
    }
  }
  const float maxq = static_cast<float>((1 << o.bits) - 1);
  const int64_t gs = o.group > 0 ? o.group : cols;
  const int64_t ngroups = (cols + gs - 1) / gs;
  r.scales.assign(rows * ngroups, 0.f);
  r.zeros.assign(rows * ngroups, 0.f);
  r.g_idx.assign(cols, 0);

  // Per-channel params (and static groups) come from the weights before any error feedback.
  std::vector<QParams> fixed;
  if (o.group <= 0 || o.static_groups) {
    fixed.resize(rows * ngroups);
    for (int64_t rr = 0; rr < rows; ++rr)
      for (int64_t g = 0; g < ngroups; ++g) {
        int64_t c0 = g * gs, n = std::min(gs, cols - c0);
        fixed[rr * ngroups + g] = gptq_params(&W[rr * cols + c0], n, 1, o.bits, o.sym);
      }
  }

  std::vector<int32_t> perm(cols);
  std::iota(perm.begin(), perm.end(), 0);
  if (o.act_order) {
    std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) { return H[a * cols + a] > H[b * cols + b]; });
    std::vector<float> Wp(rows * cols);
    for (int64_t rr = 0; rr < rows; ++rr)
      for (int64_t c = 0; c < cols; ++c) Wp[rr * cols + c] = W[rr * cols + perm[c]];
    W.swap(Wp);
    std::vector<double> Hp(cols * cols);
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = 0; j < cols; ++j) Hp[i * cols + j] = H[perm[i] * cols + perm[j]];
    H.swap(Hp);
    r.perm = perm;
  }
  double mean_diag = 0;
  for (int64_t i = 0; i < cols; ++i) mean_diag += H[i * cols + i];
  mean_diag /= cols;
  for (int64_t i = 0; i < cols; ++i) H[i * cols + i] += o.damp * mean_diag;
  if (!inverse_cholesky_upper(H, cols))
    throw std::runtime_error("GPTQ: the damped Hessian is not positive definite; raise --damp");
  std::vector<float> Hinv(H.begin(), H.end());
  H.clear();
  H.shrink_to_fit();

  std::vector<float> Q(rows * cols);
  std::vector<uint8_t> Qi(rows * cols);
  std::vector<double> row_loss(rows, 0.0);
  std::vector<QParams> cur(rows);
  for (int64_t rr = 0; rr < rows; ++rr) cur[rr] = fixed.empty() ? QParams{} : fixed[rr * ngroups];
  const int64_t B = o.block;
  std::vector<float> E(rows * B);
  for (int64_t i1 = 0; i1 < cols; i1 += B) {
    cancel.check();
    const int64_t i2 = std::min(i1 + B, cols), nb = i2 - i1;
    parallel_for(rows, [&](std::size_t r0, std::size_t r1, int) {
      for (int64_t rr = r0; rr < static_cast<int64_t>(r1); ++rr) {
        float* w = &W[rr * cols];
        for (int64_t i = 0; i < nb; ++i) {
          const int64_t c = i1 + i;
          QParams p;
          int64_t g;
          if (o.group > 0 && o.static_groups) {
            g = perm[c] / gs;
            p = fixed[rr * ngroups + g];
          } else if (o.group > 0) {
            g = c / gs;
            // Groups are formed in quantization order from the weights as updated so far (reference semantics).
            if (c % gs == 0) cur[rr] = gptq_params(w + c, std::min(gs, cols - c), 1, o.bits, o.sym);
            p = cur[rr];
          } else {
            g = 0;
            p = fixed[rr * ngroups];
          }
          if (rr == 0) r.g_idx[perm[c]] = static_cast<int32_t>(g);
          r.scales[rr * ngroups + g] = p.scale;
          r.zeros[rr * ngroups + g] = p.zero;
          const float qi = quant_int(w[c], p, maxq);
          const float q = p.scale * (qi - p.zero);
          Q[rr * cols + c] = q;
          Qi[rr * cols + c] = static_cast<uint8_t>(qi);
          const float d = Hinv[c * cols + c];
          const float err = (w[c] - q) / d;
          row_loss[rr] += static_cast<double>(w[c] - q) * (w[c] - q) / (static_cast<double>(d) * d) / 2;
          const float* h = &Hinv[c * cols];
          for (int64_t j = c; j < i2; ++j) w[j] -= err * h[j];
          E[rr * B + i] = err;
        }
      }
    }, 4);
    if (i2 < cols) {  // W[:, i2:] -= E · Hinv[i1:i2, i2:]
      GemmArgs g;
      g.M = rows; g.N = cols - i2; g.K = nb; g.A = E.data(); g.lda = B;
      g.B.data = &Hinv[i1 * cols + i2]; g.B.dtype = DType::F32; g.B.ld = cols;
      g.C = &W[i2]; g.ldc = cols; g.alpha = -1.f; g.beta = 1.f;
      gemm(g);
    }
  }
  r.loss = std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
  r.w.resize(rows * cols);
  r.q.resize(rows * cols);
  for (int64_t rr = 0; rr < rows; ++rr)
    for (int64_t c = 0; c < cols; ++c) {
      r.w[rr * cols + perm[c]] = Q[rr * cols + c];
      r.q[rr * cols + perm[c]] = Qi[rr * cols + c];
    }
  if (!o.act_order) r.perm.clear();
}

template <class T, class A>
A copy_out(Napi::Env env, const std::vector<T>& v) {
  auto a = A::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * sizeof(T));
  return a;
}

// gptqQuantize(W, H: Float32Array [cols, cols], {rows, cols, bits, groupSize, sym, actOrder, staticGroups, damp,
//              blockSize, cancel}) → Promise<{weight, qweight, scales, zeros, gIdx, perm, loss, deadColumns}>
Napi::Value GptqQuantize(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Object o = info[2].As<Napi::Object>();
    int64_t rows = o.Get("rows").As<Napi::Number>().Int64Value(), cols = o.Get("cols").As<Napi::Number>().Int64Value();
    const GptqOptions opt = gptq_options_from_js(o, cols);
    MatView W = mat_from_js(info[0], rows, cols, "weight");
    const float* H = cf32_from_js(info[1], cols * cols, "hessian");
    CancelFlag cancel(o.Get("cancel"));
    auto r = std::make_shared<GptqResult>();
    return run_async(info.Env(), [=] { gptq(W, rows, cols, H, opt, *r, cancel); },
      [r](Napi::Env env) -> Napi::Value {
        Napi::Object out = Napi::Object::New(env);
        out.Set("weight", copy_out<float, Napi::Float32Array>(env, r->w));
        out.Set("qweight", copy_out<uint8_t, Napi::Uint8Array>(env, r->q));
        out.Set("scales", copy_out<float, Napi::Float32Array>(env, r->scales));
        out.Set("zeros", copy_out<float, Napi::Float32Array>(env, r->zeros));
        out.Set("gIdx", copy_out<int32_t, Napi::Int32Array>(env, r->g_idx));
        out.Set("perm", copy_out<int32_t, Napi::Int32Array>(env, r->perm));
        out.Set("loss", Napi::Number::New(env, r->loss));
        out.Set("deadColumns", Napi::Number::New(env, static_cast<double>(r->dead)));
        return out;
      }, {info[0], info[1], info[2]});
  });
}

// hessianAccumulate(H [n,n], X [T,n], alpha) → Promise<void>: H += alpha · XᵀX
Napi::Value HessianAccumulate(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto Hv = info[0].As<Napi::Float32Array>();
    auto Xv = info[1].As<Napi::Float32Array>();
    float alpha = info[2].As<Napi::Number>().FloatValue();
    int64_t n = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(Hv.ElementLength()))));
    if (n * n != static_cast<int64_t>(Hv.ElementLength()) || Xv.ElementLength() % n)
      throw std::invalid_argument("hessianAccumulate: H must be [n,n] and X [T,n]");
    int64_t T = Xv.ElementLength() / n;
    float* H = Hv.Data();
    const float* X = Xv.Data();
    return run_async(info.Env(), [=] {
      // H is symmetric: accumulate only the block rows' upper parts (a blocked SYRK, ~56% of the GEMM's flops with
      // 8 row blocks), then mirror, so the lower triangle always equals the upper one bit for bit.
      const int64_t nb = n >= 512 ? 8 : 1;
      const int64_t step = ((n + nb - 1) / nb + 15) / 16 * 16;
      for (int64_t r0 = 0; r0 < n; r0 += step) {
        const int64_t r1 = std::min(n, r0 + step);
        GemmArgs g;
        g.M = r1 - r0; g.N = n - r0; g.K = T; g.transA = true; g.A = X + r0; g.lda = n;
        g.B.data = X + r0; g.B.dtype = DType::F32; g.B.ld = n;
        g.C = H + r0 * n + r0; g.ldc = n; g.alpha = alpha; g.beta = 1.f;
        gemm(g);
      }
      for (int64_t i = 1; i < n; ++i)
        for (int64_t j = 0; j < i; ++j) H[i * n + j] = H[j * n + i];
    }, nullptr, {info[0], info[1]});
  });
}

}  // namespace

GptqOptions gptq_options_from_js(const Napi::Object& o, int64_t cols) {
  GptqOptions opt;
  opt.bits = o.Get("bits").As<Napi::Number>().Int32Value();
  opt.group = o.Get("groupSize").As<Napi::Number>().Int64Value();
  opt.sym = o.Get("sym").ToBoolean();
  opt.act_order = o.Get("actOrder").ToBoolean();
  opt.static_groups = o.Get("staticGroups").ToBoolean();
  if (o.Get("damp").IsNumber()) opt.damp = o.Get("damp").As<Napi::Number>().DoubleValue();
  if (o.Get("blockSize").IsNumber()) opt.block = o.Get("blockSize").As<Napi::Number>().Int64Value();
  if (opt.bits < 1 || opt.bits > 8) throw std::invalid_argument("bits must be 1..8");
  if (opt.block < 1) throw std::invalid_argument("blockSize must be positive");
  if (opt.group > 0 && cols % opt.group)
    throw std::invalid_argument("group size " + std::to_string(opt.group) + " does not divide " + std::to_string(cols) + " columns");
  return opt;
}

LOWBIT_EXPORTS {
  exports.Set("gptqQuantize", Napi::Function::New(env, GptqQuantize));
  exports.Set("hessianAccumulate", Napi::Function::New(env, HessianAccumulate));
}

}  // namespace lowbit
