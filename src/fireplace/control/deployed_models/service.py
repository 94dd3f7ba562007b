"""Deployed models (the SDK's `client.lora`): load / get / list / update / unload.

Load rules: the deployment is in the same account and not deleted; the model is READY and
visible (own account or the public catalog) and is either the deployment's own base model or
a LoRA addon whose peftDetails.baseModel is the deployment's base model, and then the
deployment must have enableAddons. A model loads at most once per deployment (400, code 9).
The first deployment a model lands on (per account) becomes its default; `default=true`
moves the default. State stays DEPLOYING until the data-plane controller sees it loaded.
Unload removes the row; if it was the default, the oldest other deployment takes over.
"""
from __future__ import annotations

import secrets

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fireplace.api.auth import PUBLIC_ACCOUNT_ID, Action, Principal, authorize
from fireplace.api.filtering import FieldMap, name_field, as_bool, as_str, as_time
from fireplace.api.listing import ListParams, paginate
from fireplace.control.common import check_etag, fetch, resource_name, touch, update_mask_fields
from fireplace.control.deployed_models import tables as t
from fireplace.control.deployed_models.schemas import DeployedModelLoad, DeployedModelUpdate
from fireplace.control.deployed_models.tables import DeployedModelRow
from fireplace.control.deployed_models.usage import count_loaded_addons
from fireplace.control.locks import serialize_account
from fireplace.control.models.service import require_publisher
from fireplace.control.deployments.service import (ADDON_KIND, model_name, require_account,
                                                   resolve_addon_base, resolve_model)
from fireplace.control.deployments.tables import SOFT_DELETED, DeploymentRow
from fireplace.control.quotas.definitions import enforce_quota
from fireplace.errors import FailedPrecondition, InvalidArgument
from fireplace.ids import parse_name, validate_id

KIND, COLLECTION = "deployed model", "deployedModels"
FIELDS: FieldMap = {
    "name": name_field(DeployedModelRow.deployed_model_id, "accounts/", DeployedModelRow.account_id,
                       "/deployedModels/", DeployedModelRow.deployed_model_id),
    "model": (DeployedModelRow.model, as_str),
    "deployment": (DeployedModelRow.deployment, as_str),
    "state": (DeployedModelRow.state, as_str),
    "display_name": (DeployedModelRow.display_name, as_str),
    "default": (DeployedModelRow.is_default, as_bool),
    "public": (DeployedModelRow.public, as_bool),
    "create_time": (DeployedModelRow.create_time, as_time),
    "update_time": (DeployedModelRow.update_time, as_time),
}


def _deployment(session: Session, account_id: str, value: str) -> DeploymentRow:
    dep_account, dep_id = parse_name(value, "deployments", account_id=account_id, what="deployment")
    name = resource_name(dep_account, "deployments", dep_id)
    # the account's own deployments, or a public serverless one (serverless addons, see load)
    row = (session.get(DeploymentRow, (dep_account, dep_id)) if dep_account in (account_id, PUBLIC_ACCOUNT_ID)
           else None)
    if row is None:
        raise InvalidArgument(f"deployment: deployment {name!r} not found")
    if row.state in SOFT_DELETED:
        raise FailedPrecondition(f"deployment: deployment {name!r} is {row.state}")
    return row


def _others(session: Session, account_id: str, model: str, exclude_id: str | None = None) -> list[DeployedModelRow]:
    """The account's other deployed models of `model`, oldest first."""
    stmt = select(DeployedModelRow).where(DeployedModelRow.account_id == account_id, DeployedModelRow.model == model)
    if exclude_id:
        stmt = stmt.where(DeployedModelRow.deployed_model_id != exclude_id)
    return list(session.scalars(stmt.order_by(DeployedModelRow.create_time, DeployedModelRow.deployed_model_id)))


def _make_default(session: Session, row: DeployedModelRow) -> None:
    session.execute(update(DeployedModelRow).where(
        DeployedModelRow.account_id == row.account_id, DeployedModelRow.model == row.model,
        DeployedModelRow.deployed_model_id != row.deployed_model_id).values(is_default=False))
    row.is_default = True


def _promote_successor(session: Session, row: DeployedModelRow) -> None:
    """`row` stops being the default (unload or default=false; already flushed as not default
    or deleted, so the database's one-default index holds at every step): the oldest other
    one takes over."""
    others = _others(session, row.account_id, row.model, exclude_id=row.deployed_model_id)
    if others and not any(o.is_default for o in others):
        others[0].is_default = True
        touch(others[0])
        session.flush()


def _new_id(model_id: str) -> str:
    return f"{model_id[:54].rstrip('-')}-{secrets.token_hex(4)}"


def load(session: Session, caller: Principal, account_id: str, body: DeployedModelLoad) -> DeployedModelRow:
    validate_id(account_id, "account id")
    authorize(caller, account_id, Action.WRITE, kind="account")
    require_account(session, account_id)
    serialize_account(session, account_id)  # loaded-addons quota and the one-default rule
    if body.public:
        require_publisher(caller, account_id)
    if body.serverless:
        raise InvalidArgument("serverless is not applicable when loading a model into a deployment; omit it")
    deployment = _deployment(session, account_id, body.deployment)
    dep_name = resource_name(deployment.account_id, "deployments", deployment.deployment_id)
    model = resolve_model(session, account_id, body.model, "model")
    mname = model_name(model)
    is_addon = mname != deployment.base_model
    if deployment.account_id != account_id and (not is_addon or model.account_id != account_id):
        # serverless addons: an account loads its OWN addon into the public deployment of its base
        raise InvalidArgument(f"deployment: {dep_name!r} is a public serverless deployment; only this "
                              "account's own LoRA addons of its base model can be loaded there")
    if is_addon:
        if model.kind != ADDON_KIND:
            raise InvalidArgument(f"model: {mname!r} is a {model.kind}; deployment {dep_name!r} serves "
                                  f"{deployment.base_model!r} and can load only LoRA addons of it")
        # A public addon over a base this account cannot read answers like a missing model:
        # no message below may name that base or its state.
        resolve_addon_base(session, account_id, model, "model")
        if model.base_model != deployment.base_model:
            raise InvalidArgument(f"model: addon {mname!r} was trained on {model.base_model!r}, but deployment "
                                  f"{dep_name!r} serves {deployment.base_model!r}")
        if not deployment.enable_addons:
            raise FailedPrecondition(f"deployment {dep_name!r} was created without enableAddons; "
                                     "it cannot load LoRA addons")
    existing = session.scalar(select(DeployedModelRow).where(
        DeployedModelRow.account_id == account_id, DeployedModelRow.model == mname,
        DeployedModelRow.deployment == dep_name))
    if existing is not None:
        raise _already_loaded(mname, dep_name, resource_name(account_id, COLLECTION, existing.deployed_model_id))
    if is_addon:
        enforce_quota(session, account_id, "loaded-addons", usage=count_loaded_addons(session, account_id))
    row = DeployedModelRow(account_id=account_id, deployed_model_id=_new_id(model.model_id), model=mname,
                           deployment=dep_name, state=t.DEPLOYING, is_addon=is_addon,
                           display_name=body.display_name or "", description=body.description or "",
                           public=bool(body.public), created_by=caller.user_name, status_code="OK",
                           status_message="waiting for a serving replica to load the model")
    first = not _others(session, account_id, mname)
    session.add(row)
    if first or body.default:
        _make_default(session, row)
    try:
        session.flush()
    except IntegrityError:  # a concurrent load of the same pair won
        session.rollback()
        raise _already_loaded(mname, dep_name, "") from None
    session.commit()
    return row


def _already_loaded(model: str, deployment: str, existing: str) -> FailedPrecondition:
    where = f" as {existing!r}" if existing else ""
    return FailedPrecondition(f"model {model!r} is already loaded into deployment {deployment!r}{where}")


def get(session: Session, caller: Principal, account_id: str, deployed_model_id: str,
        action: Action = Action.READ) -> DeployedModelRow:
    return fetch(session, DeployedModelRow, caller, account_id, deployed_model_id, kind=KIND,
                 collection=COLLECTION, action=action, serialize=action >= Action.WRITE)


def list_rows(session: Session, caller: Principal, account_id: str, params: ListParams):
    validate_id(account_id, "account id")
    authorize(caller, account_id, Action.READ, kind="account")
    stmt = select(DeployedModelRow).where(DeployedModelRow.account_id == account_id)
    return paginate(session, stmt, params, FIELDS, [DeployedModelRow.deployed_model_id],
                    scope=f"deployedModels:{account_id}")


SETTABLE = {"display_name", "description", "public", "default"}


def update_row(session: Session, caller: Principal, account_id: str, deployed_model_id: str,
               body: DeployedModelUpdate, update_mask: str | None = None, *,
               etag: str | None = None) -> DeployedModelRow:
    row = get(session, caller, account_id, deployed_model_id, Action.WRITE)
    check_etag(row, etag)
    if body.model is not None:
        m_account, m_id = parse_name(body.model, "models", account_id=account_id, what="model")
        if resource_name(m_account, "models", m_id) != row.model:
            raise InvalidArgument("model cannot be changed; unload this one and load the other model")
    if body.deployment is not None:
        d_account, d_id = parse_name(body.deployment, "deployments", account_id=account_id, what="deployment")
        if resource_name(d_account, "deployments", d_id) != row.deployment:
            raise InvalidArgument("deployment cannot be changed; unload and load into the other deployment")
    if body.serverless:
        raise InvalidArgument("serverless is not applicable to a deployed model; omit it")
    mask = update_mask_fields(update_mask)
    if mask is not None and mask - SETTABLE - {"model", "deployment", "serverless"}:
        raise InvalidArgument(f"updateMask: unsupported field(s) "
                              f"{', '.join(sorted(mask - SETTABLE))}; supported: {', '.join(sorted(SETTABLE))}")
    fields = (mask if mask is not None else body.model_dump(exclude_unset=True).keys()) & SETTABLE
    for field in fields & {"display_name", "description"}:
        setattr(row, field, getattr(body, field) or "")
    if "public" in fields:
        if body.public and not row.public:
            require_publisher(caller, account_id)
        row.public = bool(body.public)
    if "default" in fields:
        if body.default and not row.is_default:
            _make_default(session, row)
        elif not body.default and row.is_default:
            if not _others(session, account_id, row.model, exclude_id=row.deployed_model_id):
                raise FailedPrecondition("the only deployment of a model is its default; "
                                         "load it elsewhere first or unload it")
            row.is_default = False
            session.flush()
            _promote_successor(session, row)
    touch(row)
    session.commit()
    return row


def unload(session: Session, caller: Principal, account_id: str, deployed_model_id: str, *,
           etag: str | None = None) -> None:
    row = get(session, caller, account_id, deployed_model_id, Action.WRITE)
    check_etag(row, etag)
    session.delete(row)
    session.flush()
    _promote_successor(session, row)
    session.commit()


def unload_all(session: Session, account_id: str, deployment_name: str, *, dry_run: bool) -> int:
    """Unload every model of a deployment (as part of deleting it); no commit. Returns how many."""
    rows = list(session.scalars(select(DeployedModelRow).where(
        DeployedModelRow.account_id == account_id, DeployedModelRow.deployment == deployment_name)))
    if not dry_run:
        for row in rows:
            session.delete(row)
            session.flush()
            _promote_successor(session, row)
    return len(rows)
