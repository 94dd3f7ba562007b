"""Building PEFT LoRA adapters in-process for the LoRA tests (no downloads).

PEFT initialises lora_B to zero, which would make every adapter a no-op: both halves are
randomised so each adapter visibly changes the logits.

`lora_path` is an autouse fixture for test modules that import it: every test runs once on the
cpu-kernels backend (the C LoRA kernel) and once on the torch backend (the torch LoRA paths);
its value is the Backend, to build models and stacks with.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from fireplace.engine.backend import Backend
from fireplace.engine.kernels import lora_delta

from .helpers import require_kernel

TINY_LLAMA = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def tiny_hf_llama(seed: int = 0, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model("llama", **{**TINY_LLAMA, **overrides})
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def make_peft_adapter(base_model, out_dir: Path, *, r: int = 8, lora_alpha: float = 16,
                      target_modules=("q_proj", "v_proj"), seed: int = 0, safe: bool = True,
                      save_embedding_layers="auto", **lora_kwargs):
    """Save a random PEFT LoRA of `base_model` (left untouched) to out_dir; returns the PeftModel (eval)."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=targets, lora_dropout=0.0, **lora_kwargs)
    peft_model = get_peft_model(copy.deepcopy(base_model), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    peft_model.save_pretrained(str(out_dir), safe_serialization=safe, save_embedding_layers=save_embedding_layers)
    return peft_model.eval()


@pytest.fixture(autouse=True, scope="module", params=["cpu-kernel", "torch"])
def lora_path(request) -> Backend:
    """The backend each test runs on: cpu-kernels (C LoRA kernel) or torch (torch LoRA paths)."""
    if request.param == "cpu-kernel":
        require_kernel(lora_delta, "LoRA delta kernel")
        backend = Backend.select("cpu", torch.float32, "cpu-kernels")
        assert backend.lora_kernel
        return backend
    return Backend.select("cpu", torch.float32, "torch")
