"""The C paged decode attention kernel against a plain torch reference, plus its build helper.

Without a C compiler the kernel tests skip, except in CI (CI=true), where they fail.
"""
from __future__ import annotations

import logging
import math
import os

import pytest
import torch

from fireplace.engine.kernels import cpu_build
from fireplace.engine.kernels import paged_decode as pd


@pytest.fixture(scope="module")
def kernel():
    if not pd.available():
        if os.environ.get("CI") == "true":
            pytest.fail("the paged decode C kernel must build in CI, but it is unavailable")
        pytest.skip("paged decode C kernel unavailable (no C compiler?)")


def make_case(lens: list[int], heads: int, kv_heads: int, head_dim: int, block_size: int,
              dtype: torch.dtype = torch.float32, seed: int = 0, spare_blocks: int = 3):
    """Random q and pools; each sequence's blocks are scattered over a shuffled pool, and the
    table rows are padded to the longest sequence with random (valid) ids."""
    g = torch.Generator().manual_seed(seed)
    per_seq = [-(-n // block_size) for n in lens]
    num_blocks = sum(per_seq) + spare_blocks
    max_blocks = max(per_seq) + 1  # one more column than any sequence needs
    k_pool = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype)
    v_pool = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype)
    order = torch.randperm(num_blocks, generator=g)
    tables = torch.randint(0, num_blocks, (len(lens), max_blocks), generator=g, dtype=torch.int32)
    used = 0
    for b, n in enumerate(per_seq):
        tables[b, :n] = order[used:used + n].to(torch.int32)
        used += n
    q = torch.randn(len(lens), heads, head_dim, generator=g)
    return q, k_pool, v_pool, tables, torch.tensor(lens, dtype=torch.int32)


def reference(q, k_pool, v_pool, tables, lens, scale):
    """Gather each sequence's keys/values by its table, repeat KV heads, attend in fp64."""
    _, block_size, kv_heads, head_dim = k_pool.shape
    group = q.shape[1] // kv_heads
    out = torch.empty(q.shape, dtype=torch.float64)
    for b, n in enumerate(lens.tolist()):
        ids = tables[b, :-(-n // block_size)].long()
        k = k_pool[ids].reshape(-1, kv_heads, head_dim)[:n].double().repeat_interleave(group, dim=1)  # [n, H, D]
        v = v_pool[ids].reshape(-1, kv_heads, head_dim)[:n].double().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[b].double(), k) * scale
        out[b] = torch.einsum("hn,nhd->hd", torch.softmax(scores, dim=-1), v)
    return out


def check(lens, heads, kv_heads, head_dim, block_size, num_threads=1, pool_dtype=torch.float32,
          q_dtype=torch.float32, atol=1e-5, seed=0, scale=None):
    q, k_pool, v_pool, tables, ctx = make_case(lens, heads, kv_heads, head_dim, block_size, pool_dtype, seed)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    q = q.to(q_dtype)
    out = pd.paged_decode_attention(q, k_pool, v_pool, tables, ctx, scale, num_threads=num_threads)
    assert out.shape == q.shape and out.dtype == q_dtype
    expected = reference(q, k_pool, v_pool, tables, ctx, scale)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=0)
    return out


# Lengths: 1, exact block multiples, and everything in between.
LENS = [1, 16, 32, 17, 5, 64, 47, 96, 31, 33]


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_dim", [64, 128, 32])
@pytest.mark.parametrize("group", [1, 3, 4])
def test_matches_reference(kernel, group, head_dim, block_size):
    kv_heads = 2
    check(LENS, kv_heads * group, kv_heads, head_dim, block_size, seed=group * 1000 + head_dim + block_size)


@pytest.mark.parametrize("head_dim", [24, 5, 80])  # not multiples of the kernel's 16 lanes
def test_odd_head_dims(kernel, head_dim):
    check([1, 9, 40, 16], 6, 3, head_dim, 16, seed=head_dim)


# Threads start only with enough work: pd.TOKENS_PER_THREAD context tokens per thread. The
# multi-threaded cases below hold well over that.
@pytest.mark.parametrize("num_threads", [1, 2])
def test_large_mixed_batch(kernel, num_threads):
    lens = torch.randint(1, 700, (64,), generator=torch.Generator().manual_seed(7)).tolist()
    lens[:3] = [1, 16, 699]
    check(lens, 9, 3, 64, 16, num_threads=num_threads, seed=7)


def test_threads_do_not_change_results(kernel):
    lens = [700, 3, 2500, 1640, 1, 1333, 900, 2000]
    assert sum(lens) >= 8 * pd.TOKENS_PER_THREAD
    q, k_pool, v_pool, tables, ctx = make_case(lens, 9, 3, 64, 16, seed=3)
    outs = [pd.paged_decode_attention(q, k_pool, v_pool, tables, ctx, 0.125, num_threads=n) for n in (1, 2, 5, 16)]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])  # each sequence is computed the same way on any thread


def test_more_threads_than_sequences(kernel):
    lens = [1600, 1, 1700]
    assert sum(lens) >= 3 * pd.TOKENS_PER_THREAD
    check(lens, 4, 4, 64, 16, num_threads=8)


def test_single_sequence(kernel):
    check([1], 8, 2, 128, 32)
    check([2513], 8, 2, 128, 32, num_threads=2)


def test_default_thread_count(kernel):
    q, k_pool, v_pool, tables, ctx = make_case([300, 20], 6, 2, 64, 16)
    out = pd.paged_decode_attention(q, k_pool, v_pool, tables, ctx, 0.125)
    torch.testing.assert_close(out.double(), reference(q, k_pool, v_pool, tables, ctx, 0.125), atol=1e-5, rtol=0)


def test_large_scores_are_stable(kernel):
    # scale 10 puts scores in the hundreds: exp would overflow without subtracting the max
    check([1, 40, 333], 6, 2, 64, 16, scale=10.0, atol=1e-4)


@pytest.mark.parametrize("pool_dtype", [torch.float32, torch.bfloat16])
def test_nan_propagates_like_torch(kernel, pool_dtype):
    q, k_pool, v_pool, tables, ctx = make_case([40, 40], 4, 2, 64, 16, dtype=pool_dtype)
    k_pool[tables[0, 1].item(), 3, 1, 7] = float("nan")  # token 19 of sequence 0, KV head 1
    out = pd.paged_decode_attention(q, k_pool, v_pool, tables, ctx, 0.125, num_threads=2)
    expected = reference(q, k_pool, v_pool, tables, ctx, 0.125)
    assert expected[0, 2:].isnan().all() and not expected[0, :2].isnan().any()
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0, equal_nan=True)


def test_non_contiguous_q(kernel):
    q, k_pool, v_pool, tables, ctx = make_case([5, 77, 16], 6, 3, 64, 16)
    wide = torch.randn(3, 64, 12)  # [B, D, 2H]: q is every other head, transposed
    wide[:, :, ::2] = q.transpose(1, 2)
    q_view = wide[:, :, ::2].transpose(1, 2)
    assert not q_view.is_contiguous()
    out = pd.paged_decode_attention(q_view, k_pool, v_pool, tables, ctx, 0.125)
    torch.testing.assert_close(out.double(), reference(q, k_pool, v_pool, tables, ctx, 0.125), atol=1e-5, rtol=0)


def test_int64_tables_and_lens(kernel):
    q, k_pool, v_pool, tables, ctx = make_case([5, 77, 16], 6, 3, 64, 16)
    out = pd.paged_decode_attention(q, k_pool, v_pool, tables.long(), ctx.long(), 0.125)
    torch.testing.assert_close(out.double(), reference(q, k_pool, v_pool, tables, ctx, 0.125), atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_threads", [1, 2])
def test_bf16_pools(kernel, num_threads):
    # bf16 -> fp32 is exact, so with an fp32 q only fp32 rounding separates kernel and reference
    lens = [1, 16, 2250, 47]
    check(lens, 9, 3, 64, 16, num_threads=num_threads, pool_dtype=torch.bfloat16, atol=1e-5)
    # bf16 q: the output is bf16 too
    check(lens, 9, 3, 64, 16, num_threads=num_threads, pool_dtype=torch.bfloat16, q_dtype=torch.bfloat16, atol=2e-2)
    # blocks of 7 (rows left over after the kernel's 4-row steps), one and four query heads per KV head
    check([1, 7, 30, 333], 4, 4, 64, 7, num_threads=num_threads, pool_dtype=torch.bfloat16, atol=1e-5)
    check([1, 7, 30, 333], 8, 2, 64, 7, num_threads=num_threads, pool_dtype=torch.bfloat16, atol=1e-5)


def test_bf16_q_fp32_pools(kernel):
    check([3, 100], 4, 2, 128, 32, q_dtype=torch.bfloat16, atol=2e-2)


def test_empty_batch(kernel):
    q, k_pool, v_pool, tables, ctx = make_case([4], 4, 2, 64, 16)
    out = pd.paged_decode_attention(q[:0], k_pool, v_pool, tables[:0], ctx[:0], 0.125)
    assert out.shape == (0, 4, 64)


def _valid():
    return make_case([5, 40], 4, 2, 64, 16)


@pytest.mark.parametrize("mutate, match", [
    (lambda a: a.update(q=a["q"][0]), "q must have 3 dims"),
    (lambda a: a.update(q=a["q"].half()), "q must be float32 or bfloat16"),
    (lambda a: a.update(k_pool=a["k_pool"].half(), v_pool=a["v_pool"].half()), "float32 or both bfloat16"),
    (lambda a: a.update(v_pool=a["v_pool"].bfloat16()), "float32 or both bfloat16"),
    (lambda a: a.update(v_pool=a["v_pool"][:-1]), "differ in shape"),
    (lambda a: a.update(k_pool=a["k_pool"].transpose(0, 1).contiguous().transpose(0, 1)), "contiguous"),
    (lambda a: a.update(q=a["q"][..., :32]), "head_dim"),
    (lambda a: a.update(q=a["q"][:, :3]), "multiple of num_kv_heads"),
    (lambda a: a.update(block_tables=a["block_tables"][:1]), "one per query"),
    (lambda a: a.update(context_lens=a["context_lens"][:1]), "one per query"),
    (lambda a: a.update(block_tables=a["block_tables"].float()), "int32 or int64"),
    (lambda a: a.update(context_lens=torch.tensor([0, 40], dtype=torch.int32)), "context_lens"),
    (lambda a: a.update(context_lens=torch.tensor([5, 10_000], dtype=torch.int32)), "context_lens"),
    (lambda a: a["block_tables"].__setitem__((1, 1), 999), "block id"),
    (lambda a: a["block_tables"].__setitem__((0, 0), -1), "block id"),
    (lambda a: a.update(q=torch.empty(2, 4, 64, device="meta")), "CPU tensor"),
    (lambda a: a.update(num_threads=0), "num_threads"),
])
def test_validation(kernel, mutate, match):
    q, k_pool, v_pool, tables, ctx = _valid()
    args = {"q": q, "k_pool": k_pool, "v_pool": v_pool, "block_tables": tables, "context_lens": ctx, "scale": 0.125}
    mutate(args)
    with pytest.raises(ValueError, match=match):
        pd.paged_decode_attention(**args)


def test_type_errors(kernel):
    q, k_pool, v_pool, tables, ctx = _valid()
    with pytest.raises(TypeError, match="torch.Tensor"):
        pd.paged_decode_attention(q, "nope", v_pool, tables, ctx, 0.125)
    with pytest.raises(TypeError, match="num_threads"):
        pd.paged_decode_attention(q, k_pool, v_pool, tables, ctx, 0.125, num_threads=2.0)


def test_padding_ids_beyond_context_are_not_read(kernel):
    # ids past a sequence's blocks may be anything valid; ids past the context are never checked or read
    q, k_pool, v_pool, tables, ctx = make_case([20], 4, 2, 64, 16)
    tables[0, 2:] = k_pool.shape[0] + 100  # invalid, but beyond ceil(20 / 16) = 2 blocks
    out = pd.paged_decode_attention(q, k_pool, v_pool, tables, ctx, 0.125)
    torch.testing.assert_close(out.double(), reference(q, k_pool, v_pool, tables, ctx, 0.125), atol=1e-5, rtol=0)


def test_disabled_by_env(monkeypatch):
    # available() caches its answer per process: start from "not loaded yet" (monkeypatch puts
    # the loaded library back afterwards).
    monkeypatch.setattr(pd._kernels, "_loaded", False)
    monkeypatch.setattr(pd._kernels, "_lib", None)
    monkeypatch.setenv("FIREPLACE_CPU_KERNELS", "0")
    assert pd.available() is False
    q, k_pool, v_pool, tables, ctx = make_case([5], 4, 2, 64, 16)
    with pytest.raises(RuntimeError, match="unavailable"):
        pd.paged_decode_attention(q, k_pool, v_pool, tables, ctx, 0.125)


# --- cpu_build -------------------------------------------------------------------------------

TINY_C = "int fp_answer(void) { return 42; }\n"


@pytest.fixture
def compiler():
    if cpu_build.shutil.which(os.environ.get("CC", "gcc")) is None:
        if os.environ.get("CI") == "true":
            pytest.fail("a C compiler is required in CI")
        pytest.skip("no C compiler")


def test_build_caches_by_hash(compiler, tmp_path, monkeypatch):
    import ctypes
    monkeypatch.setenv("FIREPLACE_KERNEL_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "tiny.c"
    source.write_text(TINY_C)
    path = cpu_build.build_shared_library(source, "tiny")
    assert path is not None and path.parent == tmp_path / "cache" and path.name.startswith("tiny-")
    assert ctypes.CDLL(str(path)).fp_answer() == 42
    mtime = path.stat().st_mtime_ns
    assert cpu_build.build_shared_library(source, "tiny") == path  # cached: not rebuilt
    assert path.stat().st_mtime_ns == mtime
    source.write_text(TINY_C + "int fp_other(void) { return 1; }\n")
    assert cpu_build.build_shared_library(source, "tiny") != path  # new source, new name
    assert not list((tmp_path / "cache").glob("*.tmp"))  # no temp files left behind


def test_build_failure_returns_none(compiler, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FIREPLACE_KERNEL_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "broken.c"
    source.write_text("int broken(void) { return }\n")
    with caplog.at_level(logging.WARNING, logger=cpu_build.__name__):
        assert cpu_build.build_shared_library(source, "broken") is None
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert not list((tmp_path / "cache").glob("*"))  # the temp file is removed


def test_no_compiler_returns_none(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FIREPLACE_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "no-such-compiler-fireplace")
    source = tmp_path / "tiny.c"
    source.write_text(TINY_C)
    with caplog.at_level(logging.WARNING, logger=cpu_build.__name__):
        assert cpu_build.build_shared_library(source, "tiny") is None
    assert "no-such-compiler-fireplace" in caplog.text


def test_disabled_build_returns_none(tmp_path, monkeypatch):
    monkeypatch.setenv("FIREPLACE_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FIREPLACE_CPU_KERNELS", "0")
    source = tmp_path / "tiny.c"
    source.write_text(TINY_C)
    assert cpu_build.build_shared_library(source, "tiny") is None
    assert not (tmp_path / "cache").exists()
