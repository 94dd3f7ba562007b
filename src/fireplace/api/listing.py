"""List requests: pageSize / pageToken / filter / orderBy over a SQLAlchemy select.

Page tokens are opaque: base64 of {offset, fingerprint of filter+orderBy}, so a token
reused with other parameters is a clear 400. Order is always total (the primary key
breaks ties), so paging is stable.
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from fireplace.api.filtering import FieldMap, compile_filter, parse_filter
from fireplace.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@dataclass
class ListParams:
    page_size: int = DEFAULT_PAGE_SIZE
    page_token: str = ""
    filter: str = ""
    order_by: str = ""
    show_deleted: bool = False


def list_params(
    page_size: Annotated[int | None, Query(alias="pageSize")] = None,
    page_token: Annotated[str | None, Query(alias="pageToken", max_length=512)] = None,
    filter: Annotated[str | None, Query(max_length=1024)] = None,
    order_by: Annotated[str | None, Query(alias="orderBy", max_length=256)] = None,
    read_mask: Annotated[str | None, Query(alias="readMask", max_length=1024)] = None,
    show_deleted: Annotated[bool, Query(alias="showDeleted")] = False,
) -> ListParams:
    if page_size is not None and page_size < 0:
        raise InvalidArgument("pageSize must not be negative")
    size = DEFAULT_PAGE_SIZE if not page_size else min(page_size, MAX_PAGE_SIZE)
    return ListParams(size, page_token or "", filter or "", order_by or "", show_deleted)


ListQuery = Annotated[ListParams, Depends(list_params)]


def _fingerprint(params: ListParams, scope: str) -> str:
    raw = f"{scope}\x00{params.filter}\x00{params.order_by}\x00{params.show_deleted}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _decode_token(token: str, fingerprint: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)))
        offset, fp = int(data["o"]), str(data["f"])
    except Exception:
        raise InvalidArgument("invalid pageToken") from None
    if fp != fingerprint or offset < 0:
        raise InvalidArgument("pageToken does not match this request's filter/orderBy")
    return offset


def _encode_token(offset: int, fingerprint: str) -> str:
    raw = json.dumps({"o": offset, "f": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def order_clauses(order_by: str, fields: FieldMap) -> list:
    clauses = []
    for part in filter(None, (p.strip() for p in order_by.split(","))):
        words = part.split()
        name = words[0]
        direction = words[1].lower() if len(words) > 1 else "asc"
        if len(words) > 2 or direction not in ("asc", "desc"):
            raise InvalidArgument(f"invalid orderBy {part!r}: expected 'field' or 'field desc'")
        if name not in fields:
            raise InvalidArgument(f"invalid orderBy: unsupported field {name!r}; "
                                  f"supported: {', '.join(sorted(fields))}")
        column = fields[name][0]
        clauses.append(column.desc() if direction == "desc" else column.asc())
    return clauses


def paginate(session: Session, stmt: Select, params: ListParams, fields: FieldMap,
             tiebreak: list, scope: str) -> tuple[list[Any], str, int]:
    """Run a list query; returns (rows, nextPageToken or '', totalSize)."""
    where = compile_filter(parse_filter(params.filter), fields)
    if where is not None:
        stmt = stmt.where(where)
    fingerprint = _fingerprint(params, scope)
    offset = _decode_token(params.page_token, fingerprint) if params.page_token else 0
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    ordered = stmt.order_by(*order_clauses(params.order_by, fields), *tiebreak)
    rows = list(session.scalars(ordered.offset(offset).limit(params.page_size + 1)))
    next_token = ""
    if len(rows) > params.page_size:
        rows = rows[:params.page_size]
        next_token = _encode_token(offset + params.page_size, fingerprint)
    return rows, next_token, int(total)
