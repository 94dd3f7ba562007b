"""The tuned switches of the compute backend, in one place (see fireplace.engine.backend).

Every number here was measured on the SmolLM2-135M shapes on a 2-core AVX2 VM (torch 2.13 CPU,
2 intra-op threads) unless it names another machine; the bench/ scripts named beside each one
re-measure it. They choose between code paths that compute the same thing, and change what a
request gets only by floating-point rounding (see "Batch invariance" in backend.py for what
does and does not hold bit for bit), with one exception said where it stands:
quant_activations, which rounds the activations of quantized projections. On CUDA the
CPU-only thresholds are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

QUANT_ACTIVATIONS = ("auto", "int8", "fp32")  # BackendConfig.quant_activations (kernels/quant_gemv.c)


def _cpu_has_avx512() -> bool:
    """Whether torch dispatches AVX-512 code here (oneDNN then does too): the CPU-dependent
    defaults below follow it."""
    import torch

    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    # FusedLinear (q/k/v, gate/up), CPU torch path: from this many tokens on, one F.linear over
    # the whole [sum(out), in] matrix; below it one F.linear per part, where MKL does better with
    # the thin matrices (75 vs 68 GFLOP/s at 64 tokens, 125 vs 115 the other way at 512).
    # CUDA always runs the fused matmul.
    fused_matmul_min_tokens: int = 384

    # Projections (dense fp32 or bf16 weights, CPU) of batches of at least this many tokens run
    # oneDNN's linear on a pre-packed weight (kernels/onednn_linear), where torch has it. None
    # (the default): 24 on CPUs with AVX-512, 0 (off) on the others, since the choice follows
    # which ISA oneDNN gets against our AVX2 small GEMM. AVX-512 (Zen 5 VM): MKL's sgemm stays
    # on AVX2 while oneDNN uses AVX-512; all 210 projections of a SmolLM2 step, 2 threads: 47 vs
    # 85 ms (our small GEMM) vs 128 ms (MKL) at 64 tokens, 391 vs 803 vs 939 ms at 512; below it
    # a decode step runs faster through the C decode stack (models/fast_decode.py, small GEMM,
    # no per-module Python) than through the modules on oneDNN (whole step, fp32: 29.6 vs 36.5
    # ms at 16 sequences, 45 vs 43 at 24, 80 vs 73 at 48). AVX2 (Zen 3 VM): oneDNN runs AVX2
    # code and our small GEMM beats its packed linear at every size tried (bench/
    # small_gemm_kernel.py shapes, GFLOP/s: gate/up 175 vs 137 at 64 tokens, 180 vs 160 at 256,
    # 175 vs 159 at 1024, 2048 tokens 44.8 vs 45.5 ms; down_proj 165 vs 115 at 64, 170 vs 152 at
    # 1024), so there the projections skip it, and its second copy of each weight in memory.
    onednn_min_tokens: int | None = None
    # ... and the lm_head from this many rows on: 19.1 vs 21.1 ms per batch-1 step with it
    # (49152x576: MKL's GEMV 9.6 ms, oneDNN 2.1 ms from cache; AVX2: 4.1 vs 4.5 ms against
    # our small GEMM at 1 row, which wins from 4 rows on: 5.1 vs 6.1 ms).
    onednn_lm_head_min_tokens: int = 1

    # Projections of batches of at most this many tokens run through our C small GEMM
    # (cpu-kernels backend, AVX2 only): MKL's sgemm barely uses the second core at these sizes
    # (1.3-2.2x F.linear per projection at 64 tokens; bench/small_gemm_kernel.py). Larger
    # batches go to MKL. None (the default): 256 on CPUs with AVX-512 (oneDNN takes the
    # projections from 24 tokens on there), 4096 on the others (the sizes above: every prefill
    # chunk of the default 2048-token step budget). It also bounds batch invariance (backend.py).
    small_gemm_max_tokens: int | None = None

    # Quantized weights (int8 / int4, layers/quantized_linear.py): batches of at most this many
    # tokens run the quantized GEMV (weight read as stored, dequantized in registers) ...
    # bench/quant_gemm_kernel.py, SmolLM2's shapes, weights streamed from memory, 2 threads,
    # ms per matrix GEMV vs GEMM: fused gate/up int8 0.29 vs 0.46 at 5 tokens, 0.48 vs 0.50 at
    # 8, 0.99 vs 0.50 at 16.
    quant_gemv_max_tokens: int = 8
    # ... reading the activations as "int8" (each token's x rounded to int8 per block of 32,
    # then integer dot products, as llama.cpp's Q8 kernels do) or "fp32" (x as it is); "auto":
    # int8 for 4-bit weights, fp32 for int8 weights. Unlike the other switches this one changes
    # results beyond rounding: the activations' rounding (half a step of amax / 127 per value)
    # costs perplexity. SmolLM2, batch 1, 2 threads (Zen 3 VM), same run: 4-bit decode 7.6 ->
    # 5.9 ms a token; bench/single_stream.py: perplexity +1.4% over fp32 in steps of <= 8
    # tokens instead of -0.1%; int8 weights are memory-bound there (9.1 ms either way) and
    # would go from +0.4% to +1.1%, so auto keeps their activations fp32.
    quant_activations: str = "auto"
    # ... larger ones up to this many the quantized GEMM (dequantizes a block of rows at a time
    # into L2, then an AVX2 / AVX-512 GEMM over it); larger batches, and builds without AVX2,
    # dequantize the whole weight (C loops) for the fp32 path (oneDNN's linear on it).
    # bench/quant_gemm_kernel.py, GEMM vs dequantize + oneDNN vs fp32 oneDNN, ms per matrix:
    # AVX2 (Zen 3 VM) gate/up int4 1.82 vs 2.27 vs 1.86 at 64 tokens, 5.78 vs 6.76 vs 6.19 at
    # 256, 20.5 vs 24.9 vs 22.8 at 1024, 41.9 vs 47.9 vs 45.3 at 2048; down_proj (K = 1536)
    # int4 0.78 vs 1.44 at 64, 11.4 vs 12.6 at 1024, but 25.9 vs 22.8 at 2048. AVX-512 (Zen 5):
    # gate/up 1.38 vs 1.62 at 64, 5.08 vs 5.53 at 256; down_proj 0.77 vs 0.95 at 64, 2.71 vs
    # 2.49 at 256. 0 turns the GEMM off.
    quant_gemm_max_tokens: int = 1024

    # LoRA torch path (no C kernel: CUDA, bf16, or no compiler): a LoRABatch applies the deltas
    # "dense" (every token through every active adapter, masked) while its runs of same-adapter
    # tokens average fewer than this many tokens, else run by run (fireplace.engine.lora.batch).
    # Decode (runs of 1): dense 0.86-1.00x of base vs runs 0.78-0.88x; prefill runs of 32
    # tokens: runs 0.94x vs dense 0.84x (8 rank-8 adapters on all 7 projections, 1 thread).
    lora_dense_max_tokens_per_run: int = 16

    # Decode attention, torch path (CUDA, or CPU without the C kernel): decodes are sorted by
    # context length and cut into at most this many groups, one gather + SDPA call each, so
    # that padding to the longest context stays small ...
    decode_buckets: int = 4
    # ... but a group holds at least this many sequences (fewer are not worth a call).
    min_decode_group: int = 8

    def activations_for(self, scheme: str) -> str:
        """How the quantized GEMV reads x for weights quantized as `scheme` (int8 | int4)."""
        if self.quant_activations != "auto":
            return self.quant_activations
        return "int8" if scheme == "int4" else "fp32"

    def __post_init__(self) -> None:
        avx512 = _cpu_has_avx512()
        for name, on_avx512, otherwise in (("onednn_min_tokens", 24, 0), ("small_gemm_max_tokens", 256, 4096)):
            if getattr(self, name) is None:  # frozen: the field is set once, here
                object.__setattr__(self, name, on_avx512 if avx512 else otherwise)
        if self.quant_activations not in QUANT_ACTIVATIONS:
            raise ValueError(f"BackendConfig.quant_activations must be one of {', '.join(QUANT_ACTIVATIONS)}, "
                             f"got {self.quant_activations!r}")
        for f in fields(self):
            if f.name == "quant_activations":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"BackendConfig.{f.name} must be an integer, got {value!r}")
            minimum = 0 if f.name in ("fused_matmul_min_tokens", "small_gemm_max_tokens", "onednn_min_tokens",
                                        "onednn_lm_head_min_tokens", "quant_gemm_max_tokens") else 1
            if value < minimum:
                raise ValueError(f"BackendConfig.{f.name} must be >= {minimum}, got {value}")
