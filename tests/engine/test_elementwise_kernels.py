"""The C elementwise kernels (silu_mul, rms_norm, add_rms_norm_, rotary_) against the torch code
they replace: F.silu(g) * u, layers/norm.RMSNorm, layers/rotary.apply_rotary.

Inputs are mostly views into larger buffers (the halves of a fused gate/up product, the q/k
columns of a fused qkv product), and the memory around them is checked to stay untouched.
Without a C compiler the kernel tests skip, except in CI (CI=true), where they fail.
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from fireplace.engine.backend import Backend
from fireplace.engine.kernels import elementwise as ew
from fireplace.engine.layers.norm import RMSNorm
from fireplace.engine.layers.rotary import RotaryEmbedding, apply_rotary
from fireplace.engine.model_config import RopeScaling

from .helpers import require_kernel

TORCH = Backend.select("cpu", torch.float32, "torch")

INF, NAN = float("inf"), float("nan")


@pytest.fixture(scope="module")
def kernel():
    require_kernel(ew, "elementwise kernels")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fused_halves(rows: int, size: int, seed: int = 0, scale: float = 4.0):
    """gate, up: the halves of one [T, 2 * size] tensor (row stride 2 * size), as FusedLinear gives."""
    fused = torch.randn(rows, 2 * size, generator=gen(seed)) * scale
    gate, up = fused.split(size, dim=-1)
    return fused, gate, up


def silu_reference(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return F.silu(g) * u


def assert_silu_close(out: torch.Tensor, g: torch.Tensor, u: torch.Tensor) -> None:
    expected = silu_reference(g, u)
    # 2e-6 relative; atol only for results in the subnormal range, where fp32 has few bits
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=1e-37, equal_nan=True)
    assert torch.equal(out.signbit(), expected.signbit())  # -0 where torch has -0


# --- silu_mul --------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, size", [(1, 5), (3, 13), (7, 37), (2, 1), (5, 8), (4, 16), (64, 1536), (9, 100)])
def test_silu_mul_matches_torch(kernel, rows, size):
    fused, gate, up = fused_halves(rows, size, seed=rows * 1000 + size)
    before = fused.clone()
    out = ew.silu_mul(gate, up)
    assert out.shape == (rows, size) and out.dtype == torch.float32 and out.is_contiguous()
    assert_silu_close(out, gate, up)
    assert torch.equal(fused, before)  # inputs only read


def test_silu_mul_wide_range(kernel):
    # every 1e-4 step over [-100, 100], plus tiny magnitudes; u random
    g = torch.cat([torch.linspace(-100, 100, 2_000_001), torch.randn(99_999, generator=gen(1)) * 1e-20])
    g = g.reshape(700, 3000)
    u = torch.randn(700, 3000, generator=gen(2))
    assert_silu_close(ew.silu_mul(g, u), g, u)


def test_silu_mul_special_values(kernel):
    values = [INF, -INF, NAN, 100.0, -100.0, 1e-30, -1e-30, 1e-40, -1e-40, 0.0, -0.0, 88.5, -88.5, 88.8,
              -88.8, 87.4, -87.4, 103.9, -103.9, 1e30, -1e30, 3.4e38, -3.4e38, 20.0, -20.0]
    g = torch.tensor(values)[None, :].repeat(4, 1)
    u = torch.ones_like(g)
    u[1] = 3.0
    u[2] = torch.tensor([INF, -INF, NAN, 0.0, -0.0] * 5)
    u[3] = -1e-20
    out = ew.silu_mul(g, u)
    assert_silu_close(out, g, u)
    silu = out[0]  # u = 1: silu itself
    assert silu[0] == INF and silu[1].isnan() and silu[2].isnan()  # silu(-inf) = -inf / inf, as torch
    assert silu[3] == 100.0 and silu[4] == 0.0 and silu[4].signbit()  # silu(-100) = -0
    assert silu[5] == 5e-31 and silu[6] == -5e-31  # x / 2 near 0 (both exact in fp32 rounding)


def test_silu_mul_differently_strided_inputs(kernel):
    # g every row 3 * size apart, u a contiguous tensor, broadcast u (stride 0) in another call
    rows, size = 6, 37
    wide = torch.randn(rows, 3 * size, generator=gen(3))
    g = wide[:, size:2 * size]
    u = torch.randn(rows, size, generator=gen(4))
    assert_silu_close(ew.silu_mul(g, u), g, u)
    u_row = torch.randn(1, size, generator=gen(5)).expand(rows, size)
    assert u_row.stride() == (0, 1)
    assert_silu_close(ew.silu_mul(g, u_row), g, u_row)


def test_silu_mul_empty(kernel):
    _, gate, up = fused_halves(0, 16)
    assert ew.silu_mul(gate, up).shape == (0, 16)
    assert ew.silu_mul(torch.empty(3, 0), torch.empty(3, 0)).shape == (3, 0)


def test_silu_mul_threads(kernel):
    rows, size = 256, 1536
    assert rows * size >= 4 * ew.SILU_WORK_PER_THREAD  # up to 4 threads take part
    _, gate, up = fused_halves(rows, size, seed=6)
    outs = [ew.silu_mul(gate, up, num_threads=n) for n in (1, 2, 3, 4)]
    assert_silu_close(outs[0], gate, up)
    for out in outs[1:]:
        assert torch.equal(out, outs[0])  # a row is computed the same way on any thread
    assert torch.equal(ew.silu_mul(gate, up), outs[0])  # default: torch.get_num_threads()


# --- rms_norm / add_rms_norm_ ----------------------------------------------------------------

def make_norm(size: int, eps: float, seed: int) -> RMSNorm:
    norm = RMSNorm(size, eps, backend=TORCH)  # the torch code the kernel replaces
    norm.weight.data = 1.0 + 0.3 * torch.randn(size, generator=gen(seed))
    return norm


def rows_view(rows: int, size: int, seed: int, pad: int = 3, scale: float = 2.0):
    """A [rows, size] view with row stride size + 2 * pad (columns pad .. pad + size of a buffer)."""
    buffer = torch.randn(rows, size + 2 * pad, generator=gen(seed)) * scale
    return buffer, buffer[:, pad:pad + size]


def norm_fp64(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return weight.double() * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


NORM_SIZES = [(1, 5), (3, 13), (5, 37), (2, 1), (9, 16), (4, 17), (64, 576), (3, 2048)]


@pytest.mark.parametrize("rows, size", NORM_SIZES)
@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_rms_norm_matches_module(kernel, rows, size, eps):
    norm = make_norm(size, eps, seed=size)
    buffer, x = rows_view(rows, size, seed=rows * 100 + size)
    before = buffer.clone()
    out = ew.rms_norm(x, norm.weight, eps)
    assert out.shape == (rows, size) and out.is_contiguous()
    torch.testing.assert_close(out, norm(x), rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(out.double(), norm_fp64(x, norm.weight, eps), rtol=2e-6, atol=1e-6)
    assert torch.equal(buffer, before)


def test_rms_norm_zero_and_nan_rows(kernel):
    norm = make_norm(13, 1e-6, seed=1)
    x = torch.randn(4, 13, generator=gen(7))
    x[1] = 0.0  # mean 0: 1 / sqrt(eps), output exactly 0
    x[2, 5] = NAN  # only its own row becomes NaN
    out = ew.rms_norm(x, norm.weight, 1e-6)
    expected = norm(x)
    assert torch.equal(out[1], torch.zeros(13))
    assert out[2].isnan().all() and not out[[0, 1, 3]].isnan().any()
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("rows, size", NORM_SIZES)
def test_add_rms_norm_matches_add_then_module(kernel, rows, size):
    eps = 1e-5
    norm = make_norm(size, eps, seed=size + 1)
    _, x = rows_view(rows, size, seed=rows * 100 + size, pad=1)
    r_buffer, residual = rows_view(rows, size, seed=rows * 100 + size + 1, pad=2)
    expected_sum = x + residual  # torch's fp32 add
    around = r_buffer.clone()
    out = ew.add_rms_norm_(x, residual, norm.weight, eps)
    assert torch.equal(residual, expected_sum)  # bitwise: one fp32 add per element
    around[:, 2:2 + size] = expected_sum
    assert torch.equal(r_buffer, around)  # padding columns around the view untouched
    torch.testing.assert_close(out, norm(expected_sum), rtol=2e-6, atol=1e-6)


def test_add_rms_norm_contiguous_residual(kernel):
    norm = make_norm(576, 1e-5, seed=3)
    x = torch.randn(16, 576, generator=gen(8))
    residual = torch.randn(16, 576, generator=gen(9))
    expected_sum = residual + x
    out = ew.add_rms_norm_(x, residual, norm.weight, 1e-5)
    assert torch.equal(residual, expected_sum)
    torch.testing.assert_close(out, norm(expected_sum), rtol=2e-6, atol=1e-6)


def test_norms_empty(kernel):
    weight = torch.ones(8)
    x, residual = torch.empty(0, 8), torch.empty(0, 8)
    assert ew.rms_norm(x, weight, 1e-5).shape == (0, 8)
    assert ew.add_rms_norm_(x, residual, weight, 1e-5).shape == (0, 8)
    assert ew.rms_norm(torch.empty(3, 0), torch.empty(0), 1e-5).shape == (3, 0)


def test_norm_threads(kernel):
    rows, size = 512, 576
    assert rows * size >= 4 * ew.NORM_WORK_PER_THREAD
    norm = make_norm(size, 1e-5, seed=4)
    x = torch.randn(rows, size, generator=gen(10))
    outs = [ew.rms_norm(x, norm.weight, 1e-5, num_threads=n) for n in (1, 2, 3, 4)]
    torch.testing.assert_close(outs[0], norm(x), rtol=2e-6, atol=1e-6)
    for out in outs[1:]:
        assert torch.equal(out, outs[0])
    residual0 = torch.randn(rows, size, generator=gen(11))
    results = []
    for n in (1, 2, 3, 4):
        residual = residual0.clone()
        results.append((ew.add_rms_norm_(x, residual, norm.weight, 1e-5, num_threads=n), residual))
    assert torch.equal(results[0][1], residual0 + x)
    for out, residual in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(residual, results[0][1])


# --- rotary_ ---------------------------------------------------------------------------------

def qkv_views(rows: int, q_heads: int, kv_heads: int, head_dim: int, seed: int):
    """q [T, Hq, D], k [T, Hk, D]: column slices of one [T, (Hq + 2 Hk) D] product, as heads."""
    q_size, kv_size = q_heads * head_dim, kv_heads * head_dim
    qkv = torch.randn(rows, q_size + 2 * kv_size, generator=gen(seed))
    q, k, _ = qkv.split([q_size, kv_size, kv_size], dim=-1)
    return qkv, q.view(rows, q_heads, head_dim), k.view(rows, kv_heads, head_dim)


def cos_sin(rows: int, head_dim: int, seed: int = 0):
    """[T, 1, D/2] cos and sin of scattered positions, from the engine's RotaryEmbedding."""
    rope = RotaryEmbedding(head_dim, 10000.0, RopeScaling())
    positions = torch.randint(0, 4096, (rows,), generator=gen(seed))
    return rope.cos_sin(positions, torch.float32)


@pytest.mark.parametrize("q_heads, kv_heads, head_dim", [(9, 3, 64), (4, 4, 128), (2, 1, 32), (3, 1, 6), (1, 1, 2),
                                                         (5, 2, 26)])
@pytest.mark.parametrize("rows", [1, 7, 40])
def test_rotary_matches_apply_rotary(kernel, rows, q_heads, kv_heads, head_dim):
    qkv, q, k = qkv_views(rows, q_heads, kv_heads, head_dim, seed=rows + head_dim)
    cos, sin = cos_sin(rows, head_dim, seed=rows)
    expected_q, expected_k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    v_before = qkv[:, (q_heads + kv_heads) * head_dim:].clone()
    assert ew.rotary_(q, k, cos, sin) is None
    torch.testing.assert_close(q, expected_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(k, expected_k, rtol=0, atol=1e-6)
    assert torch.equal(qkv[:, (q_heads + kv_heads) * head_dim:], v_before)  # v untouched


def test_rotary_flat_cos_sin_and_separate_tensors(kernel):
    # cos/sin as [T, D/2]; q and k separate contiguous tensors; k with a single head
    rows, head_dim = 5, 64
    q = torch.randn(rows, 6, head_dim, generator=gen(12))
    k = torch.randn(rows, 1, head_dim, generator=gen(13))
    cos, sin = cos_sin(rows, head_dim)
    expected_q, expected_k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    ew.rotary_(q, k, cos[:, 0, :], sin[:, 0, :])
    torch.testing.assert_close(q, expected_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(k, expected_k, rtol=0, atol=1e-6)


def test_rotary_empty(kernel):
    qkv, q, k = qkv_views(0, 9, 3, 64, seed=0)
    cos, sin = torch.empty(0, 1, 32), torch.empty(0, 1, 32)
    ew.rotary_(q, k, cos, sin)
    _, q, k = qkv_views(2, 9, 0, 64, seed=0)  # no k heads: q alone
    cos, sin = cos_sin(2, 64)
    expected = apply_rotary(q, cos, sin)
    ew.rotary_(q, k, cos, sin)
    torch.testing.assert_close(q, expected, rtol=0, atol=1e-6)


def test_rotary_threads(kernel):
    rows = 512
    assert rows * 12 * 64 >= 4 * ew.ROTARY_WORK_PER_THREAD
    cos, sin = cos_sin(rows, 64, seed=3)
    results = []
    for n in (1, 2, 3, 4):
        qkv, q, k = qkv_views(rows, 9, 3, 64, seed=14)
        if n == 1:
            expected_q, expected_k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        ew.rotary_(q, k, cos, sin, num_threads=n)
        results.append(qkv)
    torch.testing.assert_close(results[0][:, :576].view(rows, 9, 64), expected_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(results[0][:, 576:768].view(rows, 3, 64), expected_k, rtol=0, atol=1e-6)
    for qkv in results[1:]:
        assert torch.equal(qkv, results[0])


# --- argument checks -------------------------------------------------------------------------

def _norm_args():
    return {"x": torch.randn(4, 8), "weight": torch.ones(8), "eps": 1e-5}


@pytest.mark.parametrize("call, match", [
    (lambda: ew.silu_mul(torch.randn(4, 8).double(), torch.randn(4, 8)), "g must be float32"),
    (lambda: ew.silu_mul(torch.randn(4, 8), torch.randn(4, 8).bfloat16()), "u must be float32"),
    (lambda: ew.silu_mul(torch.randn(4, 8, 1), torch.randn(4, 8)), "g must have 2 dims"),
    (lambda: ew.silu_mul(torch.randn(4, 8), torch.randn(4, 9)), "differ in shape"),
    (lambda: ew.silu_mul(torch.randn(4, 16)[:, ::2], torch.randn(4, 8)), "contiguous rows"),
    (lambda: ew.silu_mul(torch.randn(8, 4).t(), torch.randn(4, 8)), "contiguous rows"),
    (lambda: ew.silu_mul(torch.empty(4, 8, device="meta"), torch.randn(4, 8)), "CPU tensor"),
    (lambda: ew.silu_mul(torch.randn(4, 8), torch.randn(4, 8), num_threads=0), "num_threads"),
    (lambda: ew.rms_norm(torch.randn(4, 8), torch.ones(9), 1e-5), "weight has 9"),
    (lambda: ew.rms_norm(torch.randn(4, 8), torch.ones(8, 1), 1e-5), "weight must have 1 dims"),
    (lambda: ew.rms_norm(torch.randn(4, 8), torch.ones(16)[::2], 1e-5), "contiguous"),
    (lambda: ew.rms_norm(torch.randn(8), torch.ones(8), 1e-5), "x must have 2 dims"),
    (lambda: ew.add_rms_norm_(torch.randn(4, 8), torch.randn(3, 8), torch.ones(8), 1e-5), "differ in shape"),
    (lambda: ew.add_rms_norm_(torch.randn(4, 8), torch.randn(4, 8).half(), torch.ones(8), 1e-5), "residual must be"),
    # residual rows that overlap (stride 0) would be added to several times: refused by the C side
    (lambda: ew.add_rms_norm_(torch.randn(4, 8), torch.zeros(1, 8).expand(4, 8), torch.ones(8), 1e-5),
     "overlapping"),
    (lambda: ew.rotary_(torch.randn(2, 3, 6), torch.randn(2, 1, 8), torch.ones(2, 3), torch.ones(2, 3)),
     "differ in T or head_dim"),
    (lambda: ew.rotary_(torch.randn(2, 3, 6), torch.randn(3, 1, 6), torch.ones(2, 3), torch.ones(2, 3)),
     "differ in T or head_dim"),
    (lambda: ew.rotary_(torch.randn(2, 3, 5), torch.randn(2, 1, 5), torch.ones(2, 2), torch.ones(2, 2)), "even"),
    (lambda: ew.rotary_(torch.randn(2, 3, 6), torch.randn(2, 1, 6), torch.ones(2, 6), torch.ones(2, 3)),
     "cos must be"),
    (lambda: ew.rotary_(torch.randn(2, 3, 6), torch.randn(2, 1, 6), torch.ones(2, 3), torch.ones(2, 2, 3)),
     "sin must be"),
    (lambda: ew.rotary_(torch.randn(2, 3, 6), torch.randn(2, 1, 6), torch.ones(2, 3).double(), torch.ones(2, 3)),
     "cos must be a float32"),
    (lambda: ew.rotary_(torch.randn(2, 3, 6), torch.randn(2, 1, 6), torch.ones(3, 2).t(), torch.ones(2, 3)),
     "cos must be contiguous"),
    (lambda: ew.rotary_(torch.randn(2, 6, 3).transpose(1, 2), torch.randn(2, 1, 6), torch.ones(2, 3),
                        torch.ones(2, 3)), "contiguous"),  # [T, D, H] memory: heads not contiguous
    (lambda: ew.rotary_(torch.randn(1, 3, 6).expand(2, 3, 6), torch.randn(2, 1, 6), torch.ones(2, 3),
                        torch.ones(2, 3)), "overlapping"),
])
def test_validation(kernel, call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_type_errors(kernel):
    with pytest.raises(TypeError, match="torch.Tensor"):
        ew.silu_mul([[1.0]], torch.randn(1, 1))
    with pytest.raises(TypeError, match="torch.Tensor"):
        ew.rms_norm(torch.randn(2, 4), None, 1e-5)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ew.rotary_(torch.randn(2, 3, 6), torch.randn(2, 1, 6), "cos", torch.ones(2, 3))
    with pytest.raises(TypeError, match="num_threads"):
        ew.rms_norm(**_norm_args(), num_threads=2.0)
    with pytest.raises(TypeError, match="num_threads"):
        ew.silu_mul(torch.randn(2, 4), torch.randn(2, 4), num_threads=True)


def test_thresholds_match_c_source():
    # the Python constants mirror the C #defines (tests above size their threaded cases by them)
    source = ew._SOURCE.read_text()
    for name in ("SILU_WORK_PER_THREAD", "NORM_WORK_PER_THREAD", "ROTARY_WORK_PER_THREAD"):
        match = re.search(rf"#define {name} (\d+)", source)
        assert match is not None and int(match.group(1)) == getattr(ew, name), name


def test_disabled_by_env(monkeypatch):
    # available() caches its answer per process: start from "not loaded yet" (monkeypatch puts
    # the loaded library back afterwards).
    monkeypatch.setattr(ew._kernels, "_loaded", False)
    monkeypatch.setattr(ew._kernels, "_lib", None)
    monkeypatch.setenv("FIREPLACE_CPU_KERNELS", "0")
    assert ew.available() is False
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="unavailable"):
        ew.silu_mul(x, x)
    with pytest.raises(RuntimeError, match="unavailable"):
        ew.rms_norm(x, torch.ones(8), 1e-5)
    with pytest.raises(RuntimeError, match="unavailable"):
        ew.add_rms_norm_(x, x.clone(), torch.ones(8), 1e-5)
    with pytest.raises(RuntimeError, match="unavailable"):
        ew.rotary_(torch.randn(2, 1, 8), torch.randn(2, 1, 8), torch.ones(2, 4), torch.ones(2, 4))
