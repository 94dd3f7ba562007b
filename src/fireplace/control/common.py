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
from fireplace.api.etags import body_or_header
from fireplace.api.wire import DisplayNameUpdate, to_camel
from fireplace.errors import Aborted, InvalidArgument, not_found
from fireplace.ids import parse_name, validate_id

Row = TypeVar("Row")


def resource_name(account_id: str, collection: str, resource_id: str) -> str:
    return f"accounts/{account_id}/{collection}/{resource_id}"


def path_id(account_id: str, ref: str, collection: str, kind: str) -> str:
    """A path segment naming a resource of the path's account: its ID, or its full name (the
    SDK percent-encodes the slashes). The same rule for every resource: a full name in
    another account answers exactly like a missing resource (404)."""
    ref_account, ref_id = parse_name(ref, collection, account_id=account_id, what=kind)
    if ref_account != account_id:
        raise not_found(kind, resource_name(ref_account, collection, ref_id))
    return ref_id


def fetch(session: Session, table: type[Row], caller: Principal, account_id: str, resource_id: str, *,
          kind: str, collection: str, action: Action = Action.READ, for_update: bool = False,
          serialize: bool = False) -> Row:
    """The row, or the one not-found error (also for another account's private row).
    `resource_id` may be a full name of the same account (path_id). for_update: a row lock
    (PostgreSQL). serialize: take the account lock first (control.locks), for writes whose
    checks count rows or must not lose a concurrent update."""
    validate_id(account_id, "account id")
    resource_id = path_id(account_id, resource_id, collection, kind)
    name = resource_name(account_id, collection, resource_id)
    authorize(caller, account_id, action, kind=kind, name=name)
    if serialize:
        from fireplace.control.locks import serialize_account
        serialize_account(session, account_id)
    row = session.get(table, (account_id, resource_id), with_for_update=for_update or serialize,
                      populate_existing=serialize)
    if row is None:
        raise not_found(kind, name)
    return row


def check_etag(row: Any, etag: str | None) -> None:
    """Optimistic concurrency (AIP-154): an etag the client sends (the resource's `etag`
    field, an If-Match header or ?etag=) must be the current one, else 409 ABORTED.
    No etag: last writer wins (the row lock still merges PATCHes without losing any)."""
    check_etag_value(row.etag, etag)


def check_etag_value(current: Any, etag: str | None) -> None:
    """check_etag for a resource whose etag is not a row's column (e.g. a quota at its default)."""
    if etag is None:
        return
    given = str(etag).strip().removeprefix("W/").strip('"')
    if given in ("", "*"):
        return
    if given != str(current):
        raise Aborted(f"etag mismatch: the resource changed since etag {given[:32]!r} was read "
                      f"(current etag {current}); read it again and retry")


def touch(row: Any) -> None:
    row.etag = (row.etag or 0) + 1


def update_mask_fields(update_mask: str | None) -> set[str] | None:
    """'display_name,description' or camelCase -> snake_case field set (None: merge present fields)."""
    if not update_mask:
        return None
    from fireplace.api.wire import to_snake
    return {to_snake(p.strip()) for p in update_mask.split(",") if p.strip()}


def rename(row: Any, body: DisplayNameUpdate, update_mask: str | None, etag: str | None) -> Any:
    """PATCH of a resource whose only mutable field is displayName (accounts, API keys, SFT
    jobs): the etag checked, the name set when the body or updateMask names it, the etag bumped."""
    check_etag(row, body_or_header(body.etag, etag))
    fields = update_mask_fields(update_mask)
    if fields is None:
        fields = set(body.model_dump(exclude_unset=True)) - {"etag", "name"}
    unknown = fields - {"display_name"}
    if unknown:
        raise InvalidArgument(f"updateMask: unsupported field(s) {', '.join(sorted(map(to_camel, unknown)))}; "
                              "updatable: displayName")
    if "display_name" in fields:
        row.display_name = body.display_name or ""
    touch(row)
    return row
