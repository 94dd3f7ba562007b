"""Dataset uploads: direct (:upload, multipart) or through signed URLs (:getUploadEndpoint,
PUT, :validateUpload); and signed download URLs (:getDownloadEndpoint).

Both upload paths validate the whole file line by line (fireplace.training.dataset_format)
before anything is published; a file that does not validate writes nothing. Publishing is
one conditional UPDATE (UPLOADING -> READY), so of two racing uploads exactly one wins.
Blob layout: datasets/{a}/{d}/data.jsonl (from :upload) or datasets/{a}/{d}/uploads/{file}
(from a signed PUT); row.blob_key names the one that holds the data.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fireplace.api.auth import Action, Principal
from fireplace.config import Limits
from fireplace.control.common import resource_name, touch
from fireplace.control.datasets.service import (
    COLLECTION, DATA_FILE, KIND, QUOTA, fetch_dataset, require_uploading)
from fireplace.control.datasets.tables import READY, UPLOADING, DatasetRow
from fireplace.control.datasets.usage import dataset_bytes
from fireplace.control.quotas.definitions import enforce_quota
from fireplace.control.signed_urls import sign, verify
from fireplace.errors import FailedPrecondition, InvalidArgument, PayloadTooLarge, not_found
from fireplace.ids import validate_id
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


def _publish(session: Session, row: DatasetRow, report: DatasetReport, key: str, filename: str,
             write: Callable[[], object] | None) -> DatasetRow:
    """UPLOADING -> READY with the validated file's figures. The conditional UPDATE claims the
    row first (a row lock on PostgreSQL, the write lock on SQLite), so of two racing uploads
    exactly one publishes and the other gets FAILED_PRECONDITION."""
    pk = (DatasetRow.account_id == row.account_id, DatasetRow.dataset_id == row.dataset_id)
    try:
        claimed = session.execute(
            update(DatasetRow).where(*pk, DatasetRow.state == UPLOADING)
            .values(etag=DatasetRow.etag + 1).execution_options(synchronize_session=False)).rowcount
        if not claimed:
            current = session.scalar(select(DatasetRow).where(*pk).execution_options(populate_existing=True))
            if current is None:
                raise not_found(KIND, row.name)
            require_uploading(current)
        enforce_quota(session, row.account_id, QUOTA, usage=dataset_bytes(session, row.account_id),
                      adding=report.size_bytes)
        if write is not None:
            write()
        session.refresh(row)
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
    """:upload: validate the received file, then publish it as the dataset's data."""
    row = check_uploadable(session, caller, account_id, dataset_id)
    size = fileobj.seek(0, 2)
    if size > limits.max_dataset_bytes:
        raise PayloadTooLarge(f"dataset file is {size} bytes; the limit is {limits.max_dataset_bytes} bytes")
    fileobj.seek(0)
    report = _validate(fileobj, row, limits)
    key = blob_key(COLLECTION, account_id, dataset_id, DATA_FILE)

    def write() -> None:
        fileobj.seek(0)
        blobs.write_file(key, fileobj, limits.max_dataset_bytes)
    return _publish(session, row, report, key, _display_filename(filename), write)


def _display_filename(filename: str | None) -> str:
    try:
        return safe_filename((filename or "").rsplit("/", 1)[-1])
    except InvalidArgument:
        return DATA_FILE


def file_path(account_id: str, dataset_id: str, filename: str) -> str:
    """The path of our own upload/download endpoint for one file (signed per method)."""
    return f"/v1/uploads/datasets/{account_id}/{dataset_id}/{filename}"


def get_upload_endpoint(session: Session, limits: Limits, caller: Principal, account_id: str,
                        dataset_id: str, filename_to_size: dict[str, int], base_url: str) -> dict[str, str]:
    row = fetch_dataset(session, caller, account_id, dataset_id, Action.WRITE)
    require_uploading(row)
    if len(filename_to_size) != 1:
        raise InvalidArgument(f"filenameToSize must name exactly one file (the dataset's JSONL), "
                              f"got {len(filename_to_size)}")
    (filename, size), = filename_to_size.items()
    safe_filename(filename)
    if size < 0:
        raise InvalidArgument(f"filenameToSize[{filename!r}] must not be negative")
    if size > limits.max_dataset_bytes:
        raise PayloadTooLarge(f"file {filename!r} is {size} bytes; the limit is {limits.max_dataset_bytes} bytes")
    enforce_quota(session, account_id, QUOTA, usage=dataset_bytes(session, account_id), adding=size)
    row.spec = {**(row.spec or {}), "pendingUploads": {filename: size}}
    touch(row)
    session.commit()
    path = file_path(account_id, dataset_id, filename)
    return {filename: f"{base_url}{path}?{sign(session, 'PUT', path)}"}


def _signed_row(session: Session, method: str, account_id: str, dataset_id: str, filename: str,
                expires: str | None, sig: str | None) -> DatasetRow:
    validate_id(account_id, "account id")
    validate_id(dataset_id, "dataset id")
    safe_filename(filename)
    path = file_path(account_id, dataset_id, filename)
    verify(session, method, path, expires, sig)
    row = session.get(DatasetRow, (account_id, dataset_id))
    if row is None:
        raise not_found(KIND, resource_name(account_id, COLLECTION, dataset_id))
    return row


def accept_signed_upload(session: Session, account_id: str, dataset_id: str, filename: str,
                         expires: str | None, sig: str | None) -> str:
    """Check a signed PUT before its body is read; returns the blob key to write."""
    row = _signed_row(session, "PUT", account_id, dataset_id, filename, expires, sig)
    require_uploading(row)
    if filename not in ((row.spec or {}).get("pendingUploads") or {}):
        raise FailedPrecondition(f"file {filename!r} is not an upload of dataset {row.name!r}: "
                                 "call :getUploadEndpoint again")
    session.commit()
    return blob_key(COLLECTION, account_id, dataset_id, "uploads", filename)


def validate_upload(session: Session, blobs: BlobStore, limits: Limits, caller: Principal,
                    account_id: str, dataset_id: str) -> DatasetRow:
    """:validateUpload: check the file PUT through the signed URL exactly like :upload does."""
    row = check_uploadable(session, caller, account_id, dataset_id)
    pending = (row.spec or {}).get("pendingUploads") or {}
    if not pending:
        raise FailedPrecondition(f"nothing was uploaded to dataset {row.name!r}: call :getUploadEndpoint, "
                                 "PUT the file to the URL it returns, then :validateUpload")
    (filename, declared), = pending.items()
    key = blob_key(COLLECTION, account_id, dataset_id, "uploads", filename)
    if not blobs.exists(key):
        raise FailedPrecondition(f"file {filename!r} has not been uploaded yet: PUT it to the signed URL "
                                 "from :getUploadEndpoint")
    size = blobs.size(key)
    if size != int(declared):
        raise FailedPrecondition(f"file {filename!r} has {size} bytes but {declared} were declared")
    with blobs.open(key) as stream:
        report = _validate(stream, row, limits)
    return _publish(session, row, report, key, filename, None)


def get_download_endpoint(session: Session, caller: Principal, account_id: str, dataset_id: str,
                          base_url: str) -> dict[str, str]:
    row = fetch_dataset(session, caller, account_id, dataset_id)
    if row.state != READY or not row.blob_key:
        raise FailedPrecondition(f"dataset {row.name!r} has no data yet (state {row.state})")
    filename = (row.spec or {}).get("filename") or DATA_FILE
    path = file_path(account_id, dataset_id, filename)
    return {filename: f"{base_url}{path}?{sign(session, 'GET', path)}"}


def open_signed_download(session: Session, account_id: str, dataset_id: str, filename: str,
                         expires: str | None, sig: str | None) -> DatasetRow:
    row = _signed_row(session, "GET", account_id, dataset_id, filename, expires, sig)
    if row.state != READY or filename != ((row.spec or {}).get("filename") or DATA_FILE):
        raise not_found("file", file_path(account_id, dataset_id, filename))
    return row
