"""Paged decode attention: our C kernel vs the torch gather + SDPA path, per call (one layer).

Shapes of a SmolLM2-135M decode step: B=64 sequences, H=9 query heads, Hkv=3, D=64,
block_size 16, context lengths uniform in [32, 640]; each sequence's blocks sit at shuffled
places in a pool twice as large as needed.

  torch    index_select of the blocks into a [B, M*bs, Hkv, D] buffer (reused, as the engine
           does), then F.scaled_dot_product_attention with q as [B, Hkv, G, D] and a bool mask
  kernel   fireplace.engine.kernels.paged_decode with 1 and 2 threads (more with --threads)

Prints median and best ms per call, the speedup over torch (medians) and the effective
bandwidth: bytes of K and V the sequences actually hold / median time. Aim: >= 5x.

The kernel runs on torch's own OpenMP threads (see paged_decode.c), so the workers still
spinning after a torch op pick its work up rather than compete with it for the cores.

    .venv/bin/python bench/paged_decode_kernel.py [--dtype float32|bfloat16] [--repeats 30]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

from fireplace.engine.kernels import paged_decode


def make_inputs(args, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    bs = args.block_size
    lens = torch.randint(args.min_len, args.max_len + 1, (args.batch,), generator=g)
    per_seq = [-(-int(n) // bs) for n in lens]
    num_blocks = 2 * sum(per_seq)
    max_blocks = max(per_seq)
    shape = (num_blocks, bs, args.kv_heads, args.head_dim)
    k_pool = torch.randn(shape, generator=g).to(dtype)
    v_pool = torch.randn(shape, generator=g).to(dtype)
    order = torch.randperm(num_blocks, generator=g)
    tables = torch.zeros(args.batch, max_blocks, dtype=torch.int32)  # padding: block 0 (valid)
    used = 0
    for b, n in enumerate(per_seq):
        tables[b, :n] = order[used:used + n].to(torch.int32)
        used += n
    q = torch.randn(args.batch, args.heads, args.head_dim, generator=g).to(dtype)
    return q, k_pool, v_pool, tables, lens.to(torch.int32)


class TorchBaseline:
    """The engine's former decode path: gather blocks into a padded tensor, then SDPA."""

    def __init__(self, q, k_pool, v_pool, tables, lens):
        num_seqs, max_blocks = tables.shape
        _, bs, kv_heads, head_dim = k_pool.shape
        self.ids = tables.reshape(-1).long()
        self.k_buf = torch.empty((num_seqs * max_blocks, *k_pool.shape[1:]), dtype=k_pool.dtype)
        self.v_buf = torch.empty_like(self.k_buf)
        key_pos = torch.arange(max_blocks * bs)
        self.mask = (key_pos[None, :] < lens.long()[:, None])[:, None, None, :]  # [B, 1, 1, L]
        self.view = (num_seqs, max_blocks * bs, kv_heads, head_dim)

    def __call__(self, q, k_pool, v_pool, scale):
        num_seqs, heads, head_dim = q.shape
        kv_heads = k_pool.shape[2]
        keys = torch.index_select(k_pool, 0, self.ids, out=self.k_buf).view(self.view).transpose(1, 2)
        values = torch.index_select(v_pool, 0, self.ids, out=self.v_buf).view(self.view).transpose(1, 2)
        qg = q.view(num_seqs, kv_heads, heads // kv_heads, head_dim)  # [B, Hkv, G, D]
        out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=self.mask, scale=scale)
        return out.reshape(num_seqs, heads, head_dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--min-len", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=640)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    if not paged_decode.available():
        raise SystemExit("paged decode kernel unavailable (no C compiler?)")
    dtype = getattr(torch, args.dtype)
    q, k_pool, v_pool, tables, lens = make_inputs(args, dtype)
    scale = 1.0 / math.sqrt(args.head_dim)
    baseline = TorchBaseline(q, k_pool, v_pool, tables, lens)
    kv_bytes = 2 * int(lens.sum()) * args.kv_heads * args.head_dim * k_pool.element_size()

    methods = {f"torch gather+SDPA ({torch.get_num_threads()} thr)": lambda: baseline(q, k_pool, v_pool, scale)}
    for n in args.threads:
        methods[f"kernel, {n} thread{'s' if n > 1 else ''}"] = (
            lambda n=n: paged_decode.paged_decode_attention(q, k_pool, v_pool, tables, lens, scale, num_threads=n))

    expected = baseline(q, k_pool, v_pool, scale).float()
    for name, fn in methods.items():
        err = (fn().float() - expected).abs().max().item()
        assert err < (1e-4 if dtype == torch.float32 else 3e-2), f"{name} disagrees with torch: {err}"
        for _ in range(3):  # warm-up
            fn()

    # Interleaved rounds, so that noise from the rest of the machine hits every method alike.
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    print(f"B={args.batch} H={args.heads} Hkv={args.kv_heads} D={args.head_dim} bs={args.block_size} "
          f"ctx~U[{args.min_len},{args.max_len}] (sum {int(lens.sum())}) {args.dtype}, "
          f"K+V held: {kv_bytes / 1e6:.1f} MB, pool {2 * k_pool.numel() * k_pool.element_size() / 1e6:.0f} MB, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    base = statistics.median(next(iter(times.values())))
    print(f"{'method':<28}{'median ms':>11}{'best ms':>10}{'speedup':>9}{'GB/s':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<28}{med * 1e3:>11.2f}{min(ts) * 1e3:>10.2f}{base / med:>8.1f}x{kv_bytes / med / 1e9:>8.1f}")


if __name__ == "__main__":
    main()
