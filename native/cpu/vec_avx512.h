// 16 fp32 lanes of AVX-512 as the vector-traits type the templated kernels take (packed_kernels.h, dot_tile.h).
// Include only after the translation unit's `#pragma GCC target` (avx512f/bw/vl/dq, fma), inside its anonymous
// namespace, like those headers: each TU gets its own copy with its ISA.
struct V512 {
  using F = __m512;
  using I = __m512i;
  static constexpr int L = 16;
  static constexpr int GEMV_NA = 1, GEMV_NB = 2;  // GEMV accumulator sets, row blocks per pass
  static constexpr int64_t TILE_KCHUNK = 1024;  // columns per K chunk of the M > 4 tiles
  static constexpr int DOT_MR = 6;  // tokens per dot_tile
  static constexpr int MRMAX = 4;
  static inline F zero() { return _mm512_setzero_ps(); }
  static inline F loadu(const float* p) { return _mm512_loadu_ps(p); }
  static inline void storeu(float* p, F v) { _mm512_storeu_ps(p, v); }
  static inline I loadi(const void* p) { return _mm512_loadu_si512(p); }
  static inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
  static inline F set1(float v) { return _mm512_set1_ps(v); }
  static inline F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static inline F add(F a, F b) { return _mm512_add_ps(a, b); }
  static inline float hsum(F v) { return _mm512_reduce_add_ps(v); }
  template <int SH>
  static inline I sh(I v) {
    if constexpr (SH > 0) return _mm512_slli_epi32(v, SH);
    else if constexpr (SH < 0) return _mm512_srli_epi32(v, -SH);
    else return v;
  }
  static inline F field(I v, uint32_t mask) {
    // (v & mask) | bits(1.0f): A&B|C
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(v, _mm512_set1_epi32(static_cast<int>(mask)), _mm512_set1_epi32(0x3F800000), 0xEA));
  }
  static inline F field2(I a, I b, uint32_t sel, uint32_t mask) {
    I t = _mm512_ternarylogic_epi32(_mm512_set1_epi32(static_cast<int>(sel)), a, b, 0xCA);  // sel ? a : b
    return field(t, mask);
  }
};
