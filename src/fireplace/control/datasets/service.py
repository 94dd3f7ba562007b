"""Datasets: create, get, list, update, delete (uploads are in uploads.py).

Lifecycle: create -> UPLOADING; an upload that validates -> READY, immutable from then on
(content fields may only be sent unchanged; displayName and evaluation metadata may change).
`sourceDatasetId` on create copies a READY dataset's data: the new one starts READY.
"""
from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fireplace.api.auth import Action, Principal, authorize
from fireplace.api.filtering import FieldMap, name_field, as_int, as_str, as_time
from fireplace.api.listing import ListParams, paginate
from fireplace.api.wire import Status, Wire, rfc3339
from fireplace.control.common import check_etag, fetch, touch, update_mask_fields
from fireplace.control.datasets.schemas import Dataset, DatasetCreate, DatasetFields
from fireplace.control.datasets.tables import READY, UPLOADING, DatasetRow
from fireplace.control.datasets.usage import dataset_bytes
from fireplace.control.locks import serialize_account
from fireplace.control.quotas.definitions import enforce_quota
from fireplace.db.engine import add_unique
from fireplace.errors import FailedPrecondition, InvalidArgument, not_found
from fireplace.ids import parse_name, validate_id
from fireplace.storage import BlobStore, blob_key

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


LIST_FIELDS: FieldMap = {
    "name": name_field(DatasetRow.dataset_id, "accounts/", DatasetRow.account_id, "/datasets/", DatasetRow.dataset_id),
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
        etag=str(row.etag),
        **{field: spec.get(key) for field, key in SPEC_KEYS.items()})


def fetch_dataset(session: Session, caller: Principal, account_id: str, dataset_id: str,
                  action: Action = Action.READ, *, serialize: bool = False) -> DatasetRow:
    return fetch(session, DatasetRow, caller, account_id, dataset_id, kind=KIND, collection=COLLECTION,
                 action=action, serialize=serialize)


def require_uploading(row: DatasetRow) -> None:
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
    validate_id(account_id, "account id")
    owner, dataset_id = parse_name(body.dataset_id, COLLECTION, account_id=account_id, what="dataset")
    if owner != account_id:
        raise InvalidArgument(f"datasetId {body.dataset_id!r} names another account than {account_id!r}")
    authorize(caller, account_id, Action.WRITE, kind="account", name=f"accounts/{account_id}")
    row = DatasetRow(account_id=account_id, dataset_id=dataset_id, state=UPLOADING, spec={},
                     created_by=_creator(session, caller))
    fields = body.dataset
    _apply(row, {f: _wire_value(fields, f) for f in fields.model_fields_set if f in DatasetFields.model_fields})
    source, copied = None, None
    if body.source_dataset_id is not None:   # "" is a bad name (400), as the spec's pattern says
        # Copy the source's bytes first, to a key of its own: no blob I/O under the write lock.
        source = _source_dataset(session, caller, row, body.source_dataset_id)
        copied = blob_key(COLLECTION, account_id, dataset_id, f"data-{secrets.token_hex(8)}.jsonl")
        session.commit()
        blobs.write_stream(copied, blobs.iter_chunks(source.blob_key), max_bytes=source.size_bytes)
    try:
        serialize_account(session, account_id)
        add_unique(session, row, f"dataset {row.name!r}")
        if source is not None:
            _take_copy(session, row, source, copied)
        session.commit()
    except BaseException:
        session.rollback()
        if copied:
            blobs.delete(copied)
        raise
    return row


def _source_dataset(session: Session, caller: Principal, row: DatasetRow, source: str) -> DatasetRow:
    """`sourceDatasetId`: a READY dataset the caller may read, of a compatible format."""
    src_account, src_id = parse_name(source, COLLECTION, account_id=row.account_id, what="source dataset")
    src = fetch_dataset(session, caller, src_account, src_id)
    if src.state != READY:
        raise FailedPrecondition(f"source dataset {src.name!r} is {src.state}; it must be READY")
    if (row.format or "FORMAT_UNSPECIFIED") not in ("FORMAT_UNSPECIFIED", src.format):
        raise InvalidArgument(f"format {row.format} disagrees with source dataset's format {src.format}")
    return src


def _take_copy(session: Session, row: DatasetRow, src: DatasetRow, key: str) -> None:
    """The new dataset starts READY with the copied bytes at `key` (under the account lock)."""
    enforce_quota(session, row.account_id, QUOTA, usage=dataset_bytes(session, row.account_id),
                  adding=src.size_bytes)
    spec = dict(row.spec or {})
    for k in ("filename", "sha256", "averageTurnCount"):
        if k in (src.spec or {}):
            spec[k] = src.spec[k]
    row.spec = spec
    row.state, row.format, row.blob_key = READY, src.format, key
    row.example_count, row.estimated_token_count, row.size_bytes = (
        src.example_count, src.estimated_token_count, src.size_bytes)


def get_dataset(session: Session, caller: Principal, account_id: str, dataset_id: str) -> DatasetRow:
    return fetch_dataset(session, caller, account_id, dataset_id)


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
                   body: DatasetFields, update_mask: str | None = None, *, etag: str | None = None) -> DatasetRow:
    """PATCH: merge the fields present (or exactly those in updateMask, absent ones cleared).
    Once READY, content fields may only be sent unchanged. A stale etag is 409 ABORTED."""
    row = fetch_dataset(session, caller, account_id, dataset_id, Action.WRITE, serialize=True)
    check_etag(row, etag)
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
    from fireplace.control.fine_tuning.usage import dataset_usage  # lazy: fine_tuning imports datasets
    return dataset_usage(session, dataset_name)


def delete_dataset(session: Session, blobs: BlobStore, caller: Principal, account_id: str,
                   dataset_id: str, *, etag: str | None = None) -> None:
    row = fetch_dataset(session, caller, account_id, dataset_id, Action.WRITE, serialize=True)
    check_etag(row, etag)
    jobs = _unfinished_jobs_using(session, row.name)
    if jobs:
        raise FailedPrecondition(f"dataset {row.name!r} is used by fine-tuning job(s) that have not finished: "
                                 f"{', '.join(jobs)}; cancel them or wait for them to finish first")
    session.delete(row)
    session.commit()
    # After the commit: a crash here leaves orphaned bytes, never a row without its data.
    blobs.delete_prefix(blob_key(COLLECTION, account_id, dataset_id))
