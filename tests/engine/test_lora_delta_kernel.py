"""The C batched multi-LoRA delta kernel against an fp64 torch reference.

Without a C compiler the kernel tests skip, except in CI (CI=true), where they fail.
"""
from __future__ import annotations

import pytest
import torch

from fireplace.engine.kernels import lora_delta as ld

from .helpers import require_kernel


@pytest.fixture(scope="module")
def kernel():
    require_kernel(ld, "LoRA delta kernel")


def make_stack(ranks: list[int], max_rank: int, k: int, n: int, seed: int = 0):
    """a [S, R, k], b [S, R, n] as LoRAStack holds them: rows >= a slot's rank are zero."""
    g = torch.Generator().manual_seed(seed)
    a = torch.zeros(len(ranks), max_rank, k)
    b = torch.zeros(len(ranks), max_rank, n)
    for s, r in enumerate(ranks):
        a[s, :r] = torch.randn(r, k, generator=g)
        b[s, :r] = torch.randn(r, n, generator=g) * 0.1
    return a, b, torch.tensor(ranks, dtype=torch.int32)


def reference(x, a, b, ranks, slots, y):
    """y + the per-token delta, in fp64."""
    out = y.double().clone()
    for t, s in enumerate(slots.tolist()):
        r = int(ranks[s]) if s >= 0 else 0
        if r:
            out[t] += (x[t].double() @ a[s, :r].double().T) @ b[s, :r].double()
    return out


def check(slots: list[int], ranks: list[int], max_rank: int, k: int, n: int, num_threads: int = 1, seed: int = 0):
    a, b, ranks_t = make_stack(ranks, max_rank, k, n, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(len(slots), k, generator=g)
    y = torch.randn(len(slots), n, generator=g)
    slots_t = torch.tensor(slots, dtype=torch.int32)
    expected = reference(x, a, b, ranks_t, slots_t, y)
    out = ld.lora_delta_(x, a, b, ranks_t, slots_t, y, num_threads=num_threads)
    assert out is y  # in place
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    return y


def random_slots(num_tokens: int, num_slots: int, seed: int, base_fraction: float = 0.25) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    slots = torch.randint(0, num_slots, (num_tokens,), generator=g)
    slots[torch.rand(num_tokens, generator=g) < base_fraction] = -1
    return slots.tolist()


# Ranks: full (R), padded (< R), not a multiple of the kernel's 4 rows, and 0 (slot unused here).
RANKS = [8, 4, 0, 5, 1, 8, 3, 7]


@pytest.mark.parametrize("k, n", [(64, 96), (576, 192), (5, 13), (37, 37), (13, 5), (17, 1)])
def test_mixed_ranks_and_base_tokens(kernel, k, n):
    check(random_slots(40, len(RANKS), seed=k + n), RANKS, 8, k, n)


def test_single_token(kernel):
    check([3], RANKS, 8, 576, 192)
    check([5], RANKS, 8, 5, 13)  # K, N below one vector
    check([2], RANKS, 8, 64, 64)  # rank 0: no-op


def test_all_base_tokens_are_a_no_op(kernel):
    a, b, ranks = make_stack(RANKS, 8, 16, 24)
    x, y = torch.randn(10, 16), torch.randn(10, 24)
    before = y.clone()
    ld.lora_delta_(x, a, b, ranks, torch.full((10,), -1, dtype=torch.int32), y)
    assert torch.equal(y, before)
    ld.lora_delta_(x, a, b, ranks, torch.full((10,), 2, dtype=torch.int32), y)  # rank-0 slot
    assert torch.equal(y, before)


def test_empty_batch(kernel):
    a, b, ranks = make_stack(RANKS, 8, 16, 24)
    y = torch.empty(0, 24)
    assert ld.lora_delta_(torch.empty(0, 16), a, b, ranks, torch.empty(0, dtype=torch.int32), y) is y


def test_rank_larger_than_rows_per_pass(kernel):
    check(random_slots(30, 3, seed=5), [16, 13, 0], 16, 48, 40)


@pytest.mark.parametrize("num_threads", [1, 2, 3, 4])
def test_large_batch_threads(kernel, num_threads):
    # 1000 tokens over 8 slots, long runs and scattered tokens: well over the kernel's
    # threshold for sharing work among threads.
    slots = [s for s in range(8) for _ in range(60)] + random_slots(520, len(RANKS), seed=9)
    check(slots, RANKS, 8, 96, 80, num_threads=num_threads)


def test_threads_do_not_change_results(kernel):
    a, b, ranks = make_stack(RANKS, 8, 200, 300)
    x = torch.randn(1000, 200)
    slots = torch.tensor(random_slots(1000, len(RANKS), seed=3), dtype=torch.int32)
    outs = []
    for num_threads in (1, 2, 4):
        y = torch.zeros(1000, 300)
        outs.append(ld.lora_delta_(x, a, b, ranks, slots, y, num_threads=num_threads))
    for out in outs[1:]:
        assert torch.equal(out, outs[0])  # each token is computed the same way on any thread


def test_strided_views(kernel):
    # x: columns 3..40 of a wider input; y: the "k" part of a fused [T, q + k + v] output.
    num_tokens, k, n = 50, 37, 13
    a, b, ranks = make_stack(RANKS, 8, k, n, seed=4)
    x_wide = torch.randn(num_tokens, k + 10)
    x = x_wide[:, 3:3 + k]
    fused = torch.randn(num_tokens, 20 + n + 7)
    y = fused[:, 20:20 + n]
    assert x.stride() == (k + 10, 1) and y.stride() == (20 + n + 7, 1)
    slots = torch.tensor(random_slots(num_tokens, len(RANKS), seed=4), dtype=torch.int32)
    before = fused.clone()
    expected = reference(x, a, b, ranks, slots, y)
    out = ld.lora_delta_(x, a, b, ranks, slots, y, num_threads=2)
    assert out.data_ptr() == y.data_ptr()
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(fused[:, :20], before[:, :20]) and torch.equal(fused[:, 20 + n:], before[:, 20 + n:])


def test_row_slice_of_x(kernel):
    # every other row of a larger x (row stride 2 K)
    a, b, ranks = make_stack(RANKS, 8, 24, 16, seed=6)
    x = torch.randn(20, 24)[::2]
    y = torch.randn(10, 16)
    slots = torch.tensor(random_slots(10, len(RANKS), seed=6, base_fraction=0.0), dtype=torch.int32)
    expected = reference(x, a, b, ranks, slots, y)
    ld.lora_delta_(x, a, b, ranks, slots, y)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


def test_unchecked_variant(kernel):
    a, b, ranks = make_stack(RANKS, 8, 40, 24, seed=8)
    x, y = torch.randn(33, 40), torch.randn(33, 24)
    slots = torch.tensor(random_slots(33, len(RANKS), seed=8), dtype=torch.int32)
    expected = reference(x, a, b, ranks, slots, y)
    assert ld.lora_delta_unchecked_(x, a, b, ranks, slots, y) is y
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    slots[4] = len(RANKS)  # the kernel still checks slots: an error, y unchanged
    before = y.clone()
    with pytest.raises(ValueError, match="slot"):
        ld.lora_delta_unchecked_(x, a, b, ranks, slots, y, 2)
    assert torch.equal(y, before)


def _valid():
    a, b, ranks = make_stack(RANKS, 8, 16, 24)
    return {"x": torch.randn(6, 16), "a": a, "b": b, "ranks": ranks,
            "token_slots": torch.tensor([0, -1, 3, 7, 5, 0], dtype=torch.int32), "y": torch.randn(6, 24)}


def _set(index, value):
    return lambda args: args["token_slots"].__setitem__(index, value)


@pytest.mark.parametrize("mutate, match", [
    (_set(2, 8), "slot outside"),  # slot == S
    (_set(5, -2), "slot outside"),
    (lambda args: args["ranks"].__setitem__(1, 9), "rank outside"),  # rank > R
    (lambda args: args["ranks"].__setitem__(2, -1), "rank outside"),
    (lambda args: args.update(x=args["x"].double()), "x must be torch.float32"),
    (lambda args: args.update(y=args["y"].half()), "y must be torch.float32"),
    (lambda args: args.update(a=args["a"].bfloat16()), "a must be torch.float32"),
    (lambda args: args.update(token_slots=args["token_slots"].long()), "token_slots must be torch.int32"),
    (lambda args: args.update(ranks=args["ranks"].long()), "ranks must be torch.int32"),
    (lambda args: args.update(x=args["x"][0]), "x must have 2 dims"),
    (lambda args: args.update(b=args["b"][0]), "b must have 3 dims"),
    (lambda args: args.update(x=args["x"][:, :15]), "does not match x"),
    (lambda args: args.update(b=args["b"][:, :7]), "b .* does not match"),
    (lambda args: args.update(b=args["b"][:, :, :23]), "b .* does not match"),
    (lambda args: args.update(y=args["y"][:5]), "one per token"),
    (lambda args: args.update(token_slots=args["token_slots"][:5]), "one per token"),
    (lambda args: args.update(ranks=args["ranks"][:7]), "one per slot"),
    (lambda args: args.update(x=torch.randn(16, 6).T), "unit column stride"),
    (lambda args: args.update(y=torch.randn(6, 48)[:, ::2]), "unit column stride"),
    (lambda args: args.update(y=torch.randn(1, 24).expand(6, 24)), "rows overlap"),
    (lambda args: args.update(a=args["a"].transpose(0, 1).contiguous().transpose(0, 1)), "contiguous"),
    (lambda args: args.update(token_slots=torch.zeros(12, dtype=torch.int32)[::2]), "contiguous"),
    (lambda args: args.update(x=torch.empty(6, 16, device="meta")), "CPU tensor"),
    (lambda args: args.update(num_threads=0), "num_threads"),
])
def test_validation_leaves_y_unchanged(kernel, mutate, match):
    args = _valid()
    mutate(args)
    y = args["y"]
    before = y.clone()
    with pytest.raises(ValueError, match=match):
        ld.lora_delta_(**args)
    assert torch.equal(y, before)


def test_bad_slot_after_good_tokens_leaves_y_unchanged(kernel):
    # all slots are checked before any token is written, even with many valid tokens first
    a, b, ranks = make_stack(RANKS, 8, 32, 32)
    x, y = torch.randn(500, 32), torch.randn(500, 32)
    slots = torch.zeros(500, dtype=torch.int32)
    slots[-1] = 100
    before = y.clone()
    with pytest.raises(ValueError, match="slot"):
        ld.lora_delta_(x, a, b, ranks, slots, y, num_threads=2)
    assert torch.equal(y, before)


def test_type_errors(kernel):
    args = _valid()
    with pytest.raises(TypeError, match="torch.Tensor"):
        ld.lora_delta_(**{**args, "b": "nope"})
    with pytest.raises(TypeError, match="num_threads"):
        ld.lora_delta_(**args, num_threads=2.0)


def test_disabled_by_env(monkeypatch):
    # available() caches its answer per process: start from "not loaded yet" (monkeypatch puts
    # the loaded library back afterwards).
    monkeypatch.setattr(ld._kernels, "_loaded", False)
    monkeypatch.setattr(ld._kernels, "_lib", None)
    monkeypatch.setenv("FIREPLACE_CPU_KERNELS", "0")
    assert ld.available() is False
    with pytest.raises(RuntimeError, match="unavailable"):
        ld.lora_delta_(**_valid())
