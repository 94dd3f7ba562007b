"""Helpers every resource service uses: names, fetch-or-404 with tenancy, etags, PATCH merge.

Conventions for a resource package control/<resource>/:
  tables.py   SQLAlchemy row (AccountScoped columns + the fields filters need; the rest in JSON)
  schemas.py  wire models (fireplace.api.wire.Wire): <Resource> (output), <Resource>Create ...
  service.py  functions (session, caller, ...) that check access, validate, write, commit
  router.py   thin FastAPI routes: parse, call the service, return the wire dict
"""
from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.orm import Session

from fireplace.api.auth import Action, Principal, authorize
from fireplace.errors import Aborted, not_found
from fireplace.ids import validate_id

Row = TypeVar("Row")


def resource_name(account_id: str, collection: str, resource_id: str) -> str:
    return f"accounts/{account_id}/{collection}/{resource_id}"


def fetch(session: Session, table: type[Row], caller: Principal, account_id: str, resource_id: str, *,
          kind: str, collection: str, action: Action = Action.READ, for_update: bool = False) -> Row:
    """The row, or the one not-found error (also for another account's private row)."""
    name = resource_name(account_id, collection, resource_id)
    validate_id(account_id, "account id")
    validate_id(resource_id, f"{kind} id")
    authorize(caller, account_id, action, kind=kind, name=name)
    row = session.get(table, (account_id, resource_id), with_for_update=for_update)
    if row is None:
        raise not_found(kind, name)
    return row


def check_etag(row: Any, etag: str | None) -> None:
    """Optimistic concurrency (AIP-154): a stale etag is 409 ABORTED."""
    if etag and str(row.etag) != str(etag).strip('"'):
        raise Aborted(f"etag mismatch: resource changed (current etag {row.etag})")


def touch(row: Any) -> None:
    row.etag = (row.etag or 0) + 1


def update_mask_fields(update_mask: str | None) -> set[str] | None:
    """'display_name,description' or camelCase -> snake_case field set (None: merge present fields)."""
    if not update_mask:
        return None
    from fireplace.api.wire import to_snake
    return {to_snake(p.strip()) for p in update_mask.split(",") if p.strip()}
