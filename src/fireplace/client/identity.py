"""Who an API key belongs to, found through the public API only:
the account (the client's, else the one `GET /v1/accounts` lists), then the user of that
account holding a key with this key's display prefix (the first 8 characters).

The prefix is all the API reveals of a key, so two keys sharing it (odds ~1e-9 per pair)
could be confused; a key that may not list other users' keys still finds its own user.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from fireplace import errors

if TYPE_CHECKING:
    from fireplace.client.api import Fireplace

PREFIX_LEN = 8


def who_am_i(fp: "Fireplace", api_key: str) -> dict:
    """{"account", "user", "role", "email", "apiKey"}: full names, role string ('' when unknown)."""
    account = fp.accounts.get(fp.account_id)
    prefix = api_key[:PREFIX_LEN]
    result = {"account": account["name"], "accountType": account.get("accountType", ""),
              "user": "", "role": "", "email": "", "apiKey": ""}
    try:
        users = list(fp.users.iter())
    except (errors.PermissionDenied, errors.NotFound):
        return result
    for user in users:
        try:
            keys = list(fp.api_keys.iter(user["name"], filter=f'prefix="{prefix}"'))
        except (errors.PermissionDenied, errors.NotFound):
            continue
        if keys:
            result.update(user=user["name"], role=user.get("role", ""), email=user.get("email", ""),
                          apiKey=keys[0]["name"])
            return result
    return result
