// Uniform integer quantization grids as the reference PTQ code defines them. Rounding is
// round-half-to-even (nearbyint), as torch.round does, so results match the references bit for bit.
#pragma once
#include <cmath>
#include <cstdint>

namespace lowbit {

struct QParams {
  float scale = 1.f, zero = 0.f;
};

// GPTQ's quantizer: the range [min, max] always includes 0; asymmetric zero = round(-min/scale);
// symmetric uses max(|min|, max) with zero at the grid's middle ((maxq+1)/2).
inline QParams gptq_params(const float* w, int64_t n, int64_t stride, int bits, bool sym) {
  float mn = 0.f, mx = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    float v = w[i * stride];
    mn = std::fmin(mn, v);
    mx = std::fmax(mx, v);
  }
  float maxq = static_cast<float>((1 << bits) - 1);
  if (sym) {
    mx = std::fmax(std::fabs(mn), mx);
    if (mn < 0) mn = -mx;
  }
  if (mn == 0.f && mx == 0.f) { mn = -1.f; mx = 1.f; }
  QParams p;
  p.scale = (mx - mn) / maxq;
  p.zero = sym ? (maxq + 1.f) / 2.f : std::nearbyint(-mn / p.scale);
  return p;
}

// llm-awq's pseudo_quantize_tensor grid: asymmetric over [min, max] (not forced to include 0),
// scale floored at 1e-5/maxq, zero clamped to the grid.
inline QParams awq_params(const float* w, int64_t n, int bits) {
  float mn = INFINITY, mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) { mn = std::fmin(mn, w[i]); mx = std::fmax(mx, w[i]); }
  float maxq = static_cast<float>((1 << bits) - 1);
  QParams p;
  p.scale = std::fmax(mx - mn, 1e-5f) / maxq;
  p.zero = std::fmin(std::fmax(-std::nearbyint(mn / p.scale), 0.f), maxq);
  return p;
}

// SmoothQuant's symmetric absmax grid: s = max|w| / (2^(bits-1) - 1), integers in ±(2^(bits-1) - 1), stored with
// the zero point at 2^(bits-1) so every grid dequantizes as scale * (q - zero).
inline QParams absmax_params(const float* w, int64_t n, int bits) {
  float m = 0.f;
  for (int64_t i = 0; i < n; ++i) m = std::fmax(m, std::fabs(w[i]));
  QParams p;
  p.scale = std::fmax(m, 1e-5f) / static_cast<float>((1 << (bits - 1)) - 1);
  p.zero = static_cast<float>(1 << (bits - 1));
  return p;
}

inline float quant_int(float w, const QParams& p, float maxq) {
  return std::fmin(std::fmax(std::nearbyint(w / p.scale) + p.zero, 0.f), maxq);
}

inline float fake_quant(float w, const QParams& p, float maxq) { return p.scale * (quant_int(w, p, maxq) - p.zero); }

}  // namespace lowbit
