"""Model files through our own signed URLs (what Fireworks' signed GCS URLs are to its SDK).

    POST  .../models/m:getUploadEndpoint  {filenameToSize}  -> {filenameToSignedUrls: PUT URLs,
                                                                 filenameToSha256: already received}
    PUT   /v1/uploads/models/{a}/{m}/{filename}?expires&sig  (body: the file's bytes)
    GET   .../models/m:validateUpload  -> checks the files, UPLOADING -> READY
    GET   .../models/m:getDownloadEndpoint  -> {filenameToSignedUrls: GET URLs}
    GET   /v1/downloads/models/{a}/{m}/{filename}?expires&sig

Each URL is signed for the model instance (its create time) and a per-file nonce (`upload=`)
that the PUT consumes before it reads the body: a URL writes once, a newer
:getUploadEndpoint voids older URLs, a re-created model of the same ID accepts none of the
old ones. A PUT streams into a staging blob unique to that PUT (hashed, atomic, at most the
declared size); the file row then points at it. :validateUpload checks exactly the staged blobs the
rows name and moves them to their final keys, so a PUT that lands late can never change
bytes that were already validated.
"""
from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable, Iterator

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from fireplace.api.auth import Action, Principal
from fireplace.control.models.files import CheckResult, check_addon, check_base_model, refuse_pickles
from fireplace.control.models.service import load_model
from fireplace.control.models.tables import KIND_ADDON, STATE_READY, STATE_UPLOADING, ModelFileRow, ModelRow
from fireplace.control.signed_urls import instance_binding, sign, verify
from fireplace.control.locks import serialize_account
from fireplace.errors import (Aborted, FailedPrecondition, InvalidArgument, NotFound, PayloadTooLarge,
                              PermissionDenied, not_found)
from fireplace.ids import is_valid_id, validate_id
from fireplace.storage import BlobStore, blob_key, safe_filename

UPLOAD_PREFIX = "/v1/uploads/models"
DOWNLOAD_PREFIX = "/v1/downloads/models"
MAX_FILES_PER_MODEL = 512


def file_path(prefix: str, account_id: str, model_id: str, filename: str) -> str:
    return f"{prefix}/{account_id}/{model_id}/{filename}"


def final_key(account_id: str, model_id: str, filename: str) -> str:
    return blob_key("models", account_id, model_id, filename)


def staging_key(account_id: str, model_id: str, filename: str) -> str:
    return blob_key("uploads", "models", account_id, model_id, "u" + uuid.uuid4().hex, filename)


def staging_prefix(account_id: str, model_id: str) -> str:
    return blob_key("uploads", "models", account_id, model_id)


def _file_rows(session: Session, account_id: str, model_id: str, *, refresh: bool = False) -> list[ModelFileRow]:
    return list(session.scalars(select(ModelFileRow).where(
        ModelFileRow.account_id == account_id, ModelFileRow.model_id == model_id)
        .order_by(ModelFileRow.filename).execution_options(populate_existing=refresh)))


# ---- :getUploadEndpoint ---------------------------------------------------------------------

def upload_endpoints(session: Session, caller: Principal, account_id: str, model_id: str,
                     sizes: dict[str, int], *, base_url: str, max_file_bytes: int) -> dict[str, str]:
    row = load_model(session, caller, account_id, model_id, action=Action.WRITE, serialize=True)
    if row.state != STATE_UPLOADING:
        raise FailedPrecondition(f"model {row.name!r} is {row.state}: its files can no longer change")
    if not sizes:
        raise InvalidArgument("filenameToSize: name at least one file and its size in bytes")
    for filename, size in sizes.items():
        safe_filename(filename)
        if size < 0:
            raise InvalidArgument(f"filenameToSize[{filename!r}]: size must not be negative")
        if size > max_file_bytes:
            raise InvalidArgument(f"filenameToSize[{filename!r}]: {size} bytes is larger than the limit "
                                  f"of {max_file_bytes} bytes per model file")
    refuse_pickles(sizes)
    existing = {f.filename: f for f in _file_rows(session, account_id, model_id)}
    if len(set(existing) | set(sizes)) > MAX_FILES_PER_MODEL:
        raise InvalidArgument(f"a model may have at most {MAX_FILES_PER_MODEL} files")
    nonces = {}
    for filename, size in sizes.items():
        file = existing.get(filename)
        nonces[filename] = "u" + secrets.token_hex(16)
        if file is None:
            session.add(ModelFileRow(account_id=account_id, model_id=model_id, filename=filename,
                                     declared_size=size, upload_nonce=nonces[filename]))
        else:
            if file.declared_size != size:  # a new size means new bytes: upload again
                file.declared_size, file.size, file.sha256 = size, None, ""
            file.upload_nonce = nonces[filename]
    session.commit()
    urls = {}
    for filename in sizes:
        path = file_path(UPLOAD_PREFIX, account_id, model_id, filename)
        query = sign(session, "PUT", path, binding=_put_binding(row, nonces[filename]))
        urls[filename] = f"{base_url}{path}?{query}&upload={nonces[filename]}"
    return urls


def received_files(session: Session, account_id: str, model_id: str, sizes: dict[str, int]) -> dict[str, str]:
    """filename -> SHA-256 of the named files a PUT already delivered complete at the declared
    size (what :getUploadEndpoint keeps when the size is declared again; a new size discards it)."""
    return {f.filename: f.sha256 for f in _file_rows(session, account_id, model_id)
            if f.filename in sizes and f.size is not None and f.size == f.declared_size == sizes[f.filename]
            and f.sha256}


def _put_binding(row: ModelRow, nonce: str) -> str:
    return f"{instance_binding(row.create_time)}:{nonce}"


def _refused_url() -> PermissionDenied:
    return PermissionDenied("upload/download URL signature is invalid")


# ---- the signed PUT -------------------------------------------------------------------------

def _exactly(chunks: Iterable[bytes], declared: int, filename: str) -> Iterator[bytes]:
    """Pass chunks through, refusing more (413) or fewer (400) bytes than declared."""
    received = 0
    for chunk in chunks:
        received += len(chunk)
        if received > declared:
            raise PayloadTooLarge(f"{filename}: body is larger than the declared size of {declared} bytes")
        yield chunk
    if received != declared:
        raise InvalidArgument(f"{filename}: received {received} bytes, but {declared} were declared")


def receive_file(factory: sessionmaker[Session], blobs: BlobStore, *, account_id: str, model_id: str,
                 filename: str, expires: str | None, sig: str | None, content_length: int | None,
                 chunks: Iterable[bytes], max_file_bytes: int, nonce: str | None = None) -> None:
    """Runs in a worker thread; sessions are short so no transaction spans the transfer.
    The URL must be signed for this model instance and its current upload nonce, which the
    PUT consumes before reading the body: each URL writes once."""
    validate_id(account_id, "account id")
    validate_id(model_id, "model id")
    safe_filename(filename)
    name = f"accounts/{account_id}/models/{model_id}"
    path = file_path(UPLOAD_PREFIX, account_id, model_id, filename)
    if not nonce or not is_valid_id(nonce):
        raise _refused_url()
    with factory() as session:
        row = session.get(ModelRow, (account_id, model_id))
        if row is None:
            verify(session, "PUT", path, expires, sig, binding="missing")
            raise _refused_url()
        verify(session, "PUT", path, expires, sig, binding=_put_binding(row, nonce))
        if row.state != STATE_UPLOADING:
            raise FailedPrecondition(f"model {name!r} is {row.state}: its files can no longer change")
        claimed = session.execute(
            update(ModelFileRow).where(ModelFileRow.account_id == account_id, ModelFileRow.model_id == model_id,
                                       ModelFileRow.filename == filename, ModelFileRow.upload_nonce == nonce)
            .values(upload_nonce="").execution_options(synchronize_session=False)).rowcount
        if not claimed:
            raise FailedPrecondition(f"{filename}: this upload URL of {name!r} was already used or replaced by a "
                                     "newer :getUploadEndpoint (each URL uploads once); get a new one")
        file = session.scalar(select(ModelFileRow).where(
            ModelFileRow.account_id == account_id, ModelFileRow.model_id == model_id,
            ModelFileRow.filename == filename).execution_options(populate_existing=True))
        declared = file.declared_size
        session.commit()
    try:
        if content_length is not None and content_length > declared:
            raise PayloadTooLarge(f"{filename}: body of {content_length} bytes is larger than the declared "
                                  f"size of {declared} bytes")
        key = staging_key(account_id, model_id, filename)
        info = blobs.write_stream(key, _exactly(chunks, declared, filename), min(declared, max_file_bytes))
    except BaseException:
        _release(factory, account_id, model_id, filename, nonce)   # a failed PUT may be retried
        raise
    with factory() as session:
        row = session.get(ModelRow, (account_id, model_id), with_for_update=True)
        file = session.get(ModelFileRow, (account_id, model_id, filename), with_for_update=True)
        if (row is None or file is None or row.state != STATE_UPLOADING or file.declared_size != declared
                or file.upload_nonce):
            session.rollback()
            blobs.delete(key)
            if row is None:
                raise not_found("model", name)
            raise FailedPrecondition(f"{filename}: {name!r} changed during the upload (now {row.state}, or a "
                                     "newer :getUploadEndpoint); the bytes were discarded")
        previous = file.staged_key
        file.size, file.sha256, file.staged_key = info.size, info.sha256, key
        session.commit()
    if previous and previous != key:
        blobs.delete(previous)


def _release(factory: sessionmaker[Session], account_id: str, model_id: str, filename: str, nonce: str) -> None:
    """Give a PUT's nonce back after it failed (too many or too few bytes, a cut connection),
    unless a newer :getUploadEndpoint issued another one meanwhile."""
    with factory() as session:
        session.execute(update(ModelFileRow).where(
            ModelFileRow.account_id == account_id, ModelFileRow.model_id == model_id,
            ModelFileRow.filename == filename, ModelFileRow.upload_nonce == "")
            .values(upload_nonce=nonce).execution_options(synchronize_session=False))
        session.commit()


# ---- :validateUpload ------------------------------------------------------------------------

def current_key(blobs: BlobStore, file: ModelFileRow) -> str:
    """The staged blob, or the final one once published (also after a crash mid-publish)."""
    if file.staged_key and blobs.exists(file.staged_key):
        return file.staged_key
    return final_key(file.account_id, file.model_id, file.filename)


def validate_upload(session: Session, blobs: BlobStore, caller: Principal, account_id: str,
                    model_id: str) -> list[str]:
    """Check the files and mark the model READY, in three steps so that neither blob I/O runs
    under the write lock nor a concurrent write is lost:
      1. read the row and its files, check the blobs they name (no lock);
      2. move the checked staged blobs to their final keys (the model is still UPLOADING, so
         nothing reads them there yet);
      3. under the account lock, read the row and files again: if a PUT or :getUploadEndpoint
         changed a file meanwhile, 409 ABORTED (validate again); if a concurrent
         :validateUpload won, nothing to do; else record what the check found on the row as it
         is now (a PATCH that landed meanwhile is kept) and mark it READY."""
    row = load_model(session, caller, account_id, model_id, action=Action.WRITE)
    if row.state == STATE_READY:
        return []
    name = row.name
    files = _file_rows(session, account_id, model_id)
    missing = [f.filename for f in files if f.size is None]
    if missing:
        raise InvalidArgument(f"{missing[0]}: declared in :getUploadEndpoint but not uploaded"
                              + (f" (also missing: {', '.join(missing[1:10])})" if len(missing) > 1 else ""))
    if not files:
        raise InvalidArgument(f"model {name!r} has no files: call :getUploadEndpoint and PUT them first")
    checked = _file_states(files)
    result = check_files(blobs, row, {f.filename: current_key(blobs, f) for f in files})
    moves = [(f.staged_key, final_key(account_id, model_id, f.filename)) for f in files
             if f.staged_key and f.staged_key != final_key(account_id, model_id, f.filename)]
    session.rollback()   # end the read transaction before the moves and the lock
    for staged, final in moves:
        _publish(blobs, staged, final)
    serialize_account(session, account_id)
    row = session.get(ModelRow, (account_id, model_id), populate_existing=True)
    if row is None:
        raise not_found("model", name)
    if row.state == STATE_READY:
        return []          # a concurrent :validateUpload of the same files won
    files = _file_rows(session, account_id, model_id, refresh=True)
    if _file_states(files) != checked:
        session.rollback()
        raise Aborted(f"model {name!r}: its files changed while they were being validated; "
                      "call :validateUpload again")
    warnings = record_check(row, result)
    for f in files:
        f.staged_key = ""
    session.commit()
    return warnings


def _file_states(files: list[ModelFileRow]) -> dict[str, tuple]:
    return {f.filename: (f.staged_key, f.sha256, f.size, f.declared_size) for f in files}


def _publish(blobs: BlobStore, staged: str, final: str) -> None:
    """Move a checked staged blob to its final key; a concurrent :validateUpload may have moved it first."""
    if not blobs.exists(staged):
        return
    try:
        blobs.move(staged, final)
    except FileNotFoundError:
        if not blobs.exists(final):
            raise


def finalize(session: Session, blobs: BlobStore, row: ModelRow, keys: dict[str, str]) -> list[str]:
    """Check the files (filename -> blob key), fill the details they reveal, mark READY.
    The caller commits (and holds the row: registering a job's output model)."""
    return record_check(row, check_files(blobs, row, keys))


def check_files(blobs: BlobStore, row: ModelRow, keys: dict[str, str]) -> CheckResult:
    """What the files (filename -> blob key) reveal, or the 400 naming what is wrong with them."""
    if row.kind == KIND_ADDON:
        peft = (row.spec or {}).get("peft_details") or {}
        return check_addon(blobs, keys, peft_r=peft.get("r"), peft_target_modules=peft.get("target_modules") or [])
    return check_base_model(blobs, keys)


def record_check(row: ModelRow, result: CheckResult) -> list[str]:
    """Store what the check found on the row (its current spec), mark it READY; the warnings."""
    spec = dict(row.spec or {})
    if row.kind == KIND_ADDON:
        peft = dict(spec.get("peft_details") or {})
        peft["r"] = result.lora_rank
        peft["target_modules"] = peft.get("target_modules") or result.target_modules
        spec["peft_details"] = peft
    else:
        details = dict(spec.get("base_model_details") or {})
        details.update(checkpoint_format="HUGGINGFACE", parameter_count=result.parameter_count,
                       model_type=result.model_type)
        spec["base_model_details"] = details
        if spec.get("context_length") is None and result.context_length:
            spec["context_length"] = result.context_length
    spec["status"] = {"code": "OK", "message": ""}
    row.spec = spec
    row.state = STATE_READY
    row.etag = (row.etag or 0) + 1
    return result.warnings


# ---- downloads ------------------------------------------------------------------------------

def download_endpoints(session: Session, caller: Principal, account_id: str, model_id: str, *,
                       base_url: str) -> dict[str, str]:
    row = load_model(session, caller, account_id, model_id)
    if row.state != STATE_READY:
        raise FailedPrecondition(f"model {row.name!r} is {row.state}: its files can be downloaded once READY")
    urls = {}
    for f in _file_rows(session, row.account_id, row.model_id):
        path = file_path(DOWNLOAD_PREFIX, row.account_id, row.model_id, f.filename)
        query = sign(session, "GET", path, binding=instance_binding(row.create_time))
        urls[f.filename] = f"{base_url}{path}?{query}"
    return urls


def open_download(session: Session, blobs: BlobStore, *, account_id: str, model_id: str, filename: str,
                  expires: str | None, sig: str | None) -> tuple[int, Iterator[bytes]]:
    """(size, chunks) of a published model file named by a signed GET URL."""
    validate_id(account_id, "account id")
    validate_id(model_id, "model id")
    safe_filename(filename)
    path = file_path(DOWNLOAD_PREFIX, account_id, model_id, filename)
    row = session.get(ModelRow, (account_id, model_id))
    verify(session, "GET", path, expires, sig, binding=instance_binding(row.create_time) if row else "missing")
    if row is None:
        raise _refused_url()
    key = final_key(account_id, model_id, filename)
    try:
        size = blobs.size(key)
    except NotFound:
        raise not_found("model file", f"accounts/{account_id}/models/{model_id}/files/{filename}") from None
    return size, blobs.iter_chunks(key)
