"""Reading PEFT adapters: what loads, with which scale, and what is refused with which message."""
from __future__ import annotations

import json
import math

import pytest

from fireplace.engine.lora import AdapterError, LoRAAdapter
from fireplace.engine.model_config import ModelConfig

from .lora_helpers import make_peft_adapter, tiny_hf_llama


@pytest.fixture(scope="module")
def base():
    return tiny_hf_llama()


@pytest.fixture(scope="module")
def model_config(base):
    return ModelConfig.from_hf_dict(base.config.to_dict())


def _files(path):
    return {p.name: p.read_bytes() for p in path.iterdir()}


def _peft_scale(peft_model, module_suffix):
    module = dict(peft_model.named_modules())[f"base_model.model.{module_suffix}"]
    return module.scaling["default"]


def test_peft_adapter_loads_from_dir_and_bytes(base, model_config, tmp_path):
    peft_model = make_peft_adapter(base, tmp_path, r=8, lora_alpha=32, target_modules="all-linear")
    adapter = LoRAAdapter.from_dir(tmp_path, model_config)
    assert adapter.rank == 8 and adapter.lora_alpha == 32 and not adapter.use_rslora
    assert adapter.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert len(adapter.modules) == 2 * 7
    m = adapter.modules[(1, "k_proj")]
    assert m.a.shape == (8, 64) and m.b.shape == (32, 8)  # k: hidden 64 -> 2 kv heads * 16
    assert m.scale == 32 / 8 == _peft_scale(peft_model, "model.layers.1.self_attn.k_proj")
    same = LoRAAdapter.from_files(_files(tmp_path), model_config)
    assert same.modules.keys() == adapter.modules.keys()
    assert (same.modules[(0, "down_proj")].b == adapter.modules[(0, "down_proj")].b).all()


def test_rslora_and_patterns_give_peft_scales(base, model_config, tmp_path):
    rs = make_peft_adapter(base, tmp_path / "rs", r=16, lora_alpha=8, use_rslora=True)
    adapter = LoRAAdapter.from_dir(tmp_path / "rs", model_config)
    assert adapter.use_rslora
    assert adapter.modules[(0, "q_proj")].scale == pytest.approx(8 / math.sqrt(16))
    assert adapter.modules[(0, "q_proj")].scale == pytest.approx(_peft_scale(rs, "model.layers.0.self_attn.q_proj"))

    pat = make_peft_adapter(base, tmp_path / "pat", r=8, lora_alpha=16, target_modules=["q_proj", "down_proj"],
                            rank_pattern={"down_proj": 4}, alpha_pattern={"layers.1.self_attn.q_proj": 3})
    adapter = LoRAAdapter.from_dir(tmp_path / "pat", model_config)
    for layer in (0, 1):
        for name, parent in (("q_proj", "self_attn"), ("down_proj", "mlp")):
            module = adapter.modules[(layer, name)]
            assert module.rank == (4 if name == "down_proj" else 8)
            assert module.scale == pytest.approx(_peft_scale(pat, f"model.layers.{layer}.{parent}.{name}"))
    assert adapter.max_rank == 8


def test_rank_above_64_refused(base, model_config, tmp_path):
    make_peft_adapter(base, tmp_path, r=80, target_modules=["q_proj"])
    with pytest.raises(AdapterError, match="rank 80.*out of range.*1..64"):
        LoRAAdapter.from_dir(tmp_path, model_config)


def test_missing_files_refused(base, model_config, tmp_path):
    make_peft_adapter(base, tmp_path, target_modules=["q_proj"])
    files = _files(tmp_path)
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        LoRAAdapter.from_files({"adapter_model.safetensors": files["adapter_model.safetensors"]})
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="adapter_model.safetensors is missing"):
        LoRAAdapter.from_dir(tmp_path)
    with pytest.raises(AdapterError, match="does not exist"):
        LoRAAdapter.from_dir(tmp_path / "nope")


def test_pickle_weights_refused(base, tmp_path):
    make_peft_adapter(base, tmp_path, target_modules=["q_proj"], safe=False)
    assert (tmp_path / "adapter_model.bin").exists()
    with pytest.raises(AdapterError, match="adapter_model.bin .* pickle .*safe_serialization=True"):
        LoRAAdapter.from_dir(tmp_path)
    with pytest.raises(AdapterError, match="pickle"):
        LoRAAdapter.from_files(_files(tmp_path))


def test_adapter_of_another_base_refused(model_config, tmp_path):
    other = tiny_hf_llama(hidden_size=32)
    make_peft_adapter(other, tmp_path, target_modules=["q_proj"])
    LoRAAdapter.from_dir(tmp_path)  # fine on its own
    with pytest.raises(AdapterError, match="layer 0 q_proj has A \\(8, 32\\).*maps 64 -> 64.*another base model"):
        LoRAAdapter.from_dir(tmp_path, model_config)
    deeper = tiny_hf_llama(num_hidden_layers=3)
    make_peft_adapter(deeper, tmp_path / "deep", target_modules=["v_proj"])
    with pytest.raises(AdapterError, match="targets layer 2 but the base model has 2 layers"):
        LoRAAdapter.from_dir(tmp_path / "deep", model_config)


@pytest.mark.parametrize("kwargs, message", [
    (dict(use_dora=True), "DoRA"),
    (dict(bias="lora_only"), "bias='none'"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(target_modules=["q_proj", "embed_tokens"]), "embed_tokens.lora_embedding_[AB]' is LoRA on embeddings"),
    (dict(target_modules=["lm_head"]), "lm_head.base_layer.weight' is a full base weight"),
    (dict(target_modules=["q_proj", "lm_head"], save_embedding_layers=False), "'lm_head', which cannot carry an addon"),
])
def test_unsupported_features_refused(base, tmp_path, kwargs, message):
    make_peft_adapter(base, tmp_path, **{"target_modules": ["q_proj"], **kwargs})
    with pytest.raises(AdapterError, match=message):
        LoRAAdapter.from_dir(tmp_path)


def test_broken_files_refused(base, tmp_path):
    make_peft_adapter(base, tmp_path, r=8, target_modules=["q_proj"])
    files = _files(tmp_path)
    with pytest.raises(AdapterError, match="not a readable safetensors file"):
        LoRAAdapter.from_files({**files, "adapter_model.safetensors": b"\x10\x00garbage"})
    with pytest.raises(AdapterError, match="not valid JSON"):
        LoRAAdapter.from_files({**files, "adapter_config.json": b"{nope"})
    config = json.loads(files["adapter_config.json"])
    with pytest.raises(AdapterError, match="rank 8 but adapter_config.json says r=4"):
        LoRAAdapter.from_files({**files, "adapter_config.json": json.dumps({**config, "r": 4}).encode()})
    with pytest.raises(AdapterError, match="peft_type 'IA3'"):
        LoRAAdapter.from_files({**files, "adapter_config.json": json.dumps({**config, "peft_type": "IA3"}).encode()})
