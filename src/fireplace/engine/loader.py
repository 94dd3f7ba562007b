"""Load a HF safetensors checkpoint directory into our LlamaForCausalLM.

Accepts one `model.safetensors` or shards listed in `model.safetensors.index.json` (any
other `*.safetensors` set is read too). Pickle checkpoints (`pytorch_model.bin`, `*.pt`) are
refused: loading them can run arbitrary code. Our parameter names equal the HF names, so
mapping is identity except for entries we derive ourselves (rotary inv_freq) and a stored
`lm_head.weight` when embeddings are tied.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from fireplace.engine.backend import Backend
from fireplace.engine.model_config import ModelConfig
from fireplace.engine.models.llama import LlamaForCausalLM


class CheckpointError(ValueError):
    """The directory is not a loadable checkpoint for our engine."""


_INDEX_NAME = "model.safetensors.index.json"


def read_model_config(path: str | Path) -> ModelConfig:
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path} has no config.json; expected a Hugging Face model directory")
    return ModelConfig.from_hf_dict(json.loads(config_path.read_text()))


def safetensors_files(path: str | Path) -> list[Path]:
    """The checkpoint's weight files, or a CheckpointError saying what is wrong."""
    path = Path(path)
    index = path / _INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{path}: shards listed in {_INDEX_NAME} are missing: {', '.join(missing)}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in path.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise CheckpointError(
            f"{path} holds only pickle weights ({', '.join(pickles)}); Fireplace loads safetensors only. "
            "Convert them first, e.g. `AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out, "
            "safe_serialization=True)`")
    raise CheckpointError(f"{path} has no *.safetensors weights")


def load_model(path: str | Path, dtype: torch.dtype | None = None,
               device: torch.device | str = "cpu", *, backend: Backend | None = None,
               ) -> tuple[LlamaForCausalLM, ModelConfig]:
    """Build our model for the checkpoint at `path` and fill its weights.

    dtype: compute dtype (default: the checkpoint's). backend: the engine's (default:
    Backend.select(device, dtype)). Every model parameter must be present in the checkpoint
    and every checkpoint tensor must be used, or CheckpointError is raised.
    """
    config = read_model_config(path)
    files = safetensors_files(path)
    dtype = dtype or config.torch_dtype
    model = LlamaForCausalLM(config, dtype=dtype, device=device, backend=backend)
    params = dict(model.named_parameters())  # tied lm_head.weight appears once, as embed_tokens
    loaded: set[str] = set()
    unexpected: list[str] = []
    with torch.no_grad():
        for file in files:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():
                    if _is_ignored(name, config):
                        continue
                    param = params.get(name)
                    if param is None:
                        unexpected.append(name)
                        continue
                    tensor = f.get_tensor(name)
                    if tensor.shape != param.shape:
                        raise CheckpointError(f"{name}: checkpoint shape {tuple(tensor.shape)} "
                                              f"!= model shape {tuple(param.shape)}")
                    param.copy_(tensor)  # converts dtype and moves to the model's device
                    loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing or unexpected:
        raise CheckpointError(f"{path}: checkpoint does not match the {config.architecture} model: "
                              f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                              f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    model.eval()
    return model, config


def _is_ignored(name: str, config: ModelConfig) -> bool:
    if name.endswith("rotary_emb.inv_freq"):  # derived from config by us
        return True
    # Some tied checkpoints store lm_head.weight as a copy of the embeddings.
    return config.tie_word_embeddings and name == "lm_head.weight"
