"""`readMask` (AIP-157 partial responses): Fireplace always returns whole resources, so a
request that asks for a field mask is refused by name rather than silently given more."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query

from fireplace.errors import InvalidArgument


def refuse_read_mask(read_mask: str | None) -> None:
    if read_mask is not None and read_mask.strip() not in ("", "*"):
        raise InvalidArgument("readMask is not supported: Fireplace returns whole resources "
                              "(omit readMask, or send '*')")


READ_MASK = Query(alias="readMask", max_length=1024, pattern=r"^\*?$",
                  description="Only '*' (whole resources) is supported; a field mask is refused")


def read_mask_param(read_mask: Annotated[str | None, READ_MASK] = None) -> None:
    refuse_read_mask(read_mask)


def body_read_mask():
    """A `readMask` field of a request body (e.g. :getUploadEndpoint): only '*' is accepted."""
    from pydantic import Field
    return Field(default=None, max_length=1024, pattern=r"^\*?$",
                 description="Only '*' (whole resources) is supported; a field mask is refused")


# A route parameter: `_: ReadMask = None` declares readMask and refuses a real mask.
ReadMask = Annotated[None, Depends(read_mask_param)]
