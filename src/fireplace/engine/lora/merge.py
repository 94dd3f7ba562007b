"""Merged mode: a deployment that serves a single addon folds it into the base weights.

    W [out, in]  +=  scale * B [out, r] @ A [r, in]

The forward is then the plain base forward (no LoRA stacks, no per-token work), at the price
of serving only that addon. Merging is meant to be done once, at load. `unmerge_adapter`
subtracts the same product; in fp32 it restores W up to rounding (~1e-7 relative), in bf16 the
round trip loses precision, so reload the base weights rather than unmerge a bf16 model.
"""
from __future__ import annotations

import torch
from torch import nn

from fireplace.engine.lora.adapter import AdapterError, LoRAAdapter
from fireplace.engine.lora.projections import find_projections


def merge_adapter(model: nn.Module, adapter: LoRAAdapter) -> None:
    """Add the adapter's delta to the model's projection weights, in place."""
    _add_delta(model, adapter, sign=1.0)


def unmerge_adapter(model: nn.Module, adapter: LoRAAdapter) -> None:
    """Subtract what merge_adapter added (see the module docstring on precision)."""
    _add_delta(model, adapter, sign=-1.0)


def _add_delta(model: nn.Module, adapter: LoRAAdapter, sign: float) -> None:
    projections = find_projections(model)
    missing = sorted(key for key in adapter.modules if key not in projections)
    if missing:
        layer, name = missing[0]
        raise AdapterError(f"LoRA adapter targets layer {layer} {name}, which the model does not have")
    with torch.no_grad():
        for key, module in adapter.modules.items():
            weight = projections[key].weight  # [out, in]
            if weight.shape != (module.b.shape[0], module.a.shape[1]):
                raise AdapterError(f"LoRA adapter layer {key[0]} {key[1]} does not fit the weight "
                                   f"{tuple(weight.shape)}")
            # product in fp32, one rounding into the weight's dtype
            delta = (module.b.to(torch.float32) @ module.a.to(torch.float32)) * (sign * module.scale)
            weight.copy_((weight.to(torch.float32) + delta.to(weight.device)).to(weight.dtype))
