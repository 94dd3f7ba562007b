"""Path convertors for resource segments: an ID, or the resource's full name with the slashes
the SDK percent-encodes. IDs never hold ':' or '/', so `{u:ref}:disable` and `{u:ref}/apiKeys`
stay unambiguous; services then apply one rule for every resource (control.common.path_id):
a full name of another account answers like a missing one.

    {x:ref}         accounts/a/<collection>/x, or x     (users, models, datasets, jobs, ...)
    {a:accountref}  accounts/a, or a                    (GET/PATCH/DELETE /v1/accounts/{a})
    {k:keyref}      accounts/a/users/u/apiKeys/k, or k  (an API key, under its user)

Each states its value as a JSON-schema pattern (`openapi_pattern(collection)`), which
api/openapi.py writes into the spec, so the spec and the router accept the same segments.
"""
from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor

from fireplace.ids import ID_PATTERN, ref_pattern

_ID = ID_PATTERN[1:-1]


class ResourceRef(Convertor):
    regex = r"(?:accounts/[^/:]+/[A-Za-z]+/)?[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value

    def openapi_pattern(self, collection: str) -> str:
        return ref_pattern(collection)


class AccountRef(ResourceRef):
    regex = r"(?:accounts/)?[^/:]+"

    def openapi_pattern(self, collection: str) -> str:
        return rf"^(accounts/)?{_ID}$"


class ApiKeyRef(ResourceRef):
    regex = r"(?:accounts/[^/:]+/users/[^/:]+/apiKeys/)?[^/:]+"

    def openapi_pattern(self, collection: str) -> str:
        return rf"^(accounts/{_ID}/users/{_ID}/apiKeys/)?{_ID}$"


register_url_convertor("ref", ResourceRef())
register_url_convertor("accountref", AccountRef())
register_url_convertor("keyref", ApiKeyRef())
