"""HTTP routes of the Model resource (thin: parse, call the service, return the wire shape).

Custom verbs (`m:getUploadEndpoint`) are registered before the plain `{model}` routes. The
model segment is an ID or a full name (the SDK percent-encodes a full name's slashes).
"""
from __future__ import annotations

from functools import partial
from typing import Annotated

import anyio
import anyio.from_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

import fireplace.api.paths  # noqa: F401  (the {x:ref} convertor)
from fireplace.api.update_mask import UpdateMask
from fireplace.api.auth import CallerDep
from fireplace.api.read_mask import ReadMask
from fireplace.api.deps import SessionDep, SettingsDep, get_blobs
from fireplace.api.etags import EtagDep, body_or_header
from fireplace.api.listing import ListQuery
from fireplace.api.wire import Empty
from fireplace.control.models import service, uploads
from fireplace.control.models.schemas import (Model, ModelCreate, ModelList, ModelUpdate, PrepareRequest,
                                              SignedUrls, UploadEndpointRequest, UploadUrls,
                                              ValidateUploadResponse)
from fireplace.storage import BlobStore

router = APIRouter(tags=["models"])
MODEL_MASK = UpdateMask(service.MUTABLE_FIELDS, nested=True)
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
PREFIX = "/v1/accounts/{account_id}/models"
OUT = {"response_model_exclude_none": True}


def _base_url(request: Request, settings) -> str:
    return (settings.public_url or str(request.base_url)).rstrip("/")


@router.post(PREFIX, response_model=Model, summary="Create a model (state UPLOADING)", **OUT)
def create_model(account_id: str, body: ModelCreate, caller: CallerDep, session: SessionDep):
    row = service.create_model(session, caller, account_id, body)
    return service.to_wire(row, [])


@router.get(PREFIX, response_model=ModelList, summary="List models", **OUT)
def list_models(account_id: str, params: ListQuery, caller: CallerDep, session: SessionDep):
    models, token, total = service.list_models(session, caller, account_id, params)
    return ModelList(models=models, next_page_token=token, total_size=total)


@router.post(PREFIX + "/{model_ref:ref}:getUploadEndpoint", response_model=UploadUrls,
             summary="Signed PUT URLs for the model's files, and which of them already arrived", **OUT)
def get_upload_endpoint(account_id: str, model_ref: str, body: UploadEndpointRequest, request: Request,
                        caller: CallerDep, session: SessionDep, settings: SettingsDep):
    account_id, model_id = service.parse_model_ref(account_id, model_ref)
    urls = uploads.upload_endpoints(session, caller, account_id, model_id, body.filename_to_size,
                                    base_url=_base_url(request, settings),
                                    max_file_bytes=settings.limits.max_model_file_bytes)
    received = uploads.received_files(session, account_id, model_id, body.filename_to_size)
    return UploadUrls(filename_to_signed_urls=urls, filename_to_sha256=received)


@router.get(PREFIX + "/{model_ref:ref}:validateUpload", response_model=ValidateUploadResponse,
            summary="Check the uploaded files; UPLOADING -> READY", **OUT)
def validate_upload(account_id: str, model_ref: str, caller: CallerDep, session: SessionDep, blobs: BlobsDep,
                    config_only: Annotated[bool, Query(alias="configOnly")] = False,
                    skip_hf_config_validation: Annotated[bool, Query(alias="skipHfConfigValidation")] = False,
                    trust_remote_code: Annotated[bool, Query(alias="trustRemoteCode")] = False):
    # configOnly / skipHfConfigValidation / trustRemoteCode are accepted; every check still
    # runs (they only read headers), and no remote code is ever run.
    account_id, model_id = service.parse_model_ref(account_id, model_ref)
    warnings = uploads.validate_upload(session, blobs, caller, account_id, model_id)
    return ValidateUploadResponse(warnings=warnings)


@router.get(PREFIX + "/{model_ref:ref}:getDownloadEndpoint", response_model=SignedUrls,
            summary="Signed GET URLs for the model's files", **OUT)
def get_download_endpoint(account_id: str, model_ref: str, request: Request, caller: CallerDep,
                          session: SessionDep, settings: SettingsDep,
                          read_mask: ReadMask = None):
    account_id, model_id = service.parse_model_ref(account_id, model_ref)
    urls = uploads.download_endpoints(session, caller, account_id, model_id,
                                      base_url=_base_url(request, settings))
    return SignedUrls(filename_to_signed_urls=urls)


@router.post(PREFIX + "/{model_ref:ref}:prepare", response_model=Model,
             summary="Prepare a model for a precision (a no-op here: returns the model)", **OUT)
def prepare_model(account_id: str, model_ref: str, caller: CallerDep, session: SessionDep,
                  body: PrepareRequest | None = None):
    account_id, model_id = service.parse_model_ref(account_id, model_ref)
    return service.get_model(session, caller, account_id, model_id)


@router.get(PREFIX + "/{model_ref:ref}", response_model=Model, summary="Get a model", **OUT)
def get_model(account_id: str, model_ref: str, caller: CallerDep, session: SessionDep,
              read_mask: ReadMask = None):
    account_id, model_id = service.parse_model_ref(account_id, model_ref)
    return service.get_model(session, caller, account_id, model_id)


@router.patch(PREFIX + "/{model_ref:ref}", response_model=Model,
              summary="Update a model (merges the fields present; updateMask also accepted)", **OUT)
def update_model(account_id: str, model_ref: str, body: ModelUpdate, caller: CallerDep, session: SessionDep,
                 etag: EtagDep,
                 update_mask: MODEL_MASK = None):
    account_id, model_id = service.parse_model_ref(account_id, model_ref)
    return service.update_model(session, caller, account_id, model_id, body, update_mask,
                                etag=body_or_header(body.etag, etag))


@router.delete(PREFIX + "/{model_ref:ref}", response_model=Empty,
               summary="Delete a model and its files (refused while its own account uses it; a public "
                       "model used by other accounts needs force=true from an account admin)", **OUT)
def delete_model(account_id: str, model_ref: str, caller: CallerDep, session: SessionDep, blobs: BlobsDep,
                 etag: EtagDep, force: Annotated[bool, Query()] = False):
    account_id, model_id = service.parse_model_ref(account_id, model_ref)
    service.delete_model(session, blobs, caller, account_id, model_id, etag=etag, force=force)
    return Empty()


# ---- signed file transfer (no API key: the URL's signature is the credential) ---------------

def _sync_chunks(request: Request):
    """The request body as a blocking iterator, for a worker thread."""
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = anyio.from_thread.run(stream.__anext__)
        except StopAsyncIteration:
            return
        if chunk:
            yield chunk


@router.put(uploads.UPLOAD_PREFIX + "/{account_id}/{model_id}/{filename}", response_model=Empty,
            summary="Upload one model file to a signed URL from :getUploadEndpoint",
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}, **OUT)
async def put_model_file(account_id: str, model_id: str, filename: str, request: Request, blobs: BlobsDep,
                         expires: Annotated[str | None, Query(max_length=20)] = None,
                         sig: Annotated[str | None, Query(max_length=128)] = None,
                         upload: Annotated[str | None, Query(max_length=64)] = None):
    settings = request.app.state.settings
    length = request.headers.get("content-length")
    await anyio.to_thread.run_sync(partial(
        uploads.receive_file, request.app.state.session_factory, blobs, account_id=account_id,
        model_id=model_id, filename=filename, expires=expires, sig=sig,
        content_length=int(length) if length and length.isdigit() else None,
        chunks=_sync_chunks(request), max_file_bytes=settings.limits.max_model_file_bytes, nonce=upload))
    return Empty()


@router.get(uploads.DOWNLOAD_PREFIX + "/{account_id}/{model_id}/{filename}",
            summary="Download one model file from a signed URL from :getDownloadEndpoint",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                  "format": "binary"}}}}})
def get_model_file(account_id: str, model_id: str, filename: str, session: SessionDep, blobs: BlobsDep,
                   expires: Annotated[str | None, Query(max_length=20)] = None,
                   sig: Annotated[str | None, Query(max_length=128)] = None):
    size, chunks = uploads.open_download(session, blobs, account_id=account_id, model_id=model_id,
                                         filename=filename, expires=expires, sig=sig)
    return StreamingResponse(chunks, media_type="application/octet-stream",
                             headers={"content-length": str(size)})
