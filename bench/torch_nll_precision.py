"""What 16-bit arithmetic costs the reference stack: per-position next-token NLL of a model through transformers at
fp32, bf16, fp16 and fp32 weights under bf16 autocast, against a golden fp32 NLL (the ids and NLL of a
../shared/golden/<model>.json file, as test/cuda.test.ts compares lowbit's GPU forward with them). TF32 off.

  python3 bench/torch_nll_precision.py <model-dir> <golden.json>
"""
import json, sys

import torch
from transformers import AutoModelForCausalLM


def main():
    model_dir, golden = sys.argv[1], sys.argv[2]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    g = json.load(open(golden))["golden"]
    ids = torch.tensor(g["input_ids"]).cuda()
    gold = torch.tensor(g["nll"], dtype=torch.float64)  # [rows, seqLen - 1]
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, {model_dir}, {tuple(ids.shape)} ids")
    for name, dtype, autocast in [("fp32", torch.float32, False), ("bf16", torch.bfloat16, False),
                                  ("fp16", torch.float16, False), ("fp32 weights, autocast bf16", torch.float32, True)]:
        m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").cuda().eval()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = m(ids).logits.float()
        nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0].double().cpu()
        d = (nll - gold).abs()
        print(f"transformers {name}: max |NLL - golden| = {d.max().item():.3e}, mean {d.mean().item():.3e}, "
              f"p99 {d.flatten().quantile(0.99).item():.3e}", flush=True)
        del m


if __name__ == "__main__":
    main()
