"""Checkpoint blobs: checkpoints/<account>/<job>/step-<N>/<file>, each written atomically;
the checkpoint exists only once its DB row (sft_job_checkpoints) is committed after them.

A final checkpoint also holds the output addon under .../step-<N>/output/ (PEFT's
adapter_config.json and adapter_model.safetensors), so writing results never needs the model.
"""
from __future__ import annotations

from fireplace.storage import BlobStore, blob_key

MAX_CHECKPOINT_FILE = 64 << 30
OUTPUT = "output"


def checkpoint_prefix(account_id: str, job_id: str, step: int) -> str:
    return blob_key("checkpoints", account_id, job_id, f"step-{step}")


def write_files(blobs: BlobStore, prefix: str, files: dict[str, bytes], sub: str | None = None) -> None:
    for name, data in files.items():
        key = f"{prefix}/{sub}/{name}" if sub else f"{prefix}/{name}"
        blobs.write_bytes(key, data, MAX_CHECKPOINT_FILE)


def read_files(blobs: BlobStore, prefix: str, names: list[str], sub: str | None = None) -> dict[str, bytes]:
    return {name: blobs.read_bytes(f"{prefix}/{sub}/{name}" if sub else f"{prefix}/{name}") for name in names}


def delete_job_blobs(blobs: BlobStore, account_id: str, job_id: str) -> None:
    blobs.delete_prefix(blob_key("checkpoints", account_id, job_id))
    blobs.delete_prefix(blob_key("jobs", account_id, job_id))
