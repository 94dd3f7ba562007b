"""A model's files as a local directory, for transformers / peft to load.

Local blob store: the model's own blob directory (no copy). Other stores (S3): the files are
downloaded once into `cache_dir/<account>/<model>/` (a temp dir renamed into place, so a
half-downloaded copy is never used).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fireplace.storage import BlobStore
from fireplace.training.errors import TrainingError


def split_model_name(name: str) -> tuple[str, str]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "accounts" or parts[2] != "models":
        raise TrainingError(f"not a model name: {name[:200]!r}")
    return parts[1], parts[3]


def local_model_dir(blobs: BlobStore, model_name: str, cache_dir: Path) -> Path:
    account_id, model_id = split_model_name(model_name)
    prefix = f"models/{account_id}/{model_id}"
    keys = [k for k in blobs.list(prefix) if "/" not in k[len(prefix) + 1:]]
    if not keys:
        raise TrainingError(f"model {model_name!r} has no files in the blob store")
    local = blobs.local_path(prefix)
    if local is not None:
        return Path(local)
    dest = Path(cache_dir) / account_id / model_id
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".dl-"))
    try:
        for key in keys:
            with (tmp / key.rsplit("/", 1)[1]).open("wb") as out:
                for chunk in blobs.iter_chunks(key):
                    out.write(chunk)
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.is_dir():
            raise
    return dest
