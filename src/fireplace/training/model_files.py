"""A model's files as a local directory, for transformers / peft to load.

Local blob store: the model's own blob directory (no copy). Other stores (S3): the files are
downloaded once into `cache_dir/<hash>/` (storage.local_copy: a temp dir renamed into place,
so a half-downloaded copy is never used; a re-created model gets a copy of its own).
"""
from __future__ import annotations

from pathlib import Path

from fireplace.errors import NotFound
from fireplace.storage import BlobStore
from fireplace.storage.local_copy import local_dir
from fireplace.training.errors import TrainingError


def split_model_name(name: str) -> tuple[str, str]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "accounts" or parts[2] != "models":
        raise TrainingError(f"not a model name: {name[:200]!r}")
    return parts[1], parts[3]


def local_model_dir(blobs: BlobStore, model_name: str, cache_dir: Path) -> Path:
    account_id, model_id = split_model_name(model_name)
    try:
        return local_dir(blobs, f"models/{account_id}/{model_id}", cache_dir)
    except NotFound:
        raise TrainingError(f"model {model_name!r} has no files in the blob store") from None
