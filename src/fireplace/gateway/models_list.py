"""GET /v1/models: what this API key can call — every model with a live deployment it can
reach (its account's deployments and deployed models, public serverless deployments, public
deployed models), in the OpenAI list shape; addons carry `parent` = their base model."""
from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from fireplace.api.auth import PUBLIC_ACCOUNT_ID, Principal
from fireplace.control.deployed_models.tables import DeployedModelRow
from fireplace.control.deployments import tables as dt
from fireplace.control.deployments.tables import DeploymentRow
from fireplace.control.models.tables import ModelRow


def list_models(session: Session, caller: Principal) -> dict:
    accounts = (caller.account_id, PUBLIC_ACCOUNT_ID)
    names: set[str] = set()
    for dep in session.scalars(select(DeploymentRow).where(DeploymentRow.account_id.in_(accounts),
                                                           DeploymentRow.state.not_in(dt.SOFT_DELETED))):
        names.add(dep.base_model)
    for row in session.scalars(select(DeployedModelRow).where(or_(
            DeployedModelRow.account_id == caller.account_id, DeployedModelRow.public.is_(True)))):
        names.add(row.model)
    data = []
    for name in sorted(names):
        parts = name.split("/")
        model = session.get(ModelRow, (parts[1], parts[3])) if len(parts) == 4 else None
        if model is None:
            continue
        if model.account_id not in accounts and not model.public and not caller.is_platform_admin:
            continue
        item = {"id": name, "object": "model", "created": int(model.create_time.timestamp()),
                "owned_by": model.account_id, "kind": model.kind}
        if model.base_model:
            item["parent"] = model.base_model
        data.append(item)
    return {"object": "list", "data": data}
