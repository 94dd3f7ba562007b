"""What deployed models use, for quotas and in-use checks."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fireplace.control.deployed_models.tables import DeployedModelRow


def count_loaded_addons(session: Session, account_id: str) -> int:
    """LoRA addons loaded into the account's deployments: the `loaded-addons` quota's usage."""
    return session.scalar(select(func.count()).select_from(DeployedModelRow).where(
        DeployedModelRow.account_id == account_id, DeployedModelRow.is_addon.is_(True))) or 0


def count_deployed_models(session: Session, account_id: str, deployment_name: str, *,
                          addons_only: bool = False) -> int:
    stmt = select(func.count()).select_from(DeployedModelRow).where(
        DeployedModelRow.account_id == account_id, DeployedModelRow.deployment == deployment_name)
    if addons_only:
        stmt = stmt.where(DeployedModelRow.is_addon.is_(True))
    return session.scalar(stmt) or 0

