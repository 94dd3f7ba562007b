"""Everything an engine instance is built from; validated once at start."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
ALL_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(kw_only=True)
class EngineConfig:
    model: str                          # a safetensors HF directory
    dtype: str = "float32"              # float32 | bfloat16 (CPU and CUDA) | float16 (CUDA)
    device: str = "cpu"                 # cpu | cuda | cuda:N
    block_size: int = 16
    kv_cache_bytes: int = 1 << 30       # memory for the KV pool (ignored when num_kv_blocks set)
    num_kv_blocks: int | None = None
    max_model_len: int | None = None    # default: min(model's context, 4096)
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    enable_lora: bool = False
    max_loras: int = 8                  # adapters in compute memory (slots) at once
    max_lora_rank: int = 64
    max_cpu_loras: int = 64             # adapters kept in host memory (LRU)
    lora_target_modules: tuple[str, ...] = ALL_LORA_TARGETS
    merged_adapter: str | None = None   # a PEFT directory folded into the base weights
    compile: bool = False               # torch.compile the decode step (CUDA graphs on CUDA)
    num_threads: int | None = None      # torch intra-op threads on CPU
    # Compute backend (fireplace.engine.backend): auto | cpu-kernels | torch | cuda; auto takes
    # our C kernels on CPU fp32 where they build (FIREPLACE_CPU_KERNELS=0: never), else torch.
    backend: str = "auto"
    # The backend's tuned switches (fireplace.engine.backend_config.BackendConfig; None: its
    # defaults), e.g. BackendConfig(onednn_min_tokens=0) to keep the projections off oneDNN.
    backend_config: object | None = None
    # Weight-only quantization of the base projections (fireplace.engine.quantize_model): None
    # (the dtype's weights) | "int8" (symmetric) | "int4" (asymmetric), each with one scale (and
    # for int4 a minimum) per group of quantization_group_size weights, a multiple of 32 dividing
    # every in_features (32: GGUF's Q8_0 / Q4_1 layouts); CPU float32 only. quantize_lm_head:
    # the lm_head too, as int8 per output channel. LoRA addons stay fp32 on top.
    quantization: str | None = None
    quantization_group_size: int = 32
    quantize_lm_head: bool = True
    # A GGUF of the same model whose Q4_1 / Q8_0 projections are served as stored
    # (fireplace.engine.gguf_weights); `model` still gives config, tokenizer and fp32 norms.
    gguf_file: str | None = None
    # Admission control (see scheduler): requests allowed to wait before add_request raises
    # EngineOverloadedError (None: unbounded); the default deadline of a waiting request
    # (arrival + queue_timeout_s; None: none); the share of KV blocks admission keeps free.
    max_waiting_requests: int | None = 1024
    queue_timeout_s: float | None = None
    kv_watermark: float = 0.01
    extra: dict = field(default_factory=dict)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def watermark_blocks(self, num_blocks: int) -> int:
        """kv_watermark of the pool in blocks (at least 1 when the share is > 0, below the pool)."""
        if self.kv_watermark <= 0:
            return 0
        return min(max(1, int(self.kv_watermark * num_blocks)), num_blocks - 1)

    def validate(self) -> "EngineConfig":
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        from fireplace.engine.backend import KINDS
        if self.backend not in KINDS:
            raise ValueError(f"backend must be one of {', '.join(KINDS)}, got {self.backend!r}")
        if self.quantization is not None:
            from fireplace.engine.quantization import INT4_BLOCK, SCHEMES
            if self.quantization not in SCHEMES:
                raise ValueError(f"quantization must be one of {', '.join(SCHEMES)} or None, got {self.quantization!r}")
            if not self.device.startswith("cpu") or DTYPES[self.dtype] != torch.float32:
                raise ValueError(f"quantization {self.quantization!r} is for the CPU in float32 (its kernels "
                                 f"dequantize to fp32); got device {self.device!r}, dtype {self.dtype!r}")
            group = self.quantization_group_size
            if isinstance(group, bool) or not isinstance(group, int) or group < INT4_BLOCK or group % INT4_BLOCK:
                raise ValueError(f"quantization_group_size must be a multiple of {INT4_BLOCK}, got {group!r}")
        if self.gguf_file is not None and (self.quantization or self.merged_adapter or self.device != "cpu"
                                           or DTYPES[self.dtype] != torch.float32):
            raise ValueError("gguf_file serves the GGUF's own quantized weights: on the CPU in float32, without "
                             "quantization or merged_adapter")
        if self.dtype in ("float16", "fp16") and not self.device.startswith("cuda"):
            raise ValueError("float16 is for CUDA; use float32 or bfloat16 on CPU")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device is cuda but no CUDA device is available")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_loras", "max_lora_rank",
                     "max_cpu_loras"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_waiting_requests is not None and self.max_waiting_requests < 1:
            raise ValueError("max_waiting_requests must be >= 1 or None")
        if self.queue_timeout_s is not None and not self.queue_timeout_s > 0:
            raise ValueError("queue_timeout_s must be > 0 or None")
        if not 0 <= self.kv_watermark < 1:
            raise ValueError("kv_watermark must be in [0, 1)")
        unknown = set(self.lora_target_modules) - set(ALL_LORA_TARGETS)
        if unknown:
            raise ValueError(f"unknown LoRA target modules {sorted(unknown)}")
        if self.enable_lora and self.merged_adapter:
            raise ValueError("merged_adapter and enable_lora are exclusive: a merged deployment serves one addon")
        return self
