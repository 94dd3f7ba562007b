"""Training settings resolved from a job's spec (wire names), with the documented defaults.

    epochs 1, learningRate 1e-4, learningRateWarmupSteps 0 (then linear decay to 0),
    loraRank 8, LoRA alpha = 2 x rank, LoRA dropout 0.05, all linear projections of the
    decoder (never the LM head or embeddings), maxContextLength 8192 (capped at the model's
    max_position_embeddings), batchSize 4096 tokens per micro-batch (an example longer than
    that gets a micro-batch of its own), batchSizeSamples unlimited, gradientAccumulationSteps 1,
    optimizerWeightDecay 0, gradient clipping at norm 1.0, seed 42,
    checkpointIntervalSteps: about 10 checkpoints per job (at least every step, at most 500).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

DEFAULT_BATCH_TOKENS = 4096
DEFAULT_SEED = 42
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    lora_rank: int = 8
    lora_alpha: float | None = None       # None -> 2 * rank
    lora_dropout: float = 0.05
    max_context_length: int = 8192
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    batch_samples: int | None = None
    grad_accum: int = 1
    weight_decay: float = 0.0
    eval_auto_carveout: bool = False
    early_stop: bool = False
    seed: int = DEFAULT_SEED
    checkpoint_interval: int | None = None  # None -> auto
    jinja_template: str | None = None
    gradient_checkpointing: bool = False
    loss_chunk_tokens: int = 1024

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank

    def interval_for(self, total_steps: int) -> int:
        if self.checkpoint_interval:
            return self.checkpoint_interval
        return max(1, min(500, -(-total_steps // 10)))

    def as_dict(self) -> dict:
        return asdict(self)


def from_spec(spec: dict) -> TrainConfig:
    get = spec.get
    return TrainConfig(
        epochs=int(get("epochs") or 1), learning_rate=float(get("learningRate") or 1e-4),
        warmup_steps=int(get("learningRateWarmupSteps") or 0), lora_rank=int(get("loraRank") or 8),
        max_context_length=int(get("maxContextLength") or 8192),
        batch_tokens=int(get("batchSize") or DEFAULT_BATCH_TOKENS),
        batch_samples=int(get("batchSizeSamples")) if get("batchSizeSamples") else None,
        grad_accum=int(get("gradientAccumulationSteps") or 1),
        weight_decay=float(get("optimizerWeightDecay") or 0.0),
        eval_auto_carveout=bool(get("evalAutoCarveout")), early_stop=bool(get("earlyStop")),
        seed=int(get("seed") if get("seed") is not None else DEFAULT_SEED),
        checkpoint_interval=int(get("checkpointIntervalSteps")) if get("checkpointIntervalSteps") else None,
        jinja_template=get("jinjaTemplate") or None)
