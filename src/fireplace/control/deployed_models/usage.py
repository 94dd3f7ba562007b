"""What deployed models use, for quotas, in-use checks and a model's deployedModelRefs."""
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


def deployed_model_refs(session: Session, model_name: str, account_id: str | None = None) -> list[dict]:
    """A model's `deployedModelRefs` (wire dicts {name, deployment, state, default}), oldest first.
    With account_id, only that account's (a public model is loaded by many accounts)."""
    stmt = select(DeployedModelRow).where(DeployedModelRow.model == model_name)
    if account_id is not None:
        stmt = stmt.where(DeployedModelRow.account_id == account_id)
    rows = session.scalars(stmt.order_by(DeployedModelRow.create_time, DeployedModelRow.deployed_model_id))
    return [{"name": f"accounts/{r.account_id}/deployedModels/{r.deployed_model_id}", "deployment": r.deployment,
             "state": r.state, "default": r.is_default} for r in rows]
