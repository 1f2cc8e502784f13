"""The PyTorch side of bench/cuda-eval.ts: the same eval workload (logits + next-token cross-entropy over a
batch of windows) through transformers in bf16 with SDPA attention, timed with CUDA events after warm-up.

  python3 bench/cuda_eval_torch.py <model-dir> [--batch 8] [--seqlen 2048] [--reps 10] [--ids f.i32]
"""
import argparse, json, statistics, sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--ids", default=None, help="int32 token ids written by cuda-eval.ts (same inputs)")
    a = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    V = model.config.vocab_size
    if a.ids:
        ids = torch.from_numpy(np.fromfile(a.ids, dtype=np.int32).astype(np.int64)).view(a.batch, a.seqlen).cuda()
    else:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, V, (a.batch, a.seqlen), generator=g).cuda()

    def step():
        out = model(input_ids=ids, labels=ids)  # transformers: logits, then CE on the shifted labels (fp32)
        return out.loss

    with torch.inference_mode():
        for _ in range(2):
            loss = step()
        torch.cuda.synchronize()
        times = []
        for _ in range(a.reps):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            loss = step()
            e1.record()
            torch.cuda.synchronize()
            times.append(e0.elapsed_time(e1))
    ms = statistics.median(times)
    print(json.dumps({
        "impl": "pytorch-transformers-sdpa-bf16",
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "layers": model.config.num_hidden_layers,
        "batch": a.batch,
        "seqLen": a.seqlen,
        "medianMs": ms,
        "tokensPerS": a.batch * a.seqlen / (ms / 1000),
        "meanNll": float(loss),
        "maxMemGiB": torch.cuda.max_memory_allocated() / 2**30,
    }))


if __name__ == "__main__":
    sys.exit(main())
