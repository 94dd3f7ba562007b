"""API key secrets: `fw_` + 43 url-safe chars (256 bits). Stored as SHA-256 only."""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from fireplace.api.auth import hash_key

KEY_PREFIX = "fw_"
DISPLAY_PREFIX_LEN = 8  # "fw_" + 5 chars shown in listings


@dataclass(frozen=True)
class NewKey:
    secret: str
    prefix: str
    key_hash: str


def new_key(secret: str | None = None) -> NewKey:
    secret = secret or KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(secret, secret[:DISPLAY_PREFIX_LEN], hash_key(secret))


def new_key_id() -> str:
    return "k" + secrets.token_hex(8)
