"""/v1/accounts: list, get, `POST /v1/accounts` (our extension: platform admin, or anyone
when the server runs with --allow-signup) and `PATCH /v1/accounts/{a}` (our extension: its
admins change the displayName) and `DELETE /v1/accounts/{a}` (our extension: a platform admin
deletes an empty account; control/accounts/deletion.py)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

import fireplace.api.paths  # noqa: F401  (the {x:accountref} convertor: an ID or accounts/<id>)
from fireplace.ids import ID_PATTERN
from fireplace.api.update_mask import UpdateMask
from fireplace.api.auth import CallerDep, Principal, authenticate
from fireplace.api.etags import EtagDep
from fireplace.api.read_mask import ReadMask
from fireplace.api.deps import SessionDep, SettingsDep
from fireplace.api.listing import ListQuery
from fireplace.api.wire import DisplayNameUpdate, Empty
from fireplace.control.accounts import deletion, service
from fireplace.control.accounts.schemas import Account, AccountCreate, ListAccountsResponse

router = APIRouter(tags=["accounts"])
ACCOUNT_MASK = UpdateMask(["display_name"])
OUT = {"response_model_exclude_none": True}


def optional_caller(request: Request, session: SessionDep) -> Principal | None:
    """No key at all: anonymous (allowed only for open sign-up). A key that is sent must be valid."""
    if not request.headers.get("authorization") and not request.headers.get("x-api-key"):
        return None
    return authenticate(request, session)


@router.get("/v1/accounts", response_model=ListAccountsResponse, **OUT,
            summary="List the caller's account (a platform admin sees every account)")
def list_accounts(caller: CallerDep, session: SessionDep, params: ListQuery) -> ListAccountsResponse:
    rows, token, total = service.list_accounts(session, caller, params)
    return ListAccountsResponse(accounts=[Account.of(r) for r in rows], next_page_token=token, total_size=total)


@router.post("/v1/accounts", response_model=Account, **OUT,
             summary="Create an account and its admin user (Fireplace extension)",
             description="Platform admin only, or anyone when sign-up is open (`--allow-signup`). "
                         "A DEVELOPER account's ID is generated from the email; an ENTERPRISE "
                         "account (platform admin only) may choose it with `accountId`. The same email "
                         "twice is 409. Open sign-up is limited per client address (429) and returns "
                         "the new admin's API key once, in `adminApiKey`.")
def create_account(body: AccountCreate, request: Request, session: SessionDep, settings: SettingsDep,
                   caller: Annotated[Principal | None, Depends(optional_caller)],
                   account_id: Annotated[str | None, Query(alias="accountId", max_length=63, pattern=ID_PATTERN)] = None) -> Account:
    client = request.client.host if request.client else ""
    row, key = service.create_account(session, caller, settings, body, account_id, client=client)
    out = Account.of(row)
    out.admin_api_key = key
    return out


@router.get("/v1/accounts/{account_id:accountref}", response_model=Account, **OUT, summary="Get an account")
def get_account(account_id: str, caller: CallerDep, session: SessionDep,
                read_mask: ReadMask = None) -> Account:
    return Account.of(service.get_account(session, caller, account_id))


@router.patch("/v1/accounts/{account_id:accountref}", response_model=Account, **OUT,
              summary="Rename an account: displayName only (account admin; Fireplace extension)")
def update_account(account_id: str, body: DisplayNameUpdate, caller: CallerDep, session: SessionDep, etag: EtagDep,
                   update_mask: ACCOUNT_MASK = None) -> Account:
    return Account.of(service.rename_account(session, caller, account_id, body, update_mask, etag))


@router.delete("/v1/accounts/{account_id:accountref}", response_model=Empty,
               summary="Delete an empty account with its users, keys and quotas (platform admin; Fireplace "
                       "extension): refused while it holds models, datasets, deployments, deployed models or jobs")
def delete_account(account_id: str, caller: CallerDep, session: SessionDep, etag: EtagDep) -> Empty:
    deletion.delete_account(session, caller, account_id, etag=etag)
    return Empty()
