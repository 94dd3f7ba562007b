"""Where a request carries the etag it was based on (AIP-154): the resource's `etag` field in
a PATCH body, an `If-Match` header, or `?etag=` (deletes and custom verbs). Services compare
it with control.common.check_etag: a stale one is 409 ABORTED."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query


def etag_param(if_match: Annotated[str | None, Header(alias="If-Match", max_length=64)] = None,
               etag: Annotated[str | None, Query(max_length=64)] = None) -> str | None:
    return etag if etag is not None else if_match


EtagDep = Annotated[str | None, Depends(etag_param)]


def body_or_header(body_etag: str | None, header_etag: str | None) -> str | None:
    return body_etag if body_etag is not None else header_etag
