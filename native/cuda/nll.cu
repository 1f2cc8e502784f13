// Fused log-softmax / NLL over the vocabulary: one block per row of a logits block that never leaves the GPU.
#include "common.cuh"

namespace lowbit {
namespace cuda {
namespace {

__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) { m = m2; s = s2; return; }
  if (m2 > m) { s = s * expf(m - m2) + s2; m = m2; }
  else s += s2 * expf(m2 - m);
}

__global__ void lse_nll_kernel(const float* __restrict__ logits, const int32_t* __restrict__ target,
                               double* __restrict__ nll, uint8_t* __restrict__ greedy, int64_t V) {
  const int64_t r = blockIdx.x;
  const int tg = target[r];
  if (tg < 0) {
    if (threadIdx.x == 0) {
      nll[r] = 0.0;
      if (greedy) greedy[r] = 0;
    }
    return;
  }
  const float* l = logits + r * V;
  float m = -INFINITY, s = 0.f;
  // Per-thread running (max, sum exp(x - max)) with a rescale only when the max moves.
  if ((V & 3) == 0) {
    const float4* l4 = reinterpret_cast<const float4*>(l);
    for (int64_t i = threadIdx.x; i < V / 4; i += blockDim.x) {
      float4 x = l4[i];
      float mx = fmaxf(fmaxf(x.x, x.y), fmaxf(x.z, x.w));
      if (mx > m) { s = (m == -INFINITY) ? 0.f : s * expf(m - mx); m = mx; }
      s += expf(x.x - m) + expf(x.y - m) + expf(x.z - m) + expf(x.w - m);
    }
  } else {
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      float x = l[i];
      if (x > m) { s = (m == -INFINITY) ? 0.f : s * expf(m - x); m = x; }
      s += expf(x - m);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, m2, s2);
  }
  __shared__ float pm[32], ps[32];
  __shared__ bool top;
  if ((threadIdx.x & 31) == 0) { pm[threadIdx.x >> 5] = m; ps[threadIdx.x >> 5] = s; }
  __syncthreads();
  const float lt = l[tg];
  if (threadIdx.x == 0) {
    double M = pm[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) M = fmax(M, (double)pm[w]);
    double S = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w)
      if (pm[w] != -INFINITY) S += (double)ps[w] * exp((double)pm[w] - M);
    nll[r] = M + log(S) - (double)lt;
    top = (double)lt >= M;  // the target holds the largest logit
  }
  if (!greedy) return;
  __syncthreads();
  // Greedy is the first index of the largest logit (torch.argmax, the CPU's top-1): an earlier tie takes it.
  bool first = top;
  if (first) {
    int earlier = 0;
    for (int64_t i = threadIdx.x; i < tg; i += blockDim.x) earlier |= l[i] >= lt;
    first = !__syncthreads_or(earlier);
  }
  if (threadIdx.x == 0) greedy[r] = first;
}

}  // namespace

void lse_nll(const float* logits, const int32_t* target, double* nll, uint8_t* greedy, int64_t rows, int64_t V, cudaStream_t st) {
  if (rows <= 0) return;
  lse_nll_kernel<<<static_cast<unsigned>(rows), 512, 0, st>>>(logits, target, nll, greedy, V);
  LB_LAUNCHED();
}

}  // namespace cuda
}  // namespace lowbit
