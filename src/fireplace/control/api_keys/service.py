"""API keys: create (the secret is returned once; only its SHA-256 is stored), list, rename, revoke.

Creating: a user creates keys only for themselves; an account admin also for the account's
other users (there are no passwords: an admin hands out a new user's first key), but never
for a platform admin, since a key acts with its user's powers and so may not exceed the
creator's own; a platform admin for anyone. Listing and revoking: any user their own keys; an account
admin every key of the account (also `GET /v1/accounts/{a}/apiKeys`). Revocation is
immediate: authentication reads the key row on every request.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fireplace.api.auth import Action, Principal
from fireplace.api.filtering import FieldMap, name_field, as_str, as_time
from fireplace.api.listing import ListParams, paginate
from fireplace.control.api_keys.schemas import ApiKeySpec
from fireplace.control.api_keys.secrets import NewKey, new_key, new_key_id
from fireplace.control.api_keys.tables import ApiKeyRow
from fireplace.api.wire import DisplayNameUpdate
from fireplace.control.common import rename, touch
from fireplace.control.users.service import fetch_user
from fireplace.control.users.tables import UserRow
from fireplace.errors import FailedPrecondition, InvalidArgument, PermissionDenied, ResourceExhausted, not_found
from fireplace.ids import validate_id

MAX_ACTIVE_KEYS_PER_USER = 100

FIELDS: FieldMap = {
    "key_id": (ApiKeyRow.key_id, as_str),
    "name": name_field(ApiKeyRow.key_id, "accounts/", ApiKeyRow.account_id, "/users/", ApiKeyRow.user_id,
                       "/apiKeys/", ApiKeyRow.key_id),
    "display_name": (ApiKeyRow.display_name, as_str),
    "prefix": (ApiKeyRow.prefix, as_str),
    "create_time": (ApiKeyRow.create_time, as_time),
    "expire_time": (ApiKeyRow.expire_time, as_time),
}


def _key_owner(session: Session, caller: Principal, account_id: str, user_id: str) -> UserRow:
    return fetch_user(session, caller, account_id, user_id, Action.ADMIN, allow_self=True)


def _active(account_id: str, user_id: str):
    return (ApiKeyRow.account_id == account_id, ApiKeyRow.user_id == user_id, ApiKeyRow.revoked.is_(False))


def create_key(session: Session, caller: Principal, account_id: str, user_id: str,
               spec: ApiKeySpec) -> tuple[ApiKeyRow, UserRow, NewKey]:
    user = fetch_user(session, caller, account_id, user_id, Action.ADMIN, allow_self=True, serialize=True)
    if user.is_platform_admin and not caller.is_platform_admin:
        # A key acts with its user's powers: never mint one above the caller's own.
        raise PermissionDenied(f"API keys of platform admin {user.user_id!r} can only be created by a platform admin")
    if user.state != "READY":
        raise FailedPrecondition(f"user {user.user_id!r} is {user.state}: enable the user first")
    expire = spec.expire_time
    if expire is not None:
        expire = expire if expire.tzinfo else expire.replace(tzinfo=timezone.utc)
        if expire <= datetime.now(timezone.utc):
            raise InvalidArgument("apiKey.expireTime must be in the future")
    active = session.scalar(select(func.count()).select_from(ApiKeyRow).where(
        *_active(user.account_id, user.user_id))) or 0
    if active >= MAX_ACTIVE_KEYS_PER_USER:
        raise ResourceExhausted(f"user {user.user_id!r} already has {active} API keys "
                                f"(limit {MAX_ACTIVE_KEYS_PER_USER}); delete one first")
    key = new_key()
    row = ApiKeyRow(account_id=user.account_id, key_id=new_key_id(), user_id=user.user_id,
                    key_hash=key.key_hash, prefix=key.prefix, display_name=spec.display_name or "default",
                    expire_time=expire)
    session.add(row)
    session.commit()
    return row, user, key


def list_keys(session: Session, caller: Principal, account_id: str, user_id: str,
              params: ListParams) -> tuple[list[ApiKeyRow], UserRow, str, int]:
    user = _key_owner(session, caller, account_id, user_id)
    stmt = select(ApiKeyRow).where(*_active(user.account_id, user.user_id))
    rows, token, total = paginate(session, stmt, params, FIELDS, [ApiKeyRow.key_id],
                                  f"apiKeys/{user.account_id}/{user.user_id}")
    return rows, user, token, total


def list_account_keys(session: Session, caller: Principal, account_id: str,
                      params: ListParams) -> tuple[list[tuple[ApiKeyRow, str]], str, int]:
    """Every active key of the account (admins): [(row, owner email)], token, total."""
    from fireplace.control.accounts.service import account_id_of
    from fireplace.api.auth import authorize
    account_id = account_id_of(account_id)
    authorize(caller, account_id, Action.ADMIN, kind="account", name=f"accounts/{account_id}")
    stmt = select(ApiKeyRow).where(ApiKeyRow.account_id == account_id, ApiKeyRow.revoked.is_(False))
    rows, token, total = paginate(session, stmt, params, FIELDS, [ApiKeyRow.key_id], f"apiKeys/{account_id}")
    emails = dict(session.execute(select(UserRow.user_id, UserRow.email).where(
        UserRow.account_id == account_id, UserRow.user_id.in_({r.user_id for r in rows}))).all()) if rows else {}
    return [(r, emails.get(r.user_id, "")) for r in rows], token, total


def key_id_of(user: UserRow, ref: str) -> str:
    """A key's ID, or its full name (accounts/a/users/u/apiKeys/k). The rule of every path
    (control.common.path_id): a full name under another account or user answers like a
    missing key."""
    prefix = f"accounts/{user.account_id}/users/{user.user_id}/apiKeys/"
    if not isinstance(ref, str) or "/" not in ref:
        return validate_id(ref, "keyId")
    parts = ref.split("/")
    if len(parts) != 6 or parts[0] != "accounts" or parts[2] != "users" or parts[4] != "apiKeys":
        raise InvalidArgument(f"invalid keyId {ref[:100]!r}: expected an ID or accounts/<a>/users/<u>/apiKeys/<id>")
    for part, what in ((parts[1], "account id"), (parts[3], "user id"), (parts[5], "keyId")):
        validate_id(part, what)
    if not ref.startswith(prefix):
        raise not_found("API key", ref)
    return parts[5]


def _active_key(session: Session, caller: Principal, account_id: str, user_id: str,
                key_id: str) -> tuple[ApiKeyRow, UserRow]:
    """A key of the user that still authenticates (its ID or full name), read under the
    account lock (SQLite has no row locks: the etag compare and the write must not interleave)."""
    user = fetch_user(session, caller, account_id, user_id, Action.ADMIN, allow_self=True, serialize=True)
    prefix = f"accounts/{user.account_id}/users/{user.user_id}/apiKeys/"
    key_id = key_id_of(user, key_id)
    row = session.get(ApiKeyRow, (user.account_id, key_id), populate_existing=True)
    if row is None or row.user_id != user.user_id or row.revoked:
        raise not_found("API key", prefix + key_id)
    return row, user


def rename_key(session: Session, caller: Principal, account_id: str, user_id: str, key_id: str,
               body: DisplayNameUpdate, update_mask: str | None, etag: str | None) -> tuple[ApiKeyRow, UserRow]:
    """PATCH (our extension): only displayName; a key's secret, owner and expiry never change."""
    row, user = _active_key(session, caller, account_id, user_id, key_id)
    rename(row, body, update_mask, etag)
    session.commit()
    return row, user


def delete_key(session: Session, caller: Principal, account_id: str, user_id: str, key_id: str) -> None:
    """Revoke: the row stays (for audit) with `revoked`, so the hash can never authenticate again."""
    row, _user = _active_key(session, caller, account_id, user_id, key_id)
    row.revoked = True
    touch(row)
    session.commit()
