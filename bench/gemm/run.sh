#!/bin/sh
# GEMM benchmark vs OpenBLAS (see bench/gemm.ts). Needs: apt-get install -y libopenblas-dev
# Usage, from the repository root: sh bench/gemm/run.sh [--threads 1,2]
set -e
cd "$(dirname "$0")/../.."
gcc -O2 bench/gemm/openblas_sgemm.c -o /tmp/lowbit-openblas-sgemm -lopenblas
npx tsc -p tsconfig.json --outDir /tmp/lowbit-bench
node /tmp/lowbit-bench/bench/gemm.js --openblas /tmp/lowbit-openblas-sgemm "$@"
