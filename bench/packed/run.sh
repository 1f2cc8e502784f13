#!/bin/sh
# Packed low-bit GEMV/GEMM benchmark (see bench/packed.ts). Needs: apt-get install -y libopenblas-dev
# Usage, from the repository root: sh bench/packed/run.sh [--threads 1,2]
set -e
cd "$(dirname "$0")/../.."
gcc -O2 bench/packed/openblas_sgemv.c -o /tmp/lowbit-openblas-sgemv -lopenblas -lpthread
npx tsc -p tsconfig.json --outDir /tmp/lowbit-bench-packed
node /tmp/lowbit-bench-packed/bench/packed.js --openblas /tmp/lowbit-openblas-sgemv "$@"
