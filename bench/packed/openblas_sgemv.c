// OpenBLAS baseline for bench/packed.ts: median time of cblas_sgemv (y = W·x, W [rows, cols] row-major fp32)
// and cblas_sgemm for M > 1 (x·Wᵀ); plus memcpy bandwidth of a 1 GiB buffer.
// Usage: openblas_sgemv THREADS REPS M,ROWS,COLS ... | openblas_sgemv memcpy
// Prints one JSON line per shape: {"M","rows","cols","threads","ms"} or {"copy_gbps","read_gbps"}.
#include <cblas.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}
// Read-only bandwidth: AVX-512 sum of a buffer (4 independent accumulators), one slice per thread.
typedef struct {
  const float* p;
  size_t n;
  float out;
} rd_job;
__attribute__((target("avx512f"))) static void* rd_sum(void* arg) {
  rd_job* j = (rd_job*)arg;
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = 0; i < j->n; i += 64) {
    s0 = _mm512_add_ps(s0, _mm512_load_ps(j->p + i));
    s1 = _mm512_add_ps(s1, _mm512_load_ps(j->p + i + 16));
    s2 = _mm512_add_ps(s2, _mm512_load_ps(j->p + i + 32));
    s3 = _mm512_add_ps(s3, _mm512_load_ps(j->p + i + 48));
  }
  j->out = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
  return 0;
}
static double now_s(void);
static double read_gbps(const float* a, size_t n, int threads) {
  double best = 1e9;
  for (int r = 0; r < 5; ++r) {
    pthread_t th[8];
    rd_job j[8];
    double t0 = now_s();
    for (int t = 0; t < threads; ++t) {
      j[t].p = a + n / threads * t;
      j[t].n = n / threads;
      pthread_create(&th[t], 0, rd_sum, &j[t]);
    }
    for (int t = 0; t < threads; ++t) pthread_join(th[t], 0);
    double dt = now_s() - t0;
    if (dt < best) best = dt;
  }
  return n * 4.0 / best * 1e-9;
}

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  if (argc >= 2 && !strcmp(argv[1], "memcpy")) {
    size_t n = 1ul << 30;
    char *a = aligned_alloc(64, n), *b = aligned_alloc(64, n);
    memset(a, 1, n);
    memset(b, 2, n);
    double best = 1e9;
    for (int r = 0; r < 5; ++r) {
      double t0 = now_s();
      memcpy(b, a, n);
      double t = now_s() - t0;
      if (t < best) best = t;
    }
    // copy_gbps counts read + write bytes; read_gbps the bytes read (one side of the copy);
    // sum1_gbps / sum2_gbps: a pure read kernel (AVX-512 sum of the 1 GiB buffer) on 1 / 2 threads.
    double r1 = read_gbps((const float*)a, n / 4, 1), r2 = read_gbps((const float*)a, n / 4, 2);
    printf("{\"copy_gbps\":%.3f,\"read_gbps\":%.3f,\"sum1_gbps\":%.3f,\"sum2_gbps\":%.3f}\n", 2.0 * n / best * 1e-9, n / best * 1e-9, r1, r2);
    return 0;
  }
  if (argc < 4) return 2;
  int threads = atoi(argv[1]), reps = atoi(argv[2]);
  openblas_set_num_threads(threads);
  for (int s = 3; s < argc; ++s) {
    long M, R, C;
    if (sscanf(argv[s], "%ld,%ld,%ld", &M, &R, &C) != 3) return 2;
    float* W = malloc(sizeof(float) * R * C);
    float* x = malloc(sizeof(float) * M * C);
    float* y = malloc(sizeof(float) * M * R);
    for (long i = 0; i < R * C; ++i) W[i] = (float)rand() / RAND_MAX - 0.5f;
    for (long i = 0; i < M * C; ++i) x[i] = (float)rand() / RAND_MAX - 0.5f;
    double* t = malloc(sizeof(double) * reps);
    for (int r = -2; r < reps; ++r) {
      double t0 = now_s();
      if (M == 1) cblas_sgemv(CblasRowMajor, CblasNoTrans, R, C, 1.f, W, C, x, 1, 0.f, y, 1);
      else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, R, C, 1.f, x, C, W, C, 0.f, y, R);
      if (r >= 0) t[r] = now_s() - t0;
    }
    qsort(t, reps, sizeof(double), cmp);
    printf("{\"M\":%ld,\"rows\":%ld,\"cols\":%ld,\"threads\":%d,\"ms\":%.4f}\n", M, R, C, threads, t[reps / 2] * 1e3);
    free(W); free(x); free(y); free(t);
  }
  return 0;
}
