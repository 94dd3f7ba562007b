"""List requests: pageSize / pageToken / filter / orderBy over a SQLAlchemy select.

Page tokens are opaque and tamper-evident: `<base64 {"o": offset}>.<HMAC>`, the HMAC (the
platform's signing secret) covering the offset, the list's scope, filter, orderBy,
showDeleted and pageSize, so a forged token, or one reused with other parameters, is a
clear 400. Order is always total (the primary key breaks ties), so paging is stable.
Bounds (Settings.limits): pageSize at most max_page_size (default default_page_size),
filter at most max_filter_chars (which can lower, not raise, the documented 1,024).
"""
from __future__ import annotations

import base64
import hmac
import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from fireplace.api.filtering import FieldMap, compile_filter, parse_filter
from fireplace.api.read_mask import READ_MASK, refuse_read_mask
from fireplace.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_FILTER_CHARS = 1024
MAX_OFFSET = 1 << 40


@dataclass
class ListParams:
    page_size: int = DEFAULT_PAGE_SIZE
    page_token: str = ""
    filter: str = ""
    order_by: str = ""
    show_deleted: bool = False
    max_filter_chars: int = MAX_FILTER_CHARS


def list_params(
    request: Request,
    page_size: Annotated[int | None, Query(alias="pageSize", ge=0, le=1 << 31)] = None,
    page_token: Annotated[str | None, Query(alias="pageToken", max_length=512)] = None,
    filter: Annotated[str | None, Query(max_length=MAX_FILTER_CHARS)] = None,
    order_by: Annotated[str | None, Query(alias="orderBy", max_length=256)] = None,
    read_mask: Annotated[str | None, READ_MASK] = None,
    show_deleted: Annotated[bool, Query(alias="showDeleted")] = False,
) -> ListParams:
    refuse_read_mask(read_mask)
    limits = request.app.state.settings.limits
    size = limits.default_page_size if not page_size else min(page_size, limits.max_page_size)
    return ListParams(size, page_token or "", filter or "", order_by or "", show_deleted,
                      min(limits.max_filter_chars, MAX_FILTER_CHARS))


ListQuery = Annotated[ListParams, Depends(list_params)]


def _bound(params: ListParams, scope: str, offset: int) -> bytes:
    """What a token is bound to (everything but the token itself)."""
    return json.dumps([scope, params.filter, params.order_by, params.show_deleted, params.page_size, offset],
                      separators=(",", ":")).encode()


def _decode_token(session: Session, token: str, params: ListParams, scope: str) -> int:
    from fireplace.control.signed_urls import mac
    try:
        payload, sig = token.split(".", 1)
        data = json.loads(base64.urlsafe_b64decode(payload.encode() + b"=" * (-len(payload) % 4)))
        offset = data["o"]
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_OFFSET:
            raise ValueError
    except Exception:
        raise InvalidArgument("invalid pageToken") from None
    if not hmac.compare_digest(mac(session, "page-token", _bound(params, scope, offset)).encode(),
                               sig.encode("utf-8", "replace")):
        raise InvalidArgument("pageToken does not match this request's filter, orderBy, showDeleted and "
                              "pageSize (or was not issued by this server)")
    return offset


def _encode_token(session: Session, offset: int, params: ListParams, scope: str) -> str:
    from fireplace.control.signed_urls import mac
    raw = json.dumps({"o": offset}, separators=(",", ":")).encode()
    return (base64.urlsafe_b64encode(raw).decode().rstrip("=") + "."
            + mac(session, "page-token", _bound(params, scope, offset)))


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
    where = compile_filter(parse_filter(params.filter, params.max_filter_chars), fields)
    if where is not None:
        stmt = stmt.where(where)
    offset = _decode_token(session, params.page_token, params, scope) if params.page_token else 0
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    ordered = stmt.order_by(*order_clauses(params.order_by, fields), *tiebreak)
    rows = list(session.scalars(ordered.offset(offset).limit(params.page_size + 1)))
    next_token = ""
    if len(rows) > params.page_size:
        rows = rows[:params.page_size]
        next_token = _encode_token(session, offset + params.page_size, params, scope)
    return rows, next_token, int(total)
