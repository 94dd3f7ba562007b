"""The backend seam: chosen once per engine from device, dtype, kernel availability and config;
every layer asks the Backend it was built with; the model runner builds the attention metadata."""
from __future__ import annotations

import logging

import pytest
import torch

from fireplace.catalog.smollm2 import ensure_smollm2
from fireplace.engine.backend import Backend
from fireplace.engine.backend_config import BackendConfig
from fireplace.engine.engine_config import EngineConfig
from fireplace.engine.kernels import elementwise, lora_delta, paged_decode, small_gemm
from fireplace.engine.layers.linear import FusedLinear, Linear
from fireplace.engine.layers.norm import RMSNorm
from fireplace.engine.llm_engine import LLMEngine
from fireplace.engine.loader import load_model
from fireplace.engine.sampling_params import SamplingParams

from .helpers import PagedSequences, Sequence, make_hf_checkpoint, require_kernel


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("backend")
    make_hf_checkpoint("llama", path, seed=5)
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(ensure_smollm2()))


def _all_kernels():
    for module, what in ((elementwise, "elementwise kernels"), (small_gemm, "small-batch GEMM"),
                         (paged_decode, "paged decode kernel"), (lora_delta, "LoRA delta kernel")):
        require_kernel(module, what)


def test_auto_takes_the_kernels_on_cpu_fp32():
    _all_kernels()
    backend = Backend.select("cpu", torch.float32)
    assert backend.kind == "cpu-kernels"
    assert backend.elementwise_kernels and backend.paged_decode_kernel and backend.lora_kernel
    assert backend.small_gemm_kernel == small_gemm.uses_avx2()
    assert "cpu-kernels (" in backend.describe()


def test_bf16_and_the_env_switch_fall_back_to_torch_with_one_line(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    backend = Backend.select("cpu", torch.bfloat16, "auto", BackendConfig(onednn_min_tokens=0))
    assert backend.kind == "torch" and not backend.elementwise_kernels and "float32 only" in backend.reason
    assert backend.dtype is torch.bfloat16 and backend.matmul_dtype is None
    monkeypatch.setenv("FIREPLACE_CPU_KERNELS", "0")
    caplog.clear()
    backend = Backend.select("cpu", torch.float32)
    assert backend.kind == "torch" and "FIREPLACE_CPU_KERNELS" in backend.reason
    assert len([r for r in caplog.records if r.name.startswith("fireplace")]) == 1
    with pytest.raises(ValueError, match="FIREPLACE_CPU_KERNELS"):
        Backend.select("cpu", torch.float32, "cpu-kernels")


def test_bf16_on_a_cpu_with_bf16_instructions_is_fp32_with_bf16_projections():
    from fireplace.engine.kernels import onednn_linear

    if not (onednn_linear.available() and onednn_linear.bf16_is_native()):
        pytest.skip("needs oneDNN and a CPU with AVX512-BF16 / AMX")
    backend = Backend.select("cpu", torch.bfloat16)
    assert backend.kind == "cpu-kernels" and backend.dtype is torch.float32
    assert backend.matmul_dtype is torch.bfloat16 and "onednn-linear in bfloat16" in backend.describe()
    assert backend.kv_dtype is torch.bfloat16  # the KV cache in the model's dtype
    assert Backend.select("cpu", torch.float32).kv_dtype is torch.float32
    assert Backend.select("cpu", torch.bfloat16, "torch").dtype is torch.bfloat16  # whole model in bf16
    # a projection computes in bf16: its result equals the bf16 product, not the fp32 one
    layer = Linear(64, 32, backend=backend)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(32, 64, generator=g))
    x = torch.randn(backend.config.onednn_min_tokens, 64, generator=g)
    with torch.inference_mode():
        got = layer(x)
    assert got.dtype is torch.float32
    expected = torch.nn.functional.linear(x.bfloat16(), layer.weight.bfloat16()).float()
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
    assert (got - torch.nn.functional.linear(x, layer.weight)).abs().max() > 1e-4


def test_a_missing_compiler_is_one_warning_and_the_torch_path(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    caplog.set_level(logging.DEBUG)
    backend = Backend.select("cpu", torch.float32)
    assert backend.kind == "torch"
    ours = [r for r in caplog.records if r.name.startswith("fireplace")]
    assert len(ours) == 1 and ours[0].levelno == logging.WARNING
    assert "no C compiler" in ours[0].getMessage() and "no-such-cc" in ours[0].getMessage()
    with pytest.raises(ValueError, match="no C compiler"):
        Backend.select("cpu", torch.float32, "cpu-kernels")


def test_bad_choices_are_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        Backend.select("cpu", torch.float32, "tpu")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Backend.select("cpu", torch.float32, "cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        EngineConfig(model="m", backend="fast").validate()
    with pytest.raises(ValueError, match="small_gemm_max_tokens must be >= 0"):
        BackendConfig(small_gemm_max_tokens=-1)
    with pytest.raises(ValueError, match="must be an integer"):
        BackendConfig(decode_buckets=2.5)


def test_layers_ask_their_own_backend_and_its_thresholds():
    """Two backends side by side in one process; thresholds come from each one's config."""
    _all_kernels()
    kernels = Backend.select("cpu", torch.float32, "cpu-kernels", BackendConfig(small_gemm_max_tokens=8))
    plain = Backend.select("cpu", torch.float32, "torch", BackendConfig(fused_matmul_min_tokens=4))
    x = torch.randn(6, 16)
    norm_k, norm_t = RMSNorm(16, backend=kernels), RMSNorm(16, backend=plain)
    assert kernels.uses_elementwise_kernels(x) and not plain.uses_elementwise_kernels(x)
    torch.testing.assert_close(norm_k(x), norm_t(x), rtol=2e-6, atol=1e-6)
    weight = torch.randn(10, 16)
    assert kernels.uses_small_gemm(x, weight) == kernels.small_gemm_kernel
    assert not kernels.uses_small_gemm(torch.randn(9, 16), weight)  # above its small_gemm_max_tokens
    assert not plain.uses_small_gemm(x, weight)
    assert plain.fuses_matmul(4) and not plain.fuses_matmul(3)
    assert not kernels.fuses_matmul(383) and kernels.fuses_matmul(384)  # the default threshold
    fused = FusedLinear(16, [10, 6], backend=plain)
    assert all(part.backend is plain for part in fused.parts)
    assert Linear(16, 4, backend=kernels).backend is kernels


def test_the_engine_builds_one_backend_and_passes_it_down(model_dir, tokenizer, monkeypatch):
    engine = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=32, block_size=4, backend="torch"),
                       tokenizer=tokenizer)
    assert engine.backend.kind == "torch" and engine.runner.backend is engine.backend
    assert all(getattr(m, "backend", engine.backend) is engine.backend for m in engine.model.modules())
    greedy = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    torch_tokens = engine.generate([[3, 9, 27, 81, 5]], greedy)[0].outputs[0].token_ids

    monkeypatch.setenv("FIREPLACE_CPU_KERNELS", "0")  # auto then means torch
    assert LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=32, block_size=4),
                     tokenizer=tokenizer).backend.kind == "torch"
    monkeypatch.delenv("FIREPLACE_CPU_KERNELS")
    _all_kernels()
    engine = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=32, block_size=4), tokenizer=tokenizer)
    assert engine.backend.kind == "cpu-kernels"
    assert engine.generate([[3, 9, 27, 81, 5]], greedy)[0].outputs[0].token_ids == torch_tokens


def test_attention_metadata_is_built_before_the_forward(model_dir):
    model, config = load_model(model_dir, dtype=torch.float32)
    from fireplace.engine.kv_cache import KVCacheSpec
    caches = KVCacheSpec.for_model(config, 4, torch.float32).allocate(16)
    ctx = PagedSequences(16, 4, backend=model.backend).step([(Sequence([1, 2, 3, 4, 5]), 5)])
    assert ctx.attention is not None and ctx.attention.prefills[0].query_len == 5
    ctx.attention = None
    with pytest.raises(ValueError, match="ForwardContext.attention is not set"), torch.inference_mode():
        model(ctx, caches)
