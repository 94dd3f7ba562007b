"""Resource IDs and names.

An ID is 1-63 chars of a-z 0-9 '-', starting with a letter, not ending with '-'
(Fireworks also refuses a leading digit). A name is `accounts/{a}/{collection}/{id}`.
APIs accept the full name or, where the context is clear, the bare ID.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import uuid

from fireplace.errors import InvalidArgument

ID_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_ID_LEN = 63
_ID = r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?"


ID_PATTERN = rf"^{_ID}$"  # the JSON-schema pattern of a bare ID (a new resource's ID in a create body)


def ref_pattern(collection: str, *, allow_empty: bool = False) -> str:
    """The JSON-schema pattern of a field taking an ID or the full name in `collection`;
    allow_empty: "" as well (an optional field, where proto3's "" means unset)."""
    return rf"^((accounts/{_ID}/{collection}/)?{_ID}{'|' if allow_empty else ''})$"


def is_valid_id(value: str) -> bool:
    return isinstance(value, str) and bool(ID_RE.fullmatch(value))


def validate_id(value: str, what: str = "id") -> str:
    if not is_valid_id(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:80]}..."
        raise InvalidArgument(
            f"invalid {what} {shown!r}: must be 1-63 characters of a-z, 0-9 and '-', "
            "start with a letter and not end with '-'")
    return value


def parse_name(value: str, collection: str, *, account_id: str | None = None,
               what: str | None = None) -> tuple[str, str]:
    """'accounts/a/models/m' or 'm' (with account_id as context) -> (account, id)."""
    what = what or collection.rstrip("s")
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{what} is required")
    if len(value) > 300:
        raise InvalidArgument(f"{what} is too long")
    parts = value.split("/")
    if len(parts) == 4 and parts[0] == "accounts" and parts[2] == collection:
        return validate_id(parts[1], "account id"), validate_id(parts[3], f"{what} id")
    if len(parts) == 1 and account_id is not None:
        return account_id, validate_id(parts[0], f"{what} id")
    raise InvalidArgument(f"invalid {what} name {value[:100]!r}: expected accounts/<account>/{collection}/<id>")


def account_id_from_email(email: str, taken: set[str] | None = None) -> str:
    """A developer account's ID from its sign-up email: the local part slugged, plus a short
    hash of the whole address so two emails with the same local part get different IDs."""
    local = email.split("@", 1)[0].lower()
    slug = re.sub(r"[^a-z0-9]+", "-", local).strip("-")
    if not slug or not slug[0].isalpha():
        slug = "u-" + slug if slug else "user"
    slug = slug[:40].rstrip("-")
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
    for i in range(0, 40, 6):
        candidate = f"{slug}-{digest[i:i + 6]}"
        if not taken or candidate not in taken:
            return validate_id(candidate)
    return validate_id(f"{slug[:20]}-{secrets.token_hex(6)}")


def job_id() -> str:
    """Job IDs look like UUIDs but never start with a digit."""
    while True:
        value = str(uuid.uuid4())
        if value[0].isalpha():
            return value
