// AVX-512 packed-weight kernels (the templates of packed_kernels.h with 16 fp32 lanes). Compiled with a
// function-level target like gemm_avx512.cpp; packed.cpp only calls them when simd_level() is Avx512.
// Every header is included before the target pragma.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "packed.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace lowbit {
namespace packed_detail {
namespace {

#include "vec_avx512.h"

#include "packed_kernels.h"

}  // namespace

const Kernels* kernels_avx512(int bits) { return kernels_for_bits<V512>(bits); }

}  // namespace packed_detail
}  // namespace lowbit

#pragma GCC pop_options
#endif
