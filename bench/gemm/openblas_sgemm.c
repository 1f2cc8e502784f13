// OpenBLAS baseline for bench/gemm.ts: times cblas_sgemm on x·Wᵀ (A [M,K], W [N,K], row-major,
// transB) and prints one JSON line per shape: {"M","N","K","threads","gflops","core"}.
// Usage: openblas_sgemm THREADS REPS M,N,K [M,N,K ...]   (build: gcc -O2 openblas_sgemm.c -lopenblas)
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

char* openblas_get_corename(void);

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s THREADS REPS M,N,K ...\n", argv[0]);
    return 2;
  }
  int threads = atoi(argv[1]), reps = atoi(argv[2]);
  openblas_set_num_threads(threads);
  for (int s = 3; s < argc; ++s) {
    long M, N, K;
    if (sscanf(argv[s], "%ld,%ld,%ld", &M, &N, &K) != 3) return 2;
    float* A = malloc(sizeof(float) * M * K);
    float* B = malloc(sizeof(float) * N * K);
    float* C = malloc(sizeof(float) * M * N);
    for (long i = 0; i < M * K; ++i) A[i] = (float)rand() / RAND_MAX - 0.5f;
    for (long i = 0; i < N * K; ++i) B[i] = (float)rand() / RAND_MAX - 0.5f;
    double* t = malloc(sizeof(double) * reps);
    // Warm-up: thread start-up, buffer allocation, page faults on C.
    for (int r = 0; r < 2; ++r) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, A, K, B, K, 0.f, C, N);
    for (int r = 0; r < reps; ++r) {
      double t0 = now_s();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, A, K, B, K, 0.f, C, N);
      t[r] = now_s() - t0;
    }
    qsort(t, reps, sizeof(double), cmp_double);
    printf("{\"M\":%ld,\"N\":%ld,\"K\":%ld,\"threads\":%d,\"gflops\":%.3f,\"core\":\"%s\"}\n", M, N, K, threads,
           2.0 * M * N * K / t[reps / 2] * 1e-9, openblas_get_corename());
    free(A); free(B); free(C); free(t);
  }
  return 0;
}
