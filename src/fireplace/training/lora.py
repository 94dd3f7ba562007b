"""The LoRA model a job trains: the base model with adapters on every linear projection of
the decoder (attention and MLP), or a warm-start addon's adapters made trainable again.

Loaded on CPU in fp32, on CUDA in bf16 (adapter weights stay fp32: PEFT's autocast keeps
them so, and the loss is computed in fp32). Attention runs through training.attention.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fireplace.training import attention
from fireplace.training.errors import TrainingError
from fireplace.training.hyperparams import TrainConfig


def pick_device() -> tuple[torch.device, torch.dtype]:
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def linear_targets(model: torch.nn.Module) -> list[str]:
    """Names (last component) of the decoder's nn.Linear layers: every projection, no LM head."""
    names = set()
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for name, module in decoder.named_modules():
        if isinstance(module, torch.nn.Linear):
            names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise TrainingError("the base model has no linear layers to put LoRA adapters on")
    return sorted(names)


def load_base(model_dir: Path, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype,
                                                     attn_implementation=attention.register())
    except (OSError, ValueError, KeyError) as exc:
        raise TrainingError(f"the base model cannot be loaded for training: {str(exc)[:300]}") from None
    model.config.use_cache = False
    return model.to(device)


def build_lora_model(model_dir: Path, config: TrainConfig, device: torch.device, dtype: torch.dtype, *,
                     warm_start_dir: Path | None = None, base_model_name: str = ""):
    """(peft model, target module names). The RNG must be seeded before: LoRA A init draws from it."""
    from peft import LoraConfig, PeftModel, get_peft_model

    base = load_base(model_dir, device, dtype)
    if warm_start_dir is not None:
        model = PeftModel.from_pretrained(base, str(warm_start_dir), is_trainable=True)
        targets = sorted(model.peft_config["default"].target_modules)
    else:
        targets = linear_targets(base)
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.alpha, lora_dropout=config.lora_dropout,
                          target_modules=targets, bias="none", task_type="CAUSAL_LM",
                          base_model_name_or_path=base_model_name or None)
        model = get_peft_model(base, lora)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model, targets
