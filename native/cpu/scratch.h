// Per-thread scratch for the packed kernels: a 64-byte-aligned float buffer that only grows, so panels of
// dequantized weights are allocated once per thread, not per call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace lowbit {

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct AlignedScratch {
  float* p = nullptr;
  std::size_t n = 0;
  ~AlignedScratch() { std::free(p); }
  float* get(std::size_t count) {
    if (count > n) {
      std::free(p);
      p = static_cast<float*>(std::aligned_alloc(64, (count * sizeof(float) + 63) / 64 * 64));
      if (!p) {
        n = 0;
        throw std::bad_alloc();
      }
      n = count;
    }
    return p;
  }
};

}  // namespace lowbit
