"""Many LoRA addons in one batch (S-LoRA / Punica style), plus merged single-addon mode.

    adapter      LoRAAdapter: the PEFT format read and checked (AdapterError says why not)
    batch        LoRABatch: per-token slots laid out once per forward for all stacks
    stack        LoRAStack: one projection's adapters stacked by slot; the batched delta
    stack group  LoRAStackGroup: the stacks of one fused q/k/v or gate/up, one A matmul for all
    attach       attach_lora_stacks: a stack per targeted projection, a group per fused set
    manager      AdapterManager: slots, host LRU, pinning
    merge        merge_adapter / unmerge_adapter: fold one addon into the base weights
    projections  the seven target projections, their shapes and module paths

Per engine step:  ctx.lora = manager.prepare_batch(step)  (None when no sequence uses an adapter),
then manager.finish_batch(step) after the forward.
"""
from fireplace.engine.lora.adapter import (MAX_LORA_RANK, MIN_API_LORA_RANK, MIN_LORA_RANK, AdapterError,
                                           LoRAAdapter, LoRAModule)
from fireplace.engine.lora.attach import attach_lora_stacks
from fireplace.engine.lora.batch import BASE_SLOT, LoRABatch
from fireplace.engine.lora.manager import (AdapterManager, AdapterSource, LoRAStats, NoFreeSlotError,
                                           PreparedAdapter, UnknownAdapterError)
from fireplace.engine.lora.merge import merge_adapter, unmerge_adapter
from fireplace.engine.lora.projections import PROJECTIONS
from fireplace.engine.lora.stack import LoRAStack

__all__ = [
    "BASE_SLOT",
    "MAX_LORA_RANK",
    "MIN_API_LORA_RANK",
    "MIN_LORA_RANK",
    "PROJECTIONS",
    "AdapterError",
    "AdapterManager",
    "AdapterSource",
    "LoRAAdapter",
    "LoRABatch",
    "LoRAModule",
    "LoRAStack",
    "LoRAStats",
    "NoFreeSlotError",
    "PreparedAdapter",
    "UnknownAdapterError",
    "attach_lora_stacks",
    "merge_adapter",
    "unmerge_adapter",
]
