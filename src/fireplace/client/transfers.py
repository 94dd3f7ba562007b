"""File transfers through the API's signed URLs, streamed in chunks with a progress callback.

    dataset: :getUploadEndpoint -> PUT file -> :validateUpload (line-numbered 400 when bad)
    model:   :getUploadEndpoint (every file's size) -> PUT each file -> :validateUpload; a file
             the server already holds with the same size and SHA-256 is not sent again, so
             running an interrupted upload again resumes it (file by file: a PUT is whole)
    either:  :getDownloadEndpoint -> GET each file (written to NAME.part, renamed when complete)

`progress(filename, done_bytes, total_bytes)` is called as bytes move (and once at 0).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fireplace.errors import InvalidArgument

if TYPE_CHECKING:
    from fireplace.client.api import Fireplace

CHUNK_BYTES = 1 << 20
Progress = Callable[[str, int, int], None]


def _no_progress(_name: str, _done: int, _total: int) -> None:
    pass


def _read_chunks(path: Path, total: int, progress: Progress) -> Iterator[bytes]:
    done = 0
    progress(path.name, 0, total)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            done += len(chunk)
            yield chunk
            progress(path.name, done, total)


def put_file(fp: "Fireplace", url: str, path: Path, progress: Progress = _no_progress) -> None:
    size = path.stat().st_size
    fp.transport.request("PUT", url, content=_read_chunks(path, size, progress),
                         headers={"content-type": "application/octet-stream", "content-length": str(size)})


def upload_dataset(fp: "Fireplace", ref: str, path: Path, progress: Progress = _no_progress) -> dict:
    """Upload one JSONL file to a dataset in UPLOADING; returns the dataset (READY)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such file")
    url = fp.datasets.upload_endpoint(ref, path.name, path.stat().st_size)
    put_file(fp, url, path, progress)
    return fp.datasets.validate_upload(ref)


def model_files(directory: Path) -> list[Path]:
    """The regular, non-hidden files at the top of a model directory (HF layout is flat)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidArgument(f"{directory}: not a directory")
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InvalidArgument(f"{directory}: no files to upload")
    return files


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def upload_model(fp: "Fireplace", ref: str, directory: Path, progress: Progress = _no_progress,
                 skipped: Callable[[str], None] = lambda _name: None) -> dict:
    """Upload a model directory to a model in UPLOADING and validate it; returns
    :validateUpload's answer ({"warnings": [...]}). Files the server already received intact
    (same size and SHA-256) are skipped, each reported to `skipped(filename)`."""
    files = model_files(directory)
    sizes = {p.name: p.stat().st_size for p in files}
    plan = fp.models.upload_plan(ref, sizes)
    urls, received = plan.get("filenameToSignedUrls", {}), plan.get("filenameToSha256") or {}
    for path in files:
        if path.name in received and received[path.name] == sha256_of(path):
            skipped(path.name)
            continue
        put_file(fp, urls[path.name], path, progress)
    return fp.models.validate_upload(ref)


def download(fp: "Fireplace", urls: dict[str, str], directory: Path, progress: Progress = _no_progress) -> list[Path]:
    """GET each signed URL into directory/<filename>; returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, url in sorted(urls.items()):
        if "/" in filename or filename in ("", ".", ".."):
            raise InvalidArgument(f"refusing to write the file name {filename!r}")
        target = directory / filename
        partial = target.with_name(target.name + ".part")
        with fp.transport.stream("GET", url) as response:
            total = int(response.headers.get("content-length") or 0)
            done = 0
            progress(filename, 0, total)
            with partial.open("wb") as out:
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    out.write(chunk)
                    done += len(chunk)
                    progress(filename, done, total)
                out.flush()
                os.fsync(out.fileno())
        os.replace(partial, target)
        written.append(target)
    return written
