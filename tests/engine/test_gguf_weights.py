"""The bundled SmolLM2 GGUF's Q4_1 / Q8_0 blocks, read as they are, dequantize to exactly the
weights transformers produces from the same file (our converted checkpoint is transformers'
GGUF dequantization, saved: see fireplace.catalog.smollm2), and an engine serving the blocks
answers like the engine on those fp32 weights."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from fireplace.catalog.smollm2 import ensure_smollm2, find_smollm2_gguf
from fireplace.engine.backend import Backend
from fireplace.engine.backend_config import BackendConfig
from fireplace.engine.gguf_weights import apply_gguf_weights, read_gguf_weights
from fireplace.engine.loader import load_model
from fireplace.engine.quantization import QuantizedWeight, dequantize


@pytest.fixture(scope="module")
def gguf_path():
    return find_smollm2_gguf()


@pytest.fixture(scope="module")
def blocks(gguf_path):
    return read_gguf_weights(gguf_path)


def test_blocks_dequantize_to_transformers_weights(blocks):
    path = ensure_smollm2() / "model.safetensors"
    kinds = {"int4": 0, "int8": 0}
    with safe_open(str(path), framework="pt") as f:
        assert set(blocks) == set(f.keys())
        for name, value in blocks.items():
            if isinstance(value, QuantizedWeight):
                kinds[value.scheme] += 1
                assert value.group_size == 32
                value = dequantize(value)
            assert torch.equal(value, f.get_tensor(name).float()), name  # q/k rows too: un-permuted
    assert kinds == {"int4": 30 * 7, "int8": 1}  # every projection Q4_1, the tied embedding Q8_0


def test_model_serving_the_blocks_matches_the_fp32_weights(gguf_path):
    from fireplace.engine.kv_cache import KVCacheSpec

    from .helpers import PagedSequences, Sequence

    fp32, config = load_model(ensure_smollm2())
    # fp32 activations: the blocks are the fp32 weights' source, so only rounding may differ
    served, _ = load_model(ensure_smollm2(), backend=Backend.select(
        "cpu", torch.float32, "auto", BackendConfig(quant_activations="fp32")))
    summary = apply_gguf_weights(served, gguf_path)
    assert summary.num_matrices == 30 * 4 + 1 and summary.quantized_bytes < summary.fp32_bytes / 4.5  # 6 bits a weight (fp32 d, m)
    prompt = [1, 504, 3458, 282, 4649, 314]
    logits = []
    for model in (fp32, served):
        caches = KVCacheSpec.for_model(config, 16, torch.float32).allocate(4)
        paged = PagedSequences(4, 16, backend=model.backend)
        seq = Sequence(prompt[:-1])
        with torch.inference_mode():
            model(paged.step([(seq, len(seq.token_ids))]), caches)
            seq.token_ids.append(prompt[-1])
            ctx = paged.step([(seq, 1)])  # decode: the quantized GEMV reading the blocks
            logits.append(model.compute_logits(model(ctx, caches)[ctx.logits_indices])[0])
    torch.testing.assert_close(logits[1], logits[0], atol=2e-3, rtol=0)
