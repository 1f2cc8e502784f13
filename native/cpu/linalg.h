#pragma once
#include <cstdint>
#include <vector>

namespace lowbit {

// In place: A (n×n, row-major, symmetric positive definite) → its lower Cholesky factor L (upper part zeroed).
// Returns false if A is not positive definite.
bool cholesky_lower(std::vector<double>& A, int64_t n);
// The upper Cholesky factor U of A⁻¹ (A⁻¹ = UᵀU), as GPTQ uses: cholesky(cholesky_inverse(cholesky(A)), upper).
bool inverse_cholesky_upper(std::vector<double>& A, int64_t n);

}  // namespace lowbit
