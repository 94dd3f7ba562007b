"""Model and adapter files for a replica, read from the blob store.

A local blob store is read in place (safetensors are memory-mapped from it); another store
(S3) is copied once into a local cache directory keyed by the blob prefix.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from fireplace.storage import BlobStore

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def model_prefix(model_name: str) -> str:
    """'accounts/a/models/m' -> the blob prefix 'models/a/m'."""
    parts = model_name.split("/")
    if len(parts) != 4 or parts[0] != "accounts" or parts[2] != "models":
        raise ValueError(f"not a model name: {model_name!r}")
    return f"models/{parts[1]}/{parts[3]}"


def materialize(blobs: BlobStore, prefix: str, cache_dir: Path) -> Path:
    """A local directory holding the top-level files under `prefix`."""
    local = blobs.local_path(prefix)
    if local is not None and os.path.isdir(local):
        return Path(local)
    target = cache_dir / hashlib.sha256(f"{blobs.url}/{prefix}".encode()).hexdigest()[:24]
    if (target / ".complete").exists():
        return target
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".partial-"))
    try:
        for key in blobs.list(prefix):
            name = key[len(prefix) + 1:]
            if "/" in name:
                continue
            with blobs.open(key) as src, open(tmp / name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        (tmp / ".complete").touch()
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def adapter_files(blobs: BlobStore, model_name: str) -> dict[str, bytes]:
    """The two PEFT files of an addon, as bytes (read off the engine thread)."""
    prefix = model_prefix(model_name)
    return {name: blobs.read_bytes(f"{prefix}/{name}") for name in ADAPTER_FILES}
