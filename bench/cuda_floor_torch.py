"""The floor of a Qwen3 eval forward on this card: the time of its matrix products and attention alone, each run
by PyTorch's fastest kernels (cuBLAS bf16 GEMMs, SDPA flash attention), with nothing else (no norms, RoPE,
activations, residuals, cross-entropy). Any implementation that uses such GEMMs takes at least this long, so
`pytorch forward ms / floor ms` bounds the speed-up over PyTorch that a faster rest of the forward can reach.

  python3 bench/cuda_floor_torch.py [--shape qwen3-8b|qwen3-0.6b | --config model/config.json] [--batch 8] [--seqlen 2048]

Prints one JSON line: per-layer GEMM and attention ms, the LM head ms, the floor for the whole model, and the
TFLOP/s each part reached.
"""
import argparse, json, statistics

import torch

SHAPES = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, num_hidden_layers=28, vocab_size=151936),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, num_hidden_layers=36, vocab_size=151936),
}


def timed(fn, reps):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        ms.append(e0.elapsed_time(e1))
    return statistics.median(ms)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen3-8b", choices=sorted(SHAPES))
    ap.add_argument("--config", default=None, help="a model's config.json (overrides --shape)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    c = json.load(open(a.config)) if a.config else SHAPES[a.shape]
    H, I, nh, nkv = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim", H // nh)
    T = a.batch * a.seqlen
    dt, dev = torch.bfloat16, "cuda"
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True  # cuBLAS's fastest bf16 path
    x = torch.randn(T, H, dtype=dt, device=dev)
    # The fused projections (QKV, gate|up) are the larger, faster GEMMs: the floor takes them.
    gemms = {"qkv": (H, (nh + 2 * nkv) * hd), "o": (nh * hd, H), "gate_up": (H, 2 * I), "down": (I, H)}
    per = {}
    flops = 0
    for name, (k, n) in gemms.items():
        a_in = torch.randn(T, k, dtype=dt, device=dev)
        w = torch.randn(n, k, dtype=dt, device=dev) * k ** -0.5
        per[name] = timed(lambda: torch.nn.functional.linear(a_in, w), a.reps)
        flops += 2 * T * k * n
        del a_in, w
    gemm_ms = sum(per.values())
    q = torch.randn(a.batch, nh, a.seqlen, hd, dtype=dt, device=dev)
    # K/V repeated to all heads beforehand (as transformers' repeat_kv does): the flash kernel then takes them.
    kk = torch.randn(a.batch, nkv, a.seqlen, hd, dtype=dt, device=dev).repeat_interleave(nh // nkv, dim=1)
    v = torch.randn(a.batch, nkv, a.seqlen, hd, dtype=dt, device=dev).repeat_interleave(nh // nkv, dim=1)
    attn = lambda: torch.nn.functional.scaled_dot_product_attention(q, kk, v, is_causal=True)
    attn_ms = timed(attn, a.reps)
    attn_flops = 4 * a.batch * nh * a.seqlen * a.seqlen * hd / 2  # causal: half of QKᵀ and PV
    del q, kk, v
    wh = torch.randn(c["vocab_size"], H, dtype=dt, device=dev) * H ** -0.5
    head_ms = timed(lambda: torch.nn.functional.linear(x, wh), a.reps)
    head_flops = 2 * T * H * c["vocab_size"]
    L = c["num_hidden_layers"]
    floor = L * (gemm_ms + attn_ms) + head_ms
    print(json.dumps({
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "layers": L, "batch": a.batch, "seqLen": a.seqlen,
        "gemmMsPerLayer": {k: round(v, 4) for k, v in per.items()}, "gemmTflops": round(flops / gemm_ms / 1e9, 1),
        "attnMsPerLayer": round(attn_ms, 4), "attnTflops": round(attn_flops / attn_ms / 1e9, 1),
        "headMs": round(head_ms, 4), "headTflops": round(head_flops / head_ms / 1e9, 1),
        "floorMs": round(floor, 2), "floorTokensPerS": round(T / floor * 1e3),
    }))


if __name__ == "__main__":
    main()
