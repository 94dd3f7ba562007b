from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fireplace.engine.block_manager import BlockManager
from fireplace.engine.sequence import Sequence


def _seq(tokens, adapter_id=None):
    return Sequence("r", list(tokens), adapter_id=adapter_id)


def _compute(bm: BlockManager, seq: Sequence, num_new: int) -> None:
    """What a step does for the block manager: slots, then (after the model) cache registration."""
    bm.allocate(seq, num_new)
    seq.num_computed_tokens += num_new
    bm.cache_computed_blocks(seq)


def _check_invariants(bm: BlockManager, live: list[Sequence]) -> None:
    assert all(r >= 0 for r in bm.ref_counts)
    assert bm.num_free_blocks + bm.num_used_blocks == bm.num_blocks
    held = Counter(b for s in live for b in s.block_table)
    for block_id in range(bm.num_blocks):
        assert bm.ref_counts[block_id] == held.get(block_id, 0)
    assert bm.num_used_blocks == len(held)


def test_allocate_grows_by_blocks_and_free_returns_them():
    bm = BlockManager(8, 4, enable_prefix_caching=False)
    seq = _seq(range(10))
    assert bm.num_blocks_needed(seq, 10) == 3
    _compute(bm, seq, 10)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    seq.append_token(99)
    _compute(bm, seq, 1)  # position 10 still fits block 2
    assert len(seq.block_table) == 3
    seq.append_token(98)
    seq.append_token(97)
    _compute(bm, seq, 2)  # positions 11, 12 -> needs block 3
    assert len(seq.block_table) == 4
    assert bm.slot_mapping(seq, 11, 2) == [seq.block_table[2] * 4 + 3, seq.block_table[3] * 4]
    bm.free(seq)
    assert bm.num_free_blocks == 8 and seq.block_table == [] and seq.num_computed_tokens == 0


def test_can_allocate_refuses_beyond_pool():
    bm = BlockManager(2, 4)
    seq = _seq(range(9))
    assert not bm.can_allocate(seq, 9)
    with pytest.raises(RuntimeError):
        bm.allocate(seq, 9)
    assert bm.num_free_blocks == 2


def test_prefix_hit_reuses_blocks_and_leaves_last_token():
    bm = BlockManager(16, 4)
    a = _seq(range(12))
    _compute(bm, a, 12)
    b = _seq(list(range(8)) + [50, 51, 52])
    hits = bm.lookup_prefix(b)
    assert hits == a.block_table[:2]
    bm.allocate(b, 3, hits)
    bm.record_admission(b, len(hits) * 4)
    assert b.num_computed_tokens == 8 and b.block_table[:2] == a.block_table[:2]
    assert bm.ref_counts[a.block_table[0]] == 2
    # identical prompt: everything but the last block is a hit, so logits can be computed
    c = _seq(range(12))
    assert len(bm.lookup_prefix(c)) == 2
    assert bm.stats.num_hit_tokens == 8 and bm.stats.num_queried_tokens == 11


def test_adapters_never_share_prefix():
    bm = BlockManager(16, 4)
    a = _seq(range(12), adapter_id="tuned-a")
    _compute(bm, a, 12)
    assert bm.lookup_prefix(_seq(range(12), adapter_id="tuned-b")) == []
    assert bm.lookup_prefix(_seq(range(12))) == []
    assert len(bm.lookup_prefix(_seq(range(12), adapter_id="tuned-a"))) == 2


def test_hash_chains_previous_blocks():
    bm = BlockManager(16, 4)
    _compute(bm, a := _seq([1, 2, 3, 4, 5, 6, 7, 8, 9]), 9)
    # same second block, different first block: no hit at all
    assert bm.lookup_prefix(_seq([0, 2, 3, 4, 5, 6, 7, 8, 9])) == []
    assert len(a.block_table) == 3


def test_freed_cached_blocks_are_evicted_lru_only_when_free_list_is_empty():
    bm = BlockManager(4, 2)
    a = _seq([1, 2, 3, 4, 5])
    _compute(bm, a, 5)
    bm.free(a)  # two hashed blocks become evictable, the partial one free
    assert bm.num_free_blocks == 4 and bm.num_cached_blocks == 2
    b = _seq([9, 9, 9])
    _compute(bm, b, 3)  # takes the two clean blocks; registers its full one
    assert bm.num_cached_blocks == 3 and bm.num_free_blocks == 2
    assert len(bm.lookup_prefix(_seq([1, 2, 3, 4, 5]))) == 2  # a's content is still there
    c = _seq([7, 7])
    _compute(bm, c, 2)  # free list empty: evicts the least recently freed cached block
    hits = bm.lookup_prefix(_seq([1, 2, 3, 4, 5]))
    assert len(hits) == 1  # a's tail went first (freed first); its head survives
    assert bm.num_free_blocks == 1


def test_fork_shares_blocks_with_refcounts():
    bm = BlockManager(8, 4)
    parent = _seq(range(10))
    _compute(bm, parent, 10)
    child = parent.fork(1)
    bm.fork(parent, child, 2)
    assert child.block_table == parent.block_table[:2] and child.num_computed_tokens == 8
    assert [bm.ref_counts[b] for b in parent.block_table] == [2, 2, 1]
    _compute(bm, child, 2)
    assert child.block_table[2] != parent.block_table[2]
    bm.free(parent)
    assert [bm.ref_counts[b] for b in child.block_table] == [1, 1, 1]
    bm.free(child)
    _check_invariants(bm, [])


def test_reset_prefix_cache_forgets_unused_content():
    bm = BlockManager(8, 2)
    a = _seq([1, 2, 3, 4, 5])
    _compute(bm, a, 5)
    bm.free(a)
    bm.reset_prefix_cache()
    assert bm.num_cached_blocks == 0 and bm.num_free_blocks == 8
    assert bm.lookup_prefix(_seq([1, 2, 3, 4, 5])) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    caching=st.booleans(),
    ops=st.lists(st.tuples(st.sampled_from(["new", "grow", "fork", "free"]),
                           st.integers(0, 1_000), st.integers(1, 12)), max_size=60),
)
def test_block_invariants_hold_under_random_operations(caching, ops):
    bm = BlockManager(12, 4, enable_prefix_caching=caching)
    live: list[Sequence] = []
    vocab = [0, 1, 2]  # tiny vocabulary: prefixes collide often
    for op, pick, size in ops:
        if op == "new":
            seq = _seq([vocab[(pick + i * i) % 3] for i in range(size)], adapter_id=["a", None][pick % 2])
            hits = bm.lookup_prefix(seq)
            num_new = seq.num_tokens - len(hits) * bm.block_size
            if bm.can_allocate(seq, num_new, hits):
                bm.allocate(seq, num_new, hits)
                seq.num_computed_tokens += num_new
                bm.cache_computed_blocks(seq)
                live.append(seq)
        elif op == "grow" and live:
            seq = live[pick % len(live)]
            for i in range(size % 5 + 1):
                seq.append_token(vocab[(pick + i) % 3])
            num_new = seq.num_uncomputed_tokens
            if bm.can_allocate(seq, num_new):
                _compute(bm, seq, num_new)
            else:
                seq._token_ids[seq.num_computed_tokens:] = []  # drop what could not be computed
        elif op == "fork" and live:
            parent = live[pick % len(live)]
            child = parent.fork(1)
            bm.fork(parent, child, (parent.num_prompt_tokens - 1) // bm.block_size)
            live.append(child)
        elif op == "free" and live:
            bm.free(live.pop(pick % len(live)))
        _check_invariants(bm, live)
        # a block in two live tables is only ever a full, shared (prefix or fork) one
        owners: dict[int, list[tuple[Sequence, int]]] = {}
        for s in live:
            for i, b in enumerate(s.block_table):
                owners.setdefault(b, []).append((s, i))
        for b, holders in owners.items():
            if len(holders) > 1:
                for s, i in holders:
                    assert (i + 1) * bm.block_size <= s.num_computed_tokens
                first_tokens = {tuple(s.token_ids[i * 4:(i + 1) * 4]) for s, i in holders}
                assert len(first_tokens) == 1, "shared block with different content"
    for seq in live:
        bm.free(seq)
    _check_invariants(bm, [])
    assert bm.num_free_blocks == bm.num_blocks
