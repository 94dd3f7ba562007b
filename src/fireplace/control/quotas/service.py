"""Quotas per account: read by the account's readers, changed by a platform admin only.

A quota without a row has its default; PATCH writes an override row. Usage is always counted
from the live rows (control/quotas/usage.py), so it never drifts.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fireplace.api.auth import Action, Principal, authorize
from fireplace.control.accounts.service import account_id_of, require_account
from fireplace.control.common import touch, update_mask_fields
from fireplace.control.quotas.definitions import QUOTAS, QuotaDefinition
from fireplace.control.quotas.schemas import QuotaUpdate
from fireplace.control.quotas.tables import QuotaRow
from fireplace.control.quotas.usage import account_usage, quota_usage
from fireplace.errors import InvalidArgument, PermissionDenied, not_found

# (definition, max value, usage, update time of the override or None)
QuotaView = tuple[QuotaDefinition, int, int, datetime | None]


def _readable_account(session: Session, caller: Principal, account_id: str) -> str:
    account_id = account_id_of(account_id)
    authorize(caller, account_id, Action.READ, kind="account", name=f"accounts/{account_id}")
    require_account(session, account_id)
    return account_id


def _definition(account_id: str, quota_id: str) -> QuotaDefinition:
    quota_id = quota_id.rsplit("/", 1)[-1] if quota_id.startswith("accounts/") else quota_id
    if quota_id not in QUOTAS:
        raise not_found("quota", f"accounts/{account_id}/quotas/{quota_id[:80]}")
    return QUOTAS[quota_id]


def _overrides(session: Session, account_id: str) -> dict[str, QuotaRow]:
    rows = session.scalars(select(QuotaRow).where(QuotaRow.account_id == account_id))
    return {r.quota_id: r for r in rows}


def list_quotas(session: Session, caller: Principal, account_id: str) -> tuple[str, list[QuotaView]]:
    account_id = _readable_account(session, caller, account_id)
    overrides, usage = _overrides(session, account_id), account_usage(session, account_id)
    views = []
    for quota_id, definition in QUOTAS.items():
        row = overrides.get(quota_id)
        views.append((definition, row.max_value if row else definition.default, usage[quota_id],
                      row.update_time if row else None))
    return account_id, views


def get_quota(session: Session, caller: Principal, account_id: str, quota_id: str) -> tuple[str, QuotaView]:
    account_id = _readable_account(session, caller, account_id)
    definition = _definition(account_id, quota_id)
    row = session.get(QuotaRow, (account_id, definition.quota_id))
    return account_id, (definition, row.max_value if row else definition.default,
                        quota_usage(session, account_id, definition.quota_id), row.update_time if row else None)


def update_quota(session: Session, caller: Principal, account_id: str, quota_id: str, body: QuotaUpdate,
                 update_mask: str | None) -> tuple[str, QuotaView]:
    account_id = _readable_account(session, caller, account_id)
    if not caller.is_platform_admin:
        raise PermissionDenied("only a platform admin may change quotas")
    definition = _definition(account_id, quota_id)
    fields = update_mask_fields(update_mask)
    if fields is not None and fields - {"max_value"}:
        raise InvalidArgument(f"updateMask: only max_value is updatable, got {', '.join(sorted(fields))}")
    if body.max_value is None:
        raise InvalidArgument("maxValue is required")
    for attempt in range(2):
        row = session.get(QuotaRow, (account_id, definition.quota_id))
        if row is None:
            row = QuotaRow(account_id=account_id, quota_id=definition.quota_id, max_value=body.max_value)
            session.add(row)
        else:
            row.max_value = body.max_value
            touch(row)
        try:
            session.commit()
            break
        except IntegrityError:
            # A concurrent PATCH inserted the override first: update it instead.
            session.rollback()
            if attempt:
                raise
    return account_id, (definition, row.max_value, quota_usage(session, account_id, definition.quota_id),
                        row.update_time)


def get_usage(session: Session, caller: Principal, account_id: str) -> tuple[str, dict[str, int]]:
    account_id = _readable_account(session, caller, account_id)
    return account_id, account_usage(session, account_id)
