"""Quantized linear at batch sizes: the GEMV, the GEMM and dequantize + oneDNN, against fp32.

y = x @ dequantize(W)^T for x [M, K] and SmolLM2-135M's projection shapes (576 -> 960 fused
q/k/v, 576 -> 576 o_proj, 576 -> 3072 fused gate/up, 1536 -> 576 down_proj, 576 -> 49152 int8
lm_head), W int8 or int4 in groups of 32 (EngineConfig's defaults):

  gemv        kernels.quant_gemv.linear_unchecked (weight read as stored, in registers)
  gemm        kernels.quant_gemv.gemm_unchecked (a block of rows dequantized into L2 at a time,
              AVX-512 GEMM over it)
  deq+onednn  the whole weight dequantized by the C loops, then oneDNN's linear on it (the path
              above BackendConfig.quant_gemm_max_tokens and without AVX-512)
  fp32        oneDNN's linear on a packed fp32 copy: what the same layer costs unquantized

Each shape gets 30 distinct weight matrices (2 for lm_head), used in turn, so they stream from
memory as in a 30-layer model; methods alternate sample by sample; the median ms per matrix is
printed, and fp32 time / the best quantized method's (above 1: quantized is faster).

    .venv/bin/python bench/quant_gemm_kernel.py [--threads 2] [--repeats 7] [--ms 5 8 16 64 256 512]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fireplace.engine.kernels import onednn_linear, quant_gemv  # noqa: E402
from fireplace.engine.quantization import quantize, quantize_int8  # noqa: E402

SHAPES = [(960, 576, "q/k/v"), (576, 576, "o_proj"), (3072, 576, "gate/up"), (576, 1536, "down"),
          (49152, 576, "lm_head")]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--ms", type=int, nargs="+", default=[5, 8, 16, 64, 256, 512])
    p.add_argument("--schemes", default="int8,int4")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not (quant_gemv.available() and quant_gemv.gemm_available() and onednn_linear.available()):
        sys.exit("needs the quantized kernels with AVX-512 and torch's oneDNN linear")
    g = torch.Generator().manual_seed(0)
    print(f"{'shape':<10}{'scheme':<7}{'M':>5}{'gemv':>9}{'gemm':>9}{'deq+dnn':>9}{'fp32':>9}  fp32 / best (ms per matrix)")
    for n, k, name in SHAPES:
        count = 2 if name == "lm_head" else 30
        dense = [torch.randn(n, k, generator=g) * 0.02 for _ in range(count)]
        packed = [onednn_linear.pack(w) for w in dense]
        scratch = torch.empty(n, k)
        for scheme in args.schemes.split(","):
            weights = [quantize_int8(w) if name == "lm_head" else quantize(w, scheme, 32) for w in dense]
            for m in args.ms:
                x = torch.randn(m, k, generator=g)
                methods = {
                    "gemv": (lambda q: quant_gemv.linear_unchecked(x, q)) if m <= 16 else None,
                    "gemm": lambda q: quant_gemv.gemm_unchecked(x, q),
                    "deq+dnn": lambda q: onednn_linear.linear(x, quant_gemv.dequantize_unchecked(q, scratch)),
                }
                samples: dict[str, list[float]] = {key: [] for key, f in methods.items() if f}
                samples["fp32"] = []
                with torch.inference_mode():
                    for _ in range(args.repeats + 1):  # the first pass of each method is dropped
                        for key in samples:
                            start = time.perf_counter()
                            if key == "fp32":
                                for w in packed:
                                    onednn_linear.linear(x, w)
                            else:
                                for q in weights:
                                    methods[key](q)
                            samples[key].append((time.perf_counter() - start) * 1e3 / count)
                med = {key: statistics.median(v[1:]) for key, v in samples.items()}
                best = min(v for key, v in med.items() if key != "fp32")
                cells = "".join(f"{med[key]:>9.3f}" if key in med else f"{'-':>9}"
                                for key in ("gemv", "gemm", "deq+dnn", "fp32"))
                label = "int8" if name == "lm_head" else scheme
                print(f"{name:<10}{label:<7}{m:>5}{cells}  {med['fp32'] / best:.2f}x", flush=True)
            if name == "lm_head":
                break


if __name__ == "__main__":
    main()
