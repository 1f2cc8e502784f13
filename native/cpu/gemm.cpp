// Packed SGEMM in the BLIS layout: for each NC×KC block of op(B) (packed into NR-wide k-major
// panels, upcast from BF16/F16 on the way) and each MC×KC block of op(A) (MR-tall panels), a
// register-blocked microkernel computes MR×NR tiles of C. Packing also absorbs transA/transB, so
// the microkernel sees one layout. The per-ISA pieces live in gemm_avx512.cpp / gemm_avx2.cpp.
#include "gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "async.h"
#include "registry.h"
#include "simd.h"
#include "threads.h"

namespace lowbit {
namespace gemm_detail {

// pack(src, dtype, ld, j0, n, k0, kc, dst, width): dst[k*width + j], zero past n. pack_t reads a
// matrix whose rows are indexed by j, pack_n one whose rows are indexed by k.
using PackFn = void (*)(const void*, int, int64_t, int64_t, int, int64_t, int64_t, float*, int);
using UkrFn = void (*)(int64_t, const float*, const float*, float*, int64_t, float, float, int, int);
using CvtFn = void (*)(const void*, int, int64_t, float*);
using DotFn = float (*)(const float*, const void*, int, int64_t);  // Σ x[i]·y[i], y stored as dtype
using AxpyFn = void (*)(int64_t, float, const float*, float*);

#if defined(__x86_64__) && defined(__GNUC__)
#define LOWBIT_GEMM_X86 1
void pack_t_avx512(const void*, int, int64_t, int64_t, int, int64_t, int64_t, float*, int);
void pack_n_avx512(const void*, int, int64_t, int64_t, int, int64_t, int64_t, float*, int);
void ukr_avx512(int64_t, const float*, const float*, float*, int64_t, float, float, int, int);
void cvt_avx512(const void*, int, int64_t, float*);
float dot_avx512(const float*, const void*, int, int64_t);
void axpy_avx512(int64_t, float, const float*, float*);
void pack_t_avx2(const void*, int, int64_t, int64_t, int, int64_t, int64_t, float*, int);
void pack_n_avx2(const void*, int, int64_t, int64_t, int, int64_t, int64_t, float*, int);
void ukr_avx2(int64_t, const float*, const float*, float*, int64_t, float, float, int, int);
void cvt_avx2(const void*, int, int64_t, float*);
float dot_avx2(const float*, const void*, int, int64_t);
void axpy_avx2(int64_t, float, const float*, float*);
#endif

namespace {

struct Kernel {
  int mr, nr;
  int64_t kc, mc, nc;  // upper bounds; actual blocks are balanced so the last one isn't a sliver
  UkrFn ukr;
  PackFn pack_t, pack_n;
  CvtFn cvt;
  DotFn dot;
  AxpyFn axpy;
};

constexpr int kMRs = 4, kNRs = 8;

void ukr_scalar(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha, float beta, int mr, int nr) {
  float acc[kMRs][kNRs] = {};
  for (int64_t k = 0; k < kc; ++k, a += kMRs, b += kNRs)
    for (int i = 0; i < kMRs; ++i)
      for (int j = 0; j < kNRs; ++j) acc[i][j] += a[i] * b[j];
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) {
      float& cij = c[i * ldc + j];
      cij = beta != 0.f ? alpha * acc[i][j] + beta * cij : alpha * acc[i][j];
    }
}

void pack_t_scalar(const void* src, int dtype, int64_t ld, int64_t j0, int n, int64_t k0, int64_t kc, float* dst, int width) {
  MatView v{src, static_cast<DType>(dtype), ld};
  for (int64_t k = 0; k < kc; ++k)
    for (int j = 0; j < width; ++j) dst[k * width + j] = j < n ? v.at(j0 + j, k0 + k) : 0.f;
}

void pack_n_scalar(const void* src, int dtype, int64_t ld, int64_t j0, int n, int64_t k0, int64_t kc, float* dst, int width) {
  MatView v{src, static_cast<DType>(dtype), ld};
  for (int64_t k = 0; k < kc; ++k)
    for (int j = 0; j < width; ++j) dst[k * width + j] = j < n ? v.at(k0 + k, j0 + j) : 0.f;
}

void cvt_scalar(const void* src, int dtype, int64_t n, float* out) {
  MatView{src, static_cast<DType>(dtype), n}.row_to_f32(0, 0, n, out);
}

float dot_scalar(const float* x, const void* y, int dtype, int64_t n) {
  const MatView v{y, static_cast<DType>(dtype), n};
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * v.at(0, i);
  return s;
}

void axpy_scalar(int64_t n, float a, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// KC keeps one B micro-panel (KC×NR) resident in L1 while A micro-panels stream from L2;
// MC×KC of packed A fits in L2 (1-2 MiB on current server cores); NC×KC of B is L3-sized.
const Kernel& kernel_for(SimdLevel lvl) {
  static const Kernel scalar{kMRs, kNRs, 256, 64, 1024, ukr_scalar, pack_t_scalar, pack_n_scalar, cvt_scalar, dot_scalar, axpy_scalar};
#ifdef LOWBIT_GEMM_X86
  static const Kernel avx512{14, 32, 256, 14 * 24, 768, ukr_avx512, pack_t_avx512, pack_n_avx512, cvt_avx512, dot_avx512, axpy_avx512};
  static const Kernel avx2{6, 16, 256, 6 * 40, 2048, ukr_avx2, pack_t_avx2, pack_n_avx2, cvt_avx2, dot_avx2, axpy_avx2};
  if (lvl == SimdLevel::Avx512) return avx512;
  if (lvl == SimdLevel::Avx2) return avx2;
#else
  (void)lvl;
#endif
  return scalar;
}

// Per-thread packing buffers, reused across calls: a fresh allocation per call would page-fault
// its way through megabytes on every small GEMM.
class Scratch {
 public:
  ~Scratch() { std::free(p_); }
  float* get(std::size_t n) {
    if (n > n_) {
      std::free(p_);
      std::size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
      p_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!p_) {
        n_ = 0;
        throw std::bad_alloc();
      }
      n_ = n;
    }
    return p_;
  }

 private:
  float* p_ = nullptr;
  std::size_t n_ = 0;
};

thread_local Scratch t_apack, t_bpack, t_tmp, t_bq;

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }
// Splits n into equal blocks of at most cap (a multiple of unit), instead of cap-sized blocks
// plus a thin remainder that would run the microkernel mostly on padding.
inline int64_t balanced_block(int64_t n, int64_t cap, int64_t unit) { return round_up(cdiv(n, cdiv(n, cap)), unit); }

void scale_c(const GemmArgs& g) {
  for (int64_t i = 0; i < g.M; ++i) {
    float* c = g.C + i * g.ldc;
    for (int64_t j = 0; j < g.N; ++j) c[j] = g.beta == 0.f ? 0.f : g.beta * c[j];
  }
}

// C[m0:m1, n0:n1] on the calling thread.
void gemm_block(const Kernel& kr, const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int MR = kr.mr, NR = kr.nr;
  const int64_t k_align = g.Bq ? g.Bq->k_align : 1;
  const int64_t kc_max = balanced_block(g.K, kr.kc, k_align);
  const int64_t mc_max = balanced_block(m1 - m0, kr.mc, MR);
  const int64_t nc_max = balanced_block(n1 - n0, kr.nc, NR);
  float* bp = t_bpack.get(kc_max * nc_max);
  float* ap = t_apack.get(kc_max * mc_max);
  const int b_dtype = static_cast<int>(g.B.dtype);
  const int a_dtype = static_cast<int>(DType::F32);
  for (int64_t jc = n0; jc < n1; jc += nc_max) {
    const int64_t nc = std::min(nc_max, n1 - jc);
    for (int64_t pc = 0; pc < g.K; pc += kc_max) {
      const int64_t kc = std::min(kc_max, g.K - pc);
      const float beta = pc == 0 ? g.beta : 1.f;
      for (int64_t jr = 0; jr < nc; jr += NR) {
        const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
        if (g.Bq) {  // expand the micro-panel's rows, then pack them as an fp32 B
          const int64_t kq = round_up(kc, k_align);
          float* blk = t_bq.get(nr * kq);
          g.Bq->fn(jc + jr, nr, pc, kq, blk);
          kr.pack_t(blk, static_cast<int>(DType::F32), kq, 0, nr, 0, kc, bp + jr * kc, NR);
        } else {
          (g.transB ? kr.pack_t : kr.pack_n)(g.B.data, b_dtype, g.B.ld, jc + jr, nr, pc, kc, bp + jr * kc, NR);
        }
      }
      for (int64_t ic = m0; ic < m1; ic += mc_max) {
        const int64_t mc = std::min(mc_max, m1 - ic);
        for (int64_t ir = 0; ir < mc; ir += MR) {
          const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
          (g.transA ? kr.pack_n : kr.pack_t)(g.A, a_dtype, g.lda, ic + ir, mr, pc, kc, ap + ir * kc, MR);
        }
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
            kr.ukr(kc, ap + ir * kc, bp + jr * kc, g.C + (ic + ir) * g.ldc + jc + jr, g.ldc, g.alpha, beta, mr, nr);
          }
        }
      }
    }
  }
}

// M == 1 is memory-bound on B: packing would read B twice, so stream it once with dot/axpy.
void gemv(const Kernel& kr, const GemmArgs& g, int threads) {
  const int64_t N = g.N, K = g.K;
  std::vector<float> xbuf;
  const float* x = g.A;
  if (g.transA) {
    xbuf.resize(K);
    for (int64_t k = 0; k < K; ++k) xbuf[k] = g.A[k * g.lda];
    x = xbuf.data();
  }
  const bool f32 = g.B.dtype == DType::F32;
  const int dtype = static_cast<int>(g.B.dtype);
  const std::size_t esize = f32 ? 4 : 2;
  auto src_at = [&](int64_t off) { return static_cast<const char*>(g.B.data) + off * esize; };
  constexpr int64_t kChunk = 1024;
  auto finish = [&](int64_t j, float s) {
    float& c = g.C[j];
    c = g.beta != 0.f ? g.alpha * s + g.beta * c : g.alpha * s;
  };
  std::function<void(std::size_t, std::size_t, int)> body;
  if (g.transB) {
    body = [&](std::size_t b, std::size_t e, int) {
      for (int64_t j = b; j < static_cast<int64_t>(e); ++j) {
        float s = 0;
        for (int64_t k0 = 0; k0 < K; k0 += kChunk) s += kr.dot(x + k0, src_at(j * g.B.ld + k0), dtype, std::min(kChunk, K - k0));
        finish(j, s);
      }
    };
  } else {
    body = [&](std::size_t b, std::size_t e, int) {
      float* buf = t_tmp.get(2 * kChunk);
      float *acc = buf, *tmp = buf + kChunk;
      for (int64_t j0 = b; j0 < static_cast<int64_t>(e); j0 += kChunk) {
        const int64_t n = std::min<int64_t>(kChunk, e - j0);
        std::fill(acc, acc + n, 0.f);
        for (int64_t k = 0; k < K; ++k) {
          const void* row = src_at(k * g.B.ld + j0);
          if (f32) {
            kr.axpy(n, x[k], static_cast<const float*>(row), acc);
          } else {
            kr.cvt(row, dtype, n, tmp);
            kr.axpy(n, x[k], tmp, acc);
          }
        }
        for (int64_t j = 0; j < n; ++j) finish(j0 + j, acc[j]);
      }
    };
  }
  if (threads > 1) parallel_for(N, body, 64);
  else body(0, N, 0);
}

}  // namespace
}  // namespace gemm_detail

void gemm(const GemmArgs& g) {
  using namespace gemm_detail;
  if (g.M <= 0 || g.N <= 0) return;
  if (g.K <= 0 || g.alpha == 0.f) {  // BLAS: op(A)·op(B) is not evaluated, so NaNs in A/B don't leak
    scale_c(g);
    return;
  }
  const Kernel& kr = kernel_for(simd_level());
  // Below ~1 MFLOP the pool handoff costs more than the second core gains.
  int threads = g.parallel && static_cast<double>(g.M) * g.N * g.K >= 5e5 ? num_threads() : 1;
  if (g.Bq && !g.transB) throw std::invalid_argument("gemm: a block-expanded B needs transB");
  if (g.M == 1 && !g.Bq) {
    gemv(kr, g, threads);
    return;
  }
  const int64_t pm = cdiv(g.M, kr.mr), pn = cdiv(g.N, kr.nr);
  // Each thread packs the whole of the operand it doesn't split; splitting the larger of M and N
  // keeps that duplicated packing small.
  const bool split_m = (g.M >= g.N && pm >= threads) || pn < threads;
  const int64_t units = split_m ? pm : pn;
  const int tasks = static_cast<int>(std::min<int64_t>(threads, units));
  auto body = [&](std::size_t b, std::size_t e, int) {
    for (std::size_t t = b; t < e; ++t) {
      const int64_t u0 = units * t / tasks, u1 = units * (t + 1) / tasks;
      if (split_m) gemm_block(kr, g, u0 * kr.mr, std::min(g.M, u1 * kr.mr), 0, g.N);
      else gemm_block(kr, g, 0, g.M, u0 * kr.nr, std::min(g.N, u1 * kr.nr));
    }
  };
  if (tasks > 1) parallel_for(tasks, body, 1);
  else body(0, 1, 0);
}

void gemm_reference(const GemmArgs& a) {
  for (int64_t i = 0; i < a.M; ++i)
    for (int64_t j = 0; j < a.N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < a.K; ++k) {
        float av = a.transA ? a.A[k * a.lda + i] : a.A[i * a.lda + k];
        float bv = a.transB ? a.B.at(j, k) : a.B.at(k, j);
        s += static_cast<double>(av) * bv;
      }
      float& c = a.C[i * a.ldc + j];
      c = static_cast<float>(a.alpha * s + (a.beta == 0.f ? 0.0 : static_cast<double>(a.beta) * c));
    }
}

namespace {

int64_t int_opt(const Napi::Object& o, const char* key, int64_t dflt) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) {
    if (dflt < 0) throw std::invalid_argument(std::string("gemm: missing ") + key);
    return dflt;
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d != std::floor(d)) throw std::invalid_argument(std::string("gemm: ") + key + " must be a non-negative integer");
  return static_cast<int64_t>(d);
}

// Elements a row-major [rows, cols] matrix with leading dimension ld spans.
int64_t span(int64_t rows, int64_t cols, int64_t ld) { return rows > 0 && cols > 0 ? (rows - 1) * ld + cols : 0; }

GemmArgs gemm_args_from_js(const Napi::Value& v, std::vector<Napi::Value>* keep) {
  if (!v.IsObject()) throw std::invalid_argument("gemm: expected an options object");
  auto o = v.As<Napi::Object>();
  GemmArgs g;
  g.M = int_opt(o, "M", -1);
  g.N = int_opt(o, "N", -1);
  g.K = int_opt(o, "K", -1);
  g.transA = o.Get("transA").ToBoolean();
  g.transB = o.Get("transB").ToBoolean();
  const int64_t a_rows = g.transA ? g.K : g.M, a_cols = g.transA ? g.M : g.K;
  const int64_t b_rows = g.transB ? g.N : g.K, b_cols = g.transB ? g.K : g.N;
  g.lda = int_opt(o, "lda", a_cols);
  const int64_t ldb = int_opt(o, "ldb", b_cols);
  g.ldc = int_opt(o, "ldc", g.N);
  if (g.lda < a_cols || ldb < b_cols || g.ldc < g.N) throw std::invalid_argument("gemm: a leading dimension is smaller than its row");
  g.A = cf32_from_js(o.Get("A"), span(a_rows, a_cols, g.lda), "gemm A");
  g.B = mat_from_js(o.Get("B"), 1, span(b_rows, b_cols, ldb), "gemm B");
  g.B.ld = ldb;
  g.C = f32_from_js(o.Get("C"), span(g.M, g.N, g.ldc), "gemm C");
  Napi::Value alpha = o.Get("alpha"), beta = o.Get("beta");
  g.alpha = alpha.IsUndefined() ? 1.f : alpha.As<Napi::Number>().FloatValue();
  g.beta = beta.IsUndefined() ? 0.f : beta.As<Napi::Number>().FloatValue();
  if (keep) *keep = {o, o.Get("A"), o.Get("B"), o.Get("C")};
  return g;
}

}  // namespace

LOWBIT_EXPORTS {
  exports.Set("gemm", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      gemm(gemm_args_from_js(info[0], nullptr));
      return info.Env().Undefined();
    });
  }));
  exports.Set("gemmAsync", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      std::vector<Napi::Value> keep;
      GemmArgs g = gemm_args_from_js(info[0], &keep);
      return run_async(info.Env(), [g] { gemm(g); }, nullptr, keep);
    });
  }));
}

}  // namespace lowbit
