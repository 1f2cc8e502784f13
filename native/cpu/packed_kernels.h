// The packed-weight kernels, written once over a vector-traits type V and instantiated by
// packed_avx512.cpp (V = 16 fp32 lanes) and packed_avx2.cpp (V = 8 lanes, two halves per 16-lane
// step). Include this only after the translation unit's `#pragma GCC target`, inside its own
// anonymous namespace: every function here then has internal linkage and that TU's ISA.
// See packed.h for the layout and the arithmetic (f = 1 + q/2^bits, w = A*f + B).
//
// V provides: F, I, L (lanes), zero(), loadu(const float*), storeu(float*, F), loadi(const void*),
// set1(float), fma(a, b, c) = a*b + c, add(a, b), hsum(F), sh<SH>(I) (left for SH > 0, right for SH < 0),
// field(I v, mask) = float bits (v & mask) | 1.0f, field2(I a, I b, sel, mask) = ((a & sel) | (b & ~sel)) & mask | 1.0f.

#include "dot_tile.h"

template <int J, int N, class Fn>
inline __attribute__((always_inline)) void static_for(Fn&& f) {
  if constexpr (J < N) {
    f(std::integral_constant<int, J>{});
    static_for<J + 1, N>(f);
  }
}

template <class V, int BITS>
struct Unpack {
  static constexpr int S = 32 / BITS;  // steps per unit
  static constexpr int P = 23 - BITS;  // q's lowest bit in the mantissa
  static constexpr uint32_t MASK = ((1u << BITS) - 1u) << P;
  template <int J>
  static inline __attribute__((always_inline)) typename V::F get(const uint8_t* d, int h) {
    return V::field(V::template sh<P - BITS * J>(V::loadi(d + h * V::L * 4)), MASK);
  }
};

template <class V>
struct Unpack<V, 3> {
  static constexpr int S = 32;
  template <int J>
  static inline __attribute__((always_inline)) typename V::F get(const uint8_t* d, int h) {
    typename V::I lo = V::template sh<20 - 2 * (J % 16)>(V::loadi(d + (J / 16) * 64 + h * V::L * 4));
    typename V::I hi = V::template sh<22 - J>(V::loadi(d + 128 + h * V::L * 4));
    return V::field2(lo, hi, 0x00300000u, 0x00700000u);
  }
};

constexpr int64_t kNoBoundary = INT64_MAX;

// Walks the units u0, u0+1, … of one row block through the K-chunked layout: row 0 of the current unit
// at ptr; next() steps on, jumping to the next chunk's run of this row block when one ends.
struct UnitCursor {
  const PackedView& p;
  int64_t rb, u, left = 0;
  const uint8_t* ptr = nullptr;
  UnitCursor(const PackedView& pv, int64_t rb_, int64_t u0) : p(pv), rb(rb_), u(u0) { seek(); }
  void seek() {
    ptr = p.data + packed_unit_offset(p, rb, u);
    left = (u / p.cunits + 1) * p.cunits - u;
  }
  void next() {
    ++u;
    if (--left == 0) seek();
    else ptr += kPackRB * pack_unit_bytes(p.bits);
  }
};
constexpr int64_t kPrefetchBytes = 2048;

// NB row blocks (NB·RB rows) at a time, so every x vector loaded is used NB·RB times; NA accumulator
// sets alternate by step so that NA·NB·RB·NH independent FMA chains hide the FMA latency (4 chains alone
// are latency-bound; 8, with 3 ops per row and step, are not). xp is x·2^BITS (exact), so Σ f·xp = 2^BITS·Σ f·x and a group's sum is scaled by s
// itself (one FMA with s broadcast from memory); the zero-point term −s·(2^BITS + z)·Σx is summed per row
// after the loop, from the row block's sequential scale/zero streams. One call covers one K chunk of the
// layout (units [chunk·cunits, …)); chunk 0 writes y with the zero-point terms, later chunks add to it.
template <class V, int BITS, int NB, int NA>
inline __attribute__((always_inline)) void gemv_blocks(const PackedView& p, const float* xp, const float* xsum, float* y, int64_t rb, int64_t chunk) {
  using F = typename V::F;
  using U = Unpack<V, BITS>;
  constexpr int S = U::S, NH = 16 / V::L, RB = kPackRB, R = NB * RB;
  constexpr float TWO_B = static_cast<float>(1 << BITS);
  const int64_t u0 = chunk * p.cunits, u1 = std::min(p.nunits, u0 + p.cunits);
  const int64_t UB = pack_unit_bytes(BITS), ng = p.ngroups, gs = p.group / 16, bstride = (u1 - u0) * RB * UB;
  F gacc[NA][R][NH], racc[R][NH];
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < NH; ++h) {
      racc[r][h] = V::zero();
      for (int a = 0; a < NA; ++a) gacc[a][r][h] = V::zero();
    }
  const float* sc = p.scales + rb * ng * RB;  // row r of the pass, group g: sc[((r / RB) * ng + g) * RB + r % RB]
  const int64_t k0 = u0 * S * 16;
  int64_t g = ng > 1 ? std::min(k0 / p.group, ng - 1) : 0;
  int64_t left = g == ng - 1 ? kNoBoundary : (g + 1) * gs - k0 / 16;
  auto flush = [&](int64_t gg) {
    for (int r = 0; r < R; ++r) {
      const F s = V::set1(sc[((r / RB) * ng + gg) * RB + r % RB]);
      for (int h = 0; h < NH; ++h) {
        F t = gacc[0][r][h];
        for (int k = 1; k < NA; ++k) t = V::add(t, gacc[k][r][h]);
        racc[r][h] = V::fma(t, s, racc[r][h]);
        for (int k = 0; k < NA; ++k) gacc[k][r][h] = V::zero();
      }
    }
  };
  const uint8_t* base = p.data + packed_unit_offset(p, rb, u0);  // the pass's row blocks follow at bstride
  for (int64_t u = u0; u < u1; ++u) {
    const uint8_t* ud = base + (u - u0) * RB * UB;
    const float* xu = xp + u * S * 16;
    // With each row block's scales and zeros sequential, a pass is NB weight streams, 2·NB scale/zero streams
    // and x, which the hardware prefetchers follow; prefetching 2 KiB ahead measured no faster for int4/int8.
    // 2- and 3-bit keep it: their units span 256/512 columns of slower unpacking, and without it they fell
    // to 2–5 GB/s in some runs on 4096×14336 (int2 also keeps two accumulator sets: with one, same).
    if constexpr (BITS <= 3)
      for (int b = 0; b < NB; ++b)
        for (int64_t o = 0; o < RB * UB; o += 64) V::prefetch(ud + b * bstride + kPrefetchBytes + o);
    static_for<0, S>([&](auto jc) {
      constexpr int J = decltype(jc)::value;
      constexpr int A = J % NA;
      for (int h = 0; h < NH; ++h) {
        const F xv = V::loadu(xu + J * 16 + h * V::L);
        for (int r = 0; r < R; ++r)
          gacc[A][r][h] = V::fma(U::template get<J>(ud + (r / RB) * bstride + (r % RB) * UB, h), xv, gacc[A][r][h]);
      }
      if (--left == 0) {
        flush(g);
        ++g;
        left = g == ng - 1 ? kNoBoundary : gs;
      }
    });
  }
  flush(g);
  // The first chunk sets y (with the zero-point terms of the whole row); later chunks add to it.
  const bool first = chunk == 0;
  for (int b = 0; b < NB; ++b) {
    const float* s = sc + b * ng * RB;
    const float* z = p.zeros + (rb + b) * ng * RB;
    float corr[RB] = {};
    if (first)
      for (int64_t gg = 0; gg < ng; ++gg)
        for (int i = 0; i < RB; ++i) corr[i] -= s[gg * RB + i] * (TWO_B + z[gg * RB + i]) * xsum[gg];
    for (int i = 0; i < RB; ++i) {
      const int r = b * RB + i;
      const int64_t row = rb * RB + r;
      if (row >= p.rows) break;
      F t = racc[r][0];
      for (int h = 1; h < NH; ++h) t = V::add(t, racc[r][h]);
      y[row] = (first ? corr[i] : y[row]) + V::hsum(t);
    }
  }
}

template <class V, int BITS>
void gemv_t(const PackedView& p, const float* xp, const float* xsum, float* y, int64_t rb0, int64_t rb1) {
  // 3-bit unpacking needs the registers (and more ALU work per step than FMA latency); 2-bit: see the prefetch.
  constexpr int NB = BITS == 3 ? 1 : V::GEMV_NB, NA = BITS == 3 ? 1 : BITS == 2 ? 2 : V::GEMV_NA;
  for (int64_t c = 0; c * p.cunits < p.nunits; ++c) {
    int64_t rb = rb0;
    for (; rb + NB <= rb1; rb += NB) gemv_blocks<V, BITS, NB, NA>(p, xp, xsum, y, rb, c);
    for (; rb < rb1; ++rb) gemv_blocks<V, BITS, 1, NA>(p, xp, xsum, y, rb, c);
  }
}

// MR tokens × RB rows over packed columns [u0, u1) units, weights dequantized in registers (A*f+B) once
// per step and used for every token of the tile. acc = false: y = result; true: y += result.
template <class V, int BITS, int MR>
void tile_mr(const PackedView& p, const float* xp, int64_t ldx, float* y, int64_t rb, int64_t u0, int64_t u1, bool acc_y) {
  using F = typename V::F;
  using U = Unpack<V, BITS>;
  constexpr int S = U::S, NH = 16 / V::L, RB = kPackRB;
  constexpr float TWO_B = static_cast<float>(1 << BITS);
  const int64_t UB = pack_unit_bytes(BITS), ng = p.ngroups, gs = p.group / 16;
  F acc[MR][RB][NH];
  alignas(64) float A[RB], B[RB];
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < RB; ++i)
      for (int h = 0; h < NH; ++h) acc[m][i][h] = V::zero();
  const float* sc = p.scales + rb * ng * RB;
  const float* zr = p.zeros + rb * ng * RB;
  auto load_ab = [&](int64_t gg) {
    for (int i = 0; i < RB; ++i) {
      const float s = sc[gg * RB + i], z = zr[gg * RB + i];
      A[i] = s * TWO_B;
      B[i] = -s * (TWO_B + z);
    }
  };
  const int64_t k0 = u0 * S * 16;
  int64_t g = ng > 1 ? std::min(k0 / p.group, ng - 1) : 0;
  int64_t left = g == ng - 1 ? kNoBoundary : (g + 1) * gs - k0 / 16;
  load_ab(g);
  UnitCursor cur(p, rb, u0);
  for (int64_t u = u0; u < u1; ++u, cur.next()) {
    const uint8_t* ud = cur.ptr;
    const float* xu = xp + u * S * 16;
    for (int64_t o = 0; o < RB * UB; o += 64) V::prefetch(ud + kPrefetchBytes + o);
    static_for<0, S>([&](auto jc) {
      constexpr int J = decltype(jc)::value;
      for (int h = 0; h < NH; ++h) {
        F xv[MR];
        for (int m = 0; m < MR; ++m) xv[m] = V::loadu(xu + m * ldx + J * 16 + h * V::L);
        for (int i = 0; i < RB; ++i) {
          const F w = V::fma(U::template get<J>(ud + i * UB, h), V::set1(A[i]), V::set1(B[i]));
          for (int m = 0; m < MR; ++m) acc[m][i][h] = V::fma(w, xv[m], acc[m][i][h]);
        }
      }
      if (--left == 0) {
        ++g;
        left = g == ng - 1 ? kNoBoundary : gs;
        load_ab(g);
      }
    });
  }
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < RB; ++i) {
      const int64_t row = rb * RB + i;
      if (row >= p.rows) break;
      F t = acc[m][i][0];
      for (int h = 1; h < NH; ++h) t = V::add(t, acc[m][i][h]);
      const float v = V::hsum(t);
      float& out = y[m * p.rows + row];
      out = acc_y ? out + v : v;
    }
}

template <class V, int BITS>
void dequant_t(const PackedView& p, int64_t r0, int64_t n, int64_t k0, int64_t kc, float* out);

// All M tokens for row blocks [rb0, rb1).
// M <= 4 (small batches): register tiles of up to MRMAX tokens over all of K, weights dequantized in
// registers per tile. Larger M: K is split into chunks of TILE_KCHUNK columns (every token's x chunk
// stays in L2 while the row blocks go by); per row block and chunk the RB×chunk weights are dequantized
// once into an fp32 buffer in L1 and multiplied with every token, DOT_MR tokens at a time.
template <class V, int BITS>
void tile_t(const PackedView& p, const float* xp, int64_t ldx, int64_t M, float* y, int64_t rb0, int64_t rb1) {
  const int64_t UK = pack_unit_k(BITS);
  if (M <= 4) {
    for (int64_t rb = rb0; rb < rb1; ++rb)
      for (int64_t m0 = 0; m0 < M; m0 += V::MRMAX) {
        const float* x = xp + m0 * ldx;
        float* yy = y + m0 * p.rows;
        switch ((M - m0 < V::MRMAX ? M - m0 : V::MRMAX)) {
          case 1: tile_mr<V, BITS, 1>(p, x, ldx, yy, rb, 0, p.nunits, false); break;
          case 2: tile_mr<V, BITS, 2>(p, x, ldx, yy, rb, 0, p.nunits, false); break;
          case 3: if constexpr (V::MRMAX >= 3) tile_mr<V, BITS, 3>(p, x, ldx, yy, rb, 0, p.nunits, false); break;
          default: if constexpr (V::MRMAX >= 4) tile_mr<V, BITS, 4>(p, x, ldx, yy, rb, 0, p.nunits, false); break;
        }
      }
    return;
  }
  const int64_t chunk = std::max<int64_t>(UK, V::TILE_KCHUNK / UK * UK);
  alignas(64) float wbuf[kPackRB * (V::TILE_KCHUNK > 512 ? V::TILE_KCHUNK : 512)];
  for (int64_t k0 = 0; k0 < p.kpad; k0 += chunk) {
    const int64_t kc = std::min(chunk, p.kpad - k0);
    for (int64_t rb = rb0; rb < rb1; ++rb) {
      const int nrows = static_cast<int>(std::min<int64_t>(kPackRB, p.rows - rb * kPackRB));
      if (nrows <= 0) continue;
      dequant_t<V, BITS>(p, rb * kPackRB, kPackRB, k0, kc, wbuf);
      constexpr int MR = V::DOT_MR;
      int64_t m0 = 0;
      for (; m0 + MR <= M; m0 += MR) dot_tile<V, MR>(wbuf, kc, xp + m0 * ldx + k0, ldx, y + m0 * p.rows + rb * kPackRB, p.rows, nrows, k0 > 0);
      auto tail = [&](auto mr) {
        constexpr int T = decltype(mr)::value;
        if (M - m0 >= T) {
          dot_tile<V, T>(wbuf, kc, xp + m0 * ldx + k0, ldx, y + m0 * p.rows + rb * kPackRB, p.rows, nrows, k0 > 0);
          m0 += T;
        }
      };
      if constexpr (MR > 4) tail(std::integral_constant<int, 4>{});
      if constexpr (MR > 2) tail(std::integral_constant<int, 2>{});
      tail(std::integral_constant<int, 1>{});
    }
  }
}

template <class V, int BITS>
void dequant_t(const PackedView& p, int64_t r0, int64_t n, int64_t k0, int64_t kc, float* out) {
  using U = Unpack<V, BITS>;
  constexpr int S = U::S, NH = 16 / V::L, RB = kPackRB;
  constexpr float TWO_B = static_cast<float>(1 << BITS);
  const int64_t UB = pack_unit_bytes(BITS), UK = pack_unit_k(BITS), ng = p.ngroups, gs = p.group / 16;
  for (int64_t r = r0; r < r0 + n; ++r) {
    const int64_t rb = r / RB, i = r % RB;
    float* o = out + (r - r0) * kc;
    const float* sc = p.scales + rb * ng * RB + i;  // group g: sc[g * RB]
    const float* zr = p.zeros + rb * ng * RB + i;
    int64_t g = ng > 1 ? (k0 / p.group < ng - 1 ? k0 / p.group : ng - 1) : 0;
    int64_t left = g == ng - 1 ? kNoBoundary : (g + 1) * gs - k0 / 16;
    typename V::F A = V::set1(sc[g * RB] * TWO_B), B = V::set1(-sc[g * RB] * (TWO_B + zr[g * RB]));
    UnitCursor cur(p, rb, k0 / UK);
    for (int64_t u = k0 / UK; u < (k0 + kc) / UK; ++u, cur.next()) {
      const uint8_t* ud = cur.ptr + i * UB;
      float* ou = o + u * UK - k0;
      for (int64_t b = 0; b < UB; b += 64) V::prefetch(ud + RB * UB * 4 + b);
      static_for<0, S>([&](auto jc) {
        constexpr int J = decltype(jc)::value;
        for (int h = 0; h < NH; ++h) V::storeu(ou + J * 16 + h * V::L, V::fma(U::template get<J>(ud, h), A, B));
        if (--left == 0) {
          ++g;
          left = g == ng - 1 ? kNoBoundary : gs;
          A = V::set1(sc[g * RB] * TWO_B);
          B = V::set1(-sc[g * RB] * (TWO_B + zr[g * RB]));
        }
      });
    }
  }
}

template <class V>
const Kernels* kernels_for_bits(int bits) {
  static const Kernels k2{gemv_t<V, 2>, tile_t<V, 2>, dequant_t<V, 2>};
  static const Kernels k3{gemv_t<V, 3>, tile_t<V, 3>, dequant_t<V, 3>};
  static const Kernels k4{gemv_t<V, 4>, tile_t<V, 4>, dequant_t<V, 4>};
  static const Kernels k8{gemv_t<V, 8>, tile_t<V, 8>, dequant_t<V, 8>};
  switch (bits) {
    case 2: return &k2;
    case 3: return &k3;
    case 4: return &k4;
    case 8: return &k8;
    default: return nullptr;
  }
}
