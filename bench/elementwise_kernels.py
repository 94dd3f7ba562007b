"""Elementwise kernels (silu_mul, rms_norm, add_rms_norm_, rotary_) vs the torch code they replace.

Shapes of SmolLM2-135M, fp32: hidden 576, intermediate 1536, 9 query heads and 3 KV heads of
64, at T = 64 (a decode step's batch), 512 and 2048 (prefill) tokens. One call = one layer's op:

  silu_mul      torch: F.silu(gate) * up, gate/up the halves of one [T, 2 * 1536] product
  rms_norm      torch: layers/norm.RMSNorm on [T, 576]
  add_rms_norm  torch: h = h + x, then RMSNorm(h)   (the residual add before each norm)
  rotary        torch: apply_rotary on q [T, 9, 64] and on k [T, 3, 64], column views of [T, 960]

Kernel calls go through the Python wrappers (fireplace.engine.kernels.elementwise), with
torch.get_num_threads() threads, as torch (--threads sets both). Each sample times a batch of
calls (~2 ms), methods interleaved round by round so that machine noise hits both alike; the
median and the best sample are printed, the speedup from the medians. On a machine shared with
other busy processes the medians of 2-thread runs suffer most: an OpenMP region waits for its
slowest thread, and a descheduled one costs a scheduler time slice (ms).

Both columns include allocating their outputs, as in the model. From T = 512 on that can cost as
much as the arithmetic: glibc's malloc serves such sizes (MBs) with mmap and gives them back on
free, so every call page-faults its fresh output in again. Running with
MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=4000000000 keeps freed memory in the
heap and shows the ops without that (T = 512, 1 thread: silu_mul torch 4.2 -> 1.2 ms, kernel
1.9 -> 0.63 ms).

The last table is the Python-side cost per call: wrapper vs the bare ctypes call with
precomputed arguments, on T = 1 (the C work, at most ~1 us, is the same in both).

    .venv/bin/python bench/elementwise_kernels.py [--tokens 64 512 2048] [--threads N] [--repeats 25]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fireplace.engine.backend import Backend
from fireplace.engine.kernels import elementwise as ew
from fireplace.engine.layers.norm import RMSNorm
from fireplace.engine.layers.rotary import apply_rotary

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, EPS = 576, 1536, 9, 3, 64, 1e-5


def per_call_us(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """(median, best) microseconds per call of each fn, batches of calls sized to ~2 ms, interleaved."""
    batch = {}
    for name, fn in fns.items():
        for _ in range(3):  # warm-up
            fn()
        start = time.perf_counter()
        fn()
        batch[name] = max(1, int(2e-3 / max(time.perf_counter() - start, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            n = batch[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n * 1e6)
    return {name: (statistics.median(ts), min(ts)) for name, ts in samples.items()}


def cases(tokens: int) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """name -> (torch call, kernel call), on fresh inputs of `tokens` rows."""
    g = torch.Generator().manual_seed(tokens)
    gate, up = torch.randn(tokens, 2 * INTER, generator=g).split(INTER, dim=-1)  # row stride 2 * INTER
    norm = RMSNorm(HIDDEN, EPS, backend=Backend.select("cpu", torch.float32, "torch"))  # the torch code
    norm.weight.data = 1 + 0.1 * torch.randn(HIDDEN, generator=g)
    x = torch.randn(tokens, HIDDEN, generator=g)
    h = torch.randn(tokens, HIDDEN, generator=g)
    h_kernel = h.clone()  # the kernel adds into it on every call; the torch path allocates
    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, generator=g)
    q, k, _ = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
    q, k = q.view(tokens, HEADS, HEAD_DIM), k.view(tokens, KV_HEADS, HEAD_DIM)
    angles = torch.arange(tokens, dtype=torch.float32)[:, None] * torch.rand(HEAD_DIM // 2, generator=g)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]  # [T, 1, D/2] as RotaryEmbedding gives

    return {
        "silu_mul": (lambda: F.silu(gate) * up, lambda: ew.silu_mul(gate, up)),
        "rms_norm": (lambda: norm(x), lambda: ew.rms_norm(x, norm.weight, EPS)),
        "add_rms_norm": (lambda: norm(h + x), lambda: ew.add_rms_norm_(x, h_kernel, norm.weight, EPS)),
        "rotary q+k": (lambda: (apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)),
                       lambda: ew.rotary_(q, k, cos, sin)),
    }


def wrapper_overhead(repeats: int) -> dict[str, tuple[float, float]]:
    """name -> (wrapper us, bare ctypes call us) per call on T = 1, best samples (the difference
    is pure Python work, which machine noise only adds to)."""
    lib = ew._library()
    nthreads = torch.get_num_threads()
    gate, up = torch.randn(1, 2 * INTER).split(INTER, dim=-1)
    x, h, w = torch.randn(1, HIDDEN), torch.randn(1, HIDDEN), torch.ones(HIDDEN)
    out = torch.empty(1, INTER)
    q = torch.randn(1, HEADS, HEAD_DIM)
    k = torch.randn(1, KV_HEADS, HEAD_DIM)
    cos, sin = torch.ones(1, 1, HEAD_DIM // 2), torch.zeros(1, 1, HEAD_DIM // 2)
    pg, pu, po, px, ph, pw = gate.data_ptr(), up.data_ptr(), out.data_ptr(), x.data_ptr(), h.data_ptr(), w.data_ptr()
    pq, pk, pc, ps = q.data_ptr(), k.data_ptr(), cos.data_ptr(), sin.data_ptr()
    pairs = {
        "silu_mul": (lambda: ew.silu_mul(gate, up),
                     lambda: lib.fp_silu_mul(pg, 2 * INTER, pu, 2 * INTER, po, 1, INTER, nthreads)),
        "rms_norm": (lambda: ew.rms_norm(x, w, EPS),
                     lambda: lib.fp_rms_norm(px, HIDDEN, pw, EPS, po, 1, HIDDEN, nthreads)),
        "add_rms_norm": (lambda: ew.add_rms_norm_(x, h, w, EPS),
                         lambda: lib.fp_add_rms_norm(px, HIDDEN, ph, HIDDEN, pw, EPS, po, 1, HIDDEN, nthreads)),
        "rotary q+k": (lambda: ew.rotary_(q, k, cos, sin),
                       lambda: lib.fp_rotary(pq, HEADS * HEAD_DIM, HEADS, pk, KV_HEADS * HEAD_DIM, KV_HEADS,
                                             pc, ps, 1, HEAD_DIM, nthreads)),
    }
    fns = {}
    for name, (wrapped, bare) in pairs.items():
        fns[name + " wrapper"], fns[name + " bare"] = wrapped, bare
    us = per_call_us(fns, repeats)
    return {name: (us[name + " wrapper"][1], us[name + " bare"][1]) for name in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 512, 2048])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not ew.available():
        raise SystemExit("elementwise kernels unavailable (no C compiler?)")

    print(f"SmolLM2-135M shapes, fp32, {torch.get_num_threads()} threads; us per call, median (best)")
    print(f"{'op':<14}{'T':>6}{'torch us':>20}{'kernel us':>20}{'speedup':>9}")
    with torch.inference_mode():
        for tokens in args.tokens:
            for name, (torch_fn, kernel_fn) in cases(tokens).items():
                us = per_call_us({"torch": torch_fn, "kernel": kernel_fn}, args.repeats)
                (torch_med, torch_best), (kernel_med, kernel_best) = us["torch"], us["kernel"]
                print(f"{name:<14}{tokens:>6}{torch_med:>11.1f} ({torch_best:>6.1f}){kernel_med:>11.1f} "
                      f"({kernel_best:>6.1f}){torch_med / kernel_med:>8.1f}x")

        print("\nPython-side cost per call (T = 1): wrapper (checks, output, ctypes) vs bare ctypes call")
        print(f"{'op':<14}{'wrapper us':>12}{'bare us':>9}{'checks+alloc us':>17}")
        for name, (wrapped, bare) in wrapper_overhead(args.repeats).items():
            print(f"{name:<14}{wrapped:>12.2f}{bare:>9.2f}{wrapped - bare:>17.2f}")


if __name__ == "__main__":
    main()
