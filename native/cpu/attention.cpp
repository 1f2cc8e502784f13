#include "attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "gemm.h"
#include "vexp.h"
#include "threads.h"

namespace lowbit {

void causal_attention(const float* q, const float* k, const float* v, float* out, int64_t T, int64_t seqLen,
                      int64_t nh, int64_t nkv, int64_t hd) {
  const int64_t BQ = 64;
  const int64_t nseq = T / seqLen, nqb = (seqLen + BQ - 1) / BQ, group = nh / nkv;
  const int64_t ldq = nh * hd, ldk = nkv * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // Later query blocks see more keys; interleaving big and small keeps the static split balanced.
  const int64_t units = nseq * nh * nqb;
  parallel_for(units, [&](std::size_t u0, std::size_t u1, int) {
    std::vector<float> scores(BQ * seqLen);
    for (int64_t u = u0; u < static_cast<int64_t>(u1); ++u) {
      int64_t s = u / (nh * nqb), rem = u % (nh * nqb), h = rem / nqb, qb = rem % nqb;
      if (qb % 2) qb = nqb - 1 - qb / 2; else qb = qb / 2;
      int64_t q0 = qb * BQ, nq = std::min(BQ, seqLen - q0), nk = q0 + nq;
      int64_t kh = h / group;
      const float* qp = q + (s * seqLen + q0) * ldq + h * hd;
      const float* kp = k + (s * seqLen) * ldk + kh * hd;
      const float* vp = v + (s * seqLen) * ldk + kh * hd;
      GemmArgs g;
      g.M = nq; g.N = nk; g.K = hd; g.transB = true; g.A = qp; g.lda = ldq;
      g.B.data = kp; g.B.dtype = DType::F32; g.B.ld = ldk;
      g.C = scores.data(); g.ldc = nk; g.alpha = scale; g.parallel = false;
      gemm(g);
      for (int64_t i = 0; i < nq; ++i) {
        float* row = scores.data() + i * nk;
        int64_t lim = q0 + i + 1;  // causal: keys [0, lim)
        const float m = max_f32(row, lim);
        const float inv = static_cast<float>(1.0 / exp_shift_sum(row, row, lim, m));
        for (int64_t j = 0; j < lim; ++j) row[j] *= inv;
        for (int64_t j = lim; j < nk; ++j) row[j] = 0.0f;
      }
      GemmArgs o;
      o.M = nq; o.N = hd; o.K = nk; o.A = scores.data(); o.lda = nk;
      o.B.data = vp; o.B.dtype = DType::F32; o.B.ld = ldk;
      o.C = out + (s * seqLen + q0) * ldq + h * hd; o.ldc = ldq; o.parallel = false;
      gemm(o);
    }
  });
}

}  // namespace lowbit
