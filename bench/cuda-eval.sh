#!/usr/bin/env bash
# lowbit's CUDA eval forward vs PyTorch/transformers (bf16, SDPA) on the same card, same shapes, same ids.
#   bench/cuda-eval.sh <model-dir> [batch] [seqlen]     (needs the CUDA addon built, dist-dev compiled:
#   npx tsc -p tsconfig.json --outDir dist-dev; a random-weight model: python3 make_synthetic.py qwen3-0.6b DIR)
set -uo pipefail
dir=$1; b=${2:-8}; L=${3:-2048}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp}
node "$root/dist-dev/bench/cuda-eval.js" "$dir" --batch "$b" --seqlen "$L" --ids-out "$out/bench_ids.i32" | tee "$out/bench_lowbit.json"
python3 "$root/bench/cuda_eval_torch.py" "$dir" --batch "$b" --seqlen "$L" --ids "$out/bench_ids.i32" | tee "$out/bench_torch.json"
python3 - "$out/bench_lowbit.json" "$out/bench_torch.json" <<'PY'
import json, sys
a = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); t = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print(f"card: {a['device']}  shapes: {a['layers']} layers, batch {a['batch']} x {a['seqLen']}")
print(f"{'impl':34s} {'ms':>9s} {'tok/s':>11s} {'mean NLL':>9s}")
print(f"{'lowbit cuda '+a['dtype']+' (wall)':34s} {a['medianWallMs']:9.2f} {a['tokensPerS']:11.0f} {a['meanNll']:9.4f}")
print(f"{'lowbit cuda '+a['dtype']+' (events)':34s} {a['medianGpuMs']:9.2f} {a['batch']*a['seqLen']/a['medianGpuMs']*1e3:11.0f}")
print(f"{'pytorch '+t['torch']+' sdpa bf16 (events)':34s} {t['medianMs']:9.2f} {t['tokensPerS']:11.0f} {t['meanNll']:9.4f}")
print(f"speed-up (lowbit wall / torch events): {t['medianMs']/a['medianWallMs']:.2f}x")
PY
