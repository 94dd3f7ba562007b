"""Wire shapes of users (fireworks.types.User)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from fireplace.api.wire import Status, Wire, rfc3339
from fireplace.control.accounts.schemas import EMAIL_PATTERN, MAX_DISPLAY_NAME, MAX_EMAIL
from fireplace.control.users.tables import UserRow


class User(Wire):
    name: str
    role: str
    email: str = ""
    display_name: str = ""
    service_account: bool = False
    state: str
    status: Status = Field(default_factory=Status)
    create_time: str | None = None
    update_time: str | None = None
    etag: str | None = None

    @classmethod
    def of(cls, row: UserRow) -> "User":
        return cls(name=f"accounts/{row.account_id}/users/{row.user_id}", role=row.role, email=row.email,
                   display_name=row.display_name, service_account=row.service_account, state=row.state,
                   create_time=rfc3339(row.create_time), update_time=rfc3339(row.update_time),
                   etag=str(row.etag))


Role = Literal["admin", "user", "contributor", "inference-user"]   # users.tables.ROLES
EMAIL = {"pattern": EMAIL_PATTERN}   # normalize_email checks it, with its own message


class UserCreate(Wire):
    """`POST .../users?userId=`: role is required (admin | user | contributor | inference-user)."""
    role: Role
    email: str | None = Field(None, max_length=MAX_EMAIL, json_schema_extra=EMAIL)
    display_name: str | None = Field(None, max_length=MAX_DISPLAY_NAME)
    service_account: bool = False


class UserUpdate(Wire):
    """PATCH merges the fields present. email and serviceAccount are accepted only unchanged
    (the SDK may echo them); owner, state and platform-admin status never change here."""
    role: Role | None = None
    display_name: str | None = Field(None, max_length=MAX_DISPLAY_NAME)
    email: str | None = Field(None, max_length=MAX_EMAIL, json_schema_extra=EMAIL)
    service_account: bool | None = None
    etag: str | None = Field(None, max_length=64)   # AIP-154: a stale one is 409 ABORTED


class ListUsersResponse(Wire):
    users: list[User]
    next_page_token: str = ""
    total_size: int = 0
