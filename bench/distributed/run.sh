#!/bin/sh
# Distributed study throughput (see bench/distributed.ts). Usage, from the repository root:
#   sh bench/distributed/run.sh [--workers 1,2] [--device cpu|cuda] [--model DIR] [--redis URL]
set -e
cd "$(dirname "$0")/../.."
# The CLI the workers and studies run (dist/), and the bench itself inside the checkout.
npx tsc -p tsconfig.build.json
npx tsc -p tsconfig.json --outDir build/bench-ts
node build/bench-ts/bench/distributed.js "$@"
