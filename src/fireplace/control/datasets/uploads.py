"""Dataset uploads: direct (:upload, multipart) or through signed URLs (:getUploadEndpoint,
PUT, :validateUpload); and signed download URLs (:getDownloadEndpoint).

Both upload paths validate the whole file line by line (fireplace.training.dataset_format)
before anything is published; a file that does not validate writes nothing. Publishing is
one conditional UPDATE (UPLOADING -> READY), so of two racing uploads exactly one wins.

Sealed once validated: every blob is written under a key of its own, before the write
lock is taken, and never written again: datasets/{a}/{d}/data-{hex}.jsonl (from :upload)
or datasets/{a}/{d}/uploads/{nonce}/{file} (from a signed PUT); row.blob_key names the one
that holds the data. A signed PUT URL carries a nonce (`upload=`) and is signed for that
nonce and the dataset's instance (its create time): it writes once, stops working when a
newer :getUploadEndpoint replaces it, and never works for a re-created dataset of the
same ID. Download URLs are bound to the instance too.
"""
from __future__ import annotations

import secrets
from typing import BinaryIO

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fireplace.api.auth import Action, Principal
from fireplace.config import Limits
from fireplace.control.common import fetch, touch
from fireplace.control.datasets.service import (
    COLLECTION, DATA_FILE, KIND, QUOTA, fetch_dataset, require_uploading)
from fireplace.control.datasets.tables import READY, UPLOADING, DatasetRow
from fireplace.control.datasets.usage import dataset_bytes
from fireplace.control.quotas.definitions import enforce_quota
from fireplace.control.locks import serialize_account
from fireplace.control.signed_urls import instance_binding, sign, verify
from fireplace.errors import FailedPrecondition, InvalidArgument, PayloadTooLarge, PermissionDenied, not_found
from fireplace.ids import is_valid_id, validate_id
from fireplace.storage import BlobStore, blob_key, safe_filename
from fireplace.training.dataset_format import DatasetReport, validate_jsonl


def check_uploadable(session: Session, caller: Principal, account_id: str, dataset_id: str) -> DatasetRow:
    row = fetch_dataset(session, caller, account_id, dataset_id, Action.WRITE)
    require_uploading(row)
    session.commit()  # end the read transaction: validation may take a while
    return row


def _validate(stream: BinaryIO, row: DatasetRow, limits: Limits) -> DatasetReport:
    declared = row.format if row.format != "FORMAT_UNSPECIFIED" else None
    report = validate_jsonl(stream, declared_format=declared, max_errors=limits.max_dataset_errors,
                            min_examples=limits.min_dataset_examples)
    if not report.ok:
        raise InvalidArgument(f"dataset {row.name!r} was not accepted: {report.summary()}",
                              details=[e.as_dict() for e in report.errors])
    return report


def _publish(session: Session, row: DatasetRow, report: DatasetReport, key: str, filename: str, *,
             nonce: str | None = None) -> DatasetRow:
    """UPLOADING -> READY with the validated file's figures; the bytes are already at `key`
    (staged before, so no blob I/O happens while the write lock is held). The account lock
    serializes the dataset-bytes quota; the conditional UPDATE claims the row, so of two
    racing uploads exactly one publishes and the other gets FAILED_PRECONDITION. `nonce`
    (signed-URL uploads): the upload that was validated must still be the dataset's pending
    one. The caller deletes the staged blob when this raises."""
    pk = (DatasetRow.account_id == row.account_id, DatasetRow.dataset_id == row.dataset_id)
    try:
        serialize_account(session, row.account_id)
        claimed = session.execute(
            update(DatasetRow).where(*pk, DatasetRow.state == UPLOADING)
            .values(etag=DatasetRow.etag + 1).execution_options(synchronize_session=False)).rowcount
        current = session.scalar(select(DatasetRow).where(*pk).execution_options(populate_existing=True))
        if current is None:
            raise not_found(KIND, row.name)
        if not claimed:
            require_uploading(current)
        if nonce is not None and (_pending(current) or {}).get("nonce") != nonce:
            raise FailedPrecondition(f"dataset {row.name!r}: a newer :getUploadEndpoint replaced this upload; "
                                     "PUT the file to the new URL and validate again")
        enforce_quota(session, row.account_id, QUOTA, usage=dataset_bytes(session, row.account_id),
                      adding=report.size_bytes)
        row = current
        row.state, row.blob_key = READY, key
        row.format = report.format or row.format
        row.example_count, row.estimated_token_count = report.example_count, report.estimated_token_count
        row.size_bytes = report.size_bytes
        row.spec = {**(row.spec or {}), "filename": filename, "sha256": report.sha256,
                    "averageTurnCount": report.average_turn_count, "pendingUploads": {}}
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return row


def upload_file(session: Session, blobs: BlobStore, limits: Limits, caller: Principal, account_id: str,
                dataset_id: str, fileobj: BinaryIO, filename: str | None) -> DatasetRow:
    """:upload: validate the received file, stage it under a key of its own, then publish it."""
    row = check_uploadable(session, caller, account_id, dataset_id)
    size = fileobj.seek(0, 2)
    if size > limits.max_dataset_bytes:
        raise PayloadTooLarge(f"dataset file is {size} bytes; the limit is {limits.max_dataset_bytes} bytes")
    fileobj.seek(0)
    report = _validate(fileobj, row, limits)
    key = blob_key(COLLECTION, account_id, dataset_id, f"data-{secrets.token_hex(8)}.jsonl")
    fileobj.seek(0)
    blobs.write_file(key, fileobj, limits.max_dataset_bytes)
    try:
        return _publish(session, row, report, key, _display_filename(filename))
    except BaseException:
        blobs.delete(key)
        raise


def _display_filename(filename: str | None) -> str:
    try:
        return safe_filename((filename or "").rsplit("/", 1)[-1])
    except InvalidArgument:
        return DATA_FILE


def file_path(account_id: str, dataset_id: str, filename: str) -> str:
    """The path of our own upload/download endpoint for one file (signed per method)."""
    return f"/v1/uploads/datasets/{account_id}/{dataset_id}/{filename}"


def _pending(row: DatasetRow) -> dict | None:
    """The one declared signed-URL upload: {"filename", "size", "nonce", "claimed", "stagedKey"}."""
    pending = (row.spec or {}).get("pendingUploads") or {}
    return pending if "nonce" in pending else None


def _put_binding(row: DatasetRow, nonce: str) -> str:
    return f"{instance_binding(row.create_time)}:{nonce}"


def get_upload_endpoint(session: Session, blobs: BlobStore, limits: Limits, caller: Principal, account_id: str,
                        dataset_id: str, filename_to_size: dict[str, int], base_url: str) -> dict[str, str]:
    """A single-use signed PUT URL for the dataset's one file. A new call replaces the previous
    upload (its URL stops working and its staged bytes are dropped)."""
    if len(filename_to_size) != 1:
        raise InvalidArgument(f"filenameToSize must name exactly one file (the dataset's JSONL), "
                              f"got {len(filename_to_size)}")
    (filename, size), = filename_to_size.items()
    safe_filename(filename)
    if size < 0:
        raise InvalidArgument(f"filenameToSize[{filename!r}] must not be negative")
    if size > limits.max_dataset_bytes:
        raise PayloadTooLarge(f"file {filename!r} is {size} bytes; the limit is {limits.max_dataset_bytes} bytes")
    row = fetch(session, DatasetRow, caller, account_id, dataset_id, kind=KIND, collection=COLLECTION,
                action=Action.WRITE, serialize=True)
    require_uploading(row)
    enforce_quota(session, account_id, QUOTA, usage=dataset_bytes(session, account_id), adding=size)
    previous = (_pending(row) or {}).get("stagedKey")
    nonce = "u" + secrets.token_hex(16)
    row.spec = {**(row.spec or {}), "pendingUploads": {"filename": filename, "size": size, "nonce": nonce,
                                                        "claimed": False, "stagedKey": ""}}
    touch(row)
    session.commit()
    if previous:
        blobs.delete(previous)
    path = file_path(account_id, dataset_id, filename)
    query = sign(session, "PUT", path, binding=_put_binding(row, nonce))
    return {filename: f"{base_url}{path}?{query}&upload={nonce}"}


def _refused_url() -> PermissionDenied:
    return PermissionDenied("upload/download URL signature is invalid")


def _signed_row(session: Session, method: str, account_id: str, dataset_id: str, filename: str,
                expires: str | None, sig: str | None, nonce: str | None = None) -> DatasetRow:
    """The dataset a signed URL names, if the signature holds for that very instance (and,
    for a PUT, that upload nonce). A missing dataset answers like a bad signature."""
    validate_id(account_id, "account id")
    validate_id(dataset_id, "dataset id")
    safe_filename(filename)
    row = session.get(DatasetRow, (account_id, dataset_id))
    if row is None:
        verify(session, method, file_path(account_id, dataset_id, filename), expires, sig, binding="missing")
        raise _refused_url()
    binding = _put_binding(row, nonce or "") if method == "PUT" else instance_binding(row.create_time)
    verify(session, method, file_path(account_id, dataset_id, filename), expires, sig, binding=binding)
    return row


def accept_signed_upload(session: Session, account_id: str, dataset_id: str, filename: str,
                         expires: str | None, sig: str | None, nonce: str | None) -> tuple[str, int]:
    """Claim a signed PUT before its body is read (each URL writes once); returns the unique
    staging key to write and the declared size."""
    if not nonce or not is_valid_id(nonce):
        raise _refused_url()
    row = _signed_row(session, "PUT", account_id, dataset_id, filename, expires, sig, nonce)
    pk = (DatasetRow.account_id == account_id, DatasetRow.dataset_id == dataset_id)
    serialize_account(session, account_id)
    row = session.scalar(select(DatasetRow).where(*pk).execution_options(populate_existing=True))
    if row is None:
        raise _refused_url()
    require_uploading(row)
    pending = _pending(row)
    if pending is None or pending["nonce"] != nonce or pending["filename"] != filename:
        raise FailedPrecondition(f"this upload URL of dataset {row.name!r} was replaced by a newer "
                                 ":getUploadEndpoint; use the newest URL")
    if pending["claimed"]:
        raise FailedPrecondition(f"this upload URL of dataset {row.name!r} was already used (each URL "
                                 "uploads once); call :getUploadEndpoint for a new one")
    key = blob_key(COLLECTION, account_id, dataset_id, "uploads", nonce, filename)
    row.spec = {**row.spec, "pendingUploads": {**pending, "claimed": True}}
    touch(row)
    session.commit()
    return key, int(pending["size"])


def release_signed_upload(session: Session, account_id: str, dataset_id: str, nonce: str) -> None:
    """A PUT that failed (too large, cut short) gives its claim back, so the URL may be retried."""
    session.rollback()
    serialize_account(session, account_id)
    row = session.scalar(select(DatasetRow).where(DatasetRow.account_id == account_id,
                                                  DatasetRow.dataset_id == dataset_id)
                         .execution_options(populate_existing=True))
    pending = _pending(row) if row is not None else None
    if pending is not None and pending["nonce"] == nonce and not pending.get("stagedKey"):
        row.spec = {**row.spec, "pendingUploads": {**pending, "claimed": False}}
    session.commit()


def finish_signed_upload(session: Session, blobs: BlobStore, account_id: str, dataset_id: str, nonce: str,
                         key: str) -> None:
    """After the PUT's bytes are staged: record them, unless the upload was replaced or the
    dataset published meanwhile (then the bytes are dropped and the PUT refused)."""
    pk = (DatasetRow.account_id == account_id, DatasetRow.dataset_id == dataset_id)
    try:
        serialize_account(session, account_id)
        row = session.scalar(select(DatasetRow).where(*pk).execution_options(populate_existing=True))
        pending = _pending(row) if row is not None else None
        if row is None or row.state != UPLOADING or pending is None or pending["nonce"] != nonce:
            raise FailedPrecondition(f"dataset accounts/{account_id}/datasets/{dataset_id} changed during the "
                                     "upload; the bytes were discarded")
        row.spec = {**row.spec, "pendingUploads": {**pending, "stagedKey": key}}
        touch(row)
        session.commit()
    except BaseException:
        session.rollback()
        blobs.delete(key)
        raise


def validate_upload(session: Session, blobs: BlobStore, limits: Limits, caller: Principal,
                    account_id: str, dataset_id: str) -> DatasetRow:
    """:validateUpload: check the file PUT through the signed URL exactly like :upload does;
    the staged blob (unique to that PUT, which can never run again) becomes the data."""
    row = check_uploadable(session, caller, account_id, dataset_id)
    pending = _pending(row)
    if pending is None:
        raise FailedPrecondition(f"nothing was uploaded to dataset {row.name!r}: call :getUploadEndpoint, "
                                 "PUT the file to the URL it returns, then :validateUpload")
    filename, declared, key = pending["filename"], pending["size"], pending.get("stagedKey")
    if not key or not blobs.exists(key):
        raise FailedPrecondition(f"file {filename!r} has not been uploaded yet: PUT it to the signed URL "
                                 "from :getUploadEndpoint")
    size = blobs.size(key)
    if size != int(declared):
        raise FailedPrecondition(f"file {filename!r} has {size} bytes but {declared} were declared")
    with blobs.open(key) as stream:
        report = _validate(stream, row, limits)
    return _publish(session, row, report, key, filename, nonce=pending["nonce"])


def get_download_endpoint(session: Session, caller: Principal, account_id: str, dataset_id: str,
                          base_url: str) -> dict[str, str]:
    row = fetch_dataset(session, caller, account_id, dataset_id)
    if row.state != READY or not row.blob_key:
        raise FailedPrecondition(f"dataset {row.name!r} has no data yet (state {row.state})")
    filename = (row.spec or {}).get("filename") or DATA_FILE
    path = file_path(account_id, dataset_id, filename)
    return {filename: f"{base_url}{path}?{sign(session, 'GET', path, binding=instance_binding(row.create_time))}"}


def open_signed_download(session: Session, account_id: str, dataset_id: str, filename: str,
                         expires: str | None, sig: str | None) -> DatasetRow:
    row = _signed_row(session, "GET", account_id, dataset_id, filename, expires, sig)
    if row.state != READY or filename != ((row.spec or {}).get("filename") or DATA_FILE):
        raise not_found("file", file_path(account_id, dataset_id, filename))
    return row
