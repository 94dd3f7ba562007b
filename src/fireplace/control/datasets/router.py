"""HTTP routes of datasets: /v1/accounts/{a}/datasets[/{d}[:verb]] and the signed file URLs
/v1/uploads/datasets/{a}/{d}/{filename} (PUT to upload, GET to download).

Uploads stream: the multipart body of :upload is spooled to a temporary file while its size
is counted (refused with 413 as soon as it passes the limit), then validated and published
in a worker thread, so the event loop never blocks on disk or parsing.
"""
from __future__ import annotations

import time
from tempfile import SpooledTemporaryFile
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

import fireplace.api.paths  # noqa: F401  (the {x:ref} convertor)
from fireplace.control.datasets.schemas import DatasetFields
from fireplace.api.update_mask import UpdateMask
from fireplace.api.auth import CallerDep
from fireplace.api.read_mask import ReadMask
from fireplace.api.deps import SessionDep, SettingsDep, get_blobs
from fireplace.api.etags import EtagDep, body_or_header
from fireplace.api.listing import ListQuery
from fireplace.api.wire import Empty
from fireplace.control.datasets import service, uploads
from fireplace.control.datasets.schemas import (
    Dataset, DatasetCreate, DatasetUpdate, ListDatasetsResponse, SignedUrls, UploadEndpointRequest, UploadResponse)
from fireplace.errors import InvalidArgument, PayloadTooLarge
from fireplace.storage import BlobStore

router = APIRouter(tags=["datasets"])
DATASET_MASK = UpdateMask({*DatasetFields.model_fields, *service.OUTPUT_ONLY})
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
BASE = "/v1/accounts/{account_id}/datasets"
ITEM = BASE + "/{dataset_id:ref}"  # an ID or a full name
FILE = "/v1/uploads/datasets/{account_id}/{dataset_id}/{filename}"
MULTIPART_SLACK = 64 << 10   # multipart headers and boundaries around the file
SPOOL_BYTES = 1 << 20
OUT = dict(response_model_exclude_none=True)
MULTIPART_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "the JSONL file"}}}}}}}
OCTET_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def _base_url(request: Request, settings) -> str:
    return (settings.public_url or str(request.base_url)).rstrip("/")


async def _limited(request: Request, limit: int):
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        yield chunk


async def _receive_multipart_file(request: Request, max_bytes: int) -> UploadFile:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidArgument("send the dataset as multipart/form-data with the JSONL in the field 'file'")
    limit = max_bytes + MULTIPART_SLACK
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"dataset upload is {declared} bytes; the limit is {max_bytes} bytes")
    parser = MultiPartParser(request.headers, _limited(request, limit), max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidArgument(f"invalid multipart body: {exc.message}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        for value in form.values():
            if isinstance(value, UploadFile):
                await value.close()
        raise InvalidArgument("multipart form field 'file' (the JSONL file) is required")
    return upload


@router.post(BASE, response_model=Dataset, summary="Create a dataset (state UPLOADING)", **OUT)
def create_dataset(account_id: str, body: DatasetCreate, caller: CallerDep, session: SessionDep,
                   blobs: BlobsDep) -> Dataset:
    return service.to_wire(service.create_dataset(session, blobs, caller, account_id, body))


@router.get(BASE, response_model=ListDatasetsResponse, summary="List datasets", **OUT)
def list_datasets(account_id: str, params: ListQuery, caller: CallerDep, session: SessionDep) -> ListDatasetsResponse:
    rows, token, total = service.list_datasets(session, caller, account_id, params)
    return ListDatasetsResponse(datasets=[service.to_wire(r) for r in rows], next_page_token=token, total_size=total)


# Custom verbs before the plain {dataset_id} routes (which would match 'd:verb' too).

@router.post(ITEM + ":upload", response_model=UploadResponse, openapi_extra=MULTIPART_BODY,
             summary="Upload the dataset's JSONL (multipart field 'file'); validates it and makes it READY", **OUT)
async def upload_dataset(account_id: str, dataset_id: str, request: Request, caller: CallerDep,
                         session: SessionDep, blobs: BlobsDep, settings: SettingsDep) -> UploadResponse:
    limits = settings.limits
    await run_in_threadpool(uploads.check_uploadable, session, caller, account_id, dataset_id)
    upload = await _receive_multipart_file(request, limits.max_dataset_bytes)
    try:
        row = await run_in_threadpool(uploads.upload_file, session, blobs, limits, caller, account_id,
                                      dataset_id, upload.file, upload.filename)
    finally:
        await upload.close()
    return UploadResponse(id=row.dataset_id, bytes=row.size_bytes, created_at=int(time.time()),
                          filename=row.spec.get("filename", uploads.DATA_FILE), dataset=service.to_wire(row))


@router.post(ITEM + ":getUploadEndpoint", response_model=SignedUrls,
             summary="Signed URL to PUT the dataset's file to (then call :validateUpload)", **OUT)
def get_upload_endpoint(account_id: str, dataset_id: str, body: UploadEndpointRequest, request: Request,
                        caller: CallerDep, session: SessionDep, blobs: BlobsDep, settings: SettingsDep) -> SignedUrls:
    urls = uploads.get_upload_endpoint(session, blobs, settings.limits, caller, account_id, dataset_id,
                                       body.filename_to_size, _base_url(request, settings))
    return SignedUrls(filename_to_signed_urls=urls)


@router.post(ITEM + ":validateUpload", response_model=Dataset,
             summary="Validate the file PUT through the signed URL; makes the dataset READY", **OUT)
def validate_upload(account_id: str, dataset_id: str, caller: CallerDep, session: SessionDep, blobs: BlobsDep,
                    settings: SettingsDep, body: Empty | None = None) -> Dataset:
    return service.to_wire(uploads.validate_upload(session, blobs, settings.limits, caller, account_id, dataset_id))


@router.get(ITEM + ":getDownloadEndpoint", response_model=SignedUrls,
            summary="Signed URL to download the dataset's file", **OUT)
def get_download_endpoint(account_id: str, dataset_id: str, request: Request, caller: CallerDep,
                          session: SessionDep, settings: SettingsDep,
                          download_lineage: Annotated[bool, Query(alias="downloadLineage")] = False,
                          read_mask: ReadMask = None,
                          ) -> SignedUrls:
    urls = uploads.get_download_endpoint(session, caller, account_id, dataset_id, _base_url(request, settings))
    return SignedUrls(filename_to_signed_urls=urls)


@router.get(ITEM, response_model=Dataset, summary="Get a dataset", **OUT)
def get_dataset(account_id: str, dataset_id: str, caller: CallerDep, session: SessionDep,
                read_mask: ReadMask = None) -> Dataset:
    return service.to_wire(service.get_dataset(session, caller, account_id, dataset_id))


@router.patch(ITEM, response_model=Dataset,
              summary="Update a dataset (merges the fields present; content is fixed once READY)", **OUT)
def update_dataset(account_id: str, dataset_id: str, body: DatasetUpdate, caller: CallerDep, session: SessionDep,
                   etag: EtagDep,
                   update_mask: DATASET_MASK = None) -> Dataset:
    return service.to_wire(service.update_dataset(session, caller, account_id, dataset_id, body, update_mask,
                                                  etag=body_or_header(body.etag, etag)))


@router.delete(ITEM, response_model=Empty, summary="Delete a dataset and its files", **OUT)
def delete_dataset(account_id: str, dataset_id: str, caller: CallerDep, session: SessionDep,
                   blobs: BlobsDep, etag: EtagDep) -> Empty:
    service.delete_dataset(session, blobs, caller, account_id, dataset_id, etag=etag)
    return Empty()


# ---- signed file URLs (no API key: the signature is the credential) -------------------------

@router.put(FILE, response_model=Empty, openapi_extra=OCTET_BODY,
            summary="Upload a dataset file through a signed URL from :getUploadEndpoint", **OUT)
async def put_dataset_file(account_id: str, dataset_id: str, filename: str, request: Request,
                           session: SessionDep, blobs: BlobsDep, settings: SettingsDep,
                           expires: Annotated[str | None, Query(max_length=32)] = None,
                           sig: Annotated[str | None, Query(max_length=128)] = None,
                           upload: Annotated[str | None, Query(max_length=64)] = None) -> Empty:
    key, declared_size = await run_in_threadpool(uploads.accept_signed_upload, session, account_id, dataset_id,
                                                 filename, expires, sig, upload)
    max_bytes = min(settings.limits.max_dataset_bytes, declared_size)
    declared = request.headers.get("content-length", "")
    try:
        if declared.isdigit() and int(declared) > max_bytes:
            raise PayloadTooLarge(f"file is {declared} bytes; the limit is {max_bytes} bytes (as declared)")
        with SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            async for chunk in _limited(request, max_bytes):
                spool.write(chunk)
            spool.seek(0)
            await run_in_threadpool(blobs.write_file, key, spool, max_bytes)
    except BaseException:
        await run_in_threadpool(uploads.release_signed_upload, session, account_id, dataset_id, upload)
        raise
    await run_in_threadpool(uploads.finish_signed_upload, session, blobs, account_id, dataset_id, upload, key)
    return Empty()


@router.get(FILE, summary="Download a dataset file through a signed URL from :getDownloadEndpoint",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                  "format": "binary"}}}}})
def get_dataset_file(account_id: str, dataset_id: str, filename: str, session: SessionDep, blobs: BlobsDep,
                     expires: Annotated[str | None, Query(max_length=32)] = None,
                     sig: Annotated[str | None, Query(max_length=128)] = None) -> StreamingResponse:
    row = uploads.open_signed_download(session, account_id, dataset_id, filename, expires, sig)
    return StreamingResponse(blobs.iter_chunks(row.blob_key), media_type="application/octet-stream",
                             headers={"content-length": str(row.size_bytes),
                                      "content-disposition": f'attachment; filename="{filename}"'})
