"""Dense fp32 linear at decode batch sizes: our C kernel vs torch's F.linear (MKL) and oneDNN.

y = x @ W^T for x [M, K] and the weight shapes of SmolLM2-135M (W [N, K], nn.Linear layout):

  576 -> 576 (o_proj), 576 -> 960 (fused q/k/v), 576 -> 192 (k or v alone), 576 -> 1536 (gate
  or up alone), 576 -> 3072 (fused gate/up), 1536 -> 576 (down_proj), 576 -> 49152 (lm_head)

  F.linear   torch.nn.functional.linear (MKL sgemm)
  oneDNN     torch.ops.mkldnn._linear_pointwise(x, W, None, "none", [], "")
  kernel     fireplace.engine.kernels.small_gemm.linear (the checked entry point, allocating
             its output like the other two)

Each shape gets 30 distinct weight matrices (2 for lm_head, 113 MB each), used in turn, so that
the weights stream from DRAM as in the model (30 layers) rather than sitting in the caches.
One sample = one pass over them, per call; the methods alternate sample by sample, so noise
from the rest of the machine hits all alike. Prints median GFLOP/s per method, the ratio
kernel / F.linear of the medians, and the same ratio of the best samples (less sensitive to other
processes taking a core, which stalls any 2-thread method at its next barrier).

    .venv/bin/python bench/small_gemm_kernel.py [--threads 2] [--repeats 15] [--ms 16 32 64 128 256]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from fireplace.engine.kernels import small_gemm

SHAPES = [  # (K, N, name)
    (576, 576, "o_proj"),
    (576, 960, "qkv"),
    (576, 192, "k/v"),
    (576, 1536, "gate/up"),
    (576, 3072, "gate_up"),
    (1536, 576, "down"),
    (576, 49152, "lm_head"),
]
LM_HEAD_N = 49152


def onednn_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15, help="samples per method (>= 10 recommended)")
    parser.add_argument("--ms", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--shapes", nargs="+", default=[name for _, _, name in SHAPES],
                        help="subset of: " + " ".join(name for _, _, name in SHAPES))
    args = parser.parse_args()

    if not small_gemm.available():
        raise SystemExit("small GEMM kernel unavailable (no C compiler?)")
    torch.set_num_threads(args.threads)
    methods = {
        "F.linear": F.linear,
        "oneDNN": onednn_linear,
        "kernel": small_gemm.linear,
    }
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} alternating samples per method; "
          "GFLOP/s from the median time per call")
    print(f"{'shape':<9}{'K':>6}{'N':>7}{'M':>5}" + "".join(f"{name:>10}" for name in methods)
          + f"{'kern/F.lin':>12}{'(best)':>8}")
    with torch.inference_mode():
        for K, N, label in SHAPES:
            if label not in args.shapes:
                continue
            weights = [torch.randn(N, K, generator=g) for _ in range(2 if N == LM_HEAD_N else 30)]
            for M in args.ms:
                x = torch.randn(M, K, generator=g)
                expected = F.linear(x.double(), weights[0].double())
                for name, fn in methods.items():
                    err = (fn(x, weights[0]).double() - expected).abs().max().item()
                    assert err <= 1e-5 * expected.abs().max().item(), f"{name} disagrees at K={K} N={N} M={M}: {err}"
                times: dict[str, list[float]] = {name: [] for name in methods}
                for _ in range(args.repeats):
                    for name, fn in methods.items():
                        start = time.perf_counter()
                        for w in weights:
                            fn(x, w)
                        times[name].append((time.perf_counter() - start) / len(weights))
                flop = 2.0 * M * K * N
                gflops = {name: flop / statistics.median(ts) / 1e9 for name, ts in times.items()}
                best_ratio = min(times["F.linear"]) / min(times["kernel"])
                print(f"{label:<9}{K:>6}{N:>7}{M:>5}" + "".join(f"{v:>10.1f}" for v in gflops.values())
                      + f"{gflops['kernel'] / gflops['F.linear']:>11.2f}x{best_ratio:>7.2f}x", flush=True)
            del weights


if __name__ == "__main__":
    main()
