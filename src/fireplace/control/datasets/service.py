"""Datasets: create, upload (direct, or PUT through a signed URL then :validateUpload),
read, update, delete.

Lifecycle: create -> UPLOADING; an upload that validates -> READY, immutable from then on.
An upload that does not validate writes nothing: the dataset stays exactly as it was.
Blob layout (keys built only from validated IDs and file names):
    datasets/{a}/{d}/data.jsonl             written by :upload (and by a copy from a source)
    datasets/{a}/{d}/uploads/{filename}     PUT through a signed URL; becomes the data once valid
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, BinaryIO

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fireplace.api.auth import Action, Principal, authorize
from fireplace.api.filtering import FieldMap, as_int, as_str, as_time
from fireplace.api.listing import ListParams, paginate
from fireplace.api.wire import Status, Wire, rfc3339
from fireplace.config import Limits
from fireplace.control.common import fetch, resource_name, touch, update_mask_fields
from fireplace.control.datasets.schemas import Dataset, DatasetCreate, DatasetFields
from fireplace.control.datasets.tables import READY, UPLOADING, DatasetRow
from fireplace.control.datasets.usage import dataset_bytes
from fireplace.control.quotas.definitions import enforce_quota
from fireplace.control.signed_urls import sign, verify
from fireplace.db.engine import add_unique
from fireplace.errors import FailedPrecondition, InvalidArgument, PayloadTooLarge, not_found
from fireplace.ids import parse_name, validate_id
from fireplace.storage import BlobStore, blob_key, safe_filename
from fireplace.training.dataset_format import DatasetReport, validate_jsonl

KIND, COLLECTION = "dataset", "datasets"
DATA_FILE = "data.jsonl"
QUOTA = "dataset-bytes"
# Fields that describe the content: fixed once the dataset is READY.
CONTENT_FIELDS = ("format", "example_count", "user_uploaded", "external_url", "splitted", "transformed")
# Wire fields kept in row.spec, by their snake_case field name.
SPEC_KEYS = {"user_uploaded": "userUploaded", "external_url": "externalUrl", "source_job_name": "sourceJobName",
             "eval_protocol": "evalProtocol", "evaluation_result": "evaluationResult",
             "splitted": "splitted", "transformed": "transformed"}
OUTPUT_ONLY = {"name", "state", "status", "create_time", "update_time", "created_by",
               "estimated_token_count", "average_turn_count"}


def _name_to_id(value: Any) -> str:
    return str(value).rsplit("/", 1)[-1]


LIST_FIELDS: FieldMap = {
    "name": (DatasetRow.dataset_id, _name_to_id),
    "state": (DatasetRow.state, as_str),
    "format": (DatasetRow.format, as_str),
    "display_name": (DatasetRow.display_name, as_str),
    "create_time": (DatasetRow.create_time, as_time),
    "update_time": (DatasetRow.update_time, as_time),
    "example_count": (DatasetRow.example_count, as_int),
}


def to_wire(row: DatasetRow) -> Dataset:
    spec = row.spec or {}
    return Dataset(
        name=row.name, display_name=row.display_name, state=row.state, status=Status(),
        create_time=rfc3339(row.create_time), update_time=rfc3339(row.update_time),
        created_by=row.created_by or None, format=row.format, example_count=row.example_count,
        estimated_token_count=row.estimated_token_count, average_turn_count=spec.get("averageTurnCount"),
        **{field: spec.get(key) for field, key in SPEC_KEYS.items()})


def _fetch(session: Session, caller: Principal, account_id: str, dataset_id: str,
           action: Action = Action.READ) -> DatasetRow:
    return fetch(session, DatasetRow, caller, account_id, dataset_id, kind=KIND, collection=COLLECTION,
                 action=action)


def _require_uploading(row: DatasetRow) -> None:
    if row.state != UPLOADING:
        raise FailedPrecondition(f"dataset {row.name!r} is {row.state} and immutable: "
                                 "create a new dataset to upload other data")


def _creator(session: Session, caller: Principal) -> str:
    from fireplace.control.users.tables import UserRow
    user = session.get(UserRow, (caller.account_id, caller.user_id))
    return (user.email if user is not None else "") or caller.user_name


def _wire_value(body: Wire, field: str) -> Any:
    value = getattr(body, field)
    return value.dump() if isinstance(value, Wire) else value


def _apply(row: DatasetRow, changes: dict[str, Any]) -> None:
    spec = dict(row.spec or {})
    for field, value in changes.items():
        if field == "display_name":
            row.display_name = value or ""
        elif field == "format":
            row.format = value or "FORMAT_UNSPECIFIED"
        elif field == "example_count":
            if value is not None and value < 0:
                raise InvalidArgument("exampleCount must not be negative")
            row.example_count = value or 0
        elif field in SPEC_KEYS:
            if value is None:
                spec.pop(SPEC_KEYS[field], None)
            else:
                spec[SPEC_KEYS[field]] = value
    row.spec = spec


# ---- create, read, list, update, delete ---------------------------------------------------

def create_dataset(session: Session, blobs: BlobStore, caller: Principal, account_id: str,
                   body: DatasetCreate) -> DatasetRow:
    from fireplace.control.accounts.tables import AccountRow
    validate_id(account_id, "account id")
    owner, dataset_id = parse_name(body.dataset_id, COLLECTION, account_id=account_id, what="dataset")
    if owner != account_id:
        raise InvalidArgument(f"datasetId {body.dataset_id!r} names another account than {account_id!r}")
    authorize(caller, account_id, Action.WRITE, kind="account", name=f"accounts/{account_id}")
    if session.get(AccountRow, account_id) is None:
        raise not_found("account", f"accounts/{account_id}")
    row = DatasetRow(account_id=account_id, dataset_id=dataset_id, state=UPLOADING, spec={},
                     created_by=_creator(session, caller))
    fields = body.dataset
    _apply(row, {f: _wire_value(fields, f) for f in fields.model_fields_set if f in DatasetFields.model_fields})
    add_unique(session, row, f"dataset {row.name!r}")
    try:
        if body.source_dataset_id:
            _copy_from_source(session, blobs, caller, row, body.source_dataset_id)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return row


def _copy_from_source(session: Session, blobs: BlobStore, caller: Principal, row: DatasetRow,
                      source: str) -> None:
    """`sourceDatasetId`: the new dataset starts READY with a copy of a READY dataset's data."""
    src_account, src_id = parse_name(source, COLLECTION, account_id=row.account_id, what="source dataset")
    src = _fetch(session, caller, src_account, src_id)
    if src.state != READY:
        raise FailedPrecondition(f"source dataset {src.name!r} is {src.state}; it must be READY")
    if row.format not in ("FORMAT_UNSPECIFIED", src.format):
        raise InvalidArgument(f"format {row.format} disagrees with source dataset's format {src.format}")
    enforce_quota(session, row.account_id, QUOTA, usage=dataset_bytes(session, row.account_id),
                  adding=src.size_bytes)
    key = blob_key(COLLECTION, row.account_id, row.dataset_id, DATA_FILE)
    blobs.write_stream(key, blobs.iter_chunks(src.blob_key), max_bytes=src.size_bytes)
    spec = dict(row.spec or {})
    for k in ("filename", "sha256", "averageTurnCount"):
        if k in (src.spec or {}):
            spec[k] = src.spec[k]
    row.spec = spec
    row.state, row.format, row.blob_key = READY, src.format, key
    row.example_count, row.estimated_token_count, row.size_bytes = (
        src.example_count, src.estimated_token_count, src.size_bytes)


def get_dataset(session: Session, caller: Principal, account_id: str, dataset_id: str) -> DatasetRow:
    return _fetch(session, caller, account_id, dataset_id)


def list_datasets(session: Session, caller: Principal, account_id: str,
                  params: ListParams) -> tuple[list[DatasetRow], str, int]:
    validate_id(account_id, "account id")
    authorize(caller, account_id, Action.READ, kind="account", name=f"accounts/{account_id}")
    stmt = select(DatasetRow).where(DatasetRow.account_id == account_id)
    return paginate(session, stmt, params, LIST_FIELDS, [DatasetRow.dataset_id], scope=f"datasets/{account_id}")


def _current(row: DatasetRow, field: str) -> Any:
    if field in ("format", "example_count"):
        return getattr(row, field)
    return (row.spec or {}).get(SPEC_KEYS[field])


def update_dataset(session: Session, caller: Principal, account_id: str, dataset_id: str,
                   body: DatasetFields, update_mask: str | None = None) -> DatasetRow:
    """PATCH: merge the fields present (or exactly those in updateMask, absent ones cleared).
    Once READY, content fields may only be sent unchanged."""
    row = _fetch(session, caller, account_id, dataset_id, Action.WRITE)
    mask = update_mask_fields(update_mask)
    writable = set(DatasetFields.model_fields)
    if mask is None:
        fields = body.model_fields_set & writable
    else:
        unknown = mask - writable - OUTPUT_ONLY
        if unknown:
            raise InvalidArgument(f"updateMask names unknown field(s): {', '.join(sorted(unknown))}")
        fields = mask & writable
    changes = {f: _wire_value(body, f) for f in fields}
    if row.state == READY:
        for field in CONTENT_FIELDS:
            if field in changes and changes[field] != _current(row, field):
                raise FailedPrecondition(f"dataset {row.name!r} is READY and immutable: {field} cannot change "
                                         "(only displayName and evaluation metadata may)")
    _apply(row, changes)
    touch(row)
    session.commit()
    return row


def _unfinished_jobs_using(session: Session, dataset_name: str) -> list[str]:
    """Fine-tuning jobs not finished that train or evaluate on the dataset (owner: fine_tuning)."""
    try:
        from fireplace.control.fine_tuning.usage import dataset_usage
    except ImportError:  # fine-tuning not built yet
        return []
    return dataset_usage(session, dataset_name)


def delete_dataset(session: Session, blobs: BlobStore, caller: Principal, account_id: str,
                   dataset_id: str) -> None:
    row = _fetch(session, caller, account_id, dataset_id, Action.WRITE)
    jobs = _unfinished_jobs_using(session, row.name)
    if jobs:
        raise FailedPrecondition(f"dataset {row.name!r} is used by fine-tuning job(s) that have not finished: "
                                 f"{', '.join(jobs)}; cancel them or wait for them to finish first")
    session.delete(row)
    session.commit()
    # After the commit: a crash here leaves orphaned bytes, never a row without its data.
    blobs.delete_prefix(blob_key(COLLECTION, account_id, dataset_id))


# ---- uploads ------------------------------------------------------------------------------

def check_uploadable(session: Session, caller: Principal, account_id: str, dataset_id: str) -> DatasetRow:
    row = _fetch(session, caller, account_id, dataset_id, Action.WRITE)
    _require_uploading(row)
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
            _require_uploading(current)
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
    row = _fetch(session, caller, account_id, dataset_id, Action.WRITE)
    _require_uploading(row)
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
    _require_uploading(row)
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
    row = _fetch(session, caller, account_id, dataset_id)
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
