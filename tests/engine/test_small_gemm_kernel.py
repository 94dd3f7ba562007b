"""The C small-M GEMM kernel (y = x @ W^T + b) against an fp64 torch reference.

Without a C compiler the kernel tests skip, except in CI (CI=true), where they fail.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading

import pytest
import torch

from fireplace.engine.kernels import small_gemm as sg

from .helpers import build_portable, require_kernel

RTOL = 1e-5  # of the largest |y|: fp32 accumulation over K <= 1536 stays well inside


@pytest.fixture(scope="module")
def kernel():
    require_kernel(sg, "small GEMM kernel")


@functools.cache
def weight(n: int, k: int) -> torch.Tensor:
    """Random weight per shape, made once per module (lm_head's is 113 MB)."""
    return torch.randn(n, k, generator=torch.Generator().manual_seed(31 * n + k))


@pytest.fixture(scope="module", autouse=True)
def _drop_weights():
    yield
    weight.cache_clear()


def reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = x.double() @ w.double().T
    return y if bias is None else y + bias.double()


def assert_matches(out: torch.Tensor, expected: torch.Tensor) -> None:
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(out.double(), expected, atol=RTOL * scale, rtol=0)


def check(m: int, k: int, n: int, with_bias: bool = False, num_threads: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = weight(n, k)
    bias = torch.randn(n, generator=g) if with_bias else None
    out = sg.linear(x, w, bias, num_threads=num_threads)
    assert out.shape == (m, n) and out.dtype == torch.float32 and out.is_contiguous()
    assert_matches(out, reference(x, w, bias))
    return out


# SmolLM2-135M: o_proj, fused qkv, k or v, gate or up, fused gate/up, down_proj, lm_head
MODEL_SHAPES = [(576, 576), (576, 960), (576, 192), (576, 1536), (576, 3072), (1536, 576), (576, 49152)]


# M = 130: eight 16-row blocks and a 2-row one. lm_head at two M only: its fp64 reference is
# the slow part of this file.
@pytest.mark.parametrize("m, k, n", [(m, k, n) for k, n in MODEL_SHAPES for m in (1, 7, 64, 130)
                                     if n != 49152 or m in (7, 64)])
def test_model_shapes(kernel, m, k, n):
    check(m, k, n, with_bias=m in (7, 130), seed=m)


@pytest.mark.parametrize("m, k, n", [
    (1, 5, 13), (3, 5, 13), (7, 37, 1), (1, 37, 1), (17, 13, 5), (9, 8, 6), (16, 16, 12),
    (33, 1, 7), (8, 7, 11), (24, 40, 30), (2, 600, 19), (130, 37, 13),
])
@pytest.mark.parametrize("with_bias", [False, True])
def test_odd_shapes(kernel, m, k, n, with_bias):
    check(m, k, n, with_bias=with_bias, seed=m * 7 + k)


def test_prefill_sized_x(kernel):
    # over 4 MB packed (KEEP_FLOATS in the C source): a buffer of its own for the call
    check(700, 1536, 30, with_bias=True, seed=12)
    check(16, 576, 30, seed=13)  # and the kept buffer still serves the small calls after it


def test_threads_do_not_change_results(kernel):
    g = torch.Generator().manual_seed(3)
    x, w, bias = torch.randn(70, 576, generator=g), weight(1536, 576), torch.randn(1536, generator=g)
    outs = [sg.linear(x, w, bias, num_threads=t) for t in (1, 2, 3, 4)]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])  # every output is one FMA chain over k, whichever thread
    assert_matches(outs[0], reference(x, w, bias))


@pytest.mark.parametrize("m, k, n", [(40, 37, 1500), (50, 13, 2001), (19, 100, 3000)])
@pytest.mark.parametrize("num_threads", [3, 4])
def test_threads_with_odd_sizes(kernel, m, k, n, num_threads):
    # enough work for every thread to take part: each packs an uneven k-range of x
    assert m * k * n >= num_threads * 262144
    check(m, k, n, with_bias=True, num_threads=num_threads, seed=k)


def test_rows_do_not_depend_on_the_batch(kernel):
    """A token's output is the same bits whatever the batch around it: alone, in a full 16-row
    block, or in a last partial block."""
    g = torch.Generator().manual_seed(11)
    x, w, bias = torch.randn(70, 576, generator=g), weight(192, 576), torch.randn(192, generator=g)
    full = sg.linear(x, w, bias)
    for rows in [slice(0, 1), slice(5, 6), slice(64, 70), slice(3, 20), slice(69, 70),
                 slice(10, 12), slice(20, 23), slice(30, 34), slice(40, 45)]:  # 1-4 tokens: the thin path
        assert torch.equal(sg.linear(x[rows], w, bias), full[rows])


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("num_threads", [1, 2, 3, 4])
def test_thin_path_threads_and_odd_rows(kernel, m, num_threads):
    """1-4 tokens (the thin path, 8 weight rows at a time, split by weights read): any thread
    count gives the same bits as the tile path, with N and K not multiples of 8."""
    g = torch.Generator().manual_seed(m)
    x, w, bias = torch.randn(20, 203, generator=g), weight(1501, 203), torch.randn(1501, generator=g)
    wide = sg.linear(x, w, bias, num_threads=1)  # 20 tokens: the tile path
    out = sg.linear(x[:m], w, bias, num_threads=num_threads)
    assert torch.equal(out, wide[:m])
    assert_matches(out, reference(x[:m], w, bias))


def test_default_thread_count(kernel):
    g = torch.Generator().manual_seed(4)
    x, w = torch.randn(64, 576, generator=g), weight(960, 576)
    assert_matches(sg.linear(x, w), reference(x, w, None))


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("m", [37, 3])
def test_strided_views(kernel, with_bias, m):
    """x a column slice of a wider tensor; out a column slice of a wider output (as the q, k, v
    parts of a fused projection's output are): nothing outside the view is written."""
    k, n = 576, 195
    g = torch.Generator().manual_seed(5)
    x_wide = torch.randn(m, k + 40, generator=g)
    x = x_wide[:, 24:24 + k]
    w = weight(n, k)
    bias = torch.randn(n, generator=g) if with_bias else None
    canvas = torch.full((m + 2, n + 300), 1234.5)
    out = canvas[1:m + 1, 100:100 + n]
    assert x.stride() == (k + 40, 1) and out.stride() == (n + 300, 1)
    result = sg.linear(x, w, bias, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert_matches(out, reference(x, w, bias))
    outside = torch.ones_like(canvas, dtype=torch.bool)
    outside[1:m + 1, 100:100 + n] = False
    assert (canvas[outside] == 1234.5).all()


def test_out_may_be_reused(kernel):
    g = torch.Generator().manual_seed(6)
    w, out = weight(576, 576), torch.full((16, 576), float("nan"))
    for seed in range(3):
        x = torch.randn(16, 576, generator=g)
        sg.linear(x, w, out=out)
        assert_matches(out, reference(x, w, None))


def test_single_row_views(kernel):
    # A [1, K] tensor may carry any row stride (0 when broadcast): it is never used.
    w = weight(13, 37)
    for row_stride in (0, 5):
        x = torch.randn(37).as_strided((1, 37), (row_stride, 1))
        out = torch.empty(13).as_strided((1, 13), (row_stride, 1))
        sg.linear(x, w, out=out)
        assert_matches(out, reference(x, w, None))


def test_unchecked_matches_checked(kernel):
    g = torch.Generator().manual_seed(7)
    x, w, bias = torch.randn(64, 576, generator=g), weight(960, 576), torch.randn(960, generator=g)
    expected = sg.linear(x, w, bias)
    assert torch.equal(sg.linear_unchecked(x, w, bias), expected)
    out = torch.empty(64, 960)
    assert sg.linear_unchecked(x, w, bias, out, 2) is out
    assert torch.equal(out, expected)


def test_empty_sizes(kernel):
    w = weight(13, 37)
    assert sg.linear(torch.empty(0, 37), w).shape == (0, 13)
    assert sg.linear(torch.randn(5, 37), torch.empty(0, 37)).shape == (5, 0)
    # K = 0: an empty sum, so y is the bias (or zeros)
    bias = torch.randn(13)
    out = sg.linear(torch.empty(4, 0), torch.empty(13, 0), bias)
    assert torch.equal(out, bias.expand(4, 13))
    assert torch.equal(sg.linear(torch.empty(4, 0), torch.empty(13, 0)), torch.zeros(4, 13))


def test_nan_and_inf_propagate_like_torch(kernel):
    g = torch.Generator().manual_seed(8)
    x, w = torch.randn(20, 40, generator=g), torch.randn(15, 40, generator=g)
    x[3, 7] = float("nan")
    w[5, 11] = float("inf")
    x[9, 11] = 0.0  # inf * 0 = nan at y[9, 5]
    out = sg.linear(x, w)
    expected = reference(x, w, None)
    assert expected[3].isnan().all() and expected[9, 5].isnan() and expected[:, 5].isinf().sum() == 18
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=0, equal_nan=True)


def test_concurrent_callers(kernel):
    """Each calling thread packs x into its own buffer: concurrent calls do not interfere."""
    g = torch.Generator().manual_seed(9)
    cases = [(torch.randn(m, 576, generator=g), weight(n, 576))
             for m, n in [(64, 576), (16, 960), (100, 192), (33, 1536)]]
    expected = [reference(x, w, None) for x, w in cases]
    errors: list[Exception] = []

    def run(i: int) -> None:
        try:
            for _ in range(5):
                assert_matches(sg.linear(*cases[i], num_threads=2), expected[i])
        except (AssertionError, ValueError, RuntimeError) as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_uses_avx2_where_the_cpu_has_it(kernel):
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo")
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    if " avx2" in flags and " fma" in flags:
        assert sg.uses_avx2()


# --- argument checks ----------------------------------------------------------------------------

def _valid():
    return {"x": torch.randn(6, 16), "weight": torch.randn(10, 16), "bias": torch.randn(10),
            "out": torch.empty(6, 10)}


@pytest.mark.parametrize("mutate, match", [
    (lambda a: a.update(x=a["x"].double()), "x must be torch.float32"),
    (lambda a: a.update(weight=a["weight"].half()), "weight must be torch.float32"),
    (lambda a: a.update(bias=a["bias"].bfloat16()), "bias must be torch.float32"),
    (lambda a: a.update(out=a["out"].double()), "out must be torch.float32"),
    (lambda a: a.update(x=a["x"][0]), "x must have 2 dims"),
    (lambda a: a.update(weight=a["weight"][None]), "weight must have 2 dims"),
    (lambda a: a.update(bias=a["bias"][None]), "bias must have 1 dims"),
    (lambda a: a.update(weight=a["weight"][:, :15]), "does not match x"),
    (lambda a: a.update(bias=a["bias"][:9]), "bias"),
    (lambda a: a.update(out=a["out"][:5]), "out .* must have shape"),
    (lambda a: a.update(out=a["out"][:, :9]), "out .* must have shape"),
    (lambda a: a.update(weight=a["weight"].t().contiguous().t()), "weight must be contiguous"),
    (lambda a: a.update(weight=torch.randn(10, 32)[:, ::2]), "weight must be contiguous"),
    (lambda a: a.update(x=torch.randn(6, 32)[:, ::2]), "x must have unit column stride"),
    (lambda a: a.update(x=torch.randn(16, 6).t()), "x must have unit column stride"),
    (lambda a: a.update(out=torch.empty(6, 20)[:, ::2]), "out must have unit column stride"),
    (lambda a: a.update(bias=torch.randn(20)[::2]), "bias must be contiguous"),
    (lambda a: a.update(x=torch.randn(40).as_strided((6, 16), (4, 1))), "x rows overlap"),
    (lambda a: a.update(out=torch.empty(60).as_strided((6, 10), (5, 1))), "out rows overlap"),
    (lambda a: a.update(x=torch.empty(6, 16, device="meta")), "CPU tensor"),
    (lambda a: a.update(num_threads=0), "num_threads"),
])
def test_validation(kernel, mutate, match):
    args = _valid()
    mutate(args)
    with pytest.raises(ValueError, match=match):
        sg.linear(**args)


def test_type_errors(kernel):
    args = _valid()
    with pytest.raises(TypeError, match="torch.Tensor"):
        sg.linear(args["x"].numpy(), args["weight"])
    with pytest.raises(TypeError, match="torch.Tensor"):
        sg.linear(args["x"], args["weight"], bias=[0.0] * 10)
    for bad in (2.0, True, "2"):
        with pytest.raises(TypeError, match="num_threads"):
            sg.linear(args["x"], args["weight"], num_threads=bad)


def test_kernel_rejects_bad_sizes(kernel):
    # the C side checks sizes and row strides itself (error code 1, nothing written)
    x, w, out = torch.randn(4, 8), torch.randn(6, 8), torch.empty(4, 6)
    args = [x.data_ptr(), 8, w.data_ptr(), None, out.data_ptr(), 6]
    assert sg._kernels.get().fp_linear(*args, -1, 8, 6, 1) == 1
    assert sg._kernels.get().fp_linear(x.data_ptr(), 7, *args[2:], 4, 8, 6, 1) == 1  # ldx < K
    assert sg._kernels.get().fp_linear(*args[:5], 5, 4, 8, 6, 1) == 1  # ldy < N
    with pytest.raises(ValueError, match="invalid sizes"):
        sg._raise_for(1)


def test_disabled_by_env(monkeypatch):
    # available() caches its answer per process: start from "not loaded yet" (monkeypatch puts
    # the loaded library back afterwards).
    monkeypatch.setattr(sg._kernels, "_loaded", False)
    monkeypatch.setattr(sg._kernels, "_lib", None)
    monkeypatch.setenv("FIREPLACE_CPU_KERNELS", "0")
    assert sg.available() is False
    assert sg.uses_avx2() is False
    with pytest.raises(RuntimeError, match="unavailable"):
        sg.linear(torch.randn(2, 8), torch.randn(3, 8))


# --- the portable path -------------------------------------------------------------------------

def test_portable_path_matches(kernel, tmp_path):
    """The plain C fallback (built for the baseline ISA, i.e. without AVX2/FMA on x86-64) gives
    the same answers; it is what a CPU without AVX2 gets from -march=native."""
    lib = build_portable(sg._SOURCE, tmp_path)
    assert lib.fp_linear_uses_avx2() == 0
    fn = lib.fp_linear
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    fn.restype = ctypes.c_int
    g = torch.Generator().manual_seed(10)
    for m, k, n in [(1, 5, 13), (17, 37, 7), (64, 576, 192)]:
        x = torch.randn(m, k + 3, generator=g)[:, :k]
        w, bias = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        canvas = torch.full((m, n + 4), 7.0)
        out = canvas[:, 2:n + 2]
        for threads in (1, 2):
            assert fn(x.data_ptr(), x.stride(0), w.data_ptr(), bias.data_ptr(), out.data_ptr(), out.stride(0),
                      m, k, n, threads) == 0
            assert_matches(out, reference(x, w, bias))
        assert (canvas[:, :2] == 7.0).all() and (canvas[:, n + 2:] == 7.0).all()
