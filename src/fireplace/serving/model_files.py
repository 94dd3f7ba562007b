"""Model and adapter files for a replica, read from the blob store.

A local blob store is read in place (safetensors are memory-mapped from it); another store
(S3) is copied once into a local cache directory keyed by the prefix and the files' versions.
"""
from __future__ import annotations

from pathlib import Path

from fireplace.storage import BlobStore
from fireplace.storage.local_copy import local_dir

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def model_prefix(model_name: str) -> str:
    """'accounts/a/models/m' -> the blob prefix 'models/a/m'."""
    parts = model_name.split("/")
    if len(parts) != 4 or parts[0] != "accounts" or parts[2] != "models":
        raise ValueError(f"not a model name: {model_name!r}")
    return f"models/{parts[1]}/{parts[3]}"


def materialize(blobs: BlobStore, prefix: str, cache_dir: Path) -> Path:
    """A local directory holding the top-level files under `prefix` (storage.local_copy)."""
    return local_dir(blobs, prefix, cache_dir)


def adapter_files(blobs: BlobStore, model_name: str) -> dict[str, bytes]:
    """The two PEFT files of an addon, as bytes (read off the engine thread)."""
    prefix = model_prefix(model_name)
    return {name: blobs.read_bytes(f"{prefix}/{name}") for name in ADAPTER_FILES}
