"""Wire shapes of accounts (fireworks.types.Account) and our `POST /v1/accounts` extension."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from fireplace.api.wire import Status, Wire, rfc3339
from fireplace.control.accounts.tables import AccountRow
from fireplace.errors import InvalidArgument

MAX_EMAIL = 320
MAX_DISPLAY_NAME = 320
# local@domain: no whitespace or control characters, one '@', a dot-free domain is fine (localhost).
_EMAIL_RE = re.compile(r"^[^\s@\x00-\x1f\x7f]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253}[A-Za-z0-9])?$")
EMAIL_PATTERN = _EMAIL_RE.pattern


def normalize_email(value: str | None, what: str = "email") -> str:
    """Stripped and lower-cased; a clear 400 when it is not an address."""
    email = (value or "").strip().lower()
    if not email:
        raise InvalidArgument(f"{what} is required")
    if len(email) > MAX_EMAIL or not _EMAIL_RE.fullmatch(email):
        raise InvalidArgument(f"invalid {what} {email[:80]!r}: expected an address like name@example.com")
    return email


class Account(Wire):
    name: str
    email: str
    display_name: str = ""
    account_type: str
    state: str
    suspend_state: str
    status: Status = Field(default_factory=Status)
    create_time: str | None = None
    update_time: str | None = None
    etag: str | None = None
    # Open sign-up only (Fireplace extension): the new admin's API key, shown this once.
    admin_api_key: "SignupKey | None" = None

    @classmethod
    def of(cls, row: AccountRow) -> "Account":
        return cls(name=f"accounts/{row.account_id}", email=row.email, display_name=row.display_name,
                   account_type=row.account_type, state=row.state, suspend_state=row.suspend_state,
                   create_time=rfc3339(row.create_time), update_time=rfc3339(row.update_time),
                   etag=str(row.etag))


class SignupKey(Wire):
    name: str
    key_id: str
    key: str


Account.model_rebuild()


class AccountCreate(Wire):
    """Body of `POST /v1/accounts` (our extension). The ID comes from the email, or, for an
    ENTERPRISE account, from `?accountId=`."""
    email: str = Field(max_length=MAX_EMAIL, json_schema_extra={"pattern": EMAIL_PATTERN})
    display_name: str = Field("", max_length=MAX_DISPLAY_NAME)
    # ACCOUNT_TYPE_UNSPECIFIED (the SDK's zero value) means DEVELOPER.
    account_type: Literal["DEVELOPER", "ENTERPRISE", "ACCOUNT_TYPE_UNSPECIFIED"] = "DEVELOPER"


class ListAccountsResponse(Wire):
    accounts: list[Account]
    next_page_token: str = ""
    total_size: int = 0
