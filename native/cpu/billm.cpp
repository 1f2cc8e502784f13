// BiLLM (Huang et al. 2024, "BiLLM: Pushing the Limit of Post-Training Quantization for LLMs"), following
// the paper's Algorithm 1 and the reference code (BRAGPTQ.fasterquant + structural_searching + high_order_residual):
//
//   Hinv = upper Cholesky factor of (H + damp·mean(diag H)·I)⁻¹           (as GPTQ)
//   for each block of `block` columns [i1, i2):
//     saliency s_j = Σ_rows W_rj² / Hinv_jj²   (the reference's "hessian" metric; diag of the Cholesky factor)
//     salient-column count k: top-k columns by s_j, k ∈ [1, min(50, nb)) minimising the block's binarization
//       error ‖W_b − (res2(W_b|sal) + res2(W_b|¬sal))‖²            (structural_searching, first loop)
//     break point p over the 10%..90% percentiles (step 1%) of |W_b·¬sal| (salient entries count as zeros,
//       as the reference's flattened quantile does): concentrated = |w| < p, sparse = |w| ≥ p, each binarized
//       with order 1; p minimises ‖W_b − (res1(conc) + res1(sparse) + res2(sal))‖²   (second loop)
//     B = res2(W_b|sal) + res1(W_b|conc) + res1(W_b|sparse)           (whole block at once)
//     E_j = (W_j − B_j) / Hinv_jj;  W[:, i2:] −= E · Hinv[i1:i2, i2:] (no update inside the block, as the
//       reference and the paper's Algorithm 1 do; `exactFeedback` adds the OBS update inside the block)
//
// resK (high_order_residual): K rounds over the masked entries of each row of the residual r:
//   μ = mean(r), α = mean|r − μ|, r̂ = α·sign(r − μ) + μ, accumulate. With `centered` off, μ = 0, which is the
//   paper's Eq. 1/4 form α·sign(r) (α = ‖r‖₁/m).
//
// The final binarization of each block stores its α and μ in fp16 and binarizes with those rounded values
// (so the weights it returns, and the error fed back, are exactly what the lowbit "binary" layout holds:
// docs/formats.md); the searches run in fp32. Alongside the weights it returns that structure: per row and
// block the 8 fp16 scales (α1 μ1 α2 μ2 of the salient residual, αc μc, αs μs of the concentrated and sparse
// groups), a 2-bit code per weight (bit 0 the first sign; bit 1 the second residual sign on salient
// columns, the sparse flag elsewhere) and the salient-column bitmap.
//
// Differences from the reference, all deliberate:
//  - sign(0) is +1 here (torch.sign gives 0, which would be a third code);
//  - the searches minimise the error of the weights themselves (the paper's Eq. 5/9 objectives). With the
//    "hessian" metric the reference runs both searches, and builds the concentrated/sparse masks, on the
//    transformed matrix W²/Hinv_jj²; `searchOnSaliency` reproduces that;
//  - blocks narrower than 2 columns, or a max-salient bound ≥ the block width, are clamped instead of failing
//    in torch.topk.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "async.h"
#include "billm_options.h"
#include "gemm.h"
#include "linalg.h"
#include "registry.h"
#include "tensor.h"
#include "threads.h"

namespace lowbit {
namespace {

using BillmOpts = BillmOptions;

enum : int { kA1 = kBillmA1, kAc = kBillmAc, kAs = kBillmAs, kNScales = kBillmScales };

enum : uint8_t { kConc = 0, kSparse = 1, kSal = 2 };

inline float sgn(float v) { return v >= 0.f ? 1.f : -1.f; }

inline float round_f16(float v) { return f16_to_f32(f32_to_f16(v)); }

// What the final binarization keeps: ab[2o], ab[2o+1] = α, μ of order o (fp16-exact), and bit o of bits[k]
// = the order-o sign of entry k (1: +).
struct Stored {
  float* ab;
  uint8_t* bits;
};

// high_order_residual over the entries of one row with grp[k] == g: adds the order-`order` binarization of
// x into out (out must be zero at those entries on entry). Rows with no entries stay zero (and α = μ = 0).
// With `st`, α and μ are rounded to fp16 before use and recorded with the signs.
void residual_binarize(const float* x, const uint8_t* grp, uint8_t g, int64_t n, int order, bool centered, float* out,
                       const Stored* st = nullptr) {
  int64_t m = 0;
  for (int64_t k = 0; k < n; ++k) m += grp[k] == g;
  if (m == 0) return;
  for (int o = 0; o < order; ++o) {
    double mu = 0;
    if (centered) {
      for (int64_t k = 0; k < n; ++k)
        if (grp[k] == g) mu += static_cast<double>(x[k]) - out[k];
      mu /= m;
    }
    double a = 0;
    for (int64_t k = 0; k < n; ++k)
      if (grp[k] == g) a += std::fabs(static_cast<double>(x[k]) - out[k] - mu);
    a /= m;
    float fa = static_cast<float>(a), fmu = static_cast<float>(mu);
    if (!st) {
      for (int64_t k = 0; k < n; ++k)
        if (grp[k] == g) out[k] += fa * sgn(x[k] - out[k] - fmu) + fmu;
      continue;
    }
    fa = round_f16(fa);
    fmu = round_f16(fmu);
    st->ab[2 * o] = fa;
    st->ab[2 * o + 1] = fmu;
    for (int64_t k = 0; k < n; ++k)
      if (grp[k] == g) {
        const float s = sgn(x[k] - out[k] - fmu);
        st->bits[k] |= static_cast<uint8_t>((s > 0) << o);
        out[k] += fa * s + fmu;
      }
  }
}

double sq_err(const float* x, const float* q, int64_t n) {
  double e = 0;
  for (int64_t k = 0; k < n; ++k) {
    double d = static_cast<double>(x[k]) - q[k];
    e += d * d;
  }
  return e;
}

// numpy.quantile's default (linear) on sorted data.
double quantile_sorted(const std::vector<float>& a, double q) {
  const double pos = q * static_cast<double>(a.size() - 1);
  const int64_t lo = static_cast<int64_t>(std::floor(pos));
  const int64_t hi = std::min<int64_t>(lo + 1, a.size() - 1);
  return a[lo] + (static_cast<double>(a[hi]) - a[lo]) * (pos - lo);
}

// Chooses the block's groups: grp[r*nb + k] ∈ {kConc, kSparse, kSal}. M [rows, nb] is the matrix searched on.
int64_t structural_search(const std::vector<float>& M, const std::vector<double>& sal, int64_t rows, int64_t nb,
                          const BillmOpts& o, std::vector<uint8_t>& grp) {
  std::vector<int32_t> order(nb);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return sal[a] > sal[b]; });

  // 1) salient-column count: res2 on the top-k columns + res2 on the rest.
  int64_t best_k = 0;
  if (o.saliency_search) {
    const int64_t up = std::min(o.max_salient, nb);
    if (up >= 2) {
      const int64_t nk = up - 1;  // k = 1 .. up-1
      std::vector<double> err(rows * nk, 0.0);
      parallel_for(rows, [&](std::size_t r0, std::size_t r1, int) {
        std::vector<uint8_t> g(nb);
        std::vector<float> q(nb);
        for (int64_t r = r0; r < static_cast<int64_t>(r1); ++r) {
          const float* x = &M[r * nb];
          std::fill(g.begin(), g.end(), kConc);
          for (int64_t k = 1; k <= nk; ++k) {
            g[order[k - 1]] = kSal;
            std::fill(q.begin(), q.end(), 0.f);
            residual_binarize(x, g.data(), kSal, nb, 2, o.centered, q.data());
            residual_binarize(x, g.data(), kConc, nb, 2, o.centered, q.data());
            err[r * nk + (k - 1)] = sq_err(x, q.data(), nb);
          }
        }
      }, 8);
      double best = INFINITY;
      for (int64_t k = 1; k <= nk; ++k) {
        double e = 0;
        for (int64_t r = 0; r < rows; ++r) e += err[r * nk + (k - 1)];
        if (e < best) { best = e; best_k = k; }
      }
    }
  } else {
    best_k = std::min(o.fixed_salient, nb);
  }
  std::vector<uint8_t> colsal(nb, 0);
  for (int64_t k = 0; k < best_k; ++k) colsal[order[k]] = 1;

  // 2) break point over percentiles of |M·¬sal| (salient entries enter the quantile as zeros, as in the reference).
  std::vector<float> flat(rows * nb);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < nb; ++k) flat[r * nb + k] = colsal[k] ? 0.f : std::fabs(M[r * nb + k]);
  std::sort(flat.begin(), flat.end());
  const int kP = 81;
  std::vector<float> splits(kP);
  for (int i = 0; i < kP; ++i) splits[i] = static_cast<float>(quantile_sorted(flat, 0.10 + 0.01 * i));
  flat.clear();
  flat.shrink_to_fit();
  std::vector<double> err(rows * kP, 0.0);
  parallel_for(rows, [&](std::size_t r0, std::size_t r1, int) {
    std::vector<uint8_t> g(nb);
    std::vector<float> qs(nb, 0.f), q(nb);
    for (int64_t r = r0; r < static_cast<int64_t>(r1); ++r) {
      const float* x = &M[r * nb];
      for (int64_t k = 0; k < nb; ++k) g[k] = colsal[k] ? kSal : kConc;
      std::fill(qs.begin(), qs.end(), 0.f);
      residual_binarize(x, g.data(), kSal, nb, 2, o.centered, qs.data());
      for (int i = 0; i < kP; ++i) {
        for (int64_t k = 0; k < nb; ++k)
          if (!colsal[k]) g[k] = std::fabs(x[k]) >= splits[i] ? kSparse : kConc;
        q = qs;
        residual_binarize(x, g.data(), kConc, nb, 1, o.centered, q.data());
        residual_binarize(x, g.data(), kSparse, nb, 1, o.centered, q.data());
        err[r * kP + i] = sq_err(x, q.data(), nb);
      }
    }
  }, 8);
  double best = INFINITY;
  int best_i = 0;
  for (int i = 0; i < kP; ++i) {
    double e = 0;
    for (int64_t r = 0; r < rows; ++r) e += err[r * kP + i];
    if (e < best) { best = e; best_i = i; }
  }
  const float p = splits[best_i];
  grp.resize(rows * nb);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < nb; ++k)
      grp[r * nb + k] = colsal[k] ? kSal : (std::fabs(M[r * nb + k]) >= p ? kSparse : kConc);
  return best_k;
}

void billm(const MatView& Win, int64_t rows, int64_t cols, const float* Hin, const BillmOpts& o, BillmResult& res,
           const CancelFlag& cancel) {
  std::vector<float> W(rows * cols);
  parallel_for(rows, [&](std::size_t b, std::size_t e, int) {
    for (std::size_t i = b; i < e; ++i) Win.row_to_f32(i, 0, cols, &W[i * cols]);
  }, 16);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      if (!std::isfinite(W[r * cols + c]))
        throw std::invalid_argument("billmQuantize: weight has a non-finite value (NaN/Inf) at row " + std::to_string(r) +
                                    ", column " + std::to_string(c));
  std::vector<double> H(Hin, Hin + cols * cols);
  for (int64_t i = 0; i < cols * cols; ++i)
    if (!std::isfinite(H[i]))
      throw std::invalid_argument("billmQuantize: hessian has a non-finite value (NaN/Inf) at [" + std::to_string(i / cols) +
                                  ", " + std::to_string(i % cols) + "]");
  for (int64_t i = 0; i < cols; ++i) {
    if (H[i * cols + i] == 0) {  // a column no calibration token touched
      H[i * cols + i] = 1;
      for (int64_t r = 0; r < rows; ++r) W[r * cols + i] = 0;
      ++res.dead;
    }
  }
  double mean_diag = 0;
  for (int64_t i = 0; i < cols; ++i) mean_diag += H[i * cols + i];
  mean_diag /= cols;
  for (int64_t i = 0; i < cols; ++i) H[i * cols + i] += o.damp * mean_diag;
  if (!inverse_cholesky_upper(H, cols))
    throw std::runtime_error("billmQuantize: the damped Hessian is not positive definite; raise damp");
  std::vector<float> Hinv(H.begin(), H.end());
  H.clear();
  H.shrink_to_fit();
  for (int64_t i = 0; i < cols; ++i)
    if (!(Hinv[i * cols + i] > 0) || !std::isfinite(Hinv[i * cols + i]))
      throw std::runtime_error("billmQuantize: the damped Hessian is numerically singular; raise damp");

  res.w.assign(rows * cols, 0.f);
  res.salient_mask.assign(cols, 0);
  const int64_t wpr = (cols + 15) / 16, nblocks = (cols + o.block - 1) / o.block;
  res.codes.assign(rows * wpr, 0);
  res.scales.assign(rows * nblocks * kNScales, 0);
  std::atomic<bool> overflow{false};  // a scale beyond the fp16 range (reported after the parallel loop)
  std::vector<double> row_loss(rows, 0.0);
  const int64_t B = o.block;
  std::vector<float> Wb(rows * B), Mb(rows * B), Qb(rows * B), E(rows * B);
  std::vector<uint8_t> grp;
  for (int64_t i1 = 0; i1 < cols; i1 += B) {
    cancel.check();
    const int64_t i2 = std::min(i1 + B, cols), nb = i2 - i1;
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(&Wb[r * nb], &W[r * cols + i1], nb * sizeof(float));
    // Saliency of the block's columns.
    std::vector<double> sal(nb, 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < nb; ++k) {
        const double w = Wb[r * nb + k];
        if (o.hessian_metric) {
          const double d = Hinv[(i1 + k) * cols + (i1 + k)];
          sal[k] += w * w / (d * d);
        } else {
          sal[k] += std::fabs(w);
        }
      }
    if (o.search_on_saliency && o.hessian_metric) {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < nb; ++k) {
          const double w = Wb[r * nb + k], d = Hinv[(i1 + k) * cols + (i1 + k)];
          Mb[r * nb + k] = static_cast<float>(w * w / (d * d));
        }
    } else {
      std::copy(Wb.begin(), Wb.begin() + rows * nb, Mb.begin());
    }
    const int64_t k = structural_search(Mb, sal, rows, nb, o, grp);
    res.block_salient.push_back(static_cast<int32_t>(k));
    res.salient += k;
    for (int64_t c = 0; c < nb; ++c) res.salient_mask[i1 + c] = grp[c] == kSal;  // same in every row

    // Binarize the block at once (recording its binary structure), then the error feedback.
    const int64_t blk = i1 / B;
    parallel_for(rows, [&](std::size_t r0, std::size_t r1, int) {
      std::vector<uint8_t> bits(nb);
      float ab[kNScales];
      for (int64_t r = r0; r < static_cast<int64_t>(r1); ++r) {
        float* x = &Wb[r * nb];
        float* q = &Qb[r * nb];
        const uint8_t* g = &grp[r * nb];
        std::fill(q, q + nb, 0.f);
        std::fill(bits.begin(), bits.end(), 0);
        std::fill(ab, ab + kNScales, 0.f);
        const Stored sal{ab + kA1, bits.data()}, conc{ab + kAc, bits.data()}, sparse{ab + kAs, bits.data()};
        residual_binarize(x, g, kSal, nb, 2, o.centered, q, &sal);
        residual_binarize(x, g, kConc, nb, 1, o.centered, q, &conc);
        residual_binarize(x, g, kSparse, nb, 1, o.centered, q, &sparse);
        std::memcpy(&res.w[r * cols + i1], q, nb * sizeof(float));
        uint16_t* sc = &res.scales[(r * nblocks + blk) * kNScales];
        for (int k = 0; k < kNScales; ++k) {
          if (!std::isfinite(ab[k])) overflow.store(true, std::memory_order_relaxed);
          sc[k] = f32_to_f16(ab[k]);
        }
        // Bit 0: the first sign. Bit 1: the second residual sign (salient) or the sparse flag.
        uint32_t* cw = &res.codes[r * wpr];
        for (int64_t k = 0; k < nb; ++k) {
          const int64_t c = i1 + k;
          const uint32_t b0 = bits[k] & 1u, b1 = g[k] == kSal ? (bits[k] >> 1) & 1u : g[k] == kSparse;
          cw[c / 16] |= (b0 | b1 << 1) << (2 * (c % 16));
        }
        if (!o.feedback) continue;
        for (int64_t i = 0; i < nb; ++i) {
          const int64_t c = i1 + i;
          const float d = Hinv[c * cols + c];
          const float err = (x[i] - q[i]) / d;
          row_loss[r] += static_cast<double>(x[i] - q[i]) * (x[i] - q[i]) / (static_cast<double>(d) * d) / 2;
          E[r * B + i] = err;
          if (o.exact_feedback) {
            const float* h = &Hinv[c * cols];
            for (int64_t j = i + 1; j < nb; ++j) x[j] -= err * h[i1 + j];
          }
        }
      }
    }, 4);
    if (o.feedback && i2 < cols) {  // W[:, i2:] -= E · Hinv[i1:i2, i2:]
      GemmArgs g;
      g.M = rows; g.N = cols - i2; g.K = nb; g.A = E.data(); g.lda = B;
      g.B.data = &Hinv[i1 * cols + i2]; g.B.dtype = DType::F32; g.B.ld = cols;
      g.C = &W[i2]; g.ldc = cols; g.alpha = -1.f; g.beta = 1.f;
      gemm(g);
    }
  }
  if (overflow.load())
    throw std::invalid_argument("billmQuantize: a binarization scale exceeds the fp16 range (|w| > 65504) and cannot be stored");
  res.loss = std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
  billm_finish(res, cols, o.block);
}

template <class T, class A>
A copy_out(Napi::Env env, const std::vector<T>& v) {
  auto a = A::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * sizeof(T));
  return a;
}

int64_t get_int(const Napi::Object& o, const char* key, bool required, int64_t def) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) {
    if (required) throw std::invalid_argument(std::string("billmQuantize: options.") + key + " is required");
    return def;
  }
  if (!v.IsNumber()) throw std::invalid_argument(std::string("billmQuantize: options.") + key + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d))
    throw std::invalid_argument(std::string("billmQuantize: options.") + key + " must be an integer, got " + std::to_string(d));
  return static_cast<int64_t>(d);
}

bool get_bool(const Napi::Object& o, const char* key, bool def) {
  Napi::Value v = o.Get(key);
  return (v.IsUndefined() || v.IsNull()) ? def : v.ToBoolean().Value();
}

// billmQuantize(W, H: Float32Array [cols, cols], {rows, cols, ...billm_options_from_js's, cancel}) →
//   Promise<billm_result_js's object>
Napi::Value BillmQuantize(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (info.Length() < 3 || !info[2].IsObject())
      throw std::invalid_argument("billmQuantize(weight, hessian, options): options object required");
    Napi::Object o = info[2].As<Napi::Object>();
    const int64_t rows = get_int(o, "rows", true, 0), cols = get_int(o, "cols", true, 0);
    if (rows < 1 || cols < 1)
      throw std::invalid_argument("billmQuantize: rows and cols must be positive, got " + std::to_string(rows) + "x" +
                                  std::to_string(cols));
    const BillmOpts opt = billm_options_from_js(o);
    MatView W = mat_from_js(info[0], rows, cols, "billmQuantize: weight");
    const float* H = cf32_from_js(info[1], cols * cols, "billmQuantize: hessian");
    CancelFlag cancel(o.Get("cancel"));
    auto r = std::make_shared<BillmResult>();
    return run_async(info.Env(), [=] { billm(W, rows, cols, H, opt, *r, cancel); },
      [r, opt](Napi::Env env) { return billm_result_js(env, *r, opt.block); }, {info[0], info[1], info[2]});
  });
}

}  // namespace

BillmOptions billm_options_from_js(const Napi::Object& o) {
  BillmOptions opt;
  opt.block = get_int(o, "blockSize", false, 128);
  if (opt.block < 1) throw std::invalid_argument("billmQuantize: blockSize must be >= 1, got " + std::to_string(opt.block));
  Napi::Value dv = o.Get("damp");
  if (!dv.IsUndefined() && !dv.IsNull()) {
    if (!dv.IsNumber()) throw std::invalid_argument("billmQuantize: options.damp must be a number");
    opt.damp = dv.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(opt.damp) || opt.damp < 0) throw std::invalid_argument("billmQuantize: damp must be a finite number >= 0");
  }
  opt.saliency_search = get_bool(o, "saliencySearch", true);
  opt.fixed_salient = get_int(o, "fixedSalient", false, 0);
  opt.max_salient = get_int(o, "maxSalient", false, 50);
  if (opt.fixed_salient < 0 || opt.max_salient < 1)
    throw std::invalid_argument("billmQuantize: fixedSalient must be >= 0 and maxSalient >= 1");
  Napi::Value mv = o.Get("salientMetric");
  if (!mv.IsUndefined() && !mv.IsNull()) {
    const std::string m = mv.ToString().Utf8Value();
    if (m == "hessian") opt.hessian_metric = true;
    else if (m == "magnitude") opt.hessian_metric = false;
    else throw std::invalid_argument("billmQuantize: salientMetric must be 'hessian' or 'magnitude', got '" + m + "'");
  }
  opt.search_on_saliency = get_bool(o, "searchOnSaliency", false);
  opt.feedback = get_bool(o, "errorFeedback", true);
  opt.exact_feedback = get_bool(o, "exactFeedback", false);
  opt.centered = get_bool(o, "centered", true);
  return opt;
}

void billm_finish(BillmResult& res, int64_t cols, int64_t block) {
  res.salient_bits.assign((cols + 7) / 8, 0);
  for (int64_t c = 0; c < cols; ++c) res.salient_bits[c / 8] |= static_cast<uint8_t>(res.salient_mask[c] << (c % 8));
  // Bits, as the paper counts them (Sec. 4.1 / "extra storing bits"): salient weights take 2 bits (two binary
  // residual planes), the rest 1 bit, so N_param = 2·r_salient + 1·(1 − r_salient) = 1 + r_salient, where
  // r_salient = salient columns / cols. That is the 1.08–1.11 "W-bits" the paper reports. The masks are counted
  // separately as N_storing = 1 + 1/b_size: 1 bit per non-salient weight for the concentrated/sparse group
  // bitmap, plus the per-block salient-column bitmap (b_size bits per block, 1/b_size per weight as the paper
  // amortises it). Scales (fp16 α/μ per row and group) are not counted, as in the paper.
  const double r_sal = static_cast<double>(res.salient) / static_cast<double>(cols);
  res.avg_bits = 2.0 * r_sal + 1.0 * (1.0 - r_sal);
  res.storing_bits = 1.0 + 1.0 / static_cast<double>(block);
}

Napi::Value billm_result_js(Napi::Env env, const BillmResult& r, int64_t block) {
  Napi::Object out = Napi::Object::New(env);
  if (!r.w.empty()) out.Set("weight", copy_out<float, Napi::Float32Array>(env, r.w));
  out.Set("avgBits", Napi::Number::New(env, r.avg_bits));
  out.Set("storingBits", Napi::Number::New(env, r.storing_bits));
  out.Set("salientColumns", Napi::Number::New(env, static_cast<double>(r.salient)));
  out.Set("blockSalient", copy_out<int32_t, Napi::Int32Array>(env, r.block_salient));
  out.Set("salientMask", copy_out<uint8_t, Napi::Uint8Array>(env, r.salient_mask));
  out.Set("loss", Napi::Number::New(env, r.loss));
  out.Set("deadColumns", Napi::Number::New(env, static_cast<double>(r.dead)));
  Napi::Object b = Napi::Object::New(env);
  b.Set("block", Napi::Number::New(env, static_cast<double>(block)));
  b.Set("salient", copy_out<uint8_t, Napi::Uint8Array>(env, r.salient_bits));
  auto codes = Napi::Int32Array::New(env, r.codes.size());
  if (!r.codes.empty()) std::memcpy(codes.Data(), r.codes.data(), r.codes.size() * 4);
  b.Set("codes", codes);
  b.Set("scales", copy_out<uint16_t, Napi::Uint16Array>(env, r.scales));
  out.Set("binary", b);
  return out;
}

LOWBIT_EXPORTS { exports.Set("billmQuantize", Napi::Function::New(env, BillmQuantize)); }

}  // namespace lowbit
