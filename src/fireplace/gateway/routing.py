"""Which deployment (and addon) serves a model string from an inference request.

    accounts/A/models/M#accounts/B/deployments/D  -> D (B must be the caller's account, or the
                                                     public catalog's serverless deployments)
    accounts/A/models/M                           -> the caller's default deployed model of M,
                                                     else a deployment of M in the caller's
                                                     account, else a public serverless one
    M (a bare ID)                                 -> accounts/<caller>/models/M, else accounts/fireplace/models/M

A model the caller cannot read answers exactly like a missing one (404). An addon runs on the
deployment of its base model: the route says which adapter the replica must apply (None for
the base model itself, and for a deployment whose baseModel is the addon: it is merged there).
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from fireplace.api.auth import PUBLIC_ACCOUNT_ID, Principal
from fireplace.control.deployed_models.tables import DeployedModelRow
from fireplace.control.deployments import tables as dt
from fireplace.control.deployments.tables import DeploymentRow
from fireplace.control.models.tables import ModelRow
from fireplace.errors import NotFound
from fireplace.ids import is_valid_id


@dataclass(frozen=True)
class Route:
    model: str            # full model name
    model_kind: str
    deployment: str       # full deployment name
    adapter: str | None   # addon the replica applies; None = the deployment's own model


def _not_found(model: str) -> NotFound:
    return NotFound(f"model {model[:300]!r} not found, or not deployed where this API key can reach it",
                    param="model")


def _split(name: str, collection: str) -> tuple[str, str] | None:
    parts = name.split("/")
    if len(parts) == 4 and parts[0] == "accounts" and parts[2] == collection and all(map(is_valid_id, parts[1::2])):
        return parts[1], parts[3]
    return None


def _visible(caller: Principal, row: ModelRow) -> bool:
    return (caller.is_platform_admin or row.account_id in (caller.account_id, PUBLIC_ACCOUNT_ID)
            or bool(row.public))


def _find_model(session: Session, caller: Principal, text: str) -> ModelRow | None:
    if "/" not in text:
        if not is_valid_id(text):
            return None
        for account in (caller.account_id, PUBLIC_ACCOUNT_ID):
            row = session.get(ModelRow, (account, text))
            if row is not None and _visible(caller, row):
                return row
        return None
    parsed = _split(text, "models")
    if parsed is None:
        return None
    row = session.get(ModelRow, parsed)
    return row if row is not None and _visible(caller, row) else None


def _live_deployment(session: Session, account: str, deployment_id: str) -> DeploymentRow | None:
    row = session.get(DeploymentRow, (account, deployment_id))
    return row if row is not None and row.state not in dt.SOFT_DELETED else None


def _name(row: DeploymentRow) -> str:
    return f"accounts/{row.account_id}/deployments/{row.deployment_id}"


def resolve(session: Session, caller: Principal, text: str) -> Route:
    model_text, _, deployment_text = text.partition("#")
    model = _find_model(session, caller, model_text)
    if model is None:
        raise _not_found(text)
    name = model.name
    if deployment_text:
        parsed = _split(deployment_text, "deployments")
        if parsed is None:
            raise _not_found(text)
        account, deployment_id = parsed
        if account not in (caller.account_id, PUBLIC_ACCOUNT_ID) and not caller.is_platform_admin:
            raise _not_found(text)
        dep = _live_deployment(session, account, deployment_id)
        if dep is None:
            raise _not_found(text)
        return _on(session, caller, model, dep, text)
    # the caller's own deployed-model rows (the default first), then public ones
    rows = list(session.scalars(select(DeployedModelRow).where(DeployedModelRow.model == name)))
    own = sorted((r for r in rows if r.account_id == caller.account_id), key=lambda r: not r.is_default)
    public = [r for r in rows if r.public and r.account_id != caller.account_id]
    for row in own + public:
        dep_parsed = _split(row.deployment, "deployments")
        dep = _live_deployment(session, *dep_parsed) if dep_parsed else None
        if dep is not None:
            return Route(name, model.kind, _name(dep), None if dep.base_model == name else name)
    # a deployment of the model itself: the caller's own, else the public catalog's (serverless)
    for account in (caller.account_id, PUBLIC_ACCOUNT_ID):
        deps = list(session.scalars(select(DeploymentRow).where(
            DeploymentRow.account_id == account, DeploymentRow.base_model == name,
            DeploymentRow.state.not_in(dt.SOFT_DELETED))))
        if deps:
            deps.sort(key=lambda d: (d.state != dt.READY, d.create_time))
            return Route(name, model.kind, _name(deps[0]), None)
    raise _not_found(text)


def _on(session: Session, caller: Principal, model: ModelRow, dep: DeploymentRow, text: str) -> Route:
    name = model.name
    if dep.base_model == name:
        return Route(name, model.kind, _name(dep), None)
    rows = list(session.scalars(select(DeployedModelRow).where(
        DeployedModelRow.model == name, DeployedModelRow.deployment == _name(dep))))
    allowed = [r for r in rows if r.account_id == caller.account_id or r.public or caller.is_platform_admin]
    if not allowed:
        raise _not_found(text)
    return Route(name, model.kind, _name(dep), name)
