"""LoRAStack.apply against the per-token definition of the delta, in both strategies."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fireplace.engine.lora import LoRABatch, LoRAStack
from fireplace.engine.lora.group import LoRAStackGroup

from .lora_helpers import lora_path  # noqa: F401  (autouse: kernel and torch paths)

IN, OUT, SLOTS, MAX_RANK = 24, 40, 6, 64
RANKS = [4, 8, 16, 64, 8, 0]  # slot 5 stays empty: an adapter that does not target this projection



def _adapters(seed: int = 0):
    """slot -> (a [r, in], b [out, r], scale) for every slot with a rank."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for slot, r in enumerate(RANKS):
        if r:
            alpha = 2.0 * r if slot != 3 else 16.0
            scale = alpha / math.sqrt(r) if slot == 3 else alpha / r  # slot 3: rsLoRA scale
            out[slot] = (torch.randn(r, IN, generator=g), torch.randn(OUT, r, generator=g), scale)
    return out


def _stack(adapters, backend) -> LoRAStack:
    stack = LoRAStack(IN, OUT, SLOTS, MAX_RANK, backend=backend)
    for slot, (a, b, scale) in adapters.items():
        stack.write_slot(slot, a, b, scale)
    return stack


def _naive(x, y, token_slots, adapters):
    y = y.clone()
    for t, slot in enumerate(token_slots):
        if slot >= 0 and slot in adapters:
            a, b, scale = adapters[slot]
            y[t] += scale * (b @ (a @ x[t]))
    return y


@pytest.mark.parametrize("use_dense", [True, False, None])
def test_mixed_ranks_match_per_token_math(use_dense, lora_path):
    adapters = _adapters()
    stack = _stack(adapters, lora_path)
    seq_slots = [0, -1, 1, 2, 3, 3, -1, 5, 0, 4]
    query_lens = [5, 3, 1, 7, 2, 1, 4, 2, 1, 3]
    batch = LoRABatch.for_sequences(seq_slots, query_lens, use_dense=use_dense)
    token_slots = batch.token_slots.tolist()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(len(token_slots), IN, generator=g)
    base = torch.randn(len(token_slots), OUT, generator=g)
    want = _naive(x, base, token_slots, adapters)
    got = stack.apply(x, base.clone(), batch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    # base tokens and tokens of a slot this projection has no adapter for: bit-identical
    untouched = torch.tensor([s in (-1, 5) for s in token_slots])
    assert torch.equal(got[untouched], base[untouched])


def test_stack_uses_the_kernel_exactly_on_the_kernel_backend(lora_path):
    stack = _stack(_adapters(), lora_path)
    x = torch.randn(3, IN)
    assert stack.uses_kernel(x) == (lora_path.kind == "cpu-kernels")
    assert not LoRAStack(IN, OUT, SLOTS, MAX_RANK).uses_kernel(x)  # no backend: torch paths
    assert not stack.uses_kernel(x.bfloat16())


def test_runs_merge_adjacent_sequences_of_one_slot():
    batch = LoRABatch.for_sequences([2, 2, -1, 2, 1, 1], [3, 1, 2, 1, 1, 1], use_dense=False)
    assert batch.runs == ((0, 4, 2), (6, 7, 2), (7, 9, 1))
    assert batch.active_slots == (1, 2)
    same = LoRABatch.from_token_slots(batch.token_slots)
    assert same.runs == batch.runs


def test_all_base_batch_is_none():
    assert LoRABatch.for_sequences([-1, -1], [3, 1]) is None
    assert LoRABatch.for_sequences([-1, 2], [3, 0], use_dense=True) is None  # no adapter token
    assert LoRABatch.from_token_slots([-1, -1, -1]) is None


def test_rewriting_a_slot_replaces_it_and_invalidates_the_dense_cache(lora_path):
    adapters = _adapters()
    stack = _stack(adapters, lora_path)
    batch = LoRABatch.for_sequences([0, 1, 2], [1, 1, 1], use_dense=True)
    x, y = torch.randn(3, IN), torch.zeros(3, OUT)
    stack.apply(x, y.clone(), batch)  # fills the cache
    g = torch.Generator().manual_seed(7)
    adapters[1] = (torch.randn(16, IN, generator=g), torch.randn(OUT, 16, generator=g), 0.5)  # rank 8 -> 16
    stack.write_slot(1, *adapters[1])
    torch.testing.assert_close(stack.apply(x, y.clone(), batch), _naive(x, y, [0, 1, 2], adapters),
                               rtol=1e-5, atol=1e-4)
    stack.clear_slot(1)
    got = stack.apply(x, y.clone(), batch)
    assert torch.equal(got[1], y[1])


def test_write_slot_refuses_misfit_tensors():
    stack = LoRAStack(IN, OUT, 2, 8)
    with pytest.raises(ValueError, match="max_lora_rank"):
        stack.write_slot(0, torch.zeros(16, IN), torch.zeros(OUT, 16), 1.0)
    with pytest.raises(ValueError, match="do not fit"):
        stack.write_slot(0, torch.zeros(4, IN + 1), torch.zeros(OUT, 4), 1.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-1, SLOTS - 1), st.integers(0, 5)), min_size=1, max_size=12),
       st.booleans())
def test_any_layout_matches_per_token_math(lora_path, seqs, use_dense):
    adapters = _adapters(seed=3)
    stack = _stack(adapters, lora_path)
    seq_slots, query_lens = [s for s, _ in seqs], [n for _, n in seqs]
    batch = LoRABatch.for_sequences(seq_slots, query_lens, use_dense=use_dense)
    num_tokens = sum(query_lens)
    x, y = torch.randn(num_tokens, IN), torch.randn(num_tokens, OUT)
    if batch is None:
        assert all(s == -1 or n == 0 for s, n in seqs)
        return
    token_slots = batch.token_slots.tolist()
    assert len(token_slots) == num_tokens
    torch.testing.assert_close(stack.apply(x, y.clone(), batch), _naive(x, y, token_slots, adapters),
                               rtol=1e-5, atol=1e-4)


def test_bf16_stack_stays_close_to_fp32_math(lora_path):
    adapters = _adapters()
    stack = LoRAStack(IN, OUT, SLOTS, MAX_RANK, dtype=torch.bfloat16, backend=lora_path)  # kernel steps aside
    for slot, (a, b, scale) in adapters.items():
        stack.write_slot(slot, a, b, scale)
    batch = LoRABatch.for_sequences([0, 2, -1], [2, 2, 1])
    x, y = torch.randn(5, IN), torch.zeros(5, OUT)
    want = _naive(x, y, batch.token_slots.tolist(), adapters)
    got = stack.apply(x.bfloat16(), y.bfloat16(), batch).float()
    assert (got - want).abs().max() <= 0.02 * want.abs().max()


@pytest.mark.parametrize("ranks", [(8, 8, 8), (4, 0, 16), (0, 0, 0)], ids=["same-rank", "mixed-rank", "untargeted"])
@pytest.mark.parametrize("use_dense", [True, False], ids=["dense", "runs"])
def test_group_equals_its_stacks_applied_one_by_one(ranks, use_dense, lora_path):
    """A fused q/k/v-like group adds exactly what each part's own stack adds to its columns."""
    sizes, in_features = [12, 6, 6], 10
    stacks = [LoRAStack(in_features, n, max_loras=4, max_lora_rank=16, backend=lora_path) for n in sizes]
    g = torch.Generator().manual_seed(0)
    for slot in range(3):  # slot 3 stays empty
        for stack, size, r in zip(stacks, sizes, ranks):
            if r:
                stack.write_slot(slot, torch.randn(r, in_features, generator=g), torch.randn(size, r, generator=g), 0.5)
    batch = LoRABatch.from_token_slots([0, -1, 2, 1, 0, 3, 2], use_dense=use_dense)
    x = torch.randn(7, in_features, generator=g)
    y = torch.randn(7, sum(sizes), generator=g)
    expected = [stack.apply(x, part.clone(), batch) for stack, part in zip(stacks, y.split(sizes, dim=1))]
    fused = y.clone()  # parts as column views of one output, as FusedLinear passes them for prefill
    for got in (LoRAStackGroup(stacks, sizes).apply(x, list(fused.split(sizes, dim=1)), batch),
                LoRAStackGroup(stacks, sizes).apply(x, [part.clone() for part in y.split(sizes, dim=1)], batch)):
        for got_part, expected_part in zip(got, expected):
            torch.testing.assert_close(got_part, expected_part, atol=1e-5, rtol=1e-6)  # fp32, other summation order
    torch.testing.assert_close(fused, torch.cat(expected, dim=1), atol=1e-5, rtol=1e-6)  # written in place
