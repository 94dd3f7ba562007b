"""Public serverless deployments of the bundled models (account `fireplace`).

Every account can call them at once; with enableAddons an account may also load its own
addons of the base model there ("serverless addons", callable only by that account).
`/readyz` answers not-ready until the bundled chat model's deployment has a ready replica.
"""
from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from fireplace.control.accounts.tables import PUBLIC_ACCOUNT_ID
from fireplace.control.deployments import tables as dt
from fireplace.control.deployments.tables import DeploymentRow
from fireplace.db.base import utcnow

BUNDLED_CHAT_DEPLOYMENT = "smollm2-135m-instruct"


def ensure_serverless_deployment(session: Session, model_id: str, *, enable_addons: bool, replicas: int = 1,
                                 display_name: str = "") -> DeploymentRow:
    row = session.get(DeploymentRow, (PUBLIC_ACCOUNT_ID, model_id))
    if row is not None:
        return row
    now = utcnow()
    row = DeploymentRow(account_id=PUBLIC_ACCOUNT_ID, deployment_id=model_id,
                        base_model=f"accounts/{PUBLIC_ACCOUNT_ID}/models/{model_id}", state=dt.CREATING,
                        display_name=display_name or f"{model_id} (serverless)", description="serverless",
                        enable_addons=enable_addons, min_replica_count=replicas, max_replica_count=max(1, replicas),
                        desired_replica_count=replicas, replica_count=0, spec={}, status_code="OK",
                        status_message="waiting for a replica", created_by="", create_time=now, update_time=now,
                        etag=1)
    session.add(row)
    session.flush()
    return row


def bundled_serving_ready(factory: sessionmaker[Session]) -> str | None:
    """None when the bundled chat model serves; else why not (for /readyz)."""
    with factory() as session:
        row = session.get(DeploymentRow, (PUBLIC_ACCOUNT_ID, BUNDLED_CHAT_DEPLOYMENT))
        if row is None:
            return "importing the bundled model"
        if row.state != dt.READY:
            return f"serverless deployment is {row.state}: {row.status_message}"
        return None
