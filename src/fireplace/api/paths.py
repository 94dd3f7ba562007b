"""The `{x:ref}` path convertor: a resource ID, or its full name with the slashes the SDK
percent-encodes (`accounts/a/users/u`). IDs never hold ':' or '/', so `{u:ref}:disable`
and `{u:ref}/apiKeys` stay unambiguous; services then apply one rule for every resource
(control.common.path_id): a full name of another account answers like a missing one."""
from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class ResourceRef(Convertor):
    regex = r"(?:accounts/[^/:]+/[A-Za-z]+/)?[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("ref", ResourceRef())
