"""oneDNN's packed-weight linear (kernels/onednn_linear) and how the layers and backend use it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fireplace.engine.backend import Backend
from fireplace.engine.backend_config import BackendConfig
from fireplace.engine.kernels import onednn_linear
from fireplace.engine.layers.linear import FusedLinear, Linear, prepack_weights
from fireplace.engine.loader import load_model

from .helpers import make_hf_checkpoint

pytestmark = pytest.mark.skipif(not onednn_linear.available(), reason="torch has no oneDNN linear here")

SHAPES = [(1, 576, 1536), (7, 576, 192), (24, 1536, 576), (64, 576, 3072), (300, 40, 48)]  # (M, K, N)


@pytest.mark.parametrize("rows,k,n", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_fp32_equals_f_linear_to_rounding(rows, k, n, bias):
    g = torch.Generator().manual_seed(rows + k)
    x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g) / k ** 0.5
    b = torch.randn(n, generator=g) if bias else None
    with torch.inference_mode():
        got = onednn_linear.linear(x, onednn_linear.pack(w), b)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_bf16_equals_f_linear_to_bf16_rounding():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(33, 576, generator=g), torch.randn(1536, 576, generator=g) / 24
    if not onednn_linear.supports(torch.bfloat16):  # an AVX2-only CPU: oneDNN refuses bf16 ...
        with pytest.raises(RuntimeError, match="bf16"):
            onednn_linear.pack(w.bfloat16())
        # ... so a bf16 model's projections stay off it (F.linear in bf16)
        assert not Backend.select("cpu", torch.bfloat16, "auto").onednn_kernel
        return
    with torch.inference_mode():
        got = onednn_linear.linear(x.bfloat16(), onednn_linear.pack(w.bfloat16()), None).float()
    torch.testing.assert_close(got, F.linear(x, w), rtol=2e-2, atol=2e-2)


def _backend(**config) -> Backend:
    return Backend.select("cpu", torch.float32, "auto", BackendConfig(**config))


def test_the_defaults_follow_the_cpu(monkeypatch):
    """oneDNN takes the projections from 24 tokens on where it runs AVX-512 code; on AVX2 CPUs
    our small GEMM keeps them (up to 4096 tokens) and oneDNN only the lm_head."""
    for capability, onednn, small in (("AVX512", 24, 256), ("AVX2", 0, 4096)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        config = BackendConfig()
        assert (config.onednn_min_tokens, config.small_gemm_max_tokens) == (onednn, small)
        assert BackendConfig(onednn_min_tokens=5, small_gemm_max_tokens=7).onednn_min_tokens == 5  # explicit wins
    monkeypatch.undo()
    backend = _backend()
    assert backend.onednn_kernel and backend.uses_onednn(torch.zeros(1, 8), lm_head=True)
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        assert not backend.uses_onednn(torch.zeros(2048, 8)) and backend.small_gemm_max_tokens == 4096


def test_thresholds_choose_the_path():
    backend = _backend(onednn_min_tokens=24, small_gemm_max_tokens=256)  # the AVX-512 defaults
    assert backend.onednn_kernel
    least = backend.config.onednn_min_tokens
    assert not backend.uses_onednn(torch.zeros(least - 1, 8))
    assert backend.uses_onednn(torch.zeros(least, 8))
    assert backend.uses_onednn(torch.zeros(1, 8), lm_head=True)
    assert not backend.uses_onednn(torch.zeros(least, 8, dtype=torch.bfloat16))  # not the model's dtype
    if backend.small_gemm_kernel:  # below oneDNN's threshold the small GEMM takes the decode batches
        assert backend.small_gemm_max_tokens == least - 1
    off = _backend(onednn_min_tokens=0, onednn_lm_head_min_tokens=0)
    assert not off.onednn_kernel and not off.uses_onednn(torch.zeros(512, 8), lm_head=True)
    if off.small_gemm_kernel:
        assert off.small_gemm_max_tokens == off.config.small_gemm_max_tokens
    head_only = _backend(onednn_min_tokens=0)
    assert head_only.uses_onednn(torch.zeros(4, 8), lm_head=True) and not head_only.uses_onednn(torch.zeros(512, 8))
    assert "onednn-linear" in backend.describe()


def test_a_layer_repacks_after_its_weight_is_written():
    """A merge writes a FusedLinear part's weight in place (a view of the fused matrix); a loader
    may replace a Linear's tensor: the next oneDNN call must see the new weight, not the old copy."""
    backend = _backend(onednn_min_tokens=1)
    g = torch.Generator().manual_seed(3)
    fused = FusedLinear(16, [8, 4], backend=backend)
    single = Linear(16, 8, backend=backend)
    with torch.no_grad():
        fused.weight.copy_(torch.randn(12, 16, generator=g))
        single.weight.copy_(torch.randn(8, 16, generator=g))
    x = torch.randn(5, 16, generator=g)
    with torch.inference_mode():
        before = fused(x)
        torch.testing.assert_close(before[1], F.linear(x, fused.parts[1].weight))
        single(x)
    with torch.no_grad():
        fused.parts[1].weight.add_(1.0)  # in place, through the part's view
        single.weight.data = torch.randn(8, 16, generator=g)  # replaced
    with torch.inference_mode():
        after = fused(x)
        torch.testing.assert_close(after[1], F.linear(x, fused.parts[1].weight), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(after[0], before[0])
        torch.testing.assert_close(single(x), F.linear(x, single.weight), rtol=1e-5, atol=1e-5)


def test_a_loaded_model_is_prepacked_once_and_computes_the_same(tmp_path):
    make_hf_checkpoint("llama", tmp_path / "base", seed=5)
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):  # defaults: the lm_head alone
        model, _ = load_model(tmp_path / "base", dtype=torch.float32, backend=_backend())
        assert prepack_weights(model) == 1 and model.model.layers[0].mlp.gate_up.packed.key is None
    model, config = load_model(tmp_path / "base", dtype=torch.float32,
                               backend=_backend(onednn_min_tokens=24, small_gemm_max_tokens=256))
    fused = [model.model.layers[0].self_attn.qkv, model.model.layers[0].mlp.gate_up]
    standalone = [model.model.layers[0].self_attn.o_proj, model.lm_head]
    assert all(layer.packed.key is None for layer in fused + standalone)
    # per layer: qkv, gate_up, o_proj, down_proj; plus the lm_head
    assert prepack_weights(model) == 4 * config.num_layers + 1
    keys = [layer.packed.key for layer in fused + standalone]
    assert all(key is not None for key in keys)
    assert model.model.layers[0].self_attn.q_proj.packed.key is None  # parts run through their FusedLinear
    x = torch.randn(30, config.hidden_size)
    with torch.inference_mode():
        got = fused[1](x)
    assert [layer.packed.key for layer in fused + standalone] == keys  # not packed again
    torch.testing.assert_close(got[0], F.linear(x, model.model.layers[0].mlp.gate_proj.weight), rtol=1e-5, atol=1e-5)
