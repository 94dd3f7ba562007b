"""The seven Llama projections a LoRA addon may target, their shapes, and where they sit in our model.

Module paths mirror Hugging Face's (`model.layers.N.self_attn.q_proj`), so the PEFT tensor name
`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` names the same projection in
both. A projection is identified by the key (layer index, projection name).
"""
from __future__ import annotations

import re

from torch import nn

from fireplace.engine.layers.linear import Linear
from fireplace.engine.model_config import ModelConfig

# projection name -> the block that holds it
PROJECTION_PARENTS: dict[str, str] = {
    "q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
    "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp",
}
PROJECTIONS: tuple[str, ...] = tuple(PROJECTION_PARENTS)

ProjectionKey = tuple[int, str]  # (layer index, projection name)

_PATH = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|mlp)\.(\w+)$")


def projection_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each projection, as the base Linear's weight is [out, in]."""
    q_out = config.num_heads * config.head_dim
    kv_out = config.num_kv_heads * config.head_dim
    h, i = config.hidden_size, config.intermediate_size
    return {
        "q_proj": (h, q_out), "k_proj": (h, kv_out), "v_proj": (h, kv_out), "o_proj": (q_out, h),
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
    }


def parse_projection_path(path: str) -> ProjectionKey | None:
    """`...layers.3.mlp.up_proj` -> (3, "up_proj"); None when the path is not one of the seven."""
    m = _PATH.search(path)
    if m is None or PROJECTION_PARENTS.get(m.group(3)) != m.group(2):
        return None
    return int(m.group(1)), m.group(3)


def find_projections(model: nn.Module) -> dict[ProjectionKey, Linear]:
    """Every LoRA-capable projection Linear of the model, by (layer, projection name)."""
    found: dict[ProjectionKey, Linear] = {}
    for path, module in model.named_modules():
        if not isinstance(module, Linear):
            continue
        key = parse_projection_path(path)
        if key is not None:
            found[key] = module
    return found


def normalize_target_modules(target_modules: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """"all-linear" / None -> all seven; otherwise the listed names, each checked."""
    if target_modules is None or target_modules == "all-linear":
        return PROJECTIONS
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    unknown = [n for n in names if n not in PROJECTION_PARENTS]
    if unknown:
        raise ValueError(f"unknown LoRA target module(s) {unknown}; supported: {', '.join(PROJECTIONS)} "
                         "or 'all-linear'")
    return tuple(n for n in PROJECTIONS if n in names)
