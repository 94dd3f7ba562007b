"""Attach LoRA stacks to a model: one LoRAStack per targeted projection, one group per fused set.

The stacks start empty (every slot rank 0); the AdapterManager writes adapters into slots.
"""
from __future__ import annotations

from torch import nn

from fireplace.engine.layers.linear import FusedLinear
from fireplace.engine.lora.adapter import MAX_LORA_RANK
from fireplace.engine.lora.group import LoRAStackGroup
from fireplace.engine.lora.projections import (
    ProjectionKey,
    find_projections,
    normalize_target_modules,
    projection_shapes,
)
from fireplace.engine.lora.stack import LoRAStack
from fireplace.engine.model_config import ModelConfig


def attach_lora_stacks(model: nn.Module, model_config: ModelConfig, *, max_loras: int, max_lora_rank: int,
                       target_modules: str | list[str] | tuple[str, ...] | None = "all-linear",
                       ) -> dict[ProjectionKey, LoRAStack]:
    """Give every targeted projection Linear of `model` a LoRAStack (its `lora_stack`).

    Memory: max_loras * max_lora_rank * (in + out) elements per projection, in the weight's dtype.
    """
    if max_loras < 1:
        raise ValueError("max_loras must be >= 1")
    if not 1 <= max_lora_rank <= MAX_LORA_RANK:
        raise ValueError(f"max_lora_rank must be in 1..{MAX_LORA_RANK}")
    names = normalize_target_modules(target_modules)
    shapes = projection_shapes(model_config)
    stacks: dict[ProjectionKey, LoRAStack] = {}
    for (layer, name), linear in find_projections(model).items():
        if name not in names:
            continue
        in_f, out_f = shapes[name]
        if (linear.in_features, linear.out_features) != (in_f, out_f):
            raise ValueError(f"layer {layer} {name} is {linear.in_features} -> {linear.out_features}, "
                             f"the model config says {in_f} -> {out_f}")
        stack = LoRAStack(in_f, out_f, max_loras, max_lora_rank,
                          dtype=linear.weight.dtype, device=linear.weight.device, backend=linear.backend)
        linear.lora_stack = stack
        stacks[(layer, name)] = stack
    if not stacks:
        raise ValueError("the model has no projection Linear to attach LoRA stacks to")
    _group_fused_stacks(model)
    return stacks


def _group_fused_stacks(model: nn.Module) -> None:
    """Give each FusedLinear whose parts all have stacks a LoRAStackGroup (one A matmul for all)."""
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, FusedLinear) and all(p.lora_stack is not None for p in value.parts):
                value.lora_group = LoRAStackGroup([p.lora_stack for p in value.parts], value.sizes)
