"""What backend.py's "Batch invariance" section promises, checked on a tiny random llama.

cpu-kernels backend, steps of at most Backend.small_gemm_max_tokens tokens: a sequence's decode
logits are the same bits whatever else shares the step (other decodes, their order, a prefill
chunk, a LoRA adapter on a neighbour), in the batch-invariant configuration (oneDNN off: steps up
to 256 tokens, a 30-token prefill among them) and with the defaults (oneDNN from 24 tokens and
for the lm_head: decodes only). The torch backend promises rounding-level agreement only.
The sequence's KV is written by the same prefill in every case (chunking is outside the promise).
"""
from __future__ import annotations

import pytest
import torch

from fireplace.engine.backend import Backend
from fireplace.engine.backend_config import BackendConfig
from fireplace.engine.kernels import elementwise, lora_delta, paged_decode, small_gemm
from fireplace.engine.kv_cache import KVCacheSpec
from fireplace.engine.loader import load_model
from fireplace.engine.lora import AdapterManager, LoRABatch

from .helpers import PagedSequences, Sequence, make_hf_checkpoint, require_kernel
from .lora_helpers import make_peft_adapter

BLOCK_SIZE = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("invariance")
    hf = make_hf_checkpoint("llama", root / "base", seed=11)
    make_peft_adapter(hf, root / "adapter", r=8, target_modules="all-linear", seed=2)
    return root


INVARIANT = BackendConfig(onednn_min_tokens=0, onednn_lm_head_min_tokens=0)
# (backend config, the batches it promises invariance for): the defaults stay under 24 tokens
CONFIGS = {"invariant": INVARIANT, "default": BackendConfig()}


def _kernel_backend(config: BackendConfig = INVARIANT) -> Backend:
    for module, what in ((elementwise, "elementwise kernels"), (small_gemm, "small-batch GEMM"),
                         (paged_decode, "paged decode kernel"), (lora_delta, "LoRA delta kernel")):
        require_kernel(module, what)
    backend = Backend.select("cpu", torch.float32, "cpu-kernels", config)
    if not backend.small_gemm_kernel:
        pytest.skip("the small GEMM runs only with AVX2 (the promise needs it)")
    return backend


def _prompts():
    g = torch.Generator().manual_seed(4)
    return {name: torch.randint(0, 128, (n,), generator=g).tolist() for name, n in
            (("a", 9), ("b", 13), ("c", 6), ("d", 30))}


def _last_step_logits(model, manager, companions: list[str], *, a_at: int) -> dict[str, torch.Tensor]:
    """Prefill every sequence alone (same chunks in every call), then one step that decodes
    "a" among `companions` ("b", "c" decode; "d" is prefilled whole in that step; "b" uses the
    adapter when a manager is given). Returns each sequence's logits [V] from that last step."""
    prompts = _prompts()
    paged = PagedSequences(128, BLOCK_SIZE, seed=len(companions) + a_at, backend=model.backend)
    caches = KVCacheSpec.for_model(model.config, BLOCK_SIZE, torch.float32).allocate(128)
    seqs = {name: Sequence(list(p)) for name, p in prompts.items()}
    slot = manager.acquire("adapter") if manager is not None else -1
    slots = {"a": -1, "b": slot, "c": -1, "d": -1}
    with torch.inference_mode():
        for name in ("a", "b", "c"):
            if name == "a" or name in companions:
                ctx = paged.step([(seqs[name], len(seqs[name].token_ids))])
                if manager is not None:
                    ctx.lora = LoRABatch.for_sequences([slots[name]], ctx.query_lens, backend=model.backend)
                model(ctx, caches)
                seqs[name].token_ids.append(7)  # the "sampled" token, decoded next
        order = list(companions)
        order.insert(a_at, "a")
        work = [(seqs[name], len(seqs[name].token_ids) if name == "d" else 1) for name in order]
        ctx = paged.step(work)
        if manager is not None:
            ctx.lora = LoRABatch.for_sequences([slots[name] for name in order], ctx.query_lens, backend=model.backend)
        if model.backend.kind == "cpu-kernels":
            assert ctx.num_tokens <= model.backend.small_gemm_max_tokens  # within the promise
        logits = model.compute_logits(model(ctx, caches)[ctx.logits_indices])
    if manager is not None:
        manager.release(slot)
    return {name: logits[i] for i, name in enumerate(order)}


BATCHES = [([], 0), (["b", "c"], 1), (["c", "b"], 2), (["d", "b"], 1), (["b", "d", "c"], 0)]
DECODE_BATCHES = [b for b in BATCHES if "d" not in b[0]]  # 1-3 tokens: under oneDNN's default 24


@pytest.mark.parametrize("config", ["invariant", "default"])
def test_decode_logits_are_bitwise_batch_invariant_on_the_kernel_backend(checkpoint, config):
    backend = _kernel_backend(CONFIGS[config])
    model, _ = load_model(checkpoint / "base", dtype=torch.float32, backend=backend)
    alone = _last_step_logits(model, None, [], a_at=0)["a"]
    for companions, a_at in (BATCHES if config == "invariant" else DECODE_BATCHES)[1:]:
        assert torch.equal(_last_step_logits(model, None, companions, a_at=a_at)["a"], alone), companions


def test_an_adapter_on_a_neighbour_leaves_a_base_row_bitwise_alone(checkpoint):
    backend = _kernel_backend()
    model, config = load_model(checkpoint / "base", dtype=torch.float32, backend=backend)
    manager = AdapterManager(model, config, max_loras=2, max_lora_rank=8, max_cpu_loras=2)
    manager.load_adapter("adapter", checkpoint / "adapter")
    alone = _last_step_logits(model, manager, [], a_at=0)["a"]
    mixed = _last_step_logits(model, manager, ["b", "c"], a_at=1)
    assert torch.equal(mixed["a"], alone)
    # the adapter did change b's own logits: the batch really mixed adapters
    without = _last_step_logits(model, None, ["b", "c"], a_at=1)
    assert (mixed["b"] - without["b"]).abs().max() > 1e-3
    assert torch.equal(without["a"], alone)


def test_torch_backend_agrees_to_rounding(checkpoint):
    model, _ = load_model(checkpoint / "base", dtype=torch.float32,
                          backend=Backend.select("cpu", torch.float32, "torch"))
    alone = _last_step_logits(model, None, [], a_at=0)["a"]
    for companions, a_at in BATCHES[1:]:
        torch.testing.assert_close(_last_step_logits(model, None, companions, a_at=a_at)["a"], alone,
                                   atol=1e-5, rtol=0)
