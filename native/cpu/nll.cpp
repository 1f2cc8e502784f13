#include "nll.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "gemm.h"
#include "vexp.h"
#include "threads.h"

namespace lowbit {

void lm_head_nll(const float* x, const MatView& head, int64_t T, int64_t d, int64_t V, const int32_t* target,
                 double* nll, int topk, int32_t* top_idx, float* top_val) {
  // Rows per block bounded so a block of logits stays a few MB even for 150k-token vocabularies.
  const int64_t RB = std::max<int64_t>(1, std::min<int64_t>(64, (4 << 20) / (V * 4)));
  const int64_t nb = (T + RB - 1) / RB;
  parallel_for(nb, [&](std::size_t b0, std::size_t b1, int) {
    std::vector<float> logits(RB * V);
    for (int64_t b = b0; b < static_cast<int64_t>(b1); ++b) {
      int64_t r0 = b * RB, nr = std::min(RB, T - r0);
      GemmArgs g;
      g.M = nr; g.N = V; g.K = d; g.transB = true; g.A = x + r0 * d; g.lda = d;
      g.B = head; g.C = logits.data(); g.ldc = V; g.parallel = false;
      gemm(g);
      for (int64_t i = 0; i < nr; ++i) {
        const float* l = logits.data() + i * V;
        int64_t t = r0 + i;
        if (target[t] >= 0) {
          const float m = max_f32(l, V);
          nll[t] = static_cast<double>(m) + std::log(exp_shift_sum(l, nullptr, V, m)) - l[target[t]];
        } else {
          nll[t] = 0;
        }
        if (topk > 0) {
          std::vector<int32_t> idx(V);
          for (int64_t j = 0; j < V; ++j) idx[j] = static_cast<int32_t>(j);
          std::partial_sort(idx.begin(), idx.begin() + topk, idx.end(),
                            [&](int32_t a, int32_t c) { return l[a] > l[c] || (l[a] == l[c] && a < c); });
          for (int k = 0; k < topk; ++k) {
            top_idx[t * topk + k] = idx[k];
            top_val[t * topk + k] = l[idx[k]];
          }
        }
      }
    }
  });
}

}  // namespace lowbit
