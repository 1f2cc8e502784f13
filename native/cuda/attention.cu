// Causal grouped-query attention, flash style: scores live in registers a tile of keys at a time with an
// online softmax; no [L, L] matrix is ever written. Three kernels:
//  - attn_ref_kernel: one warp per query row, fp32 math on any element type (the reference the fast
//    kernels are checked against; any head size that is a multiple of 32);
//  - attn_f32_kernel: fp32 on the CUDA cores (no TF32: the fp32 mode and GPTQ's calibration forward must
//    match fp32 PyTorch), 64 queries × 64 keys per step, Q/K/V tiles in shared memory, 4×4 register tiles;
//  - attn_mma_kernel: bf16/fp16 tensor cores (mma.sync m16n8k16, fp32 accumulation), 64 queries × 64 keys
//    per step, K/V tiles double-buffered in shared memory with cp.async (FlashAttention-2 layout).
#include "mma.cuh"

namespace lowbit {
namespace cuda {
namespace {

template <class T>
__global__ void attn_ref_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                T* __restrict__ out, int64_t L, int nh, int nkv, int hd, float scale) {
  constexpr int MAXE = 8;  // hd <= 256
  const int64_t row = blockIdx.x * 4 + (threadIdx.x >> 5);
  const int h = blockIdx.y, lane = threadIdx.x & 31;
  const int64_t s = blockIdx.z;
  if (row >= L) return;
  const int kh = h / (nh / nkv), ne = hd / 32;
  const T* qr = q + ((s * nh + h) * L + row) * hd;
  const T* kb = k + (s * nkv + kh) * L * hd;
  const T* vb = v + (s * nkv + kh) * L * hd;
  float qv[MAXE], acc[MAXE];
#pragma unroll
  for (int e = 0; e < MAXE; ++e) {
    qv[e] = e < ne ? to_f(qr[lane + 32 * e]) : 0.f;
    acc[e] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int64_t j = 0; j <= row; ++j) {
    const T* kr = kb + j * hd;
    float d = 0.f;
#pragma unroll
    for (int e = 0; e < MAXE; ++e)
      if (e < ne) d += qv[e] * to_f(kr[lane + 32 * e]);
    d = warp_sum(d) * scale;
    const float mn = fmaxf(m, d), c = expf(m - mn), p = expf(d - mn);
    l = l * c + p;
    const T* vr = vb + j * hd;
#pragma unroll
    for (int e = 0; e < MAXE; ++e)
      if (e < ne) acc[e] = acc[e] * c + p * to_f(vr[lane + 32 * e]);
    m = mn;
  }
  T* o = out + (s * L + row) * static_cast<int64_t>(nh) * hd + static_cast<int64_t>(h) * hd;
  const float inv = 1.0f / l;
#pragma unroll
  for (int e = 0; e < MAXE; ++e)
    if (e < ne) o[lane + 32 * e] = from_f<T>(acc[e] * inv);
}

// ---------------- tensor-core kernel ----------------
// A warp owns 16 query rows; a 64-key tile of scores sits in its registers in the mma.sync C layout (lane (g, t)
// holds rows g and g + 8, keys 8n + 2t and 8n + 2t + 1 of chunk n).

// Q rows r0 and r0 + 8 of a head (rows HD elements apart; zero at and past L) as the A fragments of the
// 16-column steps of Q·Kᵀ.
template <int HD, class T>
__device__ __forceinline__ void q_fragments(const T* q, int r0, int L, int tig, uint32_t (&qf)[HD / 16][4]) {
  const int r1 = r0 + 8;
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    const int c = kk * 16 + tig * 2;
    qf[kk][0] = r0 < L ? *reinterpret_cast<const uint32_t*>(q + static_cast<int64_t>(r0) * HD + c) : 0u;
    qf[kk][1] = r1 < L ? *reinterpret_cast<const uint32_t*>(q + static_cast<int64_t>(r1) * HD + c) : 0u;
    qf[kk][2] = r0 < L ? *reinterpret_cast<const uint32_t*>(q + static_cast<int64_t>(r0) * HD + c + 8) : 0u;
    qf[kk][3] = r1 < L ? *reinterpret_cast<const uint32_t*>(q + static_cast<int64_t>(r1) * HD + c + 8) : 0u;
  }
}

// Running softmax state of rows g and g + 8: max (in log2 units, scale folded in) and sum of exp2.
struct SoftmaxRows {
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
};

// Scores sc (raw Q·Kᵀ) of keys k0.. → P = exp2(sc·scale_log2 − m) in place, with keys past row r0 (r0 + 8 for
// the second row) masked on the diagonal tile; the state takes the tile in, and O is rescaled by the change of
// max before this tile's P·V adds to it.
template <int NKT, int NDT>
__device__ __forceinline__ void softmax_tile(float (&sc)[NKT][4], float (&o)[NDT][4], SoftmaxRows& s, bool diag, int r0,
                                             int k0, int tig, float scale_log2) {
  float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
  for (int n = 0; n < NKT; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float val = sc[n][e] * scale_log2;
      if (diag) {
        const int row = r0 + (e >= 2 ? 8 : 0), key = k0 + n * 8 + tig * 2 + (e & 1);
        if (key > row) val = -INFINITY;
      }
      sc[n][e] = val;
    }
    mx0 = fmaxf(mx0, fmaxf(sc[n][0], sc[n][1]));
    mx1 = fmaxf(mx1, fmaxf(sc[n][2], sc[n][3]));
  }
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
  const float mn0 = fmaxf(s.m0, mx0), mn1 = fmaxf(s.m1, mx1);
  const float c0 = exp2f(s.m0 - mn0), c1 = exp2f(s.m1 - mn1);
  float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
  for (int n = 0; n < NKT; ++n) {
    sc[n][0] = exp2f(sc[n][0] - mn0);
    sc[n][1] = exp2f(sc[n][1] - mn0);
    sc[n][2] = exp2f(sc[n][2] - mn1);
    sc[n][3] = exp2f(sc[n][3] - mn1);
    ps0 += sc[n][0] + sc[n][1];
    ps1 += sc[n][2] + sc[n][3];
  }
  s.l0 = s.l0 * c0 + ps0;
  s.l1 = s.l1 * c1 + ps1;
  s.m0 = mn0;
  s.m1 = mn1;
#pragma unroll
  for (int d = 0; d < NDT; ++d) {
    o[d][0] *= c0;
    o[d][1] *= c0;
    o[d][2] *= c1;
    o[d][3] *= c1;
  }
}

// P of keys 16kk..16kk + 15 as the A fragment of an m16n8k16 product.
template <class T, int NKT>
__device__ __forceinline__ void p_fragment(const float (&p)[NKT][4], int kk, uint32_t (&a)[4]) {
  a[0] = pack2<T>(p[2 * kk][0], p[2 * kk][1]);
  a[1] = pack2<T>(p[2 * kk][2], p[2 * kk][3]);
  a[2] = pack2<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
  a[3] = pack2<T>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
}

// O / l of rows r0 and r0 + 8 (those below L) into out, whose rows are ldo elements apart.
template <class T, int NDT>
__device__ __forceinline__ void store_rows(const float (&o)[NDT][4], SoftmaxRows s, T* out, int64_t ldo, int r0, int L,
                                           int tig) {
  s.l0 += __shfl_xor_sync(0xffffffffu, s.l0, 1);
  s.l0 += __shfl_xor_sync(0xffffffffu, s.l0, 2);
  s.l1 += __shfl_xor_sync(0xffffffffu, s.l1, 1);
  s.l1 += __shfl_xor_sync(0xffffffffu, s.l1, 2);
  const float inv0 = 1.0f / s.l0, inv1 = 1.0f / s.l1;
  const int r1 = r0 + 8;
#pragma unroll
  for (int d = 0; d < NDT; ++d) {
    const int c = d * 8 + tig * 2;
    if (r0 < L) *reinterpret_cast<uint32_t*>(out + r0 * ldo + c) = pack2<T>(o[d][0] * inv0, o[d][1] * inv0);
    if (r1 < L) *reinterpret_cast<uint32_t*>(out + r1 * ldo + c) = pack2<T>(o[d][2] * inv1, o[d][3] * inv1);
  }
}

constexpr int MMA_BQ = 64, MMA_BK = 64, MMA_THREADS = 128;

template <int HD>
constexpr int mma_smem_bytes() {
  return 2 /*K,V*/ * 2 /*stages*/ * MMA_BK * (HD + 8) * 2 /*bytes*/;
}

template <int HD, class T>
__global__ void __launch_bounds__(MMA_THREADS) attn_mma_kernel(const T* __restrict__ Q, const T* __restrict__ K,
                                                                const T* __restrict__ V, T* __restrict__ O, int L,
                                                                int nh, int nkv, float scale_log2) {
  constexpr int LDS = HD + 8;  // padded shared row (elements): conflict-free fragment loads
  constexpr int NKT = MMA_BK / 8, NDT = HD / 8, NQK = HD / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);       // [2][BK][LDS]
  T* sV = sK + 2 * MMA_BK * LDS;                // [2][BK][LDS]

  const int qb = gridDim.x - 1 - blockIdx.x;  // the longest query blocks first
  const int h = blockIdx.y, s = blockIdx.z, kh = h / (nh / nkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
  const int mi = lane >> 3, ri = lane & 7;  // the matrix and row this lane addresses in ldmatrix
  const T* Qh = Q + (static_cast<int64_t>(s) * nh + h) * L * HD;
  const T* Kh = K + (static_cast<int64_t>(s) * nkv + kh) * L * HD;
  const T* Vh = V + (static_cast<int64_t>(s) * nkv + kh) * L * HD;
  const int q0 = qb * MMA_BQ + warp * 16;

  uint32_t qf[NQK][4];
  q_fragments<HD>(Qh, q0 + g, L, tig, qf);
  float o[NDT][4];
#pragma unroll
  for (int d = 0; d < NDT; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
  SoftmaxRows sm;

  const int kend = min(L, qb * MMA_BQ + MMA_BQ);
  const int ntiles = (kend + MMA_BK - 1) / MMA_BK;

  auto load_tile = [&](int tile, int buf) {
    constexpr int CH = HD / 8;  // 16-byte chunks per row
    for (int c = threadIdx.x; c < MMA_BK * CH; c += MMA_THREADS) {
      const int r = c / CH, col = (c % CH) * 8, key = tile * MMA_BK + r;
      const bool ok = key < L;
      const int64_t off = ok ? static_cast<int64_t>(key) * HD + col : 0;
      cp_async16(sK + (buf * MMA_BK + r) * LDS + col, Kh + off, ok ? 16 : 0);
      cp_async16(sV + (buf * MMA_BK + r) * LDS + col, Vh + off, ok ? 16 : 0);
    }
    cp_async_commit();
  };

  load_tile(0, 0);
  for (int t = 0; t < ntiles; ++t) {
    if (t + 1 < ntiles) {
      load_tile(t + 1, (t + 1) & 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int buf = t & 1, k0 = t * MMA_BK;
    const T* tK = sK + buf * MMA_BK * LDS;
    const T* tV = sV + buf * MMA_BK * LDS;
    if (k0 <= q0 + 15) {
      float sc[NKT][4];
#pragma unroll
      for (int n = 0; n < NKT; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < NQK; ++kk) {
#pragma unroll
        for (int n = 0; n < NKT; n += 2) {
          uint32_t b[4];  // keys n·8 + [0, 8) and (n + 1)·8 + [0, 8), columns kk·16 + [0, 8) and [8, 16)
          ldmatrix_x4(b, tK + ((n + (mi >> 1)) * 8 + ri) * LDS + kk * 16 + (mi & 1) * 8);
          mma16816<T>(sc[n], qf[kk], b[0], b[1]);
          mma16816<T>(sc[n + 1], qf[kk], b[2], b[3]);
        }
      }
      softmax_tile(sc, o, sm, k0 + MMA_BK - 1 > q0, q0 + g, k0, tig, scale_log2);
#pragma unroll
      for (int kk = 0; kk < MMA_BK / 16; ++kk) {
        uint32_t a[4];
        p_fragment<T>(sc, kk, a);
#pragma unroll
        for (int dp = 0; dp < HD / 16; ++dp) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, tV + (kk * 16 + (mi & 1) * 8 + ri) * LDS + dp * 16 + (mi >> 1) * 8);
          mma16816<T>(o[2 * dp], a, b[0], b[1]);
          mma16816<T>(o[2 * dp + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();
  }
  store_rows<T>(o, sm, O + static_cast<int64_t>(s) * L * nh * HD + static_cast<int64_t>(h) * HD, static_cast<int64_t>(nh) * HD,
                q0 + g, L, tig);
}

// ---------------- fp32 tiled kernel ----------------
// 256 threads as 16 × 16 (tx, ty). Thread (tx, ty) owns query rows ty + 16·i and, for the scores, keys
// tx + 16·j (i, j < 4): strided so that a warp's float4 reads of K rows hit distinct banks (row pitch HD + 4
// floats) and its Q reads are broadcasts. A row's 64 scores live in the 16 threads of one half-warp, so
// the row max and sum are 4 shuffles. P goes through shared memory (over the K tile, which is done with by
// then) to the P·V product, where the thread owns columns [4·tx, 4·tx + 4) (+ 64 for HD 128) of its rows.
constexpr int F32_BQ = 64, F32_BK = 64, F32_THREADS = 256, F32_PP = F32_BK + 16;  // P pitch: rows 16 banks apart

template <int HD>
__host__ __device__ constexpr bool f32_p_over_k() {
  return F32_BQ * F32_PP <= F32_BK * (HD + 4);
}
template <int HD>
constexpr int f32_smem_bytes() {
  return (3 * F32_BQ * (HD + 4) + (f32_p_over_k<HD>() ? 0 : F32_BQ * F32_PP)) * 4;  // Q, K (P over it when it fits), V
}

template <int HD>
__global__ void __launch_bounds__(F32_THREADS, 2) attn_f32_kernel(const float* __restrict__ Q, const float* __restrict__ K,
                                                                   const float* __restrict__ V, float* __restrict__ O,
                                                                   int L, int nh, int nkv, float scale) {
  constexpr int LD = HD + 4, ND = HD / 64;  // float4 column chunks per thread in P·V
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* sQ = reinterpret_cast<float*>(smem_raw);  // [BQ][LD]
  float* sK = sQ + F32_BQ * LD;                    // [BK][LD], then P [BQ][PP]
  float* sV = sK + F32_BK * LD;                    // [BK][LD]
  float* sP = f32_p_over_k<HD>() ? sK : sV + F32_BK * LD;  // [BQ][PP]
  const int qb = gridDim.x - 1 - blockIdx.x;  // the longest query blocks first
  const int h = blockIdx.y, s = blockIdx.z, kh = h / (nh / nkv);
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const float* Qh = Q + (static_cast<int64_t>(s) * nh + h) * L * HD;
  const float* Kh = K + (static_cast<int64_t>(s) * nkv + kh) * L * HD;
  const float* Vh = V + (static_cast<int64_t>(s) * nkv + kh) * L * HD;
  const int q0 = qb * F32_BQ;

  auto load = [&](float* dst, const float* src, int row0) {
    constexpr int CH = HD / 4;  // 16-byte chunks per row
    for (int c = threadIdx.x; c < F32_BQ * CH; c += F32_THREADS) {
      const int r = c / CH, col = (c % CH) * 4, row = row0 + r;
      const bool ok = row < L;
      cp_async16(dst + r * LD + col, src + (ok ? static_cast<int64_t>(row) * HD + col : 0), ok ? 16 : 0);
    }
  };
  load(sQ, Qh, q0);
  cp_async_commit();

  float o[4][ND][4], m[4], l[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int d = 0; d < ND; ++d) o[i][d][0] = o[i][d][1] = o[i][d][2] = o[i][d][3] = 0.f;
  }
  const int ntiles = qb + 1;  // causal: key tiles up to the diagonal
  for (int t = 0; t < ntiles; ++t) {
    const int k0 = t * F32_BK;
    load(sK, Kh, k0);
    load(sV, Vh, k0);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    float sc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.f;
#pragma unroll 4
    for (int d = 0; d < HD; d += 4) {
      float4 qv[4], kv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) qv[i] = *reinterpret_cast<const float4*>(sQ + (ty + 16 * i) * LD + d);
#pragma unroll
      for (int j = 0; j < 4; ++j) kv[j] = *reinterpret_cast<const float4*>(sK + (tx + 16 * j) * LD + d);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          sc[i][j] = fmaf(qv[i].x, kv[j].x, sc[i][j]);
          sc[i][j] = fmaf(qv[i].y, kv[j].y, sc[i][j]);
          sc[i][j] = fmaf(qv[i].z, kv[j].z, sc[i][j]);
          sc[i][j] = fmaf(qv[i].w, kv[j].w, sc[i][j]);
        }
    }
    const bool diag = t == qb;
    float c[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = q0 + ty + 16 * i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float v = sc[i][j] * scale;
        if (diag && k0 + tx + 16 * j > row) v = -INFINITY;
        sc[i][j] = v;
        mx = fmaxf(mx, v);
      }
#pragma unroll
      for (int off = 1; off < 16; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float mn = fmaxf(m[i], mx);
      c[i] = expf(m[i] - mn);
      float ps = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        sc[i][j] = expf(sc[i][j] - mn);
        ps += sc[i][j];
      }
#pragma unroll
      for (int off = 1; off < 16; off <<= 1) ps += __shfl_xor_sync(0xffffffffu, ps, off);
      l[i] = l[i] * c[i] + ps;
      m[i] = mn;
    }
    __syncthreads();  // every thread is done reading K (P may go over it)
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) sP[(ty + 16 * i) * F32_PP + tx + 16 * j] = sc[i][j];
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int d = 0; d < ND; ++d) {
        o[i][d][0] *= c[i];
        o[i][d][1] *= c[i];
        o[i][d][2] *= c[i];
        o[i][d][3] *= c[i];
      }
#pragma unroll 2
    for (int kk = 0; kk < F32_BK; kk += 4) {
      float4 pv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) pv[i] = *reinterpret_cast<const float4*>(sP + (ty + 16 * i) * F32_PP + kk);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float4 vv[ND];
#pragma unroll
        for (int d = 0; d < ND; ++d) vv[d] = *reinterpret_cast<const float4*>(sV + (kk + e) * LD + d * 64 + tx * 4);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float p = e == 0 ? pv[i].x : e == 1 ? pv[i].y : e == 2 ? pv[i].z : pv[i].w;
#pragma unroll
          for (int d = 0; d < ND; ++d) {
            o[i][d][0] = fmaf(p, vv[d].x, o[i][d][0]);
            o[i][d][1] = fmaf(p, vv[d].y, o[i][d][1]);
            o[i][d][2] = fmaf(p, vv[d].z, o[i][d][2]);
            o[i][d][3] = fmaf(p, vv[d].w, o[i][d][3]);
          }
        }
      }
    }
    __syncthreads();  // P and V are read before the next tile's loads overwrite them
  }
  const int64_t ldo = static_cast<int64_t>(nh) * HD;
  float* ob = O + static_cast<int64_t>(s) * L * ldo + static_cast<int64_t>(h) * HD;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = q0 + ty + 16 * i;
    if (row >= L) continue;
    const float inv = 1.0f / l[i];
#pragma unroll
    for (int d = 0; d < ND; ++d)
      *reinterpret_cast<float4*>(ob + row * ldo + d * 64 + tx * 4) =
          make_float4(o[i][d][0] * inv, o[i][d][1] * inv, o[i][d][2] * inv, o[i][d][3] * inv);
  }
}

// The HD 128 tiles take 99 KiB of shared memory: more than sm_86/sm_89 give one block (those run the
// reference kernel instead).
template <int HD>
bool f32_fits() {
  int dev = 0, optin = 0;
  LB_CK(cudaGetDevice(&dev));
  LB_CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return f32_smem_bytes<HD>() <= optin;
}

template <int HD>
void launch_f32(const float* q, const float* k, const float* v, float* out, int64_t nseq, int64_t L, int nh, int nkv,
                cudaStream_t st) {
  constexpr int smem = f32_smem_bytes<HD>();
  LB_CK(cudaFuncSetAttribute(attn_f32_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  dim3 grid(static_cast<unsigned>((L + F32_BQ - 1) / F32_BQ), static_cast<unsigned>(nh), static_cast<unsigned>(nseq));
  attn_f32_kernel<HD><<<grid, F32_THREADS, smem, st>>>(q, k, v, out, static_cast<int>(L), nh, nkv,
                                                       1.0f / sqrtf(static_cast<float>(HD)));
  LB_LAUNCHED();
}

template <int HD, class T>
void launch_mma(const T* q, const T* k, const T* v, T* out, int64_t nseq, int64_t L, int nh, int nkv,
                cudaStream_t st) {
  constexpr int smem = mma_smem_bytes<HD>();
  static bool attr_set = false;  // per device is what CUDA needs; set every time it's cheap enough
  (void)attr_set;
  LB_CK(cudaFuncSetAttribute(attn_mma_kernel<HD, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  dim3 grid(static_cast<unsigned>((L + MMA_BQ - 1) / MMA_BQ), static_cast<unsigned>(nh), static_cast<unsigned>(nseq));
  const float scale_log2 = 1.4426950408889634f / sqrtf(static_cast<float>(HD));
  attn_mma_kernel<HD, T><<<grid, MMA_THREADS, smem, st>>>(q, k, v, out, static_cast<int>(L), nh, nkv, scale_log2);
  LB_LAUNCHED();
}

}  // namespace

template <class T>
bool attention_fast_ok(int hd) {
  if constexpr (std::is_same<T, float>::value) return hd == 64 ? f32_fits<64>() : hd == 128 && f32_fits<128>();
  return hd == 64 || hd == 128;
}

template <class T>
void attention(const T* q, const T* k, const T* v, T* out, int64_t nseq, int64_t L, int nh, int nkv, int hd, bool fast,
               cudaStream_t st) {
  if (nkv <= 0 || nh % nkv) throw std::invalid_argument("numHeads must be a multiple of numKvHeads");
  if (L > (1LL << 30)) throw std::invalid_argument("sequence too long");
  if (fast && attention_fast_ok<T>(hd)) {
    if constexpr (std::is_same<T, float>::value) {
      if (hd == 64) launch_f32<64>(q, k, v, out, nseq, L, nh, nkv, st);
      else launch_f32<128>(q, k, v, out, nseq, L, nh, nkv, st);
    } else {
      if (hd == 64) launch_mma<64, T>(q, k, v, out, nseq, L, nh, nkv, st);
      else launch_mma<128, T>(q, k, v, out, nseq, L, nh, nkv, st);
    }
    return;
  }
  if (hd % 32 || hd > 256) throw std::invalid_argument("CUDA attention needs headDim a multiple of 32, at most 256");
  dim3 grid(static_cast<unsigned>((L + 3) / 4), static_cast<unsigned>(nh), static_cast<unsigned>(nseq));
  attn_ref_kernel<T><<<grid, 128, 0, st>>>(q, k, v, out, L, nh, nkv, hd, 1.0f / sqrtf(static_cast<float>(hd)));
  LB_LAUNCHED();
}

template bool attention_fast_ok<float>(int);
template bool attention_fast_ok<bf16>(int);
template bool attention_fast_ok<f16>(int);
template void attention<float>(const float*, const float*, const float*, float*, int64_t, int64_t, int, int, int, bool,
                               cudaStream_t);
template void attention<bf16>(const bf16*, const bf16*, const bf16*, bf16*, int64_t, int64_t, int, int, int, bool,
                              cudaStream_t);
template void attention<f16>(const f16*, const f16*, const f16*, f16*, int64_t, int64_t, int, int, int, bool,
                             cudaStream_t);

}  // namespace cuda
}  // namespace lowbit
