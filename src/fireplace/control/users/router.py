"""/v1/accounts/{a}/users: create (?userId=), list, get, update (PATCH merges present fields)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

import fireplace.api.paths  # noqa: F401  (the {x:ref} convertor)
from fireplace.ids import ID_PATTERN
from fireplace.api.update_mask import UpdateMask
from fireplace.api.auth import CallerDep
from fireplace.api.read_mask import ReadMask
from fireplace.api.deps import SessionDep
from fireplace.api.etags import EtagDep, body_or_header
from fireplace.api.listing import ListQuery
from fireplace.control.users import service
from fireplace.control.users.schemas import ListUsersResponse, User, UserCreate, UserUpdate

router = APIRouter(tags=["users"])
USER_MASK = UpdateMask(service.UPDATABLE)
OUT = {"response_model_exclude_none": True}


@router.post("/v1/accounts/{account_id}/users", response_model=User, **OUT, summary="Create a user (admin)")
def create_user(account_id: str, body: UserCreate, caller: CallerDep, session: SessionDep,
                user_id: Annotated[str | None, Query(alias="userId", max_length=63, pattern=ID_PATTERN)] = None) -> User:
    return User.of(service.create_user(session, caller, account_id, body, user_id))


@router.get("/v1/accounts/{account_id}/users", response_model=ListUsersResponse, **OUT, summary="List users")
def list_users(account_id: str, caller: CallerDep, session: SessionDep, params: ListQuery) -> ListUsersResponse:
    rows, token, total = service.list_users(session, caller, account_id, params)
    return ListUsersResponse(users=[User.of(r) for r in rows], next_page_token=token, total_size=total)


@router.get("/v1/accounts/{account_id}/users/{user_id:ref}", response_model=User, **OUT, summary="Get a user")
def get_user(account_id: str, user_id: str, caller: CallerDep, session: SessionDep,
             read_mask: ReadMask = None) -> User:
    return User.of(service.get_user(session, caller, account_id, user_id))


@router.patch("/v1/accounts/{account_id}/users/{user_id:ref}", response_model=User, **OUT,
              summary="Update a user's role or display name (admin; anyone may rename themself)")
def update_user(account_id: str, user_id: str, body: UserUpdate, caller: CallerDep, session: SessionDep,
                etag: EtagDep,
                update_mask: USER_MASK = None) -> User:
    return User.of(service.update_user(session, caller, account_id, user_id, body, update_mask,
                                       etag=body_or_header(body.etag, etag)))


@router.post("/v1/accounts/{account_id}/users/{user_id:ref}:disable", response_model=User, **OUT,
             summary="Disable a user (admin): state DISABLED, every key of theirs revoked at once "
                     "(Fireplace extension)")
def disable_user(account_id: str, user_id: str, caller: CallerDep, session: SessionDep, etag: EtagDep) -> User:
    return User.of(service.set_user_state(session, caller, account_id, user_id, enabled=False, etag=etag))


@router.post("/v1/accounts/{account_id}/users/{user_id:ref}:enable", response_model=User, **OUT,
             summary="Enable a disabled user (admin); revoked keys stay revoked (Fireplace extension)")
def enable_user(account_id: str, user_id: str, caller: CallerDep, session: SessionDep, etag: EtagDep) -> User:
    return User.of(service.set_user_state(session, caller, account_id, user_id, enabled=True, etag=etag))
