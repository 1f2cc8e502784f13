#include "ops.h"

#include <cmath>
#include <vector>

#include "threads.h"

namespace lowbit {

void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps, int64_t ldx, int64_t ldy) {
  parallel_for(rows, [&](std::size_t r0, std::size_t r1, int) {
    for (int64_t r = r0; r < static_cast<int64_t>(r1); ++r) {
      const float* xr = x + r * ldx;
      float* yr = y + r * ldy;
      double ss = 0;
      for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(xr[i]) * xr[i];
      // transformers: variance in fp32, x * rsqrt(var + eps), then weight * x
      float inv = 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);
      for (int64_t i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * inv);
    }
  }, 16);
}

void rope(float* x, int64_t T, int64_t seqLen, int64_t nheads, int64_t hd, float theta) {
  int64_t half = hd / 2;
  // transformers computes inv_freq and the angles in fp32; doing the same keeps logits within a few ulp.
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    float e = static_cast<float>(2 * i) / static_cast<float>(hd);
    float p = static_cast<float>(std::pow(static_cast<double>(theta), static_cast<double>(e)));
    inv_freq[i] = 1.0f / p;
  }
  std::vector<float> cosv(seqLen * half), sinv(seqLen * half);
  for (int64_t p = 0; p < seqLen; ++p)
    for (int64_t i = 0; i < half; ++i) {
      float a = static_cast<float>(p) * inv_freq[i];
      cosv[p * half + i] = static_cast<float>(std::cos(static_cast<double>(a)));
      sinv[p * half + i] = static_cast<float>(std::sin(static_cast<double>(a)));
    }
  parallel_for(T, [&](std::size_t t0, std::size_t t1, int) {
    for (int64_t t = t0; t < static_cast<int64_t>(t1); ++t) {
      const float* c = &cosv[(t % seqLen) * half];
      const float* s = &sinv[(t % seqLen) * half];
      for (int64_t h = 0; h < nheads; ++h) {
        float* v = x + (t * nheads + h) * hd;
        for (int64_t i = 0; i < half; ++i) {
          float x1 = v[i], x2 = v[i + half];
          v[i] = x1 * c[i] - x2 * s[i];
          v[i + half] = x2 * c[i] + x1 * s[i];
        }
      }
    }
  }, 16);
}

void silu_mul(float* g, const float* u, int64_t n) {
  parallel_for(n, [&](std::size_t b, std::size_t e, int) {
    for (std::size_t i = b; i < e; ++i) {
      float v = g[i];
      g[i] = v / (1.0f + std::exp(-v)) * u[i];
    }
  }, 4096);
}

void fake_quant_rows_sym(float* x, int64_t rows, int64_t n, int bits) {
  float qmax = static_cast<float>((1 << (bits - 1)) - 1);
  parallel_for(rows, [&](std::size_t r0, std::size_t r1, int) {
    for (int64_t r = r0; r < static_cast<int64_t>(r1); ++r) {
      float* v = x + r * n;
      float m = 0;
      for (int64_t i = 0; i < n; ++i) m = std::fmax(m, std::fabs(v[i]));
      float s = std::fmax(m, 1e-5f) / qmax;
      for (int64_t i = 0; i < n; ++i) v[i] = std::nearbyint(v[i] / s) * s;
    }
  }, 16);
}

void embed_rows(const MatView& table, const int32_t* ids, int64_t n, int64_t hidden, float* out) {
  parallel_for(n, [&](std::size_t b, std::size_t e, int) {
    for (std::size_t i = b; i < e; ++i) table.row_to_f32(ids[i], 0, hidden, out + i * hidden);
  }, 64);
}

}  // namespace lowbit
