"""Users: create (account admins), get and list (readers; anyone reads their own user),
update (admins; a user may rename themself), disable / enable (admins). Disabling a user
revokes every key of theirs in the same transaction, so none authenticates again (keys are
checked on every request); enabling does not bring keys back. The account keeps at least
one active admin: demoting or disabling the last one is refused, under the account lock.

Platform-admin status is never set through the API: only bootstrap grants it.
"""
from __future__ import annotations

import secrets

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fireplace.api.auth import Action, Principal, authorize
from fireplace.api.filtering import FieldMap, name_field, as_bool, as_str, as_time
from fireplace.api.listing import ListParams, paginate
from fireplace.control.accounts.schemas import normalize_email
from fireplace.control.accounts.service import account_id_of, require_account
from fireplace.control.common import check_etag, path_id, touch, update_mask_fields
from fireplace.control.locks import serialize_account
from fireplace.control.users.schemas import UserCreate, UserUpdate
from fireplace.control.users.tables import ROLES, UserRow
from fireplace.errors import AlreadyExists, FailedPrecondition, InvalidArgument, PermissionDenied, not_found
from fireplace.ids import validate_id

FIELDS: FieldMap = {
    "name": name_field(UserRow.user_id, "accounts/", UserRow.account_id, "/users/", UserRow.user_id),
    "user_id": (UserRow.user_id, as_str),
    "email": (UserRow.email, as_str),
    "display_name": (UserRow.display_name, as_str),
    "role": (UserRow.role, as_str),
    "state": (UserRow.state, as_str),
    "service_account": (UserRow.service_account, as_bool),
    "create_time": (UserRow.create_time, as_time),
    "update_time": (UserRow.update_time, as_time),
}
UPDATABLE = ("role", "display_name", "email", "service_account")


def user_name(account_id: str, user_id: str) -> str:
    return f"accounts/{account_id}/users/{user_id}"


def user_id_of(value: str) -> str:
    """'accounts/a/users/u' or 'u' -> 'u' (validated)."""
    return validate_id(value.rsplit("/", 1)[-1] if value.startswith("accounts/") else value, "user id")


def is_self(caller: Principal, account_id: str, user_id: str) -> bool:
    return caller.account_id == account_id and caller.user_id == user_id


def check_role(role: str | None) -> str:
    if role not in ROLES:
        raise InvalidArgument(f"invalid role {str(role)[:40]!r}: expected one of {', '.join(ROLES)}")
    return role


def fetch_user(session: Session, caller: Principal, account_id: str, user_id: str, action: Action, *,
               allow_self: bool = True, serialize: bool = False) -> UserRow:
    """The user row, or the one not-found error (also for another account's user). A caller may
    always act on their own user where `allow_self`. serialize: the account lock first."""
    account_id = account_id_of(account_id)
    user_id = path_id(account_id, user_id, "users", "user")
    name = user_name(account_id, user_id)
    if not (allow_self and is_self(caller, account_id, user_id)):
        authorize(caller, account_id, action, kind="user", name=name)
    if serialize:
        serialize_account(session, account_id)
    row = session.get(UserRow, (account_id, user_id), populate_existing=serialize)
    if row is None:
        raise not_found("user", name)
    return row


def _free_user_id(session: Session, account_id: str, email: str) -> str:
    from fireplace.bootstrap import user_id_from_email
    base = user_id_from_email(email)[:56].rstrip("-")
    for n in range(1, 20):
        candidate = base if n == 1 else f"{base}-{n}"
        if session.get(UserRow, (account_id, candidate)) is None:
            return candidate
    return f"{base[:50].rstrip('-')}-{secrets.token_hex(3)}"


def create_user(session: Session, caller: Principal, account_id: str, body: UserCreate,
                user_id: str | None) -> UserRow:
    account_id = account_id_of(account_id)
    authorize(caller, account_id, Action.ADMIN, kind="account", name=f"accounts/{account_id}")
    require_account(session, account_id)
    role = check_role(body.role)
    if user_id:
        user_id = validate_id(user_id, "userId")
    if body.email:
        email = normalize_email(body.email)
    elif body.service_account and user_id:
        email = f"{user_id}@service-accounts.{account_id}.invalid"  # a service account has no mailbox
    else:
        raise InvalidArgument("email is required (or set serviceAccount with a userId)")
    user_id = user_id or _free_user_id(session, account_id, email)
    if session.get(UserRow, (account_id, user_id)) is not None:
        raise AlreadyExists(f"user {user_name(account_id, user_id)!r} already exists")
    if session.scalar(select(UserRow.user_id).where(UserRow.account_id == account_id,
                                                    UserRow.email == email)) is not None:
        raise AlreadyExists(f"a user with email {email!r} already exists in account {account_id!r}")
    row = UserRow(account_id=account_id, user_id=user_id, email=email, role=role,
                  display_name=body.display_name or email, service_account=body.service_account)
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise AlreadyExists(f"user {user_name(account_id, user_id)!r} or email {email!r} already exists") from None
    return row


def list_users(session: Session, caller: Principal, account_id: str, params: ListParams):
    account_id = account_id_of(account_id)
    authorize(caller, account_id, Action.READ, kind="account", name=f"accounts/{account_id}")
    require_account(session, account_id)
    stmt = select(UserRow).where(UserRow.account_id == account_id)
    return paginate(session, stmt, params, FIELDS, [UserRow.user_id], f"users/{account_id}")


def get_user(session: Session, caller: Principal, account_id: str, user_id: str) -> UserRow:
    return fetch_user(session, caller, account_id, user_id, Action.READ)


def _count_admins(session: Session, account_id: str) -> int:
    return session.scalar(select(func.count()).select_from(UserRow).where(
        UserRow.account_id == account_id, UserRow.role == "admin", UserRow.state == "READY")) or 0


def update_user(session: Session, caller: Principal, account_id: str, user_id: str, body: UserUpdate,
                update_mask: str | None, *, etag: str | None = None) -> UserRow:
    row = fetch_user(session, caller, account_id, user_id, Action.ADMIN, serialize=True)
    check_etag(row, etag)
    present = body.model_dump(exclude_unset=True)
    present.pop("etag", None)
    fields = update_mask_fields(update_mask)
    if fields is None:
        fields = set(present)
    unknown = fields - set(UPDATABLE)
    if unknown:
        raise InvalidArgument(f"updateMask: unsupported field(s) {', '.join(sorted(unknown))}; "
                              f"updatable: {', '.join(UPDATABLE)}")
    changes = {f: getattr(body, f) for f in fields}
    if "email" in changes and changes["email"] is not None and normalize_email(changes["email"]) != row.email:
        raise InvalidArgument("email cannot be changed; create a new user instead")
    if "service_account" in changes and changes["service_account"] is not None \
            and changes["service_account"] != row.service_account:
        raise InvalidArgument("serviceAccount cannot be changed after creation")
    new_role = changes.get("role")
    if new_role is not None and new_role != row.role:
        check_role(new_role)
        if row.is_platform_admin and not caller.is_platform_admin:
            raise PermissionDenied("only a platform admin may change a platform admin's role")
        if not caller.can(Action.ADMIN):
            # Only reached on one's own user: renaming is fine, promotion is not.
            raise PermissionDenied(f"role {caller.role!r} may not change roles")
        if row.role == "admin" and _count_admins(session, row.account_id) <= 1:
            raise FailedPrecondition(f"user {user_name(row.account_id, row.user_id)!r} is the account's "
                                     "last admin; make another user admin first")
        row.role = new_role
    if changes.get("display_name") is not None:
        row.display_name = changes["display_name"]
    touch(row)
    session.commit()
    return row


def set_user_state(session: Session, caller: Principal, account_id: str, user_id: str, *, enabled: bool,
                   etag: str | None = None) -> UserRow:
    """`:disable` (state DISABLED, every key revoked at once) or `:enable` (READY; old keys
    stay revoked). Admins only, also on themselves; the last active admin cannot be disabled."""
    from fireplace.control.api_keys.tables import ApiKeyRow

    row = fetch_user(session, caller, account_id, user_id, Action.ADMIN, allow_self=False, serialize=True)
    check_etag(row, etag)
    if row.is_platform_admin and not enabled and not caller.is_platform_admin:
        raise PermissionDenied("only a platform admin may disable a platform admin")
    if not enabled and row.state == "READY" and row.role == "admin" and _count_admins(session, row.account_id) <= 1:
        raise FailedPrecondition(f"user {user_name(row.account_id, row.user_id)!r} is the account's last active "
                                 "admin; make another user admin first")
    if enabled:
        row.state = "READY"
    else:
        row.state = "DISABLED"
        session.execute(update(ApiKeyRow).where(ApiKeyRow.account_id == row.account_id,
                                                ApiKeyRow.user_id == row.user_id, ApiKeyRow.revoked.is_(False))
                        .values(revoked=True, etag=ApiKeyRow.etag + 1))
    touch(row)
    session.commit()
    return row
