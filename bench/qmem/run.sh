#!/bin/sh
# Peak memory of `lowbit quantize` resident vs under --max-memory (see bench/qmem.ts). From the repository root:
#   sh bench/qmem/run.sh [--layers 12] [--hidden 1024] [--nsamples 64] [--seqlen 256] [--cap 64M] [--threads 2] [--baseline DIR]
set -e
cd "$(dirname "$0")/../.."
npx tsc -p tsconfig.json --outDir build/bench-ts
npx tsc -p tsconfig.build.json
node build/bench-ts/bench/qmem.js "$@"
