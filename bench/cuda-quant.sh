#!/usr/bin/env bash
# GPTQ or AWQ on the GPU: lowbit (bench/cuda-quant.js) vs the reference PyTorch method (reference_ptq.py, fp32, no
# TF32; AWQ on the first 512 tokens of each calibration row, as lowbit's awq spec) on the same card in the same
# command, per layer. The model must have a tokenizer.json for the reference (any: the calibration ids are read
# from CALIB_IDS). Usage, from the checkout root, after building:
#   bench/cuda-quant.sh MODEL_DIR CALIB_IDS DIST REFERENCE_PTQ_PY DATA_DIR [WBITS=4] [GROUP=128] [METHOD=gptq|awq]
set -euo pipefail
model=$1 calib=$2 dist=$3 ref=$4 data=$5 bits=${6:-4} group=${7:-128} method=${8:-gptq}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
layers=$(python3 -c "import json,sys; print(json.load(open('$model/config.json'))['num_hidden_layers'])")
gspec=$([ "$group" = "-1" ] && echo perchannel || echo "g$group")
ours=$(node "$dist/bench/cuda-quant.js" "$model" "$calib" "$method:w${bits}${gspec}")
echo "lowbit: $ours"
# The reference: quantization time (quant_s) over all layers, then a one-window perplexity; peak memory from torch.
refout=$(python3 - "$ref" "$model" "$calib" "$data" "$bits" "$group" "$method" <<'PY'
import json, runpy, sys, torch
ref, model, calib, data, bits, group, method = sys.argv[1:]
sys.argv = [ref, model, "--method", method, "--wbits", bits, "--group", group, "--max-windows", "1",
            "--wikitext", f"{data}/wikitext-2-raw-v1.test.json", "--c4", f"{data}/c4_validation_shard0_head.jsonl", "--calib", calib]
import io, contextlib
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    runpy.run_path(ref, run_name="__main__")
r = json.loads(buf.getvalue().strip().splitlines()[-1])
r["peakGiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
print(json.dumps(r))
PY
)
echo "reference: $refout"
python3 - "$ours" "$refout" "$layers" "$method" <<'PY'
import json, sys
o, r, n, m = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4].upper()
ol = o["seconds"] / n  # conservative: includes embedding the calibration set, as quant_s does
rl = r["quant_s"] / n
print("| | s/layer | total quant s | peak GPU GiB |")
print("|---|---|---|---|")
print(f"| lowbit {m} (fp32, GPU) | {ol:.2f} | {o['seconds']:.1f} | {o['peakGiB']} (in use beyond start) |")
print(f"| reference_ptq.py {m} (fp32, no TF32) | {rl:.2f} | {r['quant_s']:.1f} | {r['peakGiB']} (torch max allocated, whole model resident) |")
print(f"| speedup | {rl/ol:.2f}x | | |")
PY
