"""Prefill attention: our C kernel (kernels/paged_prefill) vs torch's SDPA, per call (one layer).

Shapes of SmolLM2-135M: H=9 query heads over Hkv=3, D=64, fp32, 2 threads (torch's setting).
  no prefix     a fresh prompt of L tokens, q/k/v row-strided views of one qkv product (as the
                layer has them); SDPA causal with enable_gqa (what the layer calls otherwise)
  after prefix  a chunk of L tokens after a cached prefix of 256, keys in a shuffled block pool
                (block_size 16); SDPA gets the blocks gathered and a bool mask (as the layer does)
Both sides get the same 3 untimed calls on the same inputs before their timed ones. Reports median ms per call, the useful GFLOP/s
(causal: 2 * 2 * D * H * sum of visible keys) and kernel / SDPA speedup (medians).

    .venv/bin/python bench/paged_prefill_kernel.py [--repeats 20] [--out bench/results/paged_prefill_kernel.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from fireplace.engine.kernels import paged_prefill  # noqa: E402

H, HKV, D, BS = 9, 3, 64, 16


def timed(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def useful_flops(q_len: int, ctx_len: int) -> float:
    visible = sum(ctx_len - q_len + i + 1 for i in range(q_len))
    return 2 * 2 * D * H * visible


def case_no_prefix(length: int, gen: torch.Generator, repeats: int) -> dict:
    fused = torch.randn(length, (H + 2 * HKV) * D, generator=gen)
    q = fused[:, :H * D].view(length, H, D)
    k = fused[:, H * D:(H + HKV) * D].view(length, HKV, D)
    v = fused[:, (H + HKV) * D:].view(length, HKV, D)

    def sdpa():
        return F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                              v.transpose(0, 1)[None], is_causal=True, enable_gqa=True)

    def kernel():
        return paged_prefill.prefill_attention(q, k, v, D ** -0.5)

    return {"case": "no prefix", "q_len": length, "ctx_len": length, **compare(sdpa, kernel, length, length, repeats)}


def case_after_prefix(length: int, prefix: int, gen: torch.Generator, repeats: int) -> dict:
    ctx = prefix + length
    blocks = -(-ctx // BS)
    k_pool = torch.randn(2 * blocks, BS, HKV, D, generator=gen)
    v_pool = torch.randn(2 * blocks, BS, HKV, D, generator=gen)
    ids = torch.randperm(2 * blocks, generator=gen)[:blocks]
    q = torch.randn(length, H, D, generator=gen)
    mask = torch.arange(ctx)[None, :] <= torch.arange(prefix, ctx)[:, None]

    def sdpa():
        keys = k_pool.index_select(0, ids).flatten(0, 1)[:ctx]
        values = v_pool.index_select(0, ids).flatten(0, 1)[:ctx]
        return F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys.transpose(0, 1)[None],
                                              values.transpose(0, 1)[None], attn_mask=mask, enable_gqa=True)

    def kernel():
        return paged_prefill.prefill_attention(q, k_pool, v_pool, D ** -0.5, block_ids=ids, context_len=ctx)

    return {"case": f"after a prefix of {prefix}", "q_len": length, "ctx_len": ctx,
            **compare(sdpa, kernel, length, ctx, repeats)}


def compare(sdpa, kernel, q_len: int, ctx_len: int, repeats: int) -> dict:
    got, want = kernel(), sdpa()[0].transpose(0, 1)
    max_diff = (got - want).abs().max().item()
    t_sdpa, t_kernel = timed(sdpa, repeats), timed(kernel, repeats)
    flops = useful_flops(q_len, ctx_len)
    return {"sdpa_ms": t_sdpa * 1e3, "kernel_ms": t_kernel * 1e3,
            "sdpa_gflops": flops / t_sdpa / 1e9, "kernel_gflops": flops / t_kernel / 1e9,
            "speedup": t_sdpa / t_kernel, "max_abs_diff": max_diff}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "paged_prefill_kernel.json")
    args = parser.parse_args()
    if not paged_prefill.available():
        sys.exit("the prefill attention kernel is not built here (it needs AVX-512)")
    gen = torch.Generator().manual_seed(0)
    rows = [case_no_prefix(n, gen, args.repeats) for n in (32, 64, 128, 256, 512, 1024)]
    rows += [case_after_prefix(n, 256, gen, args.repeats) for n in (64, 256)]
    print(f"{'case':22} {'q_len':>5} {'ctx':>5} {'SDPA ms':>8} {'ours ms':>8} {'SDPA GF/s':>9} {'ours GF/s':>9} {'x':>6}")
    for r in rows:
        print(f"{r['case']:22} {r['q_len']:5d} {r['ctx_len']:5d} {r['sdpa_ms']:8.3f} {r['kernel_ms']:8.3f} "
              f"{r['sdpa_gflops']:9.1f} {r['kernel_gflops']:9.1f} {r['speedup']:6.2f}")
    result = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "python": platform.python_version(), "loadavg": list(os.getloadavg())},
              "shapes": {"heads": H, "kv_heads": HKV, "head_dim": D, "block_size": BS, "dtype": "float32"},
              "rows": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
