"""The decode fast path (models/fast_decode.py) against the module path it replaces.

Same C kernels, same inputs, same order: the hidden states, logits and the KV it writes must be
the same bits, for fp32, int8, int4 and GGUF-style Q8_0 projections, with and without q/k/v
biases (qwen2), at batch 1 and at a few tokens, over several steps. And it must step aside
where it does not reproduce the module path: an adapter in the batch, a prefill, q/k norms.
"""
from __future__ import annotations

import pytest
import torch

from fireplace.engine.backend import Backend
from fireplace.engine.kernels import elementwise, paged_decode, quant_gemv, small_gemm
from fireplace.engine.kv_cache import KVCacheSpec
from fireplace.engine.loader import load_model
from fireplace.engine.lora import AdapterManager, LoRABatch
from fireplace.engine.models.fast_decode import FastDecode
from fireplace.engine.quantization import QuantizedWeight
from fireplace.engine.quantize_model import quantize_model

from .helpers import PagedSequences, Sequence, make_hf_checkpoint, require_kernel
from .lora_helpers import make_peft_adapter

BLOCK_SIZE = 4


def _kernel_backend() -> Backend:
    for module, what in ((elementwise, "elementwise kernels"), (small_gemm, "small-batch GEMM"),
                         (paged_decode, "paged decode kernel"), (quant_gemv, "quantized GEMV")):
        require_kernel(module, what)
    backend = Backend.select("cpu", torch.float32, "cpu-kernels")
    if not backend.small_gemm_kernel:
        pytest.skip("the small GEMM runs only with AVX2")
    return backend


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast_decode")
    make_hf_checkpoint("llama", root / "llama", seed=3, tie_word_embeddings=True, intermediate_size=128)
    make_hf_checkpoint("qwen2", root / "qwen2", seed=4, intermediate_size=128)  # q/k/v biases
    make_hf_checkpoint("qwen3", root / "qwen3", seed=5, intermediate_size=128, head_dim=16)  # q/k norms
    hf = make_hf_checkpoint("llama", root / "lora-base", seed=6, intermediate_size=128)
    make_peft_adapter(hf, root / "adapter", r=4, target_modules="all-linear", seed=1)
    return root


def _model(path, backend, precision: str, *, fast: bool):
    model, _ = load_model(path, dtype=torch.float32, backend=backend)
    if precision in ("int8", "int4"):
        quantize_model(model, precision, 32)
    elif precision == "q8_0":  # int8 with a scale per 32 weights, as GGUF's Q8_0 blocks load
        for layer in model.model.layers:
            for proj in (layer.self_attn.qkv, layer.self_attn.o_proj, layer.mlp.gate_up, layer.mlp.down_proj):
                proj.quantized = _q8_0(proj.weight)
        model.reset_fast_decode()
    model.model.use_fast_decode = fast
    return model


def _q8_0(weight: torch.Tensor) -> QuantizedWeight:
    groups = weight.reshape(weight.shape[0], -1, 32)
    scale = groups.abs().amax(-1).clamp_min(1e-8) / 127  # [N, K / 32]
    q = torch.round(groups / scale[..., None]).clamp(-127, 127).to(torch.int8).reshape(weight.shape)
    return QuantizedWeight("int8", weight.shape[0], weight.shape[1], 32, q.contiguous(), scale.contiguous())


def _run(model, prompts: list[list[int]], steps: int, *, lora=None, kv_dtype=torch.float32):
    """Prefill each prompt alone, then `steps` decode steps of all of them together (the same
    fixed tokens every time). Returns the logits of every decode step and the KV pools."""
    paged = PagedSequences(64, BLOCK_SIZE, seed=1, backend=model.backend)
    caches = KVCacheSpec.for_model(model.config, BLOCK_SIZE, kv_dtype).allocate(64)
    seqs = [Sequence(list(p)) for p in prompts]
    out = []
    with torch.inference_mode():
        for seq in seqs:
            model(paged.step([(seq, len(seq.token_ids))]), caches)
        for i in range(steps):
            for j, seq in enumerate(seqs):
                seq.token_ids.append((17 * i + 5 * j) % 128)
            ctx = paged.step([(seq, 1) for seq in seqs])
            if lora is not None:
                ctx.lora = lora(ctx)
            out.append(model.compute_logits(model(ctx, caches)[ctx.logits_indices]))
    return out, caches


PROMPTS = {1: [[3, 9, 27, 81, 115, 2, 6]], 3: [[3, 9, 27, 81, 115, 2, 6], [1, 2, 3], [100, 50, 25, 12, 6, 3, 1, 0, 4]]}


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4", "q8_0"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_path_is_bitwise_the_module_path(checkpoints, precision, arch, batch):
    backend = _kernel_backend()
    fast, slow = (_model(checkpoints / arch, backend, precision, fast=f) for f in (True, False))
    got, got_kv = _run(fast, PROMPTS[batch], steps=6)
    want, want_kv = _run(slow, PROMPTS[batch], steps=6)
    assert isinstance(fast.model._fast_decode, FastDecode)  # it was built, and served the steps
    assert slow.model._fast_decode is None
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    for (k1, v1), (k2, v2) in zip(got_kv, want_kv):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


@pytest.mark.parametrize("precision", ["fp32", "int4"])
@pytest.mark.parametrize("batch", [1, 3])
def test_bf16_kv_pools_are_bitwise_the_module_path(checkpoints, monkeypatch, precision, batch):
    """A bf16 model's KV cache (CPU bf16: fp32 activations, bf16 pools): the fast path rounds
    k/v into the pools as write_kv does and attends over them as the module path does."""
    backend = _kernel_backend()
    fast, slow = (_model(checkpoints / "llama", backend, precision, fast=f) for f in (True, False))
    calls = []
    original = FastDecode.forward
    monkeypatch.setattr(FastDecode, "forward", lambda self, *a: calls.append(a[0].shape[0]) or original(self, *a))
    got, got_kv = _run(fast, PROMPTS[batch], steps=6, kv_dtype=torch.bfloat16)
    assert calls == [batch] * 6  # every decode step took the fast path
    want, want_kv = _run(slow, PROMPTS[batch], steps=6, kv_dtype=torch.bfloat16)
    assert got_kv[0][0].dtype is torch.bfloat16
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    for (k1, v1), (k2, v2) in zip(got_kv, want_kv):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_it_serves_decode_steps_only(checkpoints, monkeypatch):
    backend = _kernel_backend()
    model = _model(checkpoints / "llama", backend, "int8", fast=True)
    calls = []
    original = FastDecode.forward
    monkeypatch.setattr(FastDecode, "forward", lambda self, *a: calls.append(a[0].shape[0]) or original(self, *a))
    _run(model, PROMPTS[3], steps=2)
    assert calls == [3, 3]  # the two decode steps; the three prefills ran the modules
    too_many = [[1, 2]] * (backend.config.quant_gemv_max_tokens + 1)  # beyond the GEMV's batch sizes
    calls.clear()
    _run(model, too_many, steps=1)
    assert calls == []


def test_steps_aside_for_q_k_norms(checkpoints):
    backend = _kernel_backend()
    model = _model(checkpoints / "qwen3", backend, "int8", fast=True)
    _run(model, PROMPTS[1], steps=1)
    assert model.model._fast_decode is False


def test_an_adapter_in_the_batch_takes_the_module_path(checkpoints):
    """With ctx.lora set the deltas must be added: the fast path must not serve that step, and
    a base-only decode step (lora None) on the same model still matches the module path."""
    backend = _kernel_backend()
    results = {}
    for fast in (True, False):
        model, config = load_model(checkpoints / "lora-base", dtype=torch.float32, backend=backend)
        model.model.use_fast_decode = fast
        manager = AdapterManager(model, config, max_loras=1, max_lora_rank=4, max_cpu_loras=1)
        manager.load_adapter("adapter", checkpoints / "adapter")
        slot = manager.acquire("adapter")
        with_adapter, _ = _run(model, PROMPTS[1], steps=2,
                               lora=lambda ctx: LoRABatch.for_sequences([slot], ctx.query_lens, backend=backend))
        base, _ = _run(model, PROMPTS[1], steps=2)
        manager.release(slot)
        results[fast] = (with_adapter, base)
    for a, b in zip(results[True][0] + results[True][1], results[False][0] + results[False][1]):
        assert torch.equal(a, b)
    assert (results[True][0][0] - results[True][1][0]).abs().max() > 1e-3  # the adapter did act
