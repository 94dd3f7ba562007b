"""Who is calling, and what they may do.

A caller is a `Principal` resolved from `Authorization: Bearer <key>` or `x-api-key`.
Roles (least to most): inference-user (inference only) < user (read the account, inference)
< contributor (+ create/manage models, datasets, deployments, jobs) < admin (+ users, keys).
A platform admin may act in every account. Another account's private resource answers
exactly like a missing one; the public catalog account is readable by everyone.
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select

from fireplace.api.deps import SessionDep
from fireplace.errors import PermissionDenied, Unauthenticated, not_found

PUBLIC_ACCOUNT_ID = "fireplace"


class Action(enum.IntEnum):
    INFERENCE = 0
    READ = 1
    WRITE = 2     # contributor
    ADMIN = 3     # users and API keys


ROLE_POWER = {"inference-user": Action.INFERENCE, "user": Action.READ,
              "contributor": Action.WRITE, "admin": Action.ADMIN}


@dataclass(frozen=True)
class Principal:
    account_id: str
    user_id: str
    role: str
    is_platform_admin: bool = False
    key_id: str = ""

    @property
    def user_name(self) -> str:
        return f"accounts/{self.account_id}/users/{self.user_id}"

    def can(self, action: Action) -> bool:
        return self.is_platform_admin or ROLE_POWER.get(self.role, Action.INFERENCE) >= action


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_from_headers(headers) -> str | None:
    """The API key of `Authorization: Bearer <key>` or `x-api-key` (headers: a mapping with
    lower-case names)."""
    header = headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return headers.get("x-api-key") or None


def authenticate_secret(session, secret: str | None) -> Principal:
    """The Principal of an API key, or Unauthenticated (401). Reads the key row on every call,
    so a revoked key or a disabled user stops working at once."""
    from fireplace.control.api_keys.tables import ApiKeyRow
    from fireplace.control.users.tables import UserRow

    if not secret or len(secret) > 256:
        raise Unauthenticated("missing or malformed API key: send 'Authorization: Bearer <key>'")
    row = session.execute(
        select(ApiKeyRow, UserRow).join(
            UserRow, (UserRow.account_id == ApiKeyRow.account_id) & (UserRow.user_id == ApiKeyRow.user_id))
        .where(ApiKeyRow.key_hash == hash_key(secret))).first()
    if row is None:
        raise Unauthenticated("invalid API key")
    key, user = row
    if key.revoked:
        raise Unauthenticated("invalid API key")
    if key.expire_time is not None and key.expire_time <= datetime.now(timezone.utc):
        raise Unauthenticated("API key expired")
    if user.state != "READY":
        raise Unauthenticated("user is not active")
    return Principal(user.account_id, user.user_id, user.role, user.is_platform_admin, key.key_id)


def header_authenticator(session_factory):
    """For the request middleware: headers -> Principal, None when no key was sent, or
    Unauthenticated for a bad one (one short session per call)."""
    def authenticate_headers(headers) -> Principal | None:
        secret = key_from_headers(headers)
        if secret is None:
            return None
        with session_factory() as session:
            return authenticate_secret(session, secret)
    return authenticate_headers


def authenticate(request: Request, session: SessionDep) -> Principal:
    """The caller; the middleware has usually checked the key already (before the body)."""
    state = request.scope.get("state") or {}
    if "principal" in state:
        if state["principal"] is None:
            raise Unauthenticated("missing or malformed API key: send 'Authorization: Bearer <key>'")
        return state["principal"]
    return authenticate_secret(session, key_from_headers(request.headers))


CallerDep = Annotated[Principal, Depends(authenticate)]


def authorize(principal: Principal, account_id: str, action: Action, *, kind: str = "account",
              name: str | None = None) -> None:
    """Raise NotFound (indistinguishable from missing) for a private resource of another
    account, PermissionDenied for a role too weak in the caller's own account."""
    if principal.is_platform_admin:
        return
    if account_id != principal.account_id:
        if account_id == PUBLIC_ACCOUNT_ID and action <= Action.READ:
            return
        raise not_found(kind, name or f"accounts/{account_id}")
    if not principal.can(action):
        raise PermissionDenied(f"role {principal.role!r} may not {action.name.lower()} in account {account_id!r}")
