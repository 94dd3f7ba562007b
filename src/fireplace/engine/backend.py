"""Which code computes the layers of one engine instance: our CPU kernels, plain torch, or CUDA.

The choice is made once, when the engine (or a model) is built, by `Backend.select(device,
dtype, kind)`, and every layer keeps the Backend it was built with and asks it (`uses_*`).
Nothing is switched globally: two engines in one process can run different backends.

  kind         where     what runs
  cpu-kernels  CPU fp32  the C kernels of fireplace.engine.kernels where they apply: fused
                         RMSNorm (+ residual add), rotary, SiLU-and-multiply, projections of
                         decode-sized batches (small GEMM, AVX2 machines only), paged decode
                         attention, causal prefill attention (AVX-512 machines only), the
                         batched multi-LoRA delta; torch for the rest
  torch        CPU       torch ops only (bf16, FIREPLACE_CPU_KERNELS=0, no C compiler)
On both CPU kinds the projections (fp32 or bf16) run oneDNN's linear on a pre-packed weight
where torch has it (kernels/onednn_linear: 2-2.6x MKL's sgemm on an AVX-512 AMD machine), from
BackendConfig.onednn_min_tokens tokens on (by default only on AVX-512 CPUs: on AVX2 ones our
small GEMM beats it at every batch size); below that, or without it, the paths above.
A model asked for in bf16 on a CPU with bf16 instructions (AVX512-BF16 / AMX) gets "auto" ->
cpu-kernels in fp32 with `matmul_dtype` bf16: activations, norms, attention and LoRA stay fp32
on our kernels, only oneDNN's projections compute in bf16 (2x its fp32 rate here; the weights
are packed to bf16 from the fp32 parameters, which stay for the small-batch paths: 1.5x an fp32
model's weight memory), and the KV cache is bf16 (`kv_dtype`: the model's dtype, as vLLM keeps
it; k and v are rounded to bf16 when written and widened back exactly when the attention
kernels read them, which halves the bytes a decode step reads). kind "torch" keeps the whole
model in bf16 on torch ops instead (half the memory, about half the speed here).
  cuda         CUDA      torch ops, fused matmuls at every batch size, gather + SDPA decode

"auto" (EngineConfig.backend's default) takes cuda on a CUDA device, cpu-kernels on CPU fp32
where the kernels build, else torch, and says why in one log line when it falls back.
The tuned thresholds between paths are in `BackendConfig` (backend_config.py).

Batch invariance (what holds bit for bit, and what does not)
------------------------------------------------------------
On the cpu-kernels backend with the small GEMM (AVX2), every per-token op computes a token's
row alone, in a fixed order: the embedding lookup, RMSNorm, rotary, SiLU-and-multiply, each
projection through the small GEMM (one FMA chain per output over k in order, whatever the
rows and threads around it), the LoRA delta kernel; decode attention reads only the sequence's
own KV, one thread per sequence. So in a step of at most `Backend.small_gemm_max_tokens`
tokens, a sequence's decode hidden state is the same bits whatever else is in the batch: other
sequences, their number, order, prefills, adapters, sampling parameters. Its logits are too
when the lm_head runs the small GEMM (BackendConfig(onednn_min_tokens=0,
onednn_lm_head_min_tokens=0): the batch-invariant configuration, up to small_gemm_max_tokens
= 256 tokens); with the defaults the lm_head runs oneDNN, whose rows came out the same bits at
every row count tried for SmolLM2's K = 576 (1 to 600 rows) but which promises nothing there
(tests/engine/test_batch_invariance.py checks both configurations). With a seed (or greedy),
the sampled token then follows (the sampler's seeded draw does not depend on the batch).

It does not hold, and results differ by rounding only (the parity tests bound that at 1e-4
against transformers; a greedy or seeded choice can flip only between near-tied tokens):
  - in steps of more tokens than that, where oneDNN (from onednn_min_tokens tokens: 24 by
    default on AVX-512 CPUs, off on AVX2 ones) or MKL (past small_gemm_max_tokens with oneDNN
    off; 4096 by default on AVX2 CPUs) computes the projections: their
    blocking, hence rounding, depends on the number of rows (oneDNN's for K = 1536, say), and
    FusedLinear switches from per-part to one fused matmul at fused_matmul_min_tokens on MKL;
  - across prefill chunkings: the scheduler splits a prompt by the token budget left by the
    other requests, and a chunk's attention (SDPA, causal or against the cached prefix) rounds
    differently from the whole prompt's; the KV written, and every later logit, follow;
  - on the torch and cuda backends, where every matmul is a library call sized by the batch and
    decode attention pads each group to the longest context in it.
Quantized weights: the quantized GEMV computes each token alone too (same bits at any batch of
up to BackendConfig.quant_gemv_max_tokens tokens); larger batches dequantize the weight for the
fp32 path, which reads x unrounded, so where the GEMV rounds activations to int8
(BackendConfig.quant_activations; by default for 4-bit weights) a token's logits there differ
from the GEMV's by that rounding, not only by float rounding.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch

from fireplace.engine.backend_config import BackendConfig

logger = logging.getLogger(__name__)

KINDS = ("auto", "cpu-kernels", "torch", "cuda")


@dataclass(frozen=True)
class Backend:
    kind: str  # cpu-kernels | torch | cuda
    device: torch.device
    dtype: torch.dtype
    config: BackendConfig = field(default_factory=BackendConfig)
    # which C kernels run (cpu-kernels only; each False where it failed to build)
    elementwise_kernels: bool = False
    small_gemm_kernel: bool = False
    paged_decode_kernel: bool = False
    paged_prefill_kernel: bool = False  # causal prefill attention (kernels/paged_prefill; AVX-512 builds only)
    lora_kernel: bool = False
    quant_kernel: bool = False  # quantized GEMV (kernels/quant_gemv; weight-only int8/int4)
    quant_gemm_kernel: bool = False  # its batch-sized GEMM (fq_gemm; AVX2 / AVX-512 builds)
    onednn_kernel: bool = False  # oneDNN's packed-weight linear (kernels/onednn_linear; CPU fp32/bf16)
    # the dtype oneDNN's projections compute in when not `dtype`: bf16 for a model asked for in
    # bf16 on a CPU with bf16 instructions, whose activations and kernels stay fp32 (KV: kv_dtype)
    matmul_dtype: torch.dtype | None = None
    reason: str = ""  # why this kind, for logs and errors ("" when asked for explicitly)

    # -- choosing ---------------------------------------------------------------------------
    @classmethod
    def select(cls, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               kind: str = "auto", config: BackendConfig | None = None) -> Backend:
        """The backend for a model on `device` in `dtype`. kind "auto" picks as described above;
        "cpu-kernels" raises ValueError (saying why) where the kernels cannot run; "cuda" needs
        a CUDA device. Builds the C kernels on first use (cached on disk; see kernels/cpu_build)."""
        if kind not in KINDS:
            raise ValueError(f"backend must be one of {', '.join(KINDS)}, got {kind!r}")
        device = torch.device(device)
        config = config if config is not None else BackendConfig()
        if kind == "cuda" or (kind == "auto" and device.type == "cuda"):
            if device.type != "cuda":
                raise ValueError(f"backend 'cuda' needs a CUDA device, got {device}")
            return cls("cuda", device, dtype, config)
        if device.type != "cpu":
            return cls("torch", device, dtype, config, reason="asked for" if kind == "torch" else "not a CPU device")
        onednn = _uses_onednn(dtype, config)
        if kind == "torch":
            return cls("torch", device, dtype, config, reason="asked for", onednn_kernel=onednn)
        if dtype is torch.bfloat16 and _bf16_projections(config):
            # fp32 everywhere (our kernels) but the projections, which oneDNN runs in bf16
            backend = cls._cpu_kernels(device, torch.float32, config, required=kind == "cpu-kernels",
                                       onednn_kernel=True)
            return dataclasses.replace(backend, matmul_dtype=torch.bfloat16)
        return cls._cpu_kernels(device, dtype, config, required=kind == "cpu-kernels", onednn_kernel=onednn)

    @classmethod
    def _cpu_kernels(cls, device: torch.device, dtype: torch.dtype, config: BackendConfig, *,
                     required: bool, onednn_kernel: bool) -> Backend:
        from fireplace.engine.kernels import cpu_build

        reason, level = None, logging.INFO
        if dtype != torch.float32:
            reason = f"the CPU kernels are float32 only and the model runs in {dtype}"
        elif not cpu_build.kernels_enabled():
            reason = "FIREPLACE_CPU_KERNELS turns them off"
        elif cpu_build.find_compiler() is None:
            reason, level = f"no C compiler ({cpu_build.compiler_name()}) was found to build them", logging.WARNING
        if reason is None:
            built = _built_kernels()
            if any(built.values()):
                return cls("cpu-kernels", device, dtype, config, **built, onednn_kernel=onednn_kernel)
            reason, level = "none of them built (see the warnings above)", logging.WARNING
        if required:
            raise ValueError(f"backend 'cpu-kernels' is unavailable: {reason}")
        logger.log(level, "CPU kernels not used (%s); the engine runs plain torch ops", reason)
        return cls("torch", device, dtype, config, reason=reason, onednn_kernel=onednn_kernel)

    @property
    def kv_dtype(self) -> torch.dtype:
        """The KV cache's dtype: the model's (bf16 for a CPU bf16 model whose activations run
        in fp32, see the top)."""
        return torch.bfloat16 if self.matmul_dtype is torch.bfloat16 else self.dtype

    # -- what the layers ask ------------------------------------------------------------------
    def uses_elementwise_kernels(self, t: torch.Tensor) -> bool:
        """Whether norms, rotary and SiLU-and-multiply of activation t run as C kernels
        (torch.compile traces the torch ops instead: a ctypes call would break its graph)."""
        return self.elementwise_kernels and t.dtype is torch.float32 and not torch.compiler.is_compiling()

    def onednn_min_tokens(self, *, lm_head: bool = False) -> int:
        """From how many tokens a projection (the lm_head) runs oneDNN's packed linear; 0: never."""
        if not self.onednn_kernel:
            return 0
        return self.config.onednn_lm_head_min_tokens if lm_head else self.config.onednn_min_tokens

    def uses_onednn(self, x: torch.Tensor, *, lm_head: bool = False) -> bool:
        """Whether a projection of x [T, in] (dense weight) runs oneDNN's packed linear."""
        least = self.onednn_min_tokens(lm_head=lm_head)
        return (least > 0 and x.dim() == 2 and x.shape[0] >= least
                and x.dtype is self.dtype and not torch.compiler.is_compiling())

    @property
    def small_gemm_max_tokens(self) -> int:
        """The largest batch whose dense fp32 projections run our small GEMM (0: none): below
        oneDNN's threshold where that path is on, and at most BackendConfig.small_gemm_max_tokens."""
        if not self.small_gemm_kernel:
            return 0
        limit, least = self.config.small_gemm_max_tokens, self.onednn_min_tokens()
        return min(limit, least - 1) if least > 0 else limit

    def pack_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """weight [out, in] in the layout uses_onednn's path reads (a copy; see kernels/onednn_linear)."""
        from fireplace.engine.kernels import onednn_linear
        return onednn_linear.pack(weight, self.matmul_dtype)

    def uses_small_gemm(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        """Whether x [T, in] @ weight [out, in]^T runs through the C GEMM: decode-sized T, and
        small_gemm.linear_unchecked's preconditions (fp32, contiguous weight, unit column stride)."""
        return (self.small_gemm_kernel and x.shape[0] <= self.small_gemm_max_tokens and x.dim() == 2
                and x.dtype is torch.float32 and weight.dtype is torch.float32 and x.stride()[1] == 1
                and weight.is_contiguous() and not torch.compiler.is_compiling())

    def fuses_matmul(self, num_tokens: int) -> bool:
        """Whether a FusedLinear runs one matmul for all its parts (torch path; always off the CPU)."""
        return self.device.type != "cpu" or num_tokens >= self.config.fused_matmul_min_tokens

    def uses_quant_kernel(self, x: torch.Tensor) -> bool:
        """Whether x [T, in] times a quantized weight runs through the quantized GEMV (decode-sized
        T, fp32); else the weight is dequantized (C loops where built, torch otherwise) for a
        fp32 matmul (layers/quantized_linear.py)."""
        return self.quant_kernel and _quant_kernel_input(x) and x.shape[0] <= self.config.quant_gemv_max_tokens

    def uses_quant_gemm(self, x: torch.Tensor) -> bool:
        """Whether x [T, in] times a quantized weight runs through the quantized GEMM (fq_gemm:
        a block of rows dequantized at a time) rather than the whole weight dequantized first:
        T above the GEMV's range and up to BackendConfig.quant_gemm_max_tokens, fp32."""
        return (self.quant_gemm_kernel and _quant_kernel_input(x)
                and self.config.quant_gemv_max_tokens < x.shape[0] <= self.config.quant_gemm_max_tokens)

    def uses_lora_kernel(self, x: torch.Tensor) -> bool:
        """Whether a LoRA stack adds its deltas for input x with the C kernel."""
        return self.lora_kernel and x.dtype is torch.float32 and not torch.compiler.is_compiling()

    def lora_uses_dense(self, num_lora_tokens: int, num_runs: int) -> bool:
        """LoRABatch's strategy on the torch path: dense while runs are short (BackendConfig)."""
        return num_runs > 1 and num_lora_tokens < self.config.lora_dense_max_tokens_per_run * num_runs

    def describe(self) -> str:
        """One line for logs and stats: the kind and the kernels in use."""
        onednn = "onednn-linear" + (f" in {str(self.matmul_dtype).removeprefix('torch.')}" if self.matmul_dtype else "")
        on = [name for name, used in ((onednn, self.onednn_kernel), ("elementwise", self.elementwise_kernels),
                                      ("small-gemm", self.small_gemm_kernel), ("paged-decode", self.paged_decode_kernel),
                                      ("paged-prefill", self.paged_prefill_kernel),
                                      ("lora-delta", self.lora_kernel),
                                      (f"quant-gemv ({self.config.quant_activations} activations)", self.quant_kernel),
                                      ("quant-gemm", self.quant_gemm_kernel))
              if used]
        if self.kind != "cpu-kernels":
            described = f"{self.kind} ({self.reason})" if self.reason else self.kind
            return f"{described} with {', '.join(on)}" if on else described
        return f"cpu-kernels ({', '.join(on)})"


def _built_kernels() -> dict[str, bool]:
    """Which C kernels build and load here (each built at most once per process)."""
    from fireplace.engine.kernels import elementwise, lora_delta, paged_decode, paged_prefill, quant_gemv, small_gemm

    return {
        "elementwise_kernels": elementwise.available(),
        # without AVX2 the portable GEMM is correct but no faster than MKL: stay with torch
        "small_gemm_kernel": small_gemm.available() and small_gemm.uses_avx2(),
        "paged_decode_kernel": paged_decode.available(),
        "paged_prefill_kernel": paged_prefill.available(),
        "lora_kernel": lora_delta.available(),
        "quant_kernel": quant_gemv.available(),
        "quant_gemm_kernel": quant_gemv.gemm_available(),
    }


def _quant_kernel_input(x: torch.Tensor) -> bool:
    """Whether x can go to the quantized C kernels: [T, in] fp32 with unit column stride."""
    return x.dim() == 2 and x.dtype is torch.float32 and x.stride()[1] == 1 and not torch.compiler.is_compiling()


def _uses_onednn(dtype: torch.dtype, config: BackendConfig) -> bool:
    from fireplace.engine.kernels import onednn_linear
    wanted = config.onednn_min_tokens > 0 or config.onednn_lm_head_min_tokens > 0
    return wanted and onednn_linear.supports(dtype)


def _bf16_projections(config: BackendConfig) -> bool:
    """Whether a CPU bf16 model runs as fp32 with oneDNN's projections in bf16 (see the top)."""
    from fireplace.engine.kernels import onednn_linear
    return config.onednn_min_tokens > 0 and onednn_linear.bf16_is_native() and _uses_onednn(torch.bfloat16, config)


def default_backend(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Backend:
    """What a layer or model built without a backend uses: Backend.select(device, dtype)."""
    return Backend.select(device, dtype)
