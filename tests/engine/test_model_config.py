"""ModelConfig reads both transformers 4.x and 5.x config layouts; refusals say what is wrong."""
from __future__ import annotations

import pytest
import torch

from fireplace.engine.kv_cache import KVCacheSpec
from fireplace.engine.layers.rotary import rope_inv_freq
from fireplace.engine.loader import CheckpointError, load_model
from fireplace.engine.model_config import ModelConfig, RopeScaling, UnsupportedModelError

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)


def test_legacy_llama31_layout():
    # transformers 4.x: rope_theta at top level, rope_scaling with "rope_type"
    d = dict(BASE, model_type="llama", rope_theta=500000.0, torch_dtype="bfloat16", eos_token_id=[7, 9],
             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    c = ModelConfig.from_hf_dict(d)
    assert (c.rope_theta, c.rope_scaling.rope_type, c.rope_scaling.factor) == (500000.0, "llama3", 8.0)
    assert c.rope_scaling.original_max_position_embeddings == 8192
    assert (c.torch_dtype, c.eos_token_ids, c.head_dim) == (torch.bfloat16, (7, 9), 16)


def test_legacy_type_key_and_v5_rope_parameters():
    linear = ModelConfig.from_hf_dict(dict(BASE, model_type="llama", rope_scaling={"type": "linear", "factor": 2.0}))
    assert linear.rope_scaling == RopeScaling(rope_type="linear", factor=2.0, original_max_position_embeddings=2048)
    v5 = ModelConfig.from_hf_dict(dict(BASE, model_type="qwen3", head_dim=32, dtype="float32",
                                       rope_parameters={"rope_theta": 1e6, "rope_type": "default"}))
    assert (v5.rope_theta, v5.rope_scaling.rope_type, v5.head_dim, v5.qk_norm) == (1e6, "default", 32, True)


def test_variants_biases_and_windows():
    qwen2 = ModelConfig.from_hf_dict(dict(BASE, model_type="qwen2", sliding_window=4096, use_sliding_window=False))
    assert (qwen2.qkv_bias, qwen2.o_bias, qwen2.sliding_window) == (True, False, None)
    mistral = ModelConfig.from_hf_dict(dict(BASE, model_type="mistral", sliding_window=1024,
                                            max_position_embeddings=32768))
    assert (mistral.qkv_bias, mistral.max_model_len) == (False, 1024)
    by_class = ModelConfig.from_hf_dict(dict(BASE, architectures=["LlamaForCausalLM"], attention_bias=True))
    assert (by_class.architecture, by_class.qkv_bias, by_class.o_bias) == ("llama", True, True)


@pytest.mark.parametrize("change, message", [
    (dict(model_type="gpt2", architectures=["GPT2LMHeadModel"]), "architecture 'gpt2' is not supported"),
    (dict(model_type="llama", rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope type 'yarn'"),
    (dict(model_type="llama", hidden_act="gelu"), "hidden_act"),
])
def test_unsupported_is_refused(change, message):
    with pytest.raises(UnsupportedModelError, match=message):
        ModelConfig.from_hf_dict(dict(BASE, **change))


@pytest.mark.parametrize("params", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "default"},
])
def test_inv_freq_matches_transformers(params):
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = AutoConfig.for_model("llama", **BASE, rope_parameters={"rope_theta": 50000.0, **params})
    ours = ModelConfig.from_hf_dict(hf_config.to_dict())
    got = rope_inv_freq(ours.head_dim, ours.rope_theta, ours.rope_scaling)
    if params["rope_type"] == "default":
        expected = 1.0 / (50000.0 ** (torch.arange(0, 16, 2).float() / 16))
    else:
        expected, _ = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf_config, "cpu")
    torch.testing.assert_close(got, expected)


def test_kv_cache_budget():
    spec = KVCacheSpec(num_layers=2, num_kv_heads=2, head_dim=16, block_size=4, dtype=torch.float16)
    assert spec.bytes_per_block == 2 * 2 * 4 * 2 * 16 * 2
    assert spec.num_blocks_for_budget(10 * spec.bytes_per_block + 1) == 10
    k, v = spec.allocate(10)[0]
    assert k.shape == v.shape == (10, 4, 2, 16) and k.dtype == torch.float16


def test_pickle_only_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "vocab_size": 8, "hidden_size": 8, '
                                          '"intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="only pickle weights"):
        load_model(tmp_path)
