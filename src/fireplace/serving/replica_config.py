"""What one replica runs, from `fireplace replica` flags (the controller writes them)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReplicaConfig:
    replica_id: str
    model: str                       # full name of the base model (or of the merged addon's base)
    blob_url: str
    cache_dir: str
    task: str = "generate"           # generate | embed
    merged_adapter: str | None = None  # full name of an addon merged into the base
    enable_lora: bool = False
    max_loras: int = 8
    max_lora_rank: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    quantization: str | None = None  # int8 | int4: weight-only, CPU (EngineConfig.quantization)
    kv_cache_bytes: int = 256 << 20
    max_num_seqs: int = 64
    max_model_len: int | None = None
    num_threads: int | None = None
    chat_template: str | None = None  # the model's conversationConfig.template, if set
