// Causal grouped-query attention, flash style: scores live in registers a tile of keys at a time with an
// online softmax; no [L, L] matrix is ever written. Two kernels:
//  - attn_ref_kernel: one warp per query row, fp32 math on any element type (the fp32 mode, and the
//    reference the fast kernel is checked against);
//  - attn_mma_kernel: bf16/fp16 tensor cores (mma.sync m16n8k16, fp32 accumulation), 64 queries × 64 keys
//    per step, K/V tiles double-buffered in shared memory with cp.async (FlashAttention-2 layout).
#include "common.cuh"

namespace lowbit {
namespace cuda {
namespace {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

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

template <class T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<bf16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<f16>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <class T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same<T, bf16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
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
  const T* Qh = Q + (static_cast<int64_t>(s) * nh + h) * L * HD;
  const T* Kh = K + (static_cast<int64_t>(s) * nkv + kh) * L * HD;
  const T* Vh = V + (static_cast<int64_t>(s) * nkv + kh) * L * HD;
  const int q0 = qb * MMA_BQ + warp * 16;

  uint32_t qf[NQK][4];
  {
    const int r0 = q0 + g, r1 = q0 + g + 8;
#pragma unroll
    for (int kk = 0; kk < NQK; ++kk) {
      const int c = kk * 16 + tig * 2;
      qf[kk][0] = r0 < L ? *reinterpret_cast<const uint32_t*>(Qh + static_cast<int64_t>(r0) * HD + c) : 0u;
      qf[kk][1] = r1 < L ? *reinterpret_cast<const uint32_t*>(Qh + static_cast<int64_t>(r1) * HD + c) : 0u;
      qf[kk][2] = r0 < L ? *reinterpret_cast<const uint32_t*>(Qh + static_cast<int64_t>(r0) * HD + c + 8) : 0u;
      qf[kk][3] = r1 < L ? *reinterpret_cast<const uint32_t*>(Qh + static_cast<int64_t>(r1) * HD + c + 8) : 0u;
    }
  }
  float o[NDT][4];
#pragma unroll
  for (int d = 0; d < NDT; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

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
        for (int n = 0; n < NKT; ++n) {
          const T* kr = tK + (n * 8 + g) * LDS + kk * 16 + tig * 2;
          uint32_t b0 = *reinterpret_cast<const uint32_t*>(kr);
          uint32_t b1 = *reinterpret_cast<const uint32_t*>(kr + 8);
          mma16816<T>(sc[n], qf[kk], b0, b1);
        }
      }
      const bool diag = k0 + MMA_BK - 1 > q0;
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int n = 0; n < NKT; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float val = sc[n][e] * scale_log2;
          if (diag) {
            const int row = q0 + g + (e >= 2 ? 8 : 0), key = k0 + n * 8 + tig * 2 + (e & 1);
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
      const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
      const float c0 = exp2f(m0 - mn0), c1 = exp2f(m1 - mn1);
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
      l0 = l0 * c0 + ps0;
      l1 = l1 * c1 + ps1;
      m0 = mn0;
      m1 = mn1;
#pragma unroll
      for (int d = 0; d < NDT; ++d) {
        o[d][0] *= c0;
        o[d][1] *= c0;
        o[d][2] *= c1;
        o[d][3] *= c1;
      }
#pragma unroll
      for (int kk = 0; kk < MMA_BK / 16; ++kk) {
        uint32_t a[4];
        a[0] = pack2<T>(sc[2 * kk][0], sc[2 * kk][1]);
        a[1] = pack2<T>(sc[2 * kk][2], sc[2 * kk][3]);
        a[2] = pack2<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
        a[3] = pack2<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
        const int mi = lane >> 3, ri = lane & 7;
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
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
  const int64_t ldo = static_cast<int64_t>(nh) * HD;
  const int r0 = q0 + g, r1 = q0 + g + 8;
  T* ob = O + static_cast<int64_t>(s) * L * ldo + static_cast<int64_t>(h) * HD;
#pragma unroll
  for (int d = 0; d < NDT; ++d) {
    const int c = d * 8 + tig * 2;
    if (r0 < L) *reinterpret_cast<uint32_t*>(ob + r0 * ldo + c) = pack2<T>(o[d][0] * inv0, o[d][1] * inv0);
    if (r1 < L) *reinterpret_cast<uint32_t*>(ob + r1 * ldo + c) = pack2<T>(o[d][2] * inv1, o[d][3] * inv1);
  }
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
  if (std::is_same<T, float>::value) return false;
  return hd == 64 || hd == 128;
}

template <class T>
void attention(const T* q, const T* k, const T* v, T* out, int64_t nseq, int64_t L, int nh, int nkv, int hd, bool fast,
               cudaStream_t st) {
  if (nkv <= 0 || nh % nkv) throw std::invalid_argument("numHeads must be a multiple of numKvHeads");
  if (L > (1LL << 30)) throw std::invalid_argument("sequence too long");
  if constexpr (!std::is_same<T, float>::value) {
    if (fast && attention_fast_ok<T>(hd)) {
      if (hd == 64) launch_mma<64, T>(q, k, v, out, nseq, L, nh, nkv, st);
      else launch_mma<128, T>(q, k, v, out, nseq, L, nh, nkv, st);
      return;
    }
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
