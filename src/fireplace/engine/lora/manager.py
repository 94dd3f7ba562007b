"""Which addons sit in the compute slots, which wait in host memory, and who is using them.

Three tiers, as in S-LoRA:
    registered    adapter id -> how to load it (directory, files' bytes, or a loader callable)
    host cache    LRU of up to `max_cpu_loras` parsed LoRAAdapters (host memory)
    slots         `max_loras` rows of every LoRAStack (compute memory), written on demand

A pinned slot is never overwritten. Pins are taken either by the engine's step hooks
(`prepare_batch(step)` pins once per running sequence and builds the step's LoRABatch;
pins drop when the sequence stops running) or directly with `acquire(adapter_id) -> slot` /
`release(slot)`. When all slots are pinned a new adapter must wait (`can_acquire`; the
scheduler caps distinct running adapters at max_loras). `unload_adapter` while sequences still
run on it takes effect at once for new requests; the slot is freed at its last release.

Thread-safety: one lock guards all state, so the serving thread may load/unload while the
engine thread acquires and releases.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import torch
from torch import nn

from fireplace.engine.lora.adapter import AdapterError, LoRAAdapter
from fireplace.engine.lora.attach import attach_lora_stacks
from fireplace.engine.lora.batch import BASE_SLOT, LoRABatch
from fireplace.engine.model_config import ModelConfig
from fireplace.engine.sequence import Sequence, SequenceStatus

if TYPE_CHECKING:
    from fireplace.engine.scheduler import SchedulerOutput

# A directory, the two files' bytes, a parsed adapter, or a callable returning one of those
# (the blob store's lazy download).
AdapterSource = Union[str, Path, Mapping[str, bytes], LoRAAdapter, Callable[[], object]]


class NoFreeSlotError(AdapterError):
    """Every LoRA slot is pinned by running sequences; retry when one finishes."""


class UnknownAdapterError(AdapterError):
    """The adapter id is not loaded here (never loaded, or unloaded)."""


@dataclass(frozen=True)
class LoRAStats:
    num_slots: int
    num_slots_used: int  # holding an adapter (pinned or not)
    num_slots_pinned: int
    num_registered: int
    num_host_cached: int
    max_cpu_loras: int
    num_slot_loads: int  # adapter copies into a slot
    num_slot_evictions: int  # an unpinned adapter replaced in its slot
    num_host_loads: int  # adapters read from their source
    num_host_evictions: int


@dataclass
class _Slot:
    adapter_id: str | None = None
    num_pins: int = 0
    is_draining: bool = False  # unloaded while pinned: freed at the last release
    last_used: int = 0


class AdapterManager:
    def __init__(self, model: nn.Module, model_config: ModelConfig, *, max_loras: int, max_lora_rank: int = 16,
                 max_cpu_loras: int | None = None,
                 target_modules: str | list[str] | tuple[str, ...] | None = "all-linear"):
        """Attach LoRA stacks to `model` (see attach_lora_stacks) and manage their slots."""
        self.stacks = attach_lora_stacks(model, model_config, max_loras=max_loras, max_lora_rank=max_lora_rank,
                                         target_modules=target_modules)
        self.model_config = model_config
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.max_cpu_loras = max(max_cpu_loras if max_cpu_loras is not None else max_loras, 1)
        first = next(iter(self.stacks.values()))
        self.dtype, self.device = first.a.dtype, first.a.device
        self._targets = frozenset(name for _, name in self.stacks)
        self._sources: dict[str, AdapterSource] = {}
        self._host: OrderedDict[str, LoRAAdapter] = OrderedDict()
        self._slots = [_Slot() for _ in range(max_loras)]
        self._seq_pins: dict[int, tuple[Sequence, int]] = {}  # seq_id -> (running sequence, pinned slot)
        self._clock = 0
        self._lock = threading.RLock()
        self._counts = dict(slot_loads=0, slot_evictions=0, host_loads=0, host_evictions=0)

    @property
    def num_slots(self) -> int:
        return self.max_loras

    @property
    def num_slots_used(self) -> int:
        with self._lock:
            return sum(s.adapter_id is not None for s in self._slots)

    # -- registry and host cache -------------------------------------------------------------

    def register(self, adapter_id: str, source: AdapterSource) -> None:
        """Make `adapter_id` loadable; nothing is read until it is loaded or acquired."""
        with self._lock:
            if adapter_id in self._sources:
                self._forget(adapter_id)  # a new version replaces the old one everywhere
            self._sources[adapter_id] = source

    def is_registered(self, adapter_id: str) -> bool:
        with self._lock:
            return adapter_id in self._sources

    def load_adapter(self, adapter_id: str, source: AdapterSource | None = None) -> LoRAAdapter:
        """Read and check the adapter into the host cache (registering `source` if given).

        Raises AdapterError when it cannot be served by this model with these limits, so a
        deployment's "load LoRA" fails early rather than on the first request.
        """
        with self._lock:
            if source is not None:
                self.register(adapter_id, source)
            try:
                return self._host_adapter(adapter_id)
            except AdapterError:
                if source is not None:
                    self._forget(adapter_id)  # a failed load leaves nothing registered
                raise

    def unload_adapter(self, adapter_id: str) -> None:
        """Forget the adapter. Its slot is freed now, or at its last release if sequences use it."""
        with self._lock:
            if adapter_id not in self._sources:
                raise UnknownAdapterError(f"LoRA adapter {adapter_id!r} is not loaded")
            self._forget(adapter_id)

    # -- slots -------------------------------------------------------------------------------

    def slot_of(self, adapter_id: str) -> int | None:
        """The slot serving `adapter_id` to new requests, if it is in one."""
        with self._lock:
            return self._find_slot(adapter_id)

    def can_acquire(self, adapter_id: str) -> bool:
        """True when `acquire` would not raise NoFreeSlotError (the adapter may still be invalid)."""
        with self._lock:
            self._release_stopped()
            return self._find_slot(adapter_id) is not None or self._victim_slot() is not None

    def acquire(self, adapter_id: str) -> int:
        """Pin the adapter's slot for one running sequence, loading it into a slot if needed."""
        with self._lock:
            if adapter_id not in self._sources:
                raise UnknownAdapterError(f"LoRA adapter {adapter_id!r} is not loaded on this replica")
            slot = self._find_slot(adapter_id)
            if slot is None:
                adapter = self._host_adapter(adapter_id)
                slot = self._victim_slot()
                if slot is None:
                    raise NoFreeSlotError(f"all {self.max_loras} LoRA slots are in use by running requests")
                if self._slots[slot].adapter_id is not None:
                    self._counts["slot_evictions"] += 1
                self._write_slot(slot, adapter)
                self._slots[slot] = _Slot(adapter_id=adapter_id)
            state = self._slots[slot]
            state.num_pins += 1
            self._clock += 1
            state.last_used = self._clock
            return slot

    def release(self, slot: int) -> None:
        """Drop one pin taken by `acquire`."""
        with self._lock:
            state = self._slots[slot]
            if state.num_pins <= 0:
                raise ValueError(f"LoRA slot {slot} is not pinned")
            state.num_pins -= 1
            if state.num_pins == 0 and state.is_draining:
                self._free_slot(slot)

    # -- engine step hooks: one pin per running sequence ------------------------------------

    def check_servable(self, adapter_id: str) -> None:
        """Raise UnknownAdapterError unless new requests may use `adapter_id`."""
        with self._lock:
            if adapter_id not in self._sources:
                raise UnknownAdapterError(f"LoRA adapter {adapter_id!r} is not loaded on this deployment")

    def prepare_batch(self, step: SchedulerOutput) -> LoRABatch | None:
        """Pin a slot for each newly running sequence of `step` and lay out its tokens' slots.

        A sequence keeps its pin across steps until it stops running (finished, aborted or
        preempted; released lazily here, in finish_batch and in unload_adapter), so an adapter
        unloaded mid-generation keeps serving the sequences already using it.
        """
        with self._lock:
            self._release_stopped()
            seq_slots, query_lens = [], []
            for entry in step.scheduled:
                seq = entry.seq
                slot = BASE_SLOT
                if seq.adapter_id is not None:
                    pinned = self._seq_pins.get(seq.seq_id)
                    if pinned is None:
                        slot = self.acquire(seq.adapter_id)
                        self._seq_pins[seq.seq_id] = (seq, slot)
                    else:
                        slot = pinned[1]
                seq_slots.append(slot)
                query_lens.append(entry.num_new_tokens)
        return LoRABatch.for_sequences(seq_slots, query_lens, dtype=self.dtype, device=self.device)

    def finish_batch(self, step: SchedulerOutput) -> None:
        """After the forward: drop the pins of sequences that no longer run."""
        with self._lock:
            self._release_stopped()

    def stats(self) -> LoRAStats:
        with self._lock:
            self._release_stopped()
            return LoRAStats(
                num_slots=self.max_loras,
                num_slots_used=sum(s.adapter_id is not None for s in self._slots),
                num_slots_pinned=sum(s.num_pins > 0 for s in self._slots),
                num_registered=len(self._sources),
                num_host_cached=len(self._host),
                max_cpu_loras=self.max_cpu_loras,
                num_slot_loads=self._counts["slot_loads"],
                num_slot_evictions=self._counts["slot_evictions"],
                num_host_loads=self._counts["host_loads"],
                num_host_evictions=self._counts["host_evictions"],
            )

    # -- internals (lock held) ---------------------------------------------------------------

    def _release_stopped(self) -> None:
        for seq_id, (seq, slot) in list(self._seq_pins.items()):
            if seq.status is not SequenceStatus.RUNNING:
                del self._seq_pins[seq_id]
                self.release(slot)

    def _forget(self, adapter_id: str) -> None:
        self._release_stopped()
        self._sources.pop(adapter_id, None)
        self._host.pop(adapter_id, None)
        slot = self._find_slot(adapter_id)
        if slot is None:
            return
        if self._slots[slot].num_pins:
            self._slots[slot].is_draining = True
        else:
            self._free_slot(slot)

    def _find_slot(self, adapter_id: str) -> int | None:
        for i, s in enumerate(self._slots):
            if s.adapter_id == adapter_id and not s.is_draining:
                return i
        return None

    def _victim_slot(self) -> int | None:
        """A free slot, else the least recently used unpinned one, else None."""
        for i, s in enumerate(self._slots):
            if s.adapter_id is None:
                return i
        unpinned = [i for i, s in enumerate(self._slots) if s.num_pins == 0]
        return min(unpinned, key=lambda i: self._slots[i].last_used) if unpinned else None

    def _host_adapter(self, adapter_id: str) -> LoRAAdapter:
        if adapter_id in self._host:
            self._host.move_to_end(adapter_id)
            return self._host[adapter_id]
        source = self._sources.get(adapter_id)
        if source is None:
            raise UnknownAdapterError(f"LoRA adapter {adapter_id!r} is not loaded on this replica")
        adapter = self._read(source)
        self._check_servable(adapter_id, adapter)
        self._counts["host_loads"] += 1
        self._host[adapter_id] = adapter
        while len(self._host) > self.max_cpu_loras:
            self._host.popitem(last=False)
            self._counts["host_evictions"] += 1
        return adapter

    def _read(self, source: AdapterSource) -> LoRAAdapter:
        if callable(source) and not isinstance(source, LoRAAdapter):
            source = source()
        if isinstance(source, LoRAAdapter):
            source.check_compatible(self.model_config)
            return source
        if isinstance(source, (str, Path)):
            return LoRAAdapter.from_dir(source, self.model_config)
        if isinstance(source, Mapping):
            return LoRAAdapter.from_files(source, self.model_config)
        raise AdapterError(f"cannot load a LoRA adapter from {type(source).__name__}")

    def _check_servable(self, adapter_id: str, adapter: LoRAAdapter) -> None:
        if adapter.max_rank > self.max_lora_rank:
            raise AdapterError(f"LoRA adapter {adapter_id!r} has rank {adapter.max_rank}, above this "
                               f"deployment's max LoRA rank {self.max_lora_rank}")
        missing = [n for n in adapter.target_modules if n not in self._targets]
        if missing:
            raise AdapterError(f"LoRA adapter {adapter_id!r} targets {', '.join(missing)}, which this "
                               f"deployment does not serve LoRA on (it serves {', '.join(sorted(self._targets))})")

    def _write_slot(self, slot: int, adapter: LoRAAdapter) -> None:
        with torch.no_grad():
            for key, stack in self.stacks.items():
                module = adapter.modules.get(key)
                if module is None:
                    stack.clear_slot(slot)
                else:
                    stack.write_slot(slot, module.a, module.b, module.scale)
        self._counts["slot_loads"] += 1

    def _free_slot(self, slot: int) -> None:
        for stack in self.stacks.values():
            stack.clear_slot(slot)
        self._slots[slot] = _Slot()
