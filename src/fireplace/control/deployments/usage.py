"""What deployments use, for quotas and in-use checks by other packages."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fireplace.control.deployments.tables import SOFT_DELETED, DeploymentRow

_live = DeploymentRow.state.not_in(SOFT_DELETED)


def count_deployments(session: Session, account_id: str) -> int:
    """Deployments not (being) deleted: the `deployments` quota's usage."""
    return session.scalar(select(func.count()).select_from(DeploymentRow)
                          .where(DeploymentRow.account_id == account_id, _live)) or 0


def count_replicas(session: Session, account_id: str) -> int:
    """Sum of maxReplicaCount over live deployments: the `replicas` quota's usage."""
    return int(session.scalar(select(func.coalesce(func.sum(DeploymentRow.max_replica_count), 0))
                              .where(DeploymentRow.account_id == account_id, _live)) or 0)


def model_usage(session: Session, model_name: str) -> list[str]:
    """Names of live deployments whose baseModel is `model_name` and of deployed models of it
    (what makes deleting the model a FAILED_PRECONDITION)."""
    from fireplace.control.deployed_models.tables import DeployedModelRow

    deployments = session.execute(select(DeploymentRow.account_id, DeploymentRow.deployment_id)
                                  .where(DeploymentRow.base_model == model_name, _live)
                                  .order_by(DeploymentRow.account_id, DeploymentRow.deployment_id)).all()
    loaded = session.execute(select(DeployedModelRow.account_id, DeployedModelRow.deployed_model_id)
                             .where(DeployedModelRow.model == model_name)
                             .order_by(DeployedModelRow.account_id, DeployedModelRow.deployed_model_id)).all()
    return ([f"accounts/{a}/deployments/{d}" for a, d in deployments]
            + [f"accounts/{a}/deployedModels/{d}" for a, d in loaded])
