#include "panel_gemm.h"

#include <algorithm>

#include "gemm.h"
#include "scratch.h"
#include "threads.h"

namespace lowbit {
namespace {
thread_local AlignedScratch t_panel;
}  // namespace

void panel_gemm(int64_t rows, int64_t rows_pad, int64_t cols, int64_t kpad, int64_t kc_max, const float* x, int64_t ldx, int64_t M,
                float* y, bool parallel, const PanelDequant& dequant) {
  const int64_t ntiles = cdiv(rows_pad, kPanelRows);
  auto tiles = [&](std::size_t b, std::size_t e, int) {
    for (int64_t t = b; t < static_cast<int64_t>(e); ++t) {
      const int64_t r0 = t * kPanelRows, nr = std::min(kPanelRows, rows_pad - r0);
      const int64_t nvalid = std::min(nr, rows - r0);
      if (nvalid <= 0) continue;
      float* panel = t_panel.get(static_cast<std::size_t>(nr * kc_max));
      for (int64_t k0 = 0; k0 < cols; k0 += kc_max) {
        const int64_t kc = std::min(kc_max, kpad - k0);
        dequant(r0, nr, k0, kc, panel);
        GemmArgs g;
        g.M = M;
        g.N = nvalid;
        g.K = std::min(kc, cols - k0);
        g.transB = true;
        g.A = x + k0;
        g.lda = ldx;
        g.B = MatView{panel, DType::F32, kc};
        g.C = y + r0;
        g.ldc = rows;
        g.beta = k0 == 0 ? 0.f : 1.f;
        g.parallel = false;
        gemm(g);
      }
    }
  };
  if (parallel) parallel_for(ntiles, tiles, 1);
  else tiles(0, ntiles, 0);
}

}  // namespace lowbit
