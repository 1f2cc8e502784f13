#!/usr/bin/env bash
# Where the CUDA eval forward's time goes: device time of every kernel of one forward (after two warm-up calls),
# from Nsight Compute, summed by kernel name.
#   bench/cuda-profile.sh <model-dir> [batch] [seqlen] [dtype]
# Needs ncu, the CUDA addon and dist-dev (npx tsc -p tsconfig.json --outDir dist-dev). ncu runs each kernel alone with
# the GPU idle in between (--clock-control none: the card's own clocks), so the kernels run at full clock: compare
# shares and bytes per second, not the sum against a timed run.
set -euo pipefail
dir=$1; b=${2:-8}; L=${3:-2048}; dt=${4:-bf16}
root=$(cd "$(dirname "$0")/.." && pwd)
csv=$(mktemp)
trap 'rm -f "$csv"' EXIT
ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
  node "$root/dist-dev/bench/cuda-eval.js" "$dir" --batch "$b" --seqlen "$L" --dtype "$dt" --reps 1 > "$csv"
python3 - "$csv" <<'PY'
import csv, sys
from collections import OrderedDict
rows, hdr = [], None
for r in csv.reader(open(sys.argv[1])):
    if r and r[0] == "ID":
        hdr = r
    elif hdr and len(r) == len(hdr):
        d = dict(zip(hdr, r))
        if d["Metric Name"] == "gpu__time_duration.sum":
            rows.append((d["Kernel Name"], float(d["Metric Value"].replace(",", "")) / 1e3))
# cuda-eval runs three forwards (two warm-up, one timed); each starts with the embedding lookup.
starts = [i for i, (k, _) in enumerate(rows) if "embed_kernel" in k]
if len(starts) < 3:
    sys.exit(f"expected three forwards (embedding lookups), found {len(starts)} in {len(rows)} kernels")
last = rows[starts[-1]:]
def short(k):
    k = k.split("(")[0]
    return k.replace("void ", "").replace("lowbit::<unnamed>::", "")
by = OrderedDict()
for k, us in last:
    by.setdefault(short(k), []).append(us)
total = sum(us for _, us in last)
print(f"{'kernel':70s} {'calls':>5s} {'median us':>10s} {'total ms':>9s} {'share':>6s}")
for k, v in sorted(by.items(), key=lambda kv: -sum(kv[1])):
    s = sorted(v)
    print(f"{k[:70]:70s} {len(v):5d} {s[len(s) // 2]:10.1f} {sum(v) / 1e3:9.3f} {sum(v) / total:6.1%}")
print(f"{'all kernels of one forward':70s} {len(last):5d} {'':10s} {total / 1e3:9.3f}")
# The first decoder layer in order (from its input RMSNorm to the next layer's), where one kernel name serves
# several GEMM shapes.
norms = [i for i, (k, _) in enumerate(last) if "rmsnorm_kernel" in k]
if len(norms) >= 3:
    print("\nfirst layer, in order:")
    for k, us in last[norms[0]:norms[2]]:
        print(f"  {short(k)[:68]:68s} {us:10.1f} us")
PY
