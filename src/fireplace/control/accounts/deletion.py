"""Deleting an account (`DELETE /v1/accounts/{a}`, our extension; Fireworks has none).

Platform admins only, and only an empty account: while it holds any model, dataset, deployment
(soft-deleted ones too: they can still be undeleted), deployed model or fine-tuning job, the
delete is refused with what is left, so no user-made data is ever lost by it and no blob is
orphaned. What goes with it: its users, their API keys (they stop authenticating at once:
authentication reads the key row on every request), its quota overrides and its usage history.
The public catalog account and an account holding a platform admin are never deleted.
"""
from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fireplace.api.auth import Principal
from fireplace.control.accounts.tables import PUBLIC_ACCOUNT_ID, AccountRow
from fireplace.control.common import check_etag
from fireplace.errors import FailedPrecondition, PermissionDenied, not_found


def _contents():
    """(what, table) of everything an account must not hold when it is deleted."""
    from fireplace.control.datasets.tables import DatasetRow
    from fireplace.control.deployed_models.tables import DeployedModelRow
    from fireplace.control.deployments.tables import DeploymentRow
    from fireplace.control.fine_tuning.tables import SftJobRow
    from fireplace.control.models.tables import ModelRow
    return (("deployed model", DeployedModelRow), ("deployment", DeploymentRow),
            ("supervised fine-tuning job", SftJobRow), ("model", ModelRow), ("dataset", DatasetRow))


def _what_is_left(session: Session, account_id: str) -> list[str]:
    left = []
    for what, table in _contents():
        n = session.scalar(select(func.count()).select_from(table).where(table.account_id == account_id)) or 0
        if n:
            left.append(f"{n} {what}{'s' if n != 1 else ''}")
    return left


def delete_account(session: Session, caller: Principal, account_id: str, *, etag: str | None = None) -> None:
    from fireplace.control.accounts.service import account_id_of
    from fireplace.control.api_keys.tables import ApiKeyRow
    from fireplace.control.locks import serialize_account
    from fireplace.control.quotas.tables import QuotaRow
    from fireplace.control.usage.tables import UsageRow
    from fireplace.control.users.tables import UserRow

    account_id = account_id_of(account_id)
    if not caller.is_platform_admin:
        if caller.account_id == account_id:
            raise PermissionDenied("only a platform admin may delete an account")
        raise not_found("account", f"accounts/{account_id}")
    if account_id == PUBLIC_ACCOUNT_ID:
        raise FailedPrecondition(f"'accounts/{account_id}' is the public catalog and cannot be deleted")
    serialize_account(session, account_id)   # no resource is created in it while we look
    row = session.get(AccountRow, account_id, with_for_update=True)
    if row is None:
        raise not_found("account", f"accounts/{account_id}")
    check_etag(row, etag)
    if session.scalar(select(func.count()).select_from(UserRow).where(
            UserRow.account_id == account_id, UserRow.is_platform_admin.is_(True))):
        raise FailedPrecondition(f"'accounts/{account_id}' holds a platform admin and cannot be deleted")
    left = _what_is_left(session, account_id)
    if left:
        raise FailedPrecondition(f"'accounts/{account_id}' still holds {', '.join(left)}: delete them first "
                                 "(deployments with --hard), then the account")
    for table in (ApiKeyRow, UserRow, QuotaRow, UsageRow):
        session.execute(delete(table).where(table.account_id == account_id))
    session.delete(row)
    session.commit()
