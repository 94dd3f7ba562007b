"""Weight-only quantization: the formats (quantize -> dequantize) and the C quantized GEMV /
dequantize kernels against x @ dequantize(qw)^T computed in fp64.

Without a C compiler the kernel tests skip, except in CI (CI=true), where they fail.
"""
from __future__ import annotations

import os
import threading

import pytest
import torch

from fireplace.engine import quantization as Q
from fireplace.engine.backend import Backend
from fireplace.engine.backend_config import BackendConfig
from fireplace.engine.kernels import quant_gemv as qg
from fireplace.engine.layers.quantized_linear import quantized_linear

from .helpers import assert_matches, require_kernel, use_quant_gemv_build

@pytest.fixture(scope="module")
def kernel():
    require_kernel(qg, "quantized GEMV kernel")


def reference(x: torch.Tensor, qw: Q.QuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    y = x.double() @ Q.dequantize(qw).double().T
    return y if bias is None else y + bias.double()


def make(scheme: str, n: int, k: int, group: int = 32, seed: int = 0) -> Q.QuantizedWeight:
    """int8 where group does not divide k (odd test sizes): one scale per output channel."""
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    if scheme == "int8" and k % group:
        return Q.quantize_int8(w)
    return Q.quantize(w, scheme, group)


# --- the formats ---------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme,group", [("int8", 32), ("int4", 32), ("int4", 64)])
def test_dequantize_is_within_half_a_step(scheme, group):
    w = torch.randn(48, 192, generator=torch.Generator().manual_seed(1)) * 3
    qw = Q.quantize(w, scheme, group)
    step = qw.scale.repeat_interleave(qw.group_size, dim=1)  # per weight
    error = (Q.dequantize(qw) - w).abs()
    assert (error <= step / 2 * (1 + 1e-4) + 1e-7).all()
    assert error.max() > 0  # it is lossy: the test would notice a format that stored fp32
    per_weight = 1 + 4 / group if scheme == "int8" else 0.5 + 8 / group  # values + fp32 scale (and min)
    assert qw.nbytes() == w.numel() * per_weight


def test_int8_is_per_channel_symmetric():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [3.0, 1.5, -0.75]])
    qw = Q.quantize_int8(w)
    assert qw.group_size == 3 and qw.qweight.dtype == torch.int8
    torch.testing.assert_close(qw.scale.squeeze(1), torch.tensor([2 / 127, 1.0, 3 / 127]))
    assert qw.qweight[0].tolist() == [64, -127, 32] and qw.qweight[1].tolist() == [0, 0, 0]
    assert qw.qweight[2, 0] == 127


def test_int8_groups_have_their_own_scales():
    """A group's scale comes from its own maximum: a large weight in one group does not coarsen
    the others (what per-channel int8 does, at +1% perplexity on SmolLM2)."""
    w = torch.tensor([[100.0, 1.0, 0.5, -0.25], [0.0, 0.0, -3.0, 1.5]])
    qw = Q.quantize_int8(w, 2)
    assert qw.group_size == 2 and tuple(qw.scale.shape) == (2, 2)
    torch.testing.assert_close(qw.scale, torch.tensor([[100 / 127, 0.5 / 127], [1.0, 3 / 127]]))
    assert qw.qweight.tolist() == [[127, 1, 127, -64], [0, 0, -127, 64]]
    assert (Q.dequantize(qw) - w).abs()[:, 2:].max() < 0.02  # per channel: up to 100 / 254
    with pytest.raises(Q.QuantizationError, match="does not divide"):
        Q.quantize_int8(w, 3)


def test_int4_extremes_are_exact_and_layout_is_ggufs():
    w = torch.arange(64, dtype=torch.float32).view(1, 64)  # group 0: 0..31, group 1: 32..63
    qw = Q.quantize_int4(w, 32)
    torch.testing.assert_close(qw.min.squeeze(0), torch.tensor([0.0, 32.0]))
    torch.testing.assert_close(qw.scale.squeeze(0), torch.tensor([31 / 15, 31 / 15]))
    deq = Q.dequantize(qw)
    assert deq[0, 0] == 0 and deq[0, 31] == 31 and deq[0, 32] == 32 and deq[0, 63] == 63
    nib = Q.unpack_nibbles(qw.qweight)
    # byte j of a block: weight j in the low nibble, weight j + 16 in the high one
    assert qw.qweight[0, 0] == nib[0, 0] | (nib[0, 16] << 4)
    assert qw.qweight[0, 17] == nib[0, 33] | (nib[0, 49] << 4)


def test_pack_unpack_round_trip():
    nib = torch.randint(0, 16, (5, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(Q.unpack_nibbles(Q.pack_nibbles(nib)), nib)


def test_rows_and_concat():
    qw = make("int4", 40, 64)
    parts = [qw.rows(0, 8), qw.rows(8, 30), qw.rows(30, 40)]
    assert torch.equal(Q.dequantize(Q.concat_rows(parts)), Q.dequantize(qw))
    assert torch.equal(Q.dequantize(parts[1]), Q.dequantize(qw)[8:30])


@pytest.mark.parametrize("call,match", [
    (lambda: Q.quantize_int4(torch.randn(4, 64), 48), "multiple of 32"),
    (lambda: Q.quantize_int4(torch.randn(4, 96), 64), "does not divide"),
    (lambda: Q.quantize(torch.randn(4, 64), "int3"), "one of int8, int4"),
    (lambda: Q.quantize_int8(torch.randn(4)), "2-D"),
    (lambda: Q.QuantizedWeight("int8", 2, 4, 4, torch.zeros(2, 4, dtype=torch.uint8), torch.ones(2, 1)), "int8"),
    (lambda: Q.QuantizedWeight("int4", 2, 32, 32, torch.zeros(2, 16, dtype=torch.uint8), torch.ones(2, 1)),
     "needs a min"),
])
def test_format_errors(call, match):
    with pytest.raises(Q.QuantizationError, match=match):
        call()


# --- the kernels ---------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("m,k,n", [(1, 576, 960), (1, 1536, 576), (4, 576, 3072), (3, 64, 96), (9, 576, 193)])
def test_model_shapes(kernel, scheme, m, k, n):
    g = torch.Generator().manual_seed(m + k + n)
    qw, x, bias = make(scheme, n, k, seed=k * n), torch.randn(m, k, generator=g), torch.randn(n, generator=g)
    assert_matches(qg.linear(x, qw, bias), reference(x, qw, bias))
    assert_matches(qg.linear(x, qw), reference(x, qw, None))


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (2, 13, 5), (5, 37, 3), (6, 7, 31), (1, 1000, 11)])
def test_int8_odd_sizes(kernel, m, k, n):
    g = torch.Generator().manual_seed(k)
    x, qw = torch.randn(m, k, generator=g), Q.quantize_int8(torch.randn(n, k, generator=g))
    assert_matches(qg.linear(x, qw), reference(x, qw, None))


@pytest.mark.parametrize("m,k,n,group", [(5, 32, 3, 32), (7, 96, 1, 32), (2, 128, 9, 64), (3, 256, 17, 128)])
def test_int4_odd_sizes_and_groups(kernel, m, k, n, group):
    g = torch.Generator().manual_seed(k + n)
    x, qw = torch.randn(m, k, generator=g), make("int4", n, k, group, seed=n)
    assert_matches(qg.linear(x, qw), reference(x, qw, None))


def test_int8_with_gguf_style_groups(kernel):
    """Q8_0: int8 with one scale per 32 weights (not produced by quantize_int8, loaded from GGUF)."""
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-127, 128, (7, 96), dtype=torch.int8, generator=g)
    qw = Q.QuantizedWeight("int8", 7, 96, 32, q, torch.rand(7, 3, generator=g) + 0.01)
    x = torch.randn(3, 96, generator=g)
    assert_matches(qg.linear(x, qw), reference(x, qw, None))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_threads_do_not_change_results(kernel, scheme):
    g = torch.Generator().manual_seed(4)
    qw, x = make(scheme, 3072, 576), torch.randn(4, 576, generator=g)
    results = [qg.linear(x, qw, num_threads=t) for t in (1, 2, 3)]
    for other in results[1:]:
        assert torch.equal(other, results[0])  # each output: one accumulation, whatever the split
    assert_matches(results[0], reference(x, qw, None))


@pytest.mark.parametrize("scheme,group", [("int8", None), ("int8", 32), ("int4", 32), ("int4", 64)])
def test_tiling_does_not_change_a_result(kernel, scheme, group):
    """The kernel tiles tokens in pairs and weight rows in blocks of 4 (plus single leftovers);
    each output stays one accumulation in a fixed order, so a token's outputs are the same bits
    alone or in any batch, and a row's the same whether it falls in a block or the leftovers."""
    g = torch.Generator().manual_seed(9)
    n, k = 23, 192
    if scheme == "int8" and group is not None:  # GGUF Q8_0 style groups
        qw = Q.QuantizedWeight("int8", n, k, group, torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g),
                               torch.rand(n, k // group, generator=g) + 0.01)
    else:
        qw = make(scheme, n, k, group or 32)
    x, bias = torch.randn(7, k, generator=g), torch.randn(n, generator=g)
    full = qg.linear(x, qw, bias)
    for m in range(7):
        assert torch.equal(qg.linear(x[m:m + 1], qw, bias), full[m:m + 1])
    assert torch.equal(qg.linear(x[1:4], qw, bias), full[1:4])
    for start, stop in ((1, 23), (3, 10), (22, 23)):
        assert torch.equal(qg.linear(x, qw.rows(start, stop), bias[start:stop]), full[:, start:stop])
    assert_matches(full, reference(x, qw, bias))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_strided_views_and_out(kernel, scheme):
    g = torch.Generator().manual_seed(5)
    qw = make(scheme, 21, 64)
    wide = torch.randn(6, 64 + 9, generator=g)
    x = wide[:, 3:67]  # row stride 73
    canvas = torch.full((6, 30), 7.0)
    out = canvas[:, 4:25]
    assert qg.linear(x, qw, out=out) is out
    assert_matches(out, reference(x, qw, None))
    assert (canvas[:, :4] == 7.0).all() and (canvas[:, 25:] == 7.0).all()
    one = qg.linear(x[2:3], qw)  # a one-row view
    assert_matches(one, reference(x[2:3], qw, None))


def test_empty_batch(kernel):
    assert qg.linear(torch.empty(0, 64), make("int4", 5, 64)).shape == (0, 5)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_dequantize_kernel_equals_reference(kernel, scheme):
    qw = make(scheme, 37, 128, 64 if scheme == "int4" else 32)
    torch.testing.assert_close(qg.dequantize_unchecked(qw, num_threads=2), Q.dequantize(qw), atol=1e-6, rtol=0)


def test_concurrent_callers(kernel):
    qw = make("int4", 300, 576)
    xs = [torch.randn(2, 576, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    expected = [qg.linear(x, qw) for x in xs]
    failures = []

    def worker(i):
        for _ in range(8):
            if not torch.equal(qg.linear(xs[i], qw), expected[i]):
                failures.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_validation(kernel):
    qw = make("int8", 4, 64)
    with pytest.raises(ValueError, match="does not match"):
        qg.linear(torch.randn(2, 32), qw)
    with pytest.raises(ValueError, match="float32"):
        qg.linear(torch.randn(2, 64, dtype=torch.float64), qw)
    with pytest.raises(ValueError, match="unit column stride"):
        qg.linear(torch.randn(64, 2).T, qw)
    with pytest.raises(ValueError, match="bias"):
        qg.linear(torch.randn(2, 64), qw, torch.randn(5))
    with pytest.raises(ValueError, match="out"):
        qg.linear(torch.randn(2, 64), qw, out=torch.empty(2, 5))
    with pytest.raises(TypeError, match="QuantizedWeight"):
        qg.linear(torch.randn(2, 64), torch.randn(4, 64))
    with pytest.raises(ValueError, match="num_threads"):
        qg.linear(torch.randn(2, 64), qw, num_threads=0)


def test_disabled_by_env(monkeypatch):
    monkeypatch.setattr(qg._kernels, "_loaded", False)
    monkeypatch.setattr(qg._kernels, "_lib", None)
    monkeypatch.setenv("FIREPLACE_CPU_KERNELS", "0")
    assert qg.available() is False and qg.uses_avx2() is False
    with pytest.raises(RuntimeError, match="unavailable"):
        qg.linear(torch.randn(2, 64), make("int8", 3, 64))


def test_portable_path_matches(kernel, monkeypatch, tmp_path):
    """The plain C fallback (baseline ISA: no AVX2/FMA) gives the same answers within rounding."""
    lib = use_quant_gemv_build(monkeypatch, tmp_path)
    assert lib.fq_uses_avx2() == 0 and lib.fq_gemm_available() == 0  # the GEMM needs AVX2
    g = torch.Generator().manual_seed(6)
    for scheme, m, k, n in [("int8", 3, 37, 5), ("int8", 5, 576, 64), ("int4", 2, 96, 7), ("int4", 6, 576, 33)]:
        qw, x, bias = make(scheme, n, k), torch.randn(m, k, generator=g), torch.randn(n, generator=g)
        for threads in (1, 2):
            assert_matches(qg.linear(x, qw, bias, num_threads=threads), reference(x, qw, bias))
        torch.testing.assert_close(qg.dequantize_unchecked(qw), Q.dequantize(qw), atol=1e-6, rtol=0)


@pytest.mark.parametrize("k, group", [(120, 24), (120, 40), (200, 200), (64, 16)])
def test_int8_groups_that_leave_8_or_fewer_weights(kernel, k, group):
    """Groups of 16 k at a time, then 8, then one by one: every remainder of the int8 path."""
    g = torch.Generator().manual_seed(k + group)
    qw, x, bias = make("int8", 9, k, group), torch.randn(3, k, generator=g), torch.randn(9, generator=g)
    out = qg.linear(x, qw, bias)
    assert_matches(out, reference(x, qw, bias))
    assert torch.equal(qg.linear(x[1:2], qw, bias)[0], out[1])


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="needs an AVX2 CPU")
def test_avx2_path_matches_on_any_avx2_cpu(kernel, monkeypatch, tmp_path):
    """The 256-bit int8 path, which an AVX-512 CPU's native build runs 16 weights at a time,
    built for Haswell (AVX2 + FMA only): it matches the reference, odd group sizes included."""
    lib = use_quant_gemv_build(monkeypatch, tmp_path, ("-march=haswell",))
    assert lib.fq_uses_avx2() == 1
    g = torch.Generator().manual_seed(9)
    for scheme, m, k, n, group in [("int8", 3, 37, 5, 37), ("int8", 5, 576, 64, 576), ("int8", 2, 576, 9, 32),
                                   ("int8", 1, 120, 7, 24), ("int4", 6, 576, 33, 32)]:
        qw, x, bias = make(scheme, n, k, group), torch.randn(m, k, generator=g), torch.randn(n, generator=g)
        for threads in (1, 2):
            out = qg.linear(x, qw, bias, num_threads=threads)
            assert_matches(out, reference(x, qw, bias))
            assert torch.equal(qg.linear(x[-1:], qw, bias, num_threads=threads)[0], out[-1])


# --- the batch-sized GEMM ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gemm(kernel):
    if not qg.gemm_available():
        if os.environ.get("CI") == "true" and " avx2" in open("/proc/cpuinfo").read():
            pytest.fail("the quantized GEMM must build on an AVX2 machine")
        pytest.skip("quantized GEMM not built here (no AVX2)")


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("m,k,n", [(9, 576, 960), (64, 1536, 576), (65, 576, 3072), (200, 64, 96),
                                   (17, 576, 193), (1, 64, 5), (130, 96, 7)])
def test_gemm_matches_the_reference(gemm, scheme, m, k, n):
    """Every tile shape: 1-4 vectors of 16 tokens (and partial ones), 1-6 weight rows, several
    m-blocks of 64 and several row blocks per thread (K = 64: 768 rows per block)."""
    g = torch.Generator().manual_seed(m * k + n)
    qw, x, bias = make(scheme, n, k, seed=n), torch.randn(m, k, generator=g), torch.randn(n, generator=g)
    for threads in (1, 2):
        assert_matches(qg.gemm_unchecked(x, qw, bias, num_threads=threads), reference(x, qw, bias))
    assert_matches(qg.gemm_unchecked(x, qw), reference(x, qw, None))


def test_gemm_strided_rows_and_groups(gemm):
    """x and y as column slices of wider matrices (row strides > K, > N), int8 per channel and in
    groups, int4 in groups of 64; a row's result does not depend on the other rows by more than
    rounding (the GEMM is not promised bit-invariant, only close)."""
    g = torch.Generator().manual_seed(3)
    wide_x = torch.randn(70, 200, generator=g)
    x = wide_x[:, :128]
    for qw in (Q.quantize_int8(torch.randn(50, 128, generator=g)), make("int8", 50, 128, 32),
               make("int4", 50, 128, 64)):
        out = torch.full((70, 80), 7.0)
        qg.gemm_unchecked(x, qw, None, out=out[:, 10:60])
        assert_matches(out[:, 10:60], reference(x, qw, None))
        assert (out[:, :10] == 7.0).all() and (out[:, 60:] == 7.0).all()  # nothing written outside
        assert_matches(qg.gemm_unchecked(x[5:6].contiguous(), qw), reference(x[5:6], qw, None))


def test_gemm_refuses_bad_sizes(gemm):
    lib = qg._kernels.get()
    qw, x = make("int4", 12, 64), torch.randn(3, 64)
    y, work = torch.empty(3, 12), torch.empty(lib.fq_gemm_workspace_floats(3, 64, 2))
    args = [x.data_ptr(), 64, qw.qweight.data_ptr(), qw.scale.data_ptr(), qw.min.data_ptr(), 32, 1, None,
            y.data_ptr(), 12, 3, 64, 12, work.data_ptr()]
    assert lib.fq_gemm(*args, work.numel(), 2) == 0
    assert lib.fq_gemm(*args, work.numel() - 1, 2) == 1          # workspace too small
    bad_group = args.copy()
    bad_group[5] = 48                                           # int4 groups must be a multiple of 32
    assert lib.fq_gemm(*bad_group, work.numel(), 2) == 1


# --- the layer: the backend's choice -------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("tokens", [1, 8, 9, 40, 1024, 1025])  # GEMV, GEMM, then dequantize + fp32 GEMM
def test_quantized_linear_paths_agree(kernel, scheme, tokens):
    qw = make(scheme, 96, 64)
    x, bias = torch.randn(tokens, 64), torch.randn(96)
    expected = reference(x, qw, bias)
    # fp32 activations: the paths then differ by rounding only (int8 ones: test_quant_gemv_int8_activations)
    kernels = Backend.select("cpu", torch.float32, "auto", BackendConfig(quant_activations="fp32"))
    config = kernels.config
    assert kernels.quant_kernel and kernels.uses_quant_kernel(x) == (tokens <= config.quant_gemv_max_tokens)
    assert kernels.uses_quant_gemm(x) == (kernels.quant_gemm_kernel and config.quant_gemv_max_tokens < tokens
                                          <= config.quant_gemm_max_tokens)
    assert_matches(quantized_linear(x, qw, bias, kernels), expected)
    assert_matches(quantized_linear(x, qw, bias, Backend.select("cpu", torch.float32, "torch")), expected)
