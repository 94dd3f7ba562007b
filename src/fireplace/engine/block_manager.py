"""Paged KV cache bookkeeping: which physical blocks each sequence owns.

The pool has num_blocks blocks of block_size token slots; token at position p of a sequence
lives in slot block_table[p // block_size] * block_size + p % block_size.

Prefix caching: once a block is full and its KV computed, it is registered under a content
hash chained over (previous block's hash, its token ids, adapter version), so the same prefix
under two adapters, or two versions of one adapter id, never shares KV; an adapter version that
is gone has its blocks dropped (drop_adapter_blocks). A freed registered block keeps its content (evictable) until a
fresh block is needed and the free list is empty; then the least recently freed one is reused.

Block states:  free (ref 0, no hash) | evictable (ref 0, hashed) | in use (ref >= 1).
num_free_blocks counts free + evictable, since both can be handed out.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass

from fireplace.engine.sequence import Sequence

__all__ = ["BlockManager", "PrefixCacheStats", "hash_block"]


@dataclass
class PrefixCacheStats:
    num_queried_tokens: int = 0
    num_hit_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.num_hit_tokens / self.num_queried_tokens if self.num_queried_tokens else 0.0


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def hash_block(prev_hash: bytes | None, token_ids: list[int], adapter_key: str | None) -> bytes:
    """adapter_key: the adapter's content version (Sequence.lora_key), None for the base model."""
    h = hashlib.blake2b(digest_size=16)
    h.update(prev_hash or b"\0" * 16)
    h.update(b"\1" + adapter_key.encode() if adapter_key is not None else b"\0")
    h.update(array("q", token_ids).tobytes())
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self._block_hash: list[bytes | None] = [None] * num_blocks
        self._block_adapter: list[str | None] = [None] * num_blocks  # lora_key of a hashed block
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # oldest freed first
        self._cached: dict[bytes, int] = {}  # content hash -> block id
        self._num_registered: dict[int, int] = {}  # seq_id -> leading blocks already considered
        self.stats = PrefixCacheStats()

    # -- capacity --------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def num_blocks_for(self, num_tokens: int) -> int:
        return _cdiv(num_tokens, self.block_size)

    # -- prefix cache lookup ---------------------------------------------------------------
    def block_hashes(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """Hashes of seq's first num_blocks full blocks (memoised on the sequence)."""
        hashes, bs, tokens = seq.block_hashes, self.block_size, seq.token_ids
        while len(hashes) < num_blocks:
            i = len(hashes)
            prev = hashes[-1] if hashes else None
            hashes.append(hash_block(prev, tokens[i * bs:(i + 1) * bs], seq.lora_key))
        return hashes[:num_blocks]

    def lookup_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding seq's leading tokens; changes nothing.

        At least the last token is left uncached so the step that computes it yields logits.
        """
        if not self.enable_prefix_caching or seq.block_table:
            return []
        hits: list[int] = []
        for h in self.block_hashes(seq, (seq.num_tokens - 1) // self.block_size):
            block_id = self._cached.get(h)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    # -- allocation ------------------------------------------------------------------------
    def num_blocks_needed(self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int] = ()) -> int:
        """Fresh blocks to hold seq's KV up to num_computed (+ cached) + num_new_tokens."""
        num_computed = seq.num_computed_tokens + len(cached_blocks) * self.block_size
        have = len(seq.block_table) + len(cached_blocks)
        return max(0, _cdiv(num_computed + num_new_tokens, self.block_size) - have)

    def can_allocate(self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int] = ()) -> bool:
        # Cached hits that sit in the evictable pool stop being free once attached.
        num_taken = sum(1 for b in cached_blocks if self.ref_counts[b] == 0)
        return self.num_blocks_needed(seq, num_new_tokens, cached_blocks) <= self.num_free_blocks - num_taken

    def allocate(self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int] = ()) -> None:
        """Give seq slots for num_new_tokens more tokens, first attaching prefix-cache hits.

        cached_blocks (from lookup_prefix, only for a sequence without blocks) become the head of
        its block table and count as computed.
        """
        if not self.can_allocate(seq, num_new_tokens, cached_blocks):
            raise RuntimeError(f"not enough free KV blocks for {seq!r}")  # caller checks first
        if cached_blocks:
            if seq.block_table or seq.num_computed_tokens:
                raise ValueError("prefix hits can only start an empty block table")
            for block_id in cached_blocks:
                self._take(block_id)
                seq.block_table.append(block_id)
            seq.num_computed_tokens = len(cached_blocks) * self.block_size
            self._num_registered[seq.seq_id] = len(cached_blocks)
        for _ in range(self.num_blocks_needed(seq, num_new_tokens)):
            seq.block_table.append(self._take_fresh())

    def record_admission(self, seq: Sequence, num_cached_tokens: int) -> None:
        """Count a prefix-cache query for the hit-rate statistics."""
        seq.num_cached_tokens = num_cached_tokens
        if self.enable_prefix_caching:
            self.stats.num_queried_tokens += seq.num_tokens
            self.stats.num_hit_tokens += num_cached_tokens

    def fork(self, parent: Sequence, child: Sequence, num_blocks: int) -> None:
        """Share parent's first num_blocks (full, computed) blocks with an empty child."""
        if child.block_table:
            raise ValueError("fork target must have no blocks")
        if num_blocks * self.block_size > parent.num_computed_tokens:
            raise ValueError("only computed blocks can be shared")
        for block_id in parent.block_table[:num_blocks]:
            self.ref_counts[block_id] += 1
            child.block_table.append(block_id)
        child.num_computed_tokens = num_blocks * self.block_size

    def free(self, seq: Sequence) -> None:
        """Release seq's blocks; tail blocks first so shared prefixes stay cached longest."""
        for block_id in reversed(seq.block_table):
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] < 0:
                raise RuntimeError(f"block {block_id} freed more often than allocated")
            if self.ref_counts[block_id] == 0:
                if self._block_hash[block_id] is not None:
                    self._evictable[block_id] = None
                else:
                    self._free.append(block_id)
        seq.block_table.clear()
        seq.num_computed_tokens = 0
        self._num_registered.pop(seq.seq_id, None)

    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Register seq's blocks that became full and computed since the last call."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        start = self._num_registered.get(seq.seq_id, 0)
        if num_full <= start:
            return
        hashes = self.block_hashes(seq, num_full)
        for i in range(start, num_full):
            block_id, h = seq.block_table[i], hashes[i]
            if self._block_hash[block_id] is None and h not in self._cached:
                self._block_hash[block_id] = h
                self._block_adapter[block_id] = seq.lora_key
                self._cached[h] = block_id
        self._num_registered[seq.seq_id] = num_full

    def reset_prefix_cache(self) -> None:
        """Forget cached content not in use (e.g. after an adapter's weights changed)."""
        for block_id in list(self._evictable):
            del self._cached[self._block_hash[block_id]]
            self._block_hash[block_id] = None
            self._block_adapter[block_id] = None
            self._free.append(block_id)
        self._evictable.clear()

    def drop_adapter_blocks(self, adapter_key: str) -> int:
        """Forget every cached block computed under an adapter version nobody uses any more.

        Evictable ones become free now; ones still referenced stop matching and are freed
        plainly. Returns how many blocks were forgotten.
        """
        dropped = 0
        for block_id, key in enumerate(self._block_adapter):
            if key != adapter_key or self._block_hash[block_id] is None:
                continue
            del self._cached[self._block_hash[block_id]]
            self._block_hash[block_id] = None
            self._block_adapter[block_id] = None
            if block_id in self._evictable:
                del self._evictable[block_id]
                self._free.append(block_id)
            dropped += 1
        return dropped

    # -- slots -----------------------------------------------------------------------------
    def slot_mapping(self, seq: Sequence, start_pos: int, num_tokens: int) -> list[int]:
        bs, table = self.block_size, seq.block_table
        return [table[p // bs] * bs + p % bs for p in range(start_pos, start_pos + num_tokens)]

    # -- internals -------------------------------------------------------------------------
    def _take(self, block_id: int) -> None:
        if self.ref_counts[block_id] == 0:
            self._evictable.pop(block_id)
        self.ref_counts[block_id] += 1

    def _take_fresh(self) -> int:
        if self._free:
            block_id = self._free.popleft()
        else:
            block_id, _ = self._evictable.popitem(last=False)
            del self._cached[self._block_hash[block_id]]
            self._block_hash[block_id] = None
            self._block_adapter[block_id] = None
        self.ref_counts[block_id] = 1
        return block_id
