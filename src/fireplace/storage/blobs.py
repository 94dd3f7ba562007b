"""Blob store over fsspec: a local directory by default, `s3://bucket/prefix` accepted.

Writes are atomic and durable. Local: bytes stream into a temporary file (fsynced), then a
rename publishes them (the directory is fsynced after it). S3: bytes stream into a multipart
upload that only its completion publishes (an object appears whole or not at all; a failed
write aborts the upload; one cut off by a crash stays invisible until the bucket's lifecycle
rule drops it). S3 endpoint and credentials come from the standard AWS settings, read by
botocore (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
~/.aws/config). Listings are never cached: another server or worker may have written since.
Every write is hashed (SHA-256) and size-limited while streaming. Keys are built only
from validated IDs and file names (`blob_key`), so no path can escape the root.
"""
from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import fsspec

from fireplace.errors import InvalidArgument, NotFound, PayloadTooLarge
from fireplace.ids import is_valid_id

CHUNK = 1 << 20
_FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def safe_filename(name: str) -> str:
    """A flat file name: letters, digits, '.', '_', '-'; no path parts, no leading dot."""
    if not isinstance(name, str) or not _FILENAME_RE.fullmatch(name) or ".." in name:
        raise InvalidArgument(f"invalid file name {str(name)[:100]!r}: use letters, digits, '.', '_' "
                              "and '-' (no directories), up to 255 characters")
    return name


def blob_key(*parts: str) -> str:
    """Join validated parts: every part but the last must be an ID or a fixed collection
    word; the last may be a file name."""
    if not parts:
        raise ValueError("empty blob key")
    for part in parts[:-1]:
        if not (is_valid_id(part) or part in {"models", "datasets", "jobs", "checkpoints", "files", "uploads"}):
            raise InvalidArgument(f"invalid path component {part[:100]!r}")
    last = parts[-1]
    if not is_valid_id(last):
        safe_filename(last)
    return "/".join(parts)


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    sha256: str


class BlobStore:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.is_local = fsspec.core.split_protocol(self.url)[0] in (None, "file", "local")
        options = {} if self.is_local else {"use_listings_cache": False}  # see the module docstring
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)
        if self.is_local:
            os.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def write_stream(self, key: str, chunks: Iterable[bytes], max_bytes: int) -> BlobInfo:
        """Stream chunks to `key` atomically; over max_bytes -> 413 and nothing published."""
        write = self._write_local if self.is_local else self._write_remote
        size, sha256 = write(self._path(key), chunks, max_bytes)
        return BlobInfo(key, size, sha256)

    def _write_local(self, final: str, chunks: Iterable[bytes], max_bytes: int) -> tuple[int, str]:
        tmp = self._path(f".tmp/{uuid.uuid4().hex}")
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        self.fs.makedirs(tmp.rsplit("/", 1)[0], exist_ok=True)
        try:
            with self.fs.open(tmp, "wb") as out:
                written = _copy_limited(chunks, out, max_bytes)
                out.flush()
                os.fsync(out.fileno())
            self.fs.mv(tmp, final)
            self._sync_dir(final)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise
        return written

    def _write_remote(self, final: str, chunks: Iterable[bytes], max_bytes: int) -> tuple[int, str]:
        # autocommit=False: closing uploads the parts, only commit() completes the upload (publishes)
        out = self.fs.open(final, "wb", autocommit=False)
        try:
            with out:
                written = _copy_limited(chunks, out, max_bytes)
            out.commit()
        except BaseException:
            out.discard()  # S3: abort the multipart upload
            raise
        return written

    def _sync_dir(self, path: str) -> None:
        """fsync the directory of a renamed file (local stores), so the rename itself survives
        a crash, not only the file's bytes."""
        if not self.is_local:
            return
        fd = os.open(path.rsplit("/", 1)[0] or "/", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_bytes(self, key: str, data: bytes, max_bytes: int | None = None) -> BlobInfo:
        return self.write_stream(key, [data], max_bytes if max_bytes is not None else len(data))

    def write_file(self, key: str, fileobj: BinaryIO, max_bytes: int) -> BlobInfo:
        return self.write_stream(key, iter(lambda: fileobj.read(CHUNK), b""), max_bytes)

    def move(self, src: str, dst: str) -> None:
        """Publish a staged blob under another key (local: atomic rename; S3: copy + delete)."""
        final = self._path(dst)
        if self.is_local:
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(self._path(src), final)
        self._sync_dir(final)

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def size(self, key: str) -> int:
        try:
            return int(self.fs.size(self._path(key)))
        except FileNotFoundError:
            raise NotFound(f"blob {key!r} not found") from None

    def open(self, key: str) -> BinaryIO:
        try:
            return self.fs.open(self._path(key), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {key!r} not found") from None

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        with self.open(key) as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def list(self, prefix: str) -> list[str]:
        """Keys under a prefix (relative to the root)."""
        base = self._path(prefix).rstrip("/")
        if not self.fs.exists(base):
            return []
        return sorted(p[len(self.root) + 1:] for p in self.fs.find(base))

    def versions(self, prefix: str) -> dict[str, str]:
        """{key: a token that changes whenever that object is rewritten} under a prefix, from one
        listing (S3: size + ETag; local: size + mtime): what local copies are keyed by."""
        base = self._path(prefix).rstrip("/")
        if not self.fs.exists(base):
            return {}
        return {path[len(self.root) + 1:]: f"{info.get('size')}:{info.get('ETag') or info.get('mtime')}"
                for path, info in sorted(self.fs.find(base, detail=True).items())}

    def delete(self, key: str) -> None:
        if self.fs.exists(self._path(key)):
            self.fs.rm(self._path(key), recursive=True)

    def delete_prefix(self, prefix: str) -> None:
        self.delete(prefix)

    def local_path(self, key: str) -> str | None:
        """A filesystem path for local stores (engines load safetensors from it directly)."""
        return self._path(key) if self.is_local else None


def _copy_limited(chunks: Iterable[bytes], out: BinaryIO, max_bytes: int) -> tuple[int, str]:
    """Write chunks to out, hashing them; over max_bytes -> 413. Returns (size, sha256)."""
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"file is larger than the limit of {max_bytes} bytes")
        digest.update(chunk)
        out.write(chunk)
    return size, digest.hexdigest()
