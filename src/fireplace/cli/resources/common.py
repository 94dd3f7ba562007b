"""Options and helpers shared by the resource commands: list paging, durations, key=value maps."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Optional

import typer

from fireplace.cli.output import Kind, note
from fireplace.cli.session import current

Filter = Annotated[Optional[str], typer.Option("--filter", help='AIP-160 filter, e.g. \'state="READY"\'.')]
OrderBy = Annotated[Optional[str], typer.Option("--order-by", help='Sort, e.g. "create_time desc".')]
PageSize = Annotated[Optional[int], typer.Option("--page-size", min=1, help="Items per page (server max 200).")]
PageToken = Annotated[Optional[str], typer.Option("--page-token", help="Continue from a previous page.")]
AllPages = Annotated[bool, typer.Option("--all", help="Follow every page, not just the first.")]
Wait = Annotated[bool, typer.Option("--wait", help="Wait until it is ready, showing progress.")]
WaitTimeout = Annotated[str, typer.Option("--wait-timeout", help="Give up waiting after this long (90s, 30m, 2h).")]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def seconds(value: str, what: str = "duration") -> float:
    """'90s' / '30m' / '2h' / '1.5h' / '45' (seconds) -> seconds."""
    match = _DURATION.match(value or "")
    if not match:
        raise typer.BadParameter(f"{what} {value!r}: expected a number with s, m, h or d (e.g. 30s, 10m)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def show_list(path: str, items_key: str, kind: Kind, *, filter: Optional[str], order_by: Optional[str],
              page_size: Optional[int], page_token: Optional[str], all_pages: bool, **params) -> None:
    """One page (and a hint when there are more), or with --all every page, printed."""
    session = current()
    query = dict(filter=filter, order_by=order_by, page_size=page_size, page_token=page_token, **params)
    client = session.client
    if all_pages:
        items = list(client.iter_list(path, items_key, **query))
    else:
        page = client.list_page(path, **query)
        items = page.get(items_key, [])
        token = page.get("nextPageToken")
        if token:
            note(f"more results: add --all, or --page-token {token}")
    session.printer.many(items, kind)


def completer(collection: str, items_key: str) -> Callable[[str], list[str]]:
    """Shell completion of resource IDs from the server (the default connection; silent on
    any failure, since a completion must never print errors into the user's prompt)."""
    def complete(incomplete: str) -> list[str]:
        from fireplace.cli.profile import resolve
        from fireplace.client import Fireplace
        try:
            p = resolve()
            with Fireplace(p.base_url, p.api_key, p.account_id, timeout=3, max_retries=0) as fp:
                page = fp.list_page(fp.collection_path(collection), page_size=200)
        except Exception:
            return []
        ids = [item.get("name", "").rsplit("/", 1)[-1] for item in page.get(items_key, [])]
        return [i for i in ids if i.startswith(incomplete)]
    return complete
