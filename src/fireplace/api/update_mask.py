"""`?updateMask=` of a PATCH (AIP-134): a comma-separated list of the fields the PATCH sets,
camelCase or snake_case. Each route declares the fields its resource lets a PATCH name, as
a pattern that the spec states and FastAPI checks, so the spec and the server agree on
what a valid mask is (services still map the names: control.common.update_mask_fields).

    update_mask: UpdateMask(["display_name"]) = None   # "displayName", "display_name, displayName"
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Query
from pydantic.alias_generators import to_camel

MAX_MASK_CHARS = 1024


def mask_pattern(fields: Iterable[str], *, nested: bool = False) -> str:
    """The pattern of a mask naming only `fields` (snake_case); nested: 'field.sub.path' too."""
    names = sorted({n for f in fields for n in (f, to_camel(f))}, key=lambda n: (-len(n), n))
    one = "(" + "|".join(re.escape(n) for n in names) + ")" + (r"(\.[A-Za-z0-9_]+)*" if nested else "")
    return rf"^\s*({one}(\s*,\s*{one})*)?\s*$"


def UpdateMask(fields: Iterable[str], *, nested: bool = False) -> Any:   # noqa: N802  (a type, as used)
    return Annotated[str | None, Query(alias="updateMask", max_length=MAX_MASK_CHARS,
                                       pattern=mask_pattern(fields, nested=nested),
                                       description="Comma-separated fields to set (camelCase or snake_case); "
                                                   "without it, the fields present in the body")]
