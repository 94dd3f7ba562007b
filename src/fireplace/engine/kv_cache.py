"""The paged KV cache: per layer, one K pool and one V pool of fixed-size blocks.

Layout per pool: [num_blocks, block_size, num_kv_heads, head_dim]. Token-major inside a block
because new keys arrive as k: [T, Hkv, D]: writing them is one `index_copy_` into the pool
viewed as [num_blocks * block_size, Hkv, D] at `slot_mapping`, and reading a sequence back
gathers whole blocks (block_tables index dim 0), i.e. block_size*Hkv*D contiguous elements
per index. The block manager decides which block ids a sequence owns; this module only owns
the memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fireplace.engine.model_config import ModelConfig

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (k_pool, v_pool)


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    @classmethod
    def for_model(cls, config: ModelConfig, block_size: int, dtype: torch.dtype) -> KVCacheSpec:
        return cls(config.num_layers, config.num_kv_heads, config.head_dim, block_size, dtype)

    @property
    def bytes_per_block(self) -> int:
        """K and V of one block across all layers."""
        element_size = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * element_size

    def num_blocks_for_budget(self, budget_bytes: int) -> int:
        """How many blocks fit in `budget_bytes` (floor; 0 if not even one)."""
        return max(0, int(budget_bytes) // self.bytes_per_block)

    def allocate(self, num_blocks: int, device: torch.device | str = "cpu") -> KVCaches:
        """Zeroed pools; zeros keep padded (masked) reads finite."""
        if num_blocks <= 0:
            raise ValueError("the KV cache needs at least one block")
        shape = (num_blocks, self.block_size, self.num_kv_heads, self.head_dim)
        return [(torch.zeros(shape, dtype=self.dtype, device=device),
                 torch.zeros(shape, dtype=self.dtype, device=device))
                for _ in range(self.num_layers)]
