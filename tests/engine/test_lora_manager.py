"""AdapterManager: attaching stacks, slots with LRU eviction, the host cache, pinning, unload."""
from __future__ import annotations

import pytest

from fireplace.engine.lora import AdapterError, AdapterManager, LoRAAdapter, NoFreeSlotError, UnknownAdapterError
from fireplace.engine.model_config import ModelConfig
from fireplace.engine.models.llama import LlamaForCausalLM
from fireplace.engine.scheduler import ScheduledSeq, SchedulerOutput
from fireplace.engine.sequence import Sequence, SequenceStatus

from .lora_helpers import make_peft_adapter, tiny_hf_llama


@pytest.fixture(scope="module")
def model_config():
    return ModelConfig.from_hf_dict(tiny_hf_llama().config.to_dict())


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    """Five adapters: a..d rank 4/8/16/8 on q/v, 'mlp' rank 8 on the MLP only."""
    base = tiny_hf_llama()
    root = tmp_path_factory.mktemp("adapters")
    dirs = {}
    for i, (name, r) in enumerate([("a", 4), ("b", 8), ("c", 16), ("d", 8)]):
        make_peft_adapter(base, root / name, r=r, seed=i)
        dirs[name] = root / name
    make_peft_adapter(base, root / "mlp", r=8, target_modules=["gate_proj", "up_proj", "down_proj"], seed=9)
    dirs["mlp"] = root / "mlp"
    return dirs


def _manager(model_config, adapter_dirs, *, max_loras=2, max_cpu_loras=8, max_lora_rank=16,
             target_modules="all-linear"):
    model = LlamaForCausalLM(model_config)
    manager = AdapterManager(model, model_config, max_loras=max_loras, max_lora_rank=max_lora_rank,
                             max_cpu_loras=max_cpu_loras, target_modules=target_modules)
    for name, path in adapter_dirs.items():
        manager.register(name, path)
    return model, manager


def test_attach_puts_a_stack_on_each_targeted_projection(model_config, adapter_dirs):
    model, manager = _manager(model_config, adapter_dirs, target_modules=["q_proj", "v_proj"])
    layer = model.model.layers[1]
    assert layer.self_attn.q_proj.lora_stack is manager.stacks[(1, "q_proj")]
    assert layer.self_attn.k_proj.lora_stack is None and layer.mlp.up_proj.lora_stack is None
    assert manager.stacks[(0, "v_proj")].a.shape == (2, 16, 64)
    assert not any("lora" in name for name in model.state_dict())  # stacks are not weights
    with pytest.raises(AdapterError, match="targets gate_proj, up_proj, down_proj, which this deployment"):
        manager.load_adapter("mlp")


def test_slots_are_reused_then_evicted_lru_when_unpinned(model_config, adapter_dirs):
    _, manager = _manager(model_config, adapter_dirs, max_loras=2)
    sa = manager.acquire("a")
    assert manager.acquire("a") == sa  # same adapter, same slot, two pins
    sb = manager.acquire("b")
    assert {sa, sb} == {0, 1}
    assert not manager.can_acquire("c")
    with pytest.raises(NoFreeSlotError, match="all 2 LoRA slots"):
        manager.acquire("c")
    manager.release(sb)
    manager.release(sa)
    assert manager.can_acquire("c")
    assert manager.acquire("c") == sb  # b is unpinned; a still has a pin
    assert manager.slot_of("b") is None and manager.slot_of("c") == sb
    stack = manager.stacks[(0, "q_proj")]
    assert stack.ranks[sb] == 16 and stack.ranks[sa] == 4
    manager.release(sa)
    manager.release(sb)
    manager.acquire("d")  # both unpinned: the least recently used (a) goes
    assert manager.slot_of("a") is None
    stats = manager.stats()
    assert (stats.num_slot_loads, stats.num_slot_evictions, stats.num_slots_used) == (4, 2, 2)
    manager.release(sa)  # d's pin
    with pytest.raises(ValueError, match="not pinned"):
        manager.release(sa)


def test_host_cache_is_an_lru_of_max_cpu_loras(model_config, adapter_dirs):
    _, manager = _manager(model_config, adapter_dirs, max_cpu_loras=2)
    for name in ("a", "b", "a", "c"):
        manager.load_adapter(name)
    stats = manager.stats()
    assert stats.num_host_cached == 2 and stats.num_host_loads == 3 and stats.num_host_evictions == 1
    manager.load_adapter("a")  # still cached (recently used)
    manager.load_adapter("b")  # was evicted: read again
    assert manager.stats().num_host_loads == 4


def test_unload_while_pinned_defers_freeing_the_slot(model_config, adapter_dirs):
    _, manager = _manager(model_config, adapter_dirs)
    slot = manager.acquire("a")
    manager.unload_adapter("a")
    assert manager.slot_of("a") is None  # new requests no longer find it ...
    with pytest.raises(UnknownAdapterError):
        manager.acquire("a")
    with pytest.raises(UnknownAdapterError):
        manager.check_servable("a")
    stack = manager.stacks[(0, "q_proj")]
    assert stack.ranks[slot] == 4  # ... but the running sequence keeps its weights
    assert manager.stats().num_slots_pinned == 1
    manager.release(slot)
    assert stack.ranks[slot] == 0 and manager.stats().num_slots_used == 0
    with pytest.raises(UnknownAdapterError):
        manager.unload_adapter("a")


def test_load_refuses_too_high_rank_and_forgets_it(model_config, adapter_dirs):
    _, manager = _manager(model_config, adapter_dirs, max_lora_rank=8)
    with pytest.raises(AdapterError, match="rank 16, above this deployment's max LoRA rank 8"):
        manager.load_adapter("c2", adapter_dirs["c"])
    assert not manager.is_registered("c2")


def test_sources_bytes_callable_and_parsed(model_config, adapter_dirs):
    _, manager = _manager(model_config, {})
    files = {p.name: p.read_bytes() for p in adapter_dirs["b"].iterdir()}
    manager.load_adapter("from-bytes", files)
    manager.load_adapter("from-callable", lambda: adapter_dirs["a"])
    manager.load_adapter("parsed", LoRAAdapter.from_dir(adapter_dirs["d"]))
    assert manager.stats().num_registered == 3
    assert manager.stacks[(1, "v_proj")].ranks[manager.acquire("from-callable")] == 4


def test_step_hooks_pin_per_running_sequence(model_config, adapter_dirs):
    _, manager = _manager(model_config, adapter_dirs, max_loras=2)
    seqs = [Sequence(f"r{i}", [1, 2, 3], adapter_id=a) for i, a in enumerate(["a", None, "b", "a"])]
    for seq in seqs:
        seq.status = SequenceStatus.RUNNING
    step = SchedulerOutput(scheduled=[ScheduledSeq(s, 0, 3, True) for s in seqs])
    batch = manager.prepare_batch(step)
    sa, sb = manager.slot_of("a"), manager.slot_of("b")
    assert batch.token_slots.tolist() == [sa] * 3 + [-1] * 3 + [sb] * 3 + [sa] * 3
    manager.finish_batch(step)
    assert manager.stats().num_slots_pinned == 2
    manager.unload_adapter("b")  # seqs[2] still runs on b
    decode = SchedulerOutput(scheduled=[ScheduledSeq(s, 3, 1, True) for s in seqs])
    assert manager.prepare_batch(decode).token_slots.tolist() == [sa, -1, sb, sa]
    seqs[2].status = SequenceStatus.FINISHED_STOPPED
    manager.finish_batch(decode)
    assert manager.stats().num_slots_used == 1  # b's slot freed with its last sequence
    seqs[0].status = seqs[3].status = SequenceStatus.FINISHED_ABORTED
    manager.finish_batch(decode)
    assert manager.stats().num_slots_pinned == 0
    base_only = SchedulerOutput(scheduled=[ScheduledSeq(seqs[1], 4, 1, True)])
    assert manager.prepare_batch(base_only) is None
