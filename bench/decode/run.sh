#!/bin/sh
# Decode benchmark (see bench/decode.ts). Usage, from the repository root:
#   sh bench/decode/run.sh [--model DIR] [--prompt 32] [--gen 128] [--threads 1,2] [--reps 3]
set -e
cd "$(dirname "$0")/../.."
# Compiled inside the checkout so lib/native/addon finds build/Release and node_modules.
npx tsc -p tsconfig.json --outDir build/bench-ts
node build/bench-ts/bench/decode.js "$@"
