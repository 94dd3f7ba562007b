"""The files under a blob prefix as a local directory (engines and transformers load from one).

A local store is read in place (safetensors are memory-mapped from it). Another store (S3) is
copied once into `cache_dir/<hash>/`, the hash over the store URL, the prefix and every file's
version (size + ETag), so a model deleted and re-created under the same name is copied anew,
never served from the old copy. The copy is written into a temporary directory (files fsynced,
then a `.complete` marker) and renamed into place: a half-downloaded copy is never used, and
two processes copying at once both end up with the one that won the rename.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from fireplace.errors import NotFound
from fireplace.storage.blobs import CHUNK, BlobStore

COMPLETE = ".complete"


def local_dir(blobs: BlobStore, prefix: str, cache_dir: Path) -> Path:
    """A local directory holding the top-level files under `prefix`; NotFound when there are none."""
    local = blobs.local_path(prefix)
    if local is not None:   # read in place: no listing of versions, no copy
        if not os.path.isdir(local) or not any(entry.is_file() for entry in os.scandir(local)):
            raise NotFound(f"no files under {prefix!r} in the blob store")
        return Path(local)
    files = {key[len(prefix) + 1:]: version for key, version in blobs.versions(prefix).items()
             if "/" not in key[len(prefix) + 1:]}
    if not files:
        raise NotFound(f"no files under {prefix!r} in the blob store")
    identity = json.dumps([blobs.url, prefix, sorted(files.items())])
    target = Path(cache_dir) / hashlib.sha256(identity.encode()).hexdigest()[:24]
    if (target / COMPLETE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
    try:
        for name in files:
            with blobs.open(f"{prefix}/{name}") as src, open(tmp / name, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
        (tmp / COMPLETE).touch()
        os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and (target / COMPLETE).exists():
            return target  # another process finished the same copy first
        raise
    return target
