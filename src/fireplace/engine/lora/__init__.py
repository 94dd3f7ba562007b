"""Many LoRA addons in one batch (S-LoRA / Punica style), plus merged single-addon mode.

    adapter   LoRAAdapter: the PEFT format read and checked (AdapterError says why not)
    stack     LoRAStack: one projection's adapters stacked by slot; the batched delta
    batch     LoRABatch: per-token slots laid out once per forward for all stacks
    manager   AdapterManager: slots in compute memory, host LRU, pinning; attach() to a model
    merge     merge_adapter / unmerge_adapter: fold one addon into the base weights
"""
from fireplace.engine.lora.adapter import MAX_LORA_RANK, MIN_API_LORA_RANK, AdapterError, LoRAAdapter, LoRAModule
from fireplace.engine.lora.batch import BASE_SLOT, LoRABatch
from fireplace.engine.lora.stack import LoRAStack

__all__ = sorted([
    "BASE_SLOT",
    "MAX_LORA_RANK",
    "MIN_API_LORA_RANK",
    "AdapterError",
    "LoRAAdapter",
    "LoRABatch",
    "LoRAModule",
    "LoRAStack",
])
