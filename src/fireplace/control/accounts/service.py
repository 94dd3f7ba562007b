"""Accounts: list (the caller's; a platform admin sees all), get, create and rename (our extensions).

Creating an account also creates that email's admin user, in the same transaction.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fireplace.api.auth import Action, Principal, authorize
from fireplace.api.filtering import FieldMap, name_field, as_str, as_time
from fireplace.api.listing import ListParams, paginate
from fireplace.api.wire import DisplayNameUpdate
from fireplace.config import Settings
from fireplace.control.common import rename
from fireplace.control.locks import serialize_account
from fireplace.control.accounts.rate_limit import SIGNUPS
from fireplace.control.accounts.schemas import AccountCreate, SignupKey, normalize_email
from fireplace.control.api_keys.secrets import new_key, new_key_id
from fireplace.control.api_keys.tables import ApiKeyRow
from fireplace.control.accounts.tables import AccountRow
from fireplace.errors import AlreadyExists, InvalidArgument, PermissionDenied, Unauthenticated, not_found
from fireplace.ids import account_id_from_email, validate_id

RESERVED_ACCOUNT_ID = "accounts"
FIELDS: FieldMap = {
    "name": name_field(AccountRow.account_id, "accounts/", AccountRow.account_id),
    "email": (AccountRow.email, as_str),
    "display_name": (AccountRow.display_name, as_str),
    "account_type": (AccountRow.account_type, as_str),
    "state": (AccountRow.state, as_str),
    "create_time": (AccountRow.create_time, as_time),
    "update_time": (AccountRow.update_time, as_time),
}


def account_id_of(value: str) -> str:
    """'accounts/a' or 'a' -> 'a' (validated)."""
    if value.startswith("accounts/"):
        value = value[len("accounts/"):]
    return validate_id(value, "account id")


def get_account(session: Session, caller: Principal, account_id: str) -> AccountRow:
    """Any member may read their own account (inference users too); everyone may read the
    public catalog; another account answers like a missing one."""
    account_id = account_id_of(account_id)
    authorize(caller, account_id, Action.INFERENCE, kind="account", name=f"accounts/{account_id}")
    row = session.get(AccountRow, account_id)
    if row is None:
        raise not_found("account", f"accounts/{account_id}")
    return row


def rename_account(session: Session, caller: Principal, account_id: str, body: DisplayNameUpdate,
                   update_mask: str | None, etag: str | None) -> AccountRow:
    """PATCH: the account's admins (and platform admins) may change its displayName; its ID,
    email and type are fixed at create."""
    account_id = account_id_of(account_id)
    authorize(caller, account_id, Action.ADMIN, kind="account", name=f"accounts/{account_id}")
    serialize_account(session, account_id)   # the etag compare and the write, one writer at a time
    row = session.get(AccountRow, account_id, populate_existing=True)
    if row is None:
        raise not_found("account", f"accounts/{account_id}")
    rename(row, body, update_mask, etag)
    session.commit()
    return row


def require_account(session: Session, account_id: str) -> AccountRow:
    """For paths under an account the caller may already act in (a platform admin may name
    any): the account must exist."""
    row = session.get(AccountRow, account_id)
    if row is None:
        raise not_found("account", f"accounts/{account_id}")
    return row


def list_accounts(session: Session, caller: Principal, params: ListParams) -> tuple[list[AccountRow], str, int]:
    stmt = select(AccountRow)
    if not caller.is_platform_admin:
        stmt = stmt.where(AccountRow.account_id == caller.account_id)
    scope = "accounts" if caller.is_platform_admin else f"accounts/{caller.account_id}"
    return paginate(session, stmt, params, FIELDS, [AccountRow.account_id], scope)


def _free_account_id(session: Session, email: str) -> str:
    taken: set[str] = set()
    while True:
        candidate = account_id_from_email(email, taken)
        if session.get(AccountRow, candidate) is None:
            return candidate
        taken.add(candidate)


def create_account(session: Session, caller: Principal | None, settings: Settings, body: AccountCreate,
                   requested_id: str | None, *, client: str = "") -> tuple[AccountRow, SignupKey | None]:
    """A platform admin creates any account. Open sign-up (settings.allow_signup; anyone else)
    creates a DEVELOPER account only (its ID from the email), at most
    limits.max_signups_per_hour per client address, and returns the new admin's first API
    key (shown once). Returns (account, that key or None)."""
    from fireplace.bootstrap import user_id_from_email
    from fireplace.control.users.tables import UserRow

    is_admin = caller is not None and caller.is_platform_admin
    if not settings.allow_signup and not is_admin:
        if caller is None:
            raise Unauthenticated("creating an account needs a platform admin's API key (sign-up is closed)")
        raise PermissionDenied("only a platform admin may create accounts (sign-up is closed)")
    email = normalize_email(body.email)
    account_type = "ENTERPRISE" if body.account_type == "ENTERPRISE" else "DEVELOPER"
    if not is_admin:
        if account_type == "ENTERPRISE" or requested_id:
            raise PermissionDenied("open sign-up creates DEVELOPER accounts only (ID from the email); "
                                   "ENTERPRISE accounts and chosen IDs need a platform admin")
        SIGNUPS.take(client, settings.limits.max_signups_per_hour)
    if session.scalar(select(AccountRow.account_id).where(AccountRow.email == email)) is not None:
        raise AlreadyExists(f"an account for email {email!r} already exists")
    if requested_id:
        if account_type != "ENTERPRISE":
            raise InvalidArgument("accountId: only an ENTERPRISE account may choose its ID; "
                                  "a DEVELOPER account's ID is generated from its email")
        account_id = validate_id(requested_id, "accountId")
        if account_id == RESERVED_ACCOUNT_ID:
            raise InvalidArgument(f"accountId {account_id!r} is reserved: full names start with it "
                                  "(accounts/<id>), so paths could not tell the two apart")
        if session.get(AccountRow, account_id) is not None:
            raise AlreadyExists(f"account 'accounts/{account_id}' already exists")
    else:
        account_id = _free_account_id(session, email)
    row = AccountRow(account_id=account_id, email=email, display_name=body.display_name or email,
                     account_type=account_type)
    session.add(row)
    signup_key = None
    try:
        session.flush()
        user_id = user_id_from_email(email)
        session.add(UserRow(account_id=account_id, user_id=user_id, email=email,
                            display_name=body.display_name or email, role="admin"))
        if not is_admin:
            session.flush()
            key, key_id = new_key(), new_key_id()
            session.add(ApiKeyRow(account_id=account_id, key_id=key_id, user_id=user_id, key_hash=key.key_hash,
                                  prefix=key.prefix, display_name="sign-up"))
            signup_key = SignupKey(name=f"accounts/{account_id}/users/{user_id}/apiKeys/{key_id}", key_id=key_id,
                                   key=key.secret)
        session.commit()
    except IntegrityError:
        # A concurrent create with the same email or ID won.
        session.rollback()
        raise AlreadyExists(f"an account for email {email!r} or with ID {account_id!r} already exists") from None
    return row, signup_key
