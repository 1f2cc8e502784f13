#!/bin/sh
# Peak memory of resident vs layer-streamed evaluation (see bench/stream.ts). Usage, from the repository root:
#   sh bench/stream/run.sh [--layers 16] [--hidden 1024] [--windows 8] [--seqlen 512] [--cap 256M] [--threads 2]
set -e
cd "$(dirname "$0")/../.."
npx tsc -p tsconfig.json --outDir build/bench-ts
npx tsc -p tsconfig.build.json
node build/bench-ts/bench/stream.js "$@"
