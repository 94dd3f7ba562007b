"""Wire shapes of API keys (fireworks.types.APIKey). The secret (`key`) appears only in the
create response; lists carry the display `prefix`, never the secret or its hash."""
from __future__ import annotations

from datetime import datetime

from pydantic import Field

from fireplace.api.paths import ApiKeyRef
from fireplace.api.wire import Status, Wire, rfc3339
from fireplace.control.api_keys.tables import ApiKeyRow


class ApiKey(Wire):
    name: str
    key_id: str
    display_name: str = ""
    key: str | None = None               # only in the create response
    prefix: str
    email: str = ""
    create_time: str | None = None
    expire_time: str | None = None
    secure: bool = True                  # the server never knows a plaintext key after creation
    status: Status = Field(default_factory=Status)
    etag: str | None = None

    @classmethod
    def of(cls, row: ApiKeyRow, *, email: str = "", secret: str | None = None) -> "ApiKey":
        return cls(name=f"accounts/{row.account_id}/users/{row.user_id}/apiKeys/{row.key_id}",
                   key_id=row.key_id, display_name=row.display_name, key=secret, prefix=row.prefix,
                   email=email, create_time=rfc3339(row.create_time), expire_time=rfc3339(row.expire_time),
                   etag=str(row.etag))


class ApiKeySpec(Wire):
    display_name: str | None = Field(None, max_length=256)
    expire_time: datetime | None = None


class ApiKeyCreate(Wire):
    """`POST .../users/{u}/apiKeys` body: {"apiKey": {displayName, expireTime}}."""
    api_key: ApiKeySpec = Field(default_factory=ApiKeySpec)


KEY_REF_PATTERN = ApiKeyRef().openapi_pattern("apiKeys")


class ApiKeyDelete(Wire):
    """`POST .../users/{u}/apiKeys:delete` body: {"keyId": "..."}."""
    key_id: str = Field(max_length=300, json_schema_extra={"pattern": KEY_REF_PATTERN})   # key_id_of checks it


class ListApiKeysResponse(Wire):
    api_keys: list[ApiKey]
    next_page_token: str = ""
    total_size: int = 0
