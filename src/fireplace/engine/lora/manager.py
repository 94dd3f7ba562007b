"""Which addons sit in the compute slots, which wait in host memory, and who is using them.

An adapter *id* names whatever version was loaded under it last; a *version* is the content
hash of its files (or tensors), so identity is the weights, not the name. Slots, pins and the
prefix-cache key (Sequence.adapter_version) all use the version: re-loading an id with other
weights gives new requests a new version while running ones finish on the old one, and the two
never share a slot or cached KV.

Tiers, as in S-LoRA:
    versions      version -> the adapter's files' bytes (read once at register/load time and kept
                  in host memory, so a step never touches a directory or the blob store)
    host cache    LRU of up to `max_cpu_loras` parsed LoRAAdapters, re-parsed from those bytes
    slots         `max_loras` rows of every LoRAStack (compute memory), written on demand

A pinned slot is never overwritten. Pins are taken either by the engine's step hooks
(`prepare_batch(step)` pins once per running sequence and builds the step's LoRABatch;
pins drop when the sequence stops running) or directly with `acquire(adapter_id) -> slot` /
`release(slot)`. When all slots are pinned a new version must wait (`can_acquire`; the
scheduler caps distinct running versions at max_loras). A version no id names any more
(unloaded or replaced) is *orphaned*: its slot is freed at its last release, and its bytes are
dropped by `drop_unused(in_use)` once no queued or running sequence needs it.

Thread-safety: one lock guards all state, so the serving thread may load/unload while the
engine thread acquires and releases.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

import torch
from torch import nn

from fireplace.engine.lora.adapter import (CONFIG_FILE, PICKLE_FILES, WEIGHTS_FILE, AdapterError, LoRAAdapter,
                                           read_adapter_dir)
from fireplace.engine.lora.attach import attach_lora_stacks
from fireplace.engine.lora.batch import BASE_SLOT, LoRABatch
from fireplace.engine.model_config import ModelConfig
from fireplace.engine.sequence import Sequence, SequenceStatus

if TYPE_CHECKING:
    from fireplace.engine.scheduler import SchedulerOutput

# A directory, the files' bytes, a parsed adapter, or a callable returning one of those (the
# blob store's download); whatever it is, it is read once, when the adapter is registered.
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
class _Version:
    key: str                                 # "sha256:<hex>" of the files (or tensors)
    files: dict[str, bytes] | None           # host-resident bytes to parse from
    parsed: LoRAAdapter | None               # a source given parsed: kept as is
    ids: set[str] = field(default_factory=set)  # adapter ids whose current version this is


@dataclass(frozen=True)
class PreparedAdapter:
    """An adapter read and checked off the engine thread (AdapterManager.prepare), ready to install."""

    version: str
    _files: _Version
    adapter: LoRAAdapter


@dataclass
class _Slot:
    version: str | None = None
    num_pins: int = 0
    last_used: int = 0


class AdapterManager:
    def __init__(self, model: nn.Module, model_config: ModelConfig, *, max_loras: int, max_lora_rank: int = 16,
                 max_cpu_loras: int | None = None,
                 target_modules: str | list[str] | tuple[str, ...] | None = "all-linear"):
        """Attach LoRA stacks to `model` (see attach_lora_stacks) and manage their slots."""
        self.stacks = attach_lora_stacks(model, model_config, max_loras=max_loras, max_lora_rank=max_lora_rank,
                                         target_modules=target_modules)
        self.model_config = model_config
        self.backend = getattr(model, "backend", None)  # picks the LoRABatch strategy
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.max_cpu_loras = max(max_cpu_loras if max_cpu_loras is not None else max_loras, 1)
        first = next(iter(self.stacks.values()))
        self.dtype, self.device = first.a.dtype, first.a.device
        self._targets = frozenset(name for _, name in self.stacks)
        self._current: dict[str, str] = {}  # adapter id -> version new requests get
        self._versions: dict[str, _Version] = {}
        self._host: OrderedDict[str, LoRAAdapter] = OrderedDict()  # version -> parsed (LRU)
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
            return sum(s.version is not None for s in self._slots)

    # -- registry and host cache -------------------------------------------------------------

    def register(self, adapter_id: str, source: AdapterSource) -> str:
        """Read the source's bytes into host memory and make them `adapter_id`'s current version.

        Returns the version. The files are parsed and checked later (load_adapter or the first
        acquire); use load_adapter to find a bad adapter at once.
        """
        version = self._materialize(source)
        with self._lock:
            self._install(adapter_id, version)
            return version.key

    def is_registered(self, adapter_id: str) -> bool:
        with self._lock:
            return adapter_id in self._current

    def version_of(self, adapter_id: str) -> str:
        """The content version new requests for `adapter_id` run on (UnknownAdapterError if none)."""
        with self._lock:
            key = self._current.get(adapter_id)
            if key is None:
                raise UnknownAdapterError(f"LoRA adapter {adapter_id!r} is not loaded on this deployment")
            return key

    def prepare(self, adapter_id: str, source: AdapterSource) -> PreparedAdapter:
        """Read, parse and check a source without changing any state (any thread, no lock held
        while reading: a download or a large file must not stall the engine's steps).

        Raises AdapterError when it cannot be served by this model with these limits.
        """
        if isinstance(source, PreparedAdapter):
            return source
        version = self._materialize(source)
        adapter = self._parse(version, adapter_id)
        return PreparedAdapter(version.key, version, adapter)

    def load_adapter(self, adapter_id: str, source: AdapterSource | PreparedAdapter | None = None) -> LoRAAdapter:
        """Read, parse and check the adapter into the host cache (registering `source` if given).

        Raises AdapterError when it cannot be served by this model with these limits, so a
        deployment's "load LoRA" fails early rather than on the first request. A failed load
        with a source changes nothing: a version loaded before under the id keeps serving.
        """
        if source is None:
            with self._lock:
                return self._host_adapter(self.version_of(adapter_id), adapter_id)
        prepared = self.prepare(adapter_id, source)
        with self._lock:
            self._install(adapter_id, _Version(prepared.version, prepared._files.files, prepared._files.parsed))
            self._cache_host(prepared.version, prepared.adapter)
            return prepared.adapter

    def unload_adapter(self, adapter_id: str) -> None:
        """Forget the id. Its version's slot is freed now, or at its last release if sequences use it."""
        with self._lock:
            key = self._current.pop(adapter_id, None)
            if key is None:
                raise UnknownAdapterError(f"LoRA adapter {adapter_id!r} is not loaded")
            self._versions[key].ids.discard(adapter_id)
            self._release_stopped()
            self._free_orphan_slots()

    @property
    def has_orphans(self) -> bool:
        """Some version no id names is still kept (for the sequences that may still need it)."""
        with self._lock:
            return any(not v.ids for v in self._versions.values())

    def drop_unused(self, in_use: Iterable[str | None]) -> list[str]:
        """Drop orphaned versions none of `in_use` (live sequences' versions) needs; returns them."""
        needed = set(in_use)
        with self._lock:
            self._release_stopped()
            pinned = {s.version for s in self._slots if s.num_pins}
            dropped = [k for k, v in self._versions.items() if not v.ids and k not in needed and k not in pinned]
            for key in dropped:
                del self._versions[key]
                self._host.pop(key, None)
            self._free_orphan_slots()
            return dropped

    # -- slots -------------------------------------------------------------------------------

    def slot_of(self, adapter_id: str) -> int | None:
        """The slot serving `adapter_id`'s current version to new requests, if it is in one."""
        with self._lock:
            key = self._current.get(adapter_id)
            return None if key is None else self._find_slot(key)

    def can_acquire(self, adapter_id: str) -> bool:
        """True when `acquire` would not raise NoFreeSlotError (the adapter may still be invalid)."""
        with self._lock:
            self._release_stopped()
            key = self._current.get(adapter_id)
            return (key is not None and self._find_slot(key) is not None) or self._victim_slot() is not None

    def acquire(self, adapter_id: str, *, version: str | None = None) -> int:
        """Pin a slot holding `version` (default: the id's current one) for one running sequence,
        writing it into a slot if needed."""
        with self._lock:
            key = version if version is not None else self._current.get(adapter_id)
            if key is None or key not in self._versions:
                raise UnknownAdapterError(f"LoRA adapter {adapter_id!r} is not loaded on this replica")
            slot = self._find_slot(key)
            if slot is None:
                adapter = self._host_adapter(key, adapter_id)
                slot = self._victim_slot()
                if slot is None:
                    raise NoFreeSlotError(f"all {self.max_loras} LoRA slots are in use by running requests")
                if self._slots[slot].version is not None:
                    self._counts["slot_evictions"] += 1
                self._write_slot(slot, adapter)
                self._slots[slot] = _Slot(version=key)
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
            if state.num_pins == 0 and self._is_orphan(state.version):
                self._free_slot(slot)

    # -- engine step hooks: one pin per running sequence ------------------------------------

    def check_servable(self, adapter_id: str) -> None:
        """Raise UnknownAdapterError unless new requests may use `adapter_id`."""
        self.version_of(adapter_id)

    def prepare_batch(self, step: SchedulerOutput) -> LoRABatch | None:
        """Pin a slot for each newly running sequence of `step` and lay out its tokens' slots.

        A sequence keeps its pin across steps until it stops running (finished, aborted or
        preempted; released lazily here, in finish_batch and in unload_adapter), so an adapter
        unloaded or replaced mid-generation keeps serving the sequences already using it. A
        sequence runs on its `adapter_version` (the id's current version when it has none).
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
                        slot = self.acquire(seq.adapter_id, version=seq.adapter_version)
                        self._seq_pins[seq.seq_id] = (seq, slot)
                    else:
                        slot = pinned[1]
                seq_slots.append(slot)
                query_lens.append(entry.num_new_tokens)
        return LoRABatch.for_sequences(seq_slots, query_lens, dtype=self.dtype, device=self.device,
                                       backend=self.backend)

    def finish_batch(self, step: SchedulerOutput) -> None:
        """After the forward: drop the pins of sequences that no longer run."""
        with self._lock:
            self._release_stopped()

    def stats(self) -> LoRAStats:
        with self._lock:
            self._release_stopped()
            return LoRAStats(
                num_slots=self.max_loras,
                num_slots_used=sum(s.version is not None for s in self._slots),
                num_slots_pinned=sum(s.num_pins > 0 for s in self._slots),
                num_registered=len(self._current),
                num_host_cached=len(self._host),
                max_cpu_loras=self.max_cpu_loras,
                num_slot_loads=self._counts["slot_loads"],
                num_slot_evictions=self._counts["slot_evictions"],
                num_host_loads=self._counts["host_loads"],
                num_host_evictions=self._counts["host_evictions"],
            )

    # -- internals ---------------------------------------------------------------------------

    def _materialize(self, source: AdapterSource) -> _Version:
        """Read the source completely (no lock held: a download or disk read may be slow)."""
        if callable(source) and not isinstance(source, LoRAAdapter):
            source = source()
        if isinstance(source, LoRAAdapter):
            return _Version(key=_tensors_version(source), files=None, parsed=source)
        if isinstance(source, (str, Path)):
            files = read_adapter_dir(source)
        elif isinstance(source, Mapping):
            # the two files PEFT needs; pickle names are kept (empty) so the refusal names them
            files = {n: bytes(source[n]) for n in (CONFIG_FILE, WEIGHTS_FILE) if n in source}
            files.update({n: b"" for n in source if n in PICKLE_FILES})
        else:
            raise AdapterError(f"cannot load a LoRA adapter from {type(source).__name__}")
        return _Version(key=_files_version(files), files=files, parsed=None)

    def _install(self, adapter_id: str, version: _Version) -> None:
        """Make `version` the id's current one (lock held); the previous one may become orphaned."""
        old = self._current.get(adapter_id)
        kept = self._versions.setdefault(version.key, version)
        kept.ids.add(adapter_id)
        self._current[adapter_id] = version.key
        if old is not None and old != version.key:
            self._versions[old].ids.discard(adapter_id)
            self._release_stopped()
            self._free_orphan_slots()

    def _is_orphan(self, key: str | None) -> bool:
        version = self._versions.get(key) if key is not None else None
        return version is None or not version.ids

    def _free_orphan_slots(self) -> None:
        for i, s in enumerate(self._slots):
            if s.version is not None and s.num_pins == 0 and self._is_orphan(s.version):
                self._free_slot(i)

    def _release_stopped(self) -> None:
        for seq_id, (seq, slot) in list(self._seq_pins.items()):
            if seq.status is not SequenceStatus.RUNNING:
                del self._seq_pins[seq_id]
                self.release(slot)

    def _find_slot(self, key: str) -> int | None:
        for i, s in enumerate(self._slots):
            if s.version == key:
                return i
        return None

    def _victim_slot(self) -> int | None:
        """A free slot, else the least recently used unpinned one, else None."""
        for i, s in enumerate(self._slots):
            if s.version is None:
                return i
        unpinned = [i for i, s in enumerate(self._slots) if s.num_pins == 0]
        return min(unpinned, key=lambda i: self._slots[i].last_used) if unpinned else None

    def _host_adapter(self, key: str, adapter_id: str) -> LoRAAdapter:
        if key in self._host:
            self._host.move_to_end(key)
            return self._host[key]
        version = self._versions.get(key)
        if version is None:
            raise UnknownAdapterError(f"LoRA adapter {adapter_id!r} is not loaded on this replica")
        adapter = self._parse(version, adapter_id)
        self._cache_host(key, adapter)
        return adapter

    def _parse(self, version: _Version, adapter_id: str) -> LoRAAdapter:
        if version.parsed is not None:
            adapter = version.parsed
            adapter.check_compatible(self.model_config)
        else:
            adapter = LoRAAdapter.from_files(version.files, self.model_config)
        self._check_servable(adapter_id, adapter)
        with self._lock:
            self._counts["host_loads"] += 1
        return adapter

    def _cache_host(self, key: str, adapter: LoRAAdapter) -> None:
        self._host[key] = adapter
        self._host.move_to_end(key)
        while len(self._host) > self.max_cpu_loras:
            self._host.popitem(last=False)
            self._counts["host_evictions"] += 1

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


def _files_version(files: Mapping[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return "sha256:" + h.hexdigest()[:32]


def _tensors_version(adapter: LoRAAdapter) -> str:
    h = hashlib.sha256(b"parsed\0")
    for (layer, name), m in sorted(adapter.modules.items()):
        h.update(f"{layer}.{name}:{m.scale!r}:{tuple(m.a.shape)}:{tuple(m.b.shape)}:{m.a.dtype}".encode())
        for t in (m.a, m.b):
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]
