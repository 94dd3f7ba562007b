"""kernels/paged_prefill: causal prefill attention equals torch's SDPA (the layer's other path)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from fireplace.engine.kernels import paged_prefill as pp

from .helpers import build_portable


@pytest.fixture(scope="module")
def kernel():
    if not pp.available():
        if os.environ.get("CI") == "true" and "avx512f" in open("/proc/cpuinfo").read():
            pytest.fail("the prefill attention kernel must build on an AVX-512 machine")
        pytest.skip("prefill attention kernel not built here (no AVX-512)")


def reference(q, k, v, ctx_len):
    """SDPA with query i at position ctx_len - Lq + i seeing keys 0..that position."""
    q_len = q.shape[0]
    mask = torch.arange(ctx_len)[None, :] <= torch.arange(ctx_len - q_len, ctx_len)[:, None]
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                         attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])
    return out[0].transpose(0, 1)


def qkv_views(length, heads, kv_heads, dim, gen):
    """q, k, v as row-strided views of one [L, (H + 2 Hkv) D] product, as the layer has them."""
    fused = torch.randn(length, (heads + 2 * kv_heads) * dim, generator=gen)
    q = fused[:, :heads * dim].view(length, heads, dim)
    k = fused[:, heads * dim:(heads + kv_heads) * dim].view(length, kv_heads, dim)
    v = fused[:, (heads + kv_heads) * dim:].view(length, kv_heads, dim)
    return q, k, v


@pytest.mark.parametrize("length", [2, 15, 16, 17, 33, 130, 512])
@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (4, 4, 64), (8, 1, 128)])
def test_chunk_without_prefix_matches_sdpa(kernel, length, heads, kv_heads, dim):
    gen = torch.Generator().manual_seed(length * 31 + heads)
    q, k, v = qkv_views(length, heads, kv_heads, dim, gen)
    for threads in (1, 2):
        got = pp.prefill_attention(q, k, v, dim ** -0.5, num_threads=threads)
        torch.testing.assert_close(got, reference(q, k, v, length), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("pool_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ctx_len,q_len,block_size", [(300, 77, 16), (64, 2, 16), (47, 47, 8), (513, 500, 32)])
def test_chunk_after_a_cached_prefix_reads_the_pools(kernel, ctx_len, q_len, block_size, pool_dtype):
    """Keys through block ids in a shuffled order; the chunk's queries are the last q_len positions.
    bf16 pools (a bf16 model's KV cache) give SDPA's result on the same values widened to fp32."""
    gen = torch.Generator().manual_seed(ctx_len)
    num_blocks = 40
    k_pool = torch.randn(num_blocks, block_size, 3, 64, generator=gen).to(pool_dtype)
    v_pool = torch.randn(num_blocks, block_size, 3, 64, generator=gen).to(pool_dtype)
    ids = torch.randperm(num_blocks, generator=gen)[: -(-ctx_len // block_size)]
    q = torch.randn(q_len, 9, 64, generator=gen)
    keys = k_pool[ids].flatten(0, 1)[:ctx_len].float()
    values = v_pool[ids].flatten(0, 1)[:ctx_len].float()
    for threads in (1, 2):
        got = pp.prefill_attention(q, k_pool, v_pool, 0.125, block_ids=ids, context_len=ctx_len, num_threads=threads)
        torch.testing.assert_close(got, reference(q, keys, values, ctx_len), atol=2e-6, rtol=1e-5)


def test_large_scores_stay_finite(kernel):
    """Scores of hundreds (the online max-subtraction keeps exp in range), and one-hot attention."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = qkv_views(70, 2, 1, 64, gen)
    q.mul_(40.0)
    got = pp.prefill_attention(q, k, v, 0.125)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, reference(q, k, v, 70), atol=1e-5, rtol=1e-4)


def test_bad_arguments_are_refused(kernel):
    q, k, v = qkv_views(8, 4, 2, 64, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="float32"):
        pp.prefill_attention(q.to(torch.bfloat16), k, v, 0.125)
    with pytest.raises(ValueError, match="invalid sizes"):  # head_dim 80: not a multiple of 64
        pp.prefill_attention(torch.randn(8, 4, 80), torch.randn(8, 2, 80), torch.randn(8, 2, 80), 0.1)
    with pytest.raises(ValueError, match="chunk's own"):
        pp.prefill_attention(q, k[:4], v[:4], 0.125)
    pool = torch.randn(4, 16, 2, 64)
    with pytest.raises(ValueError, match="outside"):
        pp.prefill_attention(q, pool, pool, 0.125, block_ids=torch.tensor([7]), context_len=8)
    with pytest.raises(ValueError, match="context_len"):
        pp.prefill_attention(q, pool, pool, 0.125, block_ids=torch.tensor([0]), context_len=20)
    with pytest.raises(ValueError, match="both be float32 or both bfloat16"):
        pp.prefill_attention(q, pool, pool.to(torch.bfloat16), 0.125, block_ids=torch.tensor([0]), context_len=8)
    with pytest.raises(ValueError, match="both be float32 or both bfloat16"):
        pp.prefill_attention(q, pool.half(), pool.half(), 0.125, block_ids=torch.tensor([0]), context_len=8)
    assert not pp.supports(torch.randn(2, 4, 80), pool) and pp.supports(q, pool)
    assert pp.supports(q, pool.to(torch.bfloat16)) and not pp.supports(q, pool.half())


def test_portable_build_says_unavailable(tmp_path):
    """Without AVX-512 the library builds a stub that says so (the layer then keeps SDPA)."""
    lib = build_portable(pp._SOURCE, tmp_path)
    pp._declare(lib)
    assert lib.fp_prefill_available() == 0
