"""/v1/accounts/{a}/users/{u}/apiKeys: create (secret once), list, the `:delete` verb, and
PATCH of one key's displayName (our extension)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

import fireplace.api.paths  # noqa: F401  (the {x:ref} and {x:keyref} convertors)
from fireplace.api.update_mask import UpdateMask
from fireplace.api.auth import CallerDep
from fireplace.api.deps import SessionDep
from fireplace.api.etags import EtagDep
from fireplace.api.listing import ListQuery
from fireplace.api.wire import DisplayNameUpdate, Empty
from fireplace.control.api_keys import service
from fireplace.control.api_keys.schemas import ApiKey, ApiKeyCreate, ApiKeyDelete, ListApiKeysResponse

router = APIRouter(tags=["apiKeys"])
KEY_MASK = UpdateMask(["display_name"])
OUT = {"response_model_exclude_none": True}
BASE = "/v1/accounts/{account_id}/users/{user_id:ref}/apiKeys"


# The verb route first, so `apiKeys:delete` is never read as anything else.
@router.post(BASE + ":delete", response_model=Empty, summary="Revoke an API key (immediate)")
def delete_api_key(account_id: str, user_id: str, body: ApiKeyDelete, caller: CallerDep,
                   session: SessionDep) -> Empty:
    service.delete_key(session, caller, account_id, user_id, body.key_id)
    return Empty()


@router.post(BASE, response_model=ApiKey, **OUT,
             summary="Create an API key; the secret `key` is returned only here")
def create_api_key(account_id: str, user_id: str, body: ApiKeyCreate, caller: CallerDep,
                   session: SessionDep) -> ApiKey:
    row, user, key = service.create_key(session, caller, account_id, user_id, body.api_key)
    return ApiKey.of(row, email=user.email, secret=key.secret)


@router.get(BASE, response_model=ListApiKeysResponse, **OUT, summary="List a user's API keys (no secrets)")
def list_api_keys(account_id: str, user_id: str, caller: CallerDep, session: SessionDep,
                  params: ListQuery) -> ListApiKeysResponse:
    rows, user, token, total = service.list_keys(session, caller, account_id, user_id, params)
    return ListApiKeysResponse(api_keys=[ApiKey.of(r, email=user.email) for r in rows],
                               next_page_token=token, total_size=total)


@router.patch(BASE + "/{key_id:keyref}", response_model=ApiKey, **OUT,
              summary="Rename an API key: displayName only (its owner or an admin; Fireplace extension)")
def update_api_key(account_id: str, user_id: str, key_id: str, body: DisplayNameUpdate, caller: CallerDep,
                   session: SessionDep, etag: EtagDep,
                   update_mask: KEY_MASK = None) -> ApiKey:
    row, user = service.rename_key(session, caller, account_id, user_id, key_id, body, update_mask, etag)
    return ApiKey.of(row, email=user.email)


@router.get("/v1/accounts/{account_id}/apiKeys", response_model=ListApiKeysResponse, **OUT,
            summary="List every active API key of the account (admin; no secrets; Fireplace extension)")
def list_account_api_keys(account_id: str, caller: CallerDep, session: SessionDep,
                          params: ListQuery) -> ListApiKeysResponse:
    rows, token, total = service.list_account_keys(session, caller, account_id, params)
    return ListApiKeysResponse(api_keys=[ApiKey.of(r, email=email) for r, email in rows],
                               next_page_token=token, total_size=total)
