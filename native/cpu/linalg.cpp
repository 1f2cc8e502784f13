#include "linalg.h"

#include <cmath>

#include "threads.h"

namespace lowbit {

bool cholesky_lower(std::vector<double>& A, int64_t n) {
  // Column by column with row dot products (both operands contiguous); rows below the diagonal in parallel.
  for (int64_t j = 0; j < n; ++j) {
    double* aj = &A[j * n];
    double d = aj[j];
    for (int64_t k = 0; k < j; ++k) d -= aj[k] * aj[k];
    if (!(d > 0)) return false;
    d = std::sqrt(d);
    aj[j] = d;
    parallel_for(n - j - 1, [&](std::size_t b, std::size_t e, int) {
      for (int64_t i = j + 1 + b; i < j + 1 + static_cast<int64_t>(e); ++i) {
        double* ai = &A[i * n];
        double s = ai[j];
        for (int64_t k = 0; k < j; ++k) s -= ai[k] * aj[k];
        ai[j] = s / d;
      }
    }, 64);
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = i + 1; k < n; ++k) A[i * n + k] = 0;
  return true;
}

bool inverse_cholesky_upper(std::vector<double>& A, int64_t n) {
  if (!cholesky_lower(A, n)) return false;
  // Column c of L⁻¹ is stored as row c of Lt, so both loops below read memory contiguously.
  std::vector<double> Lt(n * n, 0.0);
  parallel_for(n, [&](std::size_t b, std::size_t e, int) {
    for (int64_t c = b; c < static_cast<int64_t>(e); ++c) {
      double* lc = &Lt[c * n];
      lc[c] = 1.0 / A[c * n + c];
      for (int64_t i = c + 1; i < n; ++i) {
        const double* ai = &A[i * n];
        double s = 0;
        for (int64_t k = c; k < i; ++k) s += ai[k] * lc[k];
        lc[i] = -s / ai[i];
      }
    }
  }, 8);
  // A⁻¹ = L⁻ᵀ L⁻¹: entry (i, j) = Σ_{k ≥ max(i,j)} L⁻¹[k,i] L⁻¹[k,j]
  parallel_for(n, [&](std::size_t b, std::size_t e, int) {
    for (int64_t i = b; i < static_cast<int64_t>(e); ++i)
      for (int64_t j = 0; j <= i; ++j) {
        const double *li = &Lt[i * n], *lj = &Lt[j * n];
        double s = 0;
        for (int64_t k = i; k < n; ++k) s += li[k] * lj[k];
        A[i * n + j] = s;
        A[j * n + i] = s;
      }
  }, 8);
  if (!cholesky_lower(A, n)) return false;
  // Upper factor U = Lᵀ.
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) {
      A[i * n + j] = A[j * n + i];
      A[j * n + i] = 0;
    }
  return true;
}

}  // namespace lowbit
