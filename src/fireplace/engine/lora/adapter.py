"""A LoRA addon read from the PEFT format, checked against what our engine can serve.

Format: `adapter_config.json` + `adapter_model.safetensors`, from a directory or from the two
files' bytes (the blob store). Pickle weights (`adapter_model.bin`) are refused: loading them can
run code. Tensors are named by PEFT as
    base_model.model.model.layers.{N}.{self_attn|mlp}.{proj}.lora_{A|B}.weight
with A [r, in] and B [out, r]; the delta of a projection is  y += scale * x A^T B^T  where
scale = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA. `rank_pattern`/`alpha_pattern` give
some modules their own r/alpha (matched the way PEFT does), so the scale is kept per module.

Ranks 1..64 load here; the public API only accepts 4..64 at upload (MIN_API_LORA_RANK), smaller
ranks are allowed for addons produced internally and in tests.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes

from fireplace.engine.errors import AdapterError
from fireplace.engine.lora.projections import PROJECTIONS, ProjectionKey, parse_projection_path, projection_shapes
from fireplace.engine.model_config import ModelConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "pytorch_model.bin")
MIN_LORA_RANK = 1
MAX_LORA_RANK = 64
MIN_API_LORA_RANK = 4

_TENSOR_NAME = re.compile(r"^base_model\.model\.(?P<path>.+)\.lora_(?P<ab>[AB])\.weight$")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# adapter_config.json fields naming PEFT features that change the forward beyond x A^T B^T.
_UNSUPPORTED_FEATURES = {
    "use_dora": "DoRA (use_dora=true)",
    "lora_bias": "a bias on lora_B (lora_bias=true)",
    "modules_to_save": "modules_to_save (whole replaced modules such as embed_tokens or lm_head)",
    "trainable_token_indices": "trainable token embeddings (trainable_token_indices)",
    "layer_replication": "layer_replication",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QALoRA (use_qalora=true)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "fan_in_fan_out": "fan_in_fan_out=true (Conv1D-style weights)",
    "megatron_config": "Megatron-parallel LoRA (megatron_config)",
    "arrow_config": "Arrow routing (arrow_config)",
    "kasa_config": "KaSA (kasa_config)",
    "velora_config": "VeLoRA (velora_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
}


@dataclass(frozen=True)
class LoRAModule:
    """One projection's low-rank delta: y += scale * (x @ a.T) @ b.T."""

    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    scale: float

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


@dataclass(frozen=True)
class LoRAAdapter:
    modules: dict[ProjectionKey, LoRAModule]
    rank: int  # adapter_config r (modules may differ through rank_pattern)
    lora_alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...]  # projection names present, in PROJECTIONS order
    base_model_name_or_path: str | None = None

    @property
    def max_rank(self) -> int:
        return max(m.rank for m in self.modules.values())

    @property
    def num_bytes(self) -> int:
        return sum(m.a.numel() * m.a.element_size() + m.b.numel() * m.b.element_size()
                   for m in self.modules.values())

    @classmethod
    def from_dir(cls, path: str | Path, model_config: ModelConfig | None = None) -> LoRAAdapter:
        return cls.from_files(read_adapter_dir(path), model_config)

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], model_config: ModelConfig | None = None) -> LoRAAdapter:
        """From the bytes of `adapter_config.json` and `adapter_model.safetensors` (other files ignored)."""
        _refuse_pickle(files, where="the uploaded files")
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if name not in files:
                raise AdapterError(f"{name} is missing from the LoRA adapter files; "
                                   f"an addon needs {CONFIG_FILE} and {WEIGHTS_FILE}")
        try:
            config = json.loads(files[CONFIG_FILE])
        except (ValueError, UnicodeDecodeError) as e:
            raise AdapterError(f"{CONFIG_FILE} is not valid JSON: {e}") from None
        if not isinstance(config, dict):
            raise AdapterError(f"{CONFIG_FILE} must hold a JSON object")
        try:
            tensors = load_safetensors_bytes(bytes(files[WEIGHTS_FILE]))
        except Exception as e:  # safetensors raises its own error types for corrupt headers/data
            raise AdapterError(f"{WEIGHTS_FILE} is not a readable safetensors file: {e}") from None
        adapter = _build(config, tensors)
        if model_config is not None:
            adapter.check_compatible(model_config)
        return adapter

    def check_compatible(self, config: ModelConfig) -> None:
        """Every module exists in the base model and has its projection's shape."""
        shapes = projection_shapes(config)
        for (layer, name), m in sorted(self.modules.items()):
            if layer >= config.num_layers:
                raise AdapterError(f"LoRA adapter targets layer {layer} but the base model has "
                                   f"{config.num_layers} layers; was it trained for another base model?")
            in_f, out_f = shapes[name]
            if m.a.shape[1] != in_f or m.b.shape[0] != out_f:
                raise AdapterError(
                    f"LoRA adapter layer {layer} {name} has A {tuple(m.a.shape)} and B {tuple(m.b.shape)}, but "
                    f"the base model's {name} maps {in_f} -> {out_f} features; was it trained for another "
                    f"base model ({self.base_model_name_or_path or 'unknown'})?")


def read_adapter_dir(path: str | Path) -> dict[str, bytes]:
    """The bytes of a PEFT directory's config and safetensors files (nothing else is read)."""
    root = Path(path)
    if not root.is_dir():
        raise AdapterError(f"LoRA adapter directory {str(root)!r} does not exist")
    files = {p.name: p for p in root.iterdir() if p.is_file()}
    _refuse_pickle(files, where=str(root))
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if name not in files:
            raise AdapterError(f"{name} is missing from the LoRA adapter directory {str(root)!r}; "
                               "save the adapter with PEFT's save_pretrained()")
    try:
        return {n: files[n].read_bytes() for n in (CONFIG_FILE, WEIGHTS_FILE)}
    except OSError as e:
        raise AdapterError(f"cannot read the LoRA adapter directory {str(root)!r}: {e}") from None


def _refuse_pickle(names, *, where: str) -> None:
    if WEIGHTS_FILE in names:
        return
    pickled = [n for n in names if n in PICKLE_FILES]
    if pickled:
        raise AdapterError(f"{pickled[0]} in {where} is a pickle file, which is not loaded because it can run "
                           f"code; re-save the adapter with save_pretrained(safe_serialization=True) to get "
                           f"{WEIGHTS_FILE}")


def _build(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LoRAAdapter:
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise AdapterError(f"adapter peft_type {peft_type!r} is not supported; only LoRA addons can be served")
    for field_name, what in _UNSUPPORTED_FEATURES.items():
        if config.get(field_name):
            raise AdapterError(f"LoRA adapter uses {what}, which is not supported; train it without that option")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"LoRA adapter trains biases (bias={config['bias']!r}), which is not supported; "
                           "train it with bias='none'")
    try:
        rank = int(config["r"])
        alpha = float(config.get("lora_alpha", 8))
    except (KeyError, TypeError, ValueError):
        raise AdapterError(f"{CONFIG_FILE} needs an integer 'r' and a numeric 'lora_alpha'") from None
    use_rslora = bool(config.get("use_rslora", False))
    rank_pattern = dict(config.get("rank_pattern") or {})
    alpha_pattern = dict(config.get("alpha_pattern") or {})
    _check_rank(rank, where=f"{CONFIG_FILE} r")

    _refuse_foreign_tensors(tensors)
    halves: dict[ProjectionKey, dict[str, torch.Tensor]] = {}
    paths: dict[ProjectionKey, str] = {}
    for tensor_name, tensor in sorted(tensors.items()):
        m = _TENSOR_NAME.match(tensor_name)
        path, half = m.group("path"), m.group("ab")
        key = parse_projection_path(path)
        if key is None:
            raise AdapterError(f"LoRA adapter targets {path!r}, which cannot carry an addon; supported target "
                               f"modules: {', '.join(PROJECTIONS)}")
        if paths.setdefault(key, path) != path:
            raise AdapterError(f"LoRA adapter has two tensors for layer {key[0]} {key[1]}: "
                               f"{paths[key]!r} and {path!r}")
        if tensor.dtype not in _FLOAT_DTYPES or tensor.dim() != 2:
            raise AdapterError(f"tensor {tensor_name!r} must be a 2-D float tensor, got "
                               f"{tuple(tensor.shape)} {tensor.dtype}")
        if not torch.isfinite(tensor).all():
            raise AdapterError(f"tensor {tensor_name!r} holds NaN or infinite values")
        halves.setdefault(key, {})[half] = tensor
    if not halves:
        raise AdapterError(f"{WEIGHTS_FILE} holds no LoRA tensors")

    modules: dict[ProjectionKey, LoRAModule] = {}
    for key, ab in halves.items():
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise AdapterError(f"LoRA adapter layer {key[0]} {key[1]} has no lora_{missing} tensor")
        a, b = ab["A"], ab["B"]
        r = int(a.shape[0])
        if b.shape[1] != r:
            raise AdapterError(f"LoRA adapter layer {key[0]} {key[1]}: lora_A {tuple(a.shape)} and lora_B "
                               f"{tuple(b.shape)} disagree on the rank")
        _check_rank(r, where=f"layer {key[0]} {key[1]}")
        declared_r = int(rank_pattern.get(_pattern_key(rank_pattern, paths[key]), rank))
        if r != declared_r:
            raise AdapterError(f"LoRA adapter layer {key[0]} {key[1]} has rank {r} but {CONFIG_FILE} says "
                               f"r={declared_r}")
        module_alpha = float(alpha_pattern.get(_pattern_key(alpha_pattern, paths[key]), alpha))
        scale = module_alpha / math.sqrt(r) if use_rslora else module_alpha / r
        modules[key] = LoRAModule(a=a.contiguous(), b=b.contiguous(), scale=scale)

    present = {name for _, name in modules}
    return LoRAAdapter(
        modules=modules,
        rank=rank,
        lora_alpha=alpha,
        use_rslora=use_rslora,
        target_modules=tuple(n for n in PROJECTIONS if n in present),
        base_model_name_or_path=config.get("base_model_name_or_path"),
    )


# What a tensor other than lora_A/lora_B means, most specific first.
_FOREIGN_TENSORS = (
    ("lora_magnitude_vector", "a DoRA magnitude vector (use_dora)"),
    ("lora_embedding", "LoRA on embeddings"),
    ("modules_to_save", "a whole replaced module (modules_to_save)"),
    ("base_layer.weight", "a full base weight (saved with save_embedding_layers)"),
    (".bias", "a trained bias"),
    ("", "not a LoRA A/B weight"),
)


def _refuse_foreign_tensors(tensors: Mapping[str, torch.Tensor]) -> None:
    foreign = sorted(name for name in tensors if not _TENSOR_NAME.match(name))
    for marker, what in _FOREIGN_TENSORS:
        for name in foreign:
            if marker in name:
                raise AdapterError(f"LoRA adapter tensor {name!r} is {what}, which is not supported")


def _pattern_key(patterns: dict[str, Any], module_path: str) -> str | None:
    # PEFT's rule: a pattern key applies when it matches a dotted suffix of the module path.
    for key in patterns:
        try:
            if re.match(rf"(.*\.)?({key})$", module_path):
                return key
        except re.error as e:
            raise AdapterError(f"{CONFIG_FILE} has an invalid rank/alpha pattern {key!r}: {e}") from None
    return None


def _check_rank(r: int, *, where: str) -> None:
    if not MIN_LORA_RANK <= r <= MAX_LORA_RANK:
        raise AdapterError(f"LoRA rank {r} ({where}) is out of range; ranks {MIN_LORA_RANK}..{MAX_LORA_RANK} "
                           "are supported")
