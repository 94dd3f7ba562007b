"""The bundled SmolLM2 GGUF converts to a safetensors dir that transformers and our engine agree on.

Converts once per machine into the shared model cache ($FIREPLACE_MODEL_CACHE or
~/.cache/fireplace/models); later runs reuse it.
"""
from __future__ import annotations

import pytest
import torch

from fireplace.catalog import ensure_smollm2
from fireplace.engine.kv_cache import KVCacheSpec
from fireplace.engine.loader import load_model

from .helpers import PagedSequences, Sequence

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_dir():
    return ensure_smollm2()


def test_conversion_is_idempotent(smollm2_dir):
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_smollm2() == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before


def test_converted_dir_matches_transformers(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    token_ids = tokenizer(prompt)["input_ids"]

    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(torch.tensor([token_ids])).logits[0, -1]
    del hf

    ours, config = load_model(smollm2_dir, dtype=torch.float32)
    assert (config.architecture, config.num_layers, config.tie_word_embeddings) == ("llama", 30, True)
    block_size = 16
    caches = KVCacheSpec.for_model(config, block_size, torch.float32).allocate(16)
    ctx = PagedSequences(16, block_size).step([(Sequence(token_ids), len(token_ids))])
    logits = ours.compute_logits(ours(ctx, caches)[ctx.logits_indices])[0]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert tokenizer.decode(int(logits.argmax())).strip() == "The"  # "The capital of France is Paris."
