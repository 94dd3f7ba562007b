"""The quantized GEMV with int8 activations (quant_gemv.c's fq_linear_*_q8; by default for 4-bit
weights, BackendConfig.quant_activations): each token's x rounded to int8 per block of 32, then
exact integer dot products per block, one fp32 FMA per block.

The reference computes the same sums in fp64 from quant_gemv.quantize_activations (the torch
statement of that rounding), so the tolerance is fp32 accumulation only; a second bound says how
far the rounding itself moves a result from the unrounded product. Without a C compiler the
tests skip, except in CI (CI=true), where they fail.
"""
from __future__ import annotations

import math
from pathlib import Path

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


def reference_q8(x: torch.Tensor, qw: Q.QuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """sum_b scale[n, g(b)] * xs[m, b] * (q . xq)_b (+ sum_g min[n, g] * sum_{k in g} x[m, k]) in fp64."""
    xq, xs = qg.quantize_activations(x.contiguous())
    n, k, g = qw.out_features, qw.in_features, qw.group_size
    if qw.scheme == "int8":
        values = qw.qweight.double()
    else:
        values = Q.dequantize(Q.QuantizedWeight("int4", n, k, g, qw.qweight, torch.ones_like(qw.scale),
                                                torch.zeros_like(qw.scale))).double()  # the nibbles
    blocks = k // 32
    dots = torch.einsum("mbi,nbi->mnb", xq.double().view(-1, blocks, 32), values.view(n, blocks, 32))
    block_scale = qw.scale.double().repeat_interleave(g // 32, dim=1)  # [n, blocks]
    y = (dots * xs.double().unsqueeze(1) * block_scale.unsqueeze(0)).sum(dim=2)
    if qw.scheme == "int4":
        group_sums = x.double().view(x.shape[0], k // g, g).sum(dim=2)  # [m, groups]
        y = y + group_sums @ qw.min.double().T
    return y if bias is None else y + bias.double()


def unrounded(x: torch.Tensor, qw: Q.QuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    y = x.double() @ Q.dequantize(qw).double().T
    return y if bias is None else y + bias.double()


def make(scheme: str, n: int, k: int, group: int = 32, seed: int = 0) -> Q.QuantizedWeight:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    return Q.quantize(w, scheme, group)


def q8(x, qw, bias=None, **kwargs):
    return qg.linear(x, qw, bias, activations="int8", **kwargs)


# --- the rounding ----------------------------------------------------------------------------------

def test_quantize_activations_rounds_half_to_even_per_block():
    x = torch.zeros(2, 64)
    x[0, :4] = torch.tensor([127.0, -63.5, 0.5, 1.5])  # amax 127: scale 1, ties go to even
    x[0, 32:34] = torch.tensor([2.0, -1.0])            # second block: its own scale, 2 / 127
    xq, xs = qg.quantize_activations(x)
    assert xq.dtype == torch.int8 and tuple(xs.shape) == (2, 2)
    assert xq[0, :4].tolist() == [127, -64, 0, 2] and xs[0, 0].item() == 1.0
    assert xq[0, 32:34].tolist() == [127, -64] and xs[0, 1].item() == pytest.approx(2 / 127)
    assert (xq[1] == 0).all() and (xs[1] == 0).all()  # an all-zero block: scale 0, no division


# --- the kernel -------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme,group", [("int8", 32), ("int4", 32), ("int4", 64), ("int4", 128)])
@pytest.mark.parametrize("m,k,n", [(1, 1536, 576), (2, 768, 3072), (3, 128, 97), (8, 256, 13), (1, 384, 960)])
def test_matches_the_int8_activation_reference(kernel, scheme, group, m, k, n):
    g = torch.Generator().manual_seed(m + k + n + group)
    qw, x, bias = make(scheme, n, k, group, seed=n), torch.randn(m, k, generator=g), torch.randn(n, generator=g)
    out = q8(x, qw, bias)
    assert_matches(out, reference_q8(x, qw, bias))
    assert_matches(q8(x, qw), reference_q8(x, qw, None))
    # the activations' rounding moves a result by a small fraction of its scale, no more ...
    exact = unrounded(x, qw, bias)
    error = (out.double() - exact).abs().max().item() / exact.abs().max().item()
    assert 0 < error < 0.02  # ... and it is really there (the fp32 path would be ~1e-7)


@pytest.mark.parametrize("m,k,n,group", [(1, 160, 5, 32), (2, 224, 19, 32), (3, 192, 8, 64), (1, 576, 40, 64),
                                         (2, 576, 11, 32)])
def test_block_counts_that_do_not_fill_four_block_loads(kernel, m, k, n, group):
    """K / 32 blocks of 5, 7, 6 and 18: what an AVX-512 CPU's four-blocks-a-load int4 tile
    leaves (a pair, an odd block, both) takes the 256-bit steps into the same sums."""
    g = torch.Generator().manual_seed(k + n)
    qw, x, bias = make("int4", n, k, group, seed=n), torch.randn(m, k, generator=g), torch.randn(n, generator=g)
    out = q8(x, qw, bias)
    assert_matches(out, reference_q8(x, qw, bias))
    assert torch.equal(q8(x[:1], qw, bias)[0], out[0])


def test_per_channel_int8_like_the_lm_head(kernel):
    g = torch.Generator().manual_seed(2)
    qw, x = Q.quantize_int8(torch.randn(300, 576, generator=g)), torch.randn(2, 576, generator=g)
    assert qw.group_size == 576
    assert_matches(q8(x, qw), reference_q8(x, qw, None))


def test_gguf_q8_0_values_including_minus_128(kernel):
    """GGUF Q8_0 blocks may hold -128, whose magnitude 128 still fits the unsigned operand."""
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-128, 128, (7, 96), dtype=torch.int8, generator=g)
    q[:, 0] = -128
    qw = Q.QuantizedWeight("int8", 7, 96, 32, q, torch.rand(7, 3, generator=g) + 0.01)
    x = torch.randn(3, 96, generator=g)
    x[:, 0] = -x[:, 1:32].abs().amax(dim=1) * 2  # xq = -127 against q = -128: the largest product
    assert_matches(q8(x, qw), reference_q8(x, qw, None))


@pytest.mark.parametrize("scheme,k,group", [("int8", 37, 37), ("int8", 64, 16), ("int4", 96, 32), ("int4", 96, 96),
                                            ("int4", 160, 32)])
def test_sizes_the_scheme_cannot_take_run_the_fp32_path(kernel, scheme, k, group):
    """K or G not a multiple of 32: the fp32-activation result, bit for bit (int4 always takes the
    int8 path: its groups are multiples of 32; here with an odd number of blocks, 3 and 5, which
    the kernel's two-blocks-at-a-time loop ends with one alone, in a group of 3 blocks too)."""
    g = torch.Generator().manual_seed(k)
    w = torch.randn(5, k, generator=g)
    qw = Q.quantize_int8(w, group) if scheme == "int8" else Q.quantize(w, "int4", group)
    x = torch.randn(3, k, generator=g)
    if k % 32 or group % 32:
        assert torch.equal(q8(x, qw), qg.linear(x, qw))
    else:
        assert_matches(q8(x, qw), reference_q8(x, qw, None))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_a_token_is_the_same_bits_in_any_batch_tile_or_thread_split(kernel, scheme):
    g = torch.Generator().manual_seed(9)
    qw, x, bias = make(scheme, 23, 192), torch.randn(7, 192, generator=g), torch.randn(23, generator=g)
    full = q8(x, qw, bias)
    for m in range(7):
        assert torch.equal(q8(x[m:m + 1], qw, bias), full[m:m + 1])
    assert torch.equal(q8(x[1:4], qw, bias), full[1:4])
    for start, stop in ((1, 23), (3, 10), (22, 23)):
        assert torch.equal(q8(x, qw.rows(start, stop), bias[start:stop]), full[:, start:stop])
    big = make(scheme, 3072, 576)
    xs = torch.randn(4, 576, generator=g)
    results = [q8(xs, big, num_threads=t) for t in (1, 2, 3)]
    assert all(torch.equal(r, results[0]) for r in results[1:])


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_nan_and_inf_reach_the_output(kernel, scheme):
    """A non-finite activation must not be rounded away (the fp32 path would propagate it)."""
    qw = make(scheme, 6, 64)
    x = torch.randn(3, 64)
    x[0, 5], x[1, 40] = math.nan, math.inf
    out = q8(x, qw)
    assert out[0].isnan().all() and not out[1].isfinite().any() and out[2].isfinite().all()


def test_strided_rows_and_out(kernel):
    g = torch.Generator().manual_seed(5)
    qw = make("int4", 21, 64)
    x = torch.randn(6, 73, generator=g)[:, 3:67]  # row stride 73
    canvas = torch.full((6, 30), 7.0)
    out = canvas[:, 4:25]
    assert q8(x, qw, out=out) is out
    assert_matches(out, reference_q8(x, qw, None))
    assert (canvas[:, :4] == 7.0).all() and (canvas[:, 25:] == 7.0).all()


def test_bad_activations_argument(kernel):
    with pytest.raises(ValueError, match="activations must be one of"):
        qg.linear(torch.randn(1, 64), make("int8", 3, 64), activations="int4")
    with pytest.raises(ValueError, match="quant_activations must be one of"):
        BackendConfig(quant_activations="bf16")


def test_portable_path_matches(kernel, monkeypatch, tmp_path):
    """The plain C fallback (no AVX2) computes the same integer sums and scales."""
    lib = use_quant_gemv_build(monkeypatch, tmp_path)
    assert lib.fq_uses_avx2() == 0
    g = torch.Generator().manual_seed(6)
    for scheme, m, k, n, group in [("int8", 3, 576, 5, 32), ("int4", 2, 96, 7, 32), ("int4", 5, 256, 33, 128)]:
        qw, x, bias = make(scheme, n, k, group), torch.randn(m, k, generator=g), torch.randn(n, generator=g)
        for threads in (1, 2):
            assert_matches(q8(x, qw, bias, num_threads=threads), reference_q8(x, qw, bias))


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="needs an AVX2 CPU")
def test_avx2_path_matches_on_any_avx2_cpu(kernel, monkeypatch, tmp_path):
    """The 256-bit path (int4 two blocks a load, tile_q4_pairs), which an AVX-512 VNNI CPU's
    native build replaces with four blocks a load: built for Haswell (AVX2 + FMA only), and,
    where the CPU has them, with 256-bit VNNI dot products; each matches the reference, and a
    token's outputs are the same bits at any M."""
    variants = [("-march=haswell",)]
    if "avx_vnni" in Path("/proc/cpuinfo").read_text():
        variants.append(("-march=haswell", "-mavxvnni"))
    g = torch.Generator().manual_seed(8)
    for flags in variants:
        lib = use_quant_gemv_build(monkeypatch, tmp_path, flags)
        assert lib.fq_uses_avx2() == 1
        for scheme, m, k, n, group in [("int4", 3, 576, 9, 32), ("int4", 2, 96, 7, 32), ("int4", 5, 256, 33, 128),
                                        ("int4", 1, 1536, 6, 64), ("int8", 3, 576, 5, 32)]:
            qw, x, bias = make(scheme, n, k, group), torch.randn(m, k, generator=g), torch.randn(n, generator=g)
            for threads in (1, 2):
                out = q8(x, qw, bias, num_threads=threads)
                assert_matches(out, reference_q8(x, qw, bias))
                assert torch.equal(q8(x[-1:], qw, bias, num_threads=threads)[0], out[-1])


# --- the layer: the backend's config decides -----------------------------------------------------------

@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_linear_reads_activations_as_configured(kernel, scheme):
    """"auto" (the default): int8 activations for 4-bit weights, fp32 for int8 weights."""
    qw, x, bias = make(scheme, 96, 64), torch.randn(3, 64), torch.randn(96)
    default = Backend.select("cpu", torch.float32, "auto")
    assert default.config.quant_activations == "auto" and "quant-gemv (auto activations)" in default.describe()
    assert default.config.activations_for(scheme) == ("int8" if scheme == "int4" else "fp32")
    rounded = Backend.select("cpu", torch.float32, "auto", BackendConfig(quant_activations="int8"))
    exact = Backend.select("cpu", torch.float32, "auto", BackendConfig(quant_activations="fp32"))
    assert_matches(quantized_linear(x, qw, bias, rounded), reference_q8(x, qw, bias))
    assert torch.equal(quantized_linear(x, qw, bias, exact), qg.linear(x, qw, bias))
    want = rounded if scheme == "int4" else exact
    assert torch.equal(quantized_linear(x, qw, bias, default), quantized_linear(x, qw, bias, want))
    # above the GEMV's batch sizes the weight is dequantized and x read unrounded, either way
    many = torch.randn(default.config.quant_gemv_max_tokens + 1, 64)
    torch.testing.assert_close(quantized_linear(many, qw, bias, rounded), quantized_linear(many, qw, bias, exact))
