"""Quotas per account: read by the account's readers, changed by a platform admin only.

A quota without a row has its default; PATCH writes an override row. Usage is always counted
from the live rows (control/quotas/usage.py), so it never drifts.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from fireplace.api.auth import Action, Principal, authorize
from fireplace.api.etags import body_or_header
from fireplace.control.accounts.service import account_id_of, require_account
from fireplace.control.common import check_etag_value, path_id, touch, update_mask_fields
from fireplace.control.locks import serialize_account
from fireplace.control.quotas.definitions import QUOTAS, QuotaDefinition
from fireplace.control.quotas.schemas import QuotaUpdate
from fireplace.control.quotas.tables import QuotaRow
from fireplace.control.quotas.usage import account_usage, quota_usage
from fireplace.errors import InvalidArgument, PermissionDenied, not_found

# (definition, max value, usage, update time of the override or None, etag: the override's or 0)
QuotaView = tuple[QuotaDefinition, int, int, datetime | None, int]


def _readable_account(session: Session, caller: Principal, account_id: str) -> str:
    account_id = account_id_of(account_id)
    authorize(caller, account_id, Action.READ, kind="account", name=f"accounts/{account_id}")
    require_account(session, account_id)
    return account_id


def _definition(account_id: str, quota_ref: str) -> QuotaDefinition:
    """A quota ID, or its full name in this account (another account's answers like a missing quota)."""
    if "/" not in quota_ref and quota_ref not in QUOTAS:
        raise not_found("quota", f"accounts/{account_id}/quotas/{quota_ref[:80]}")
    quota_id = path_id(account_id, quota_ref, "quotas", "quota")
    if quota_id not in QUOTAS:
        raise not_found("quota", f"accounts/{account_id}/quotas/{quota_id}")
    return QUOTAS[quota_id]


def _view(definition: QuotaDefinition, row: QuotaRow | None, usage: int) -> QuotaView:
    if row is None:
        return definition, definition.default, usage, None, 0
    return definition, row.max_value, usage, row.update_time, row.etag


def _overrides(session: Session, account_id: str) -> dict[str, QuotaRow]:
    rows = session.scalars(select(QuotaRow).where(QuotaRow.account_id == account_id))
    return {r.quota_id: r for r in rows}


def list_quotas(session: Session, caller: Principal, account_id: str) -> tuple[str, list[QuotaView]]:
    account_id = _readable_account(session, caller, account_id)
    overrides, usage = _overrides(session, account_id), account_usage(session, account_id)
    return account_id, [_view(definition, overrides.get(quota_id), usage[quota_id])
                        for quota_id, definition in QUOTAS.items()]


def get_quota(session: Session, caller: Principal, account_id: str, quota_id: str) -> tuple[str, QuotaView]:
    account_id = _readable_account(session, caller, account_id)
    definition = _definition(account_id, quota_id)
    row = session.get(QuotaRow, (account_id, definition.quota_id))
    return account_id, _view(definition, row, quota_usage(session, account_id, definition.quota_id))


def update_quota(session: Session, caller: Principal, account_id: str, quota_id: str, body: QuotaUpdate,
                 update_mask: str | None, etag: str | None = None) -> tuple[str, QuotaView]:
    """Under the account lock (as every check that counts against a quota runs), so a stale
    etag is caught and two PATCHes never both pass the compare."""
    account_id = _readable_account(session, caller, account_id)
    if not caller.is_platform_admin:
        raise PermissionDenied("only a platform admin may change quotas")
    definition = _definition(account_id, quota_id)
    fields = update_mask_fields(update_mask)
    if fields is not None and fields - {"max_value"}:
        raise InvalidArgument(f"updateMask: only max_value is updatable, got {', '.join(sorted(fields))}")
    if body.max_value is None:
        raise InvalidArgument("maxValue is required")
    serialize_account(session, account_id)
    row = session.get(QuotaRow, (account_id, definition.quota_id), populate_existing=True)
    check_etag_value(row.etag if row else 0, body_or_header(body.etag, etag))
    if row is None:
        row = QuotaRow(account_id=account_id, quota_id=definition.quota_id, max_value=body.max_value)
        session.add(row)
    else:
        row.max_value = body.max_value
        touch(row)
    session.commit()
    return account_id, _view(definition, row, quota_usage(session, account_id, definition.quota_id))


def get_usage(session: Session, caller: Principal, account_id: str) -> tuple[str, dict[str, int]]:
    account_id = _readable_account(session, caller, account_id)
    return account_id, account_usage(session, account_id)
