"""Deployments: create / get / list / update / delete (soft or hard) / undelete / scale.

Until the data-plane controller exists nothing starts replicas, so a deployment stays
CREATING with replicaCount 0: READY is never reported without a serving replica.

Deletion (AIP-164): soft by default -> DELETED (DELETING while replicas still run) with
deleteTime = now and purgeTime = now + 30 days; past purgeTime it reads as missing and the
background purger (control.deployments.purger) removes the row; reads never write.
`hard=true` purges at once. A deployment with deployed models loaded is refused
(FAILED_PRECONDITION) unless `ignoreChecks=true`, which unloads them as part of the delete.
"""
from __future__ import annotations

import secrets
import string
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fireplace.api.auth import PUBLIC_ACCOUNT_ID, Action, Principal, authorize
from fireplace.api.filtering import FieldMap, name_field, as_bool, as_int, as_str, as_time
from fireplace.api.listing import ListParams, paginate
from fireplace.control.common import check_etag, fetch, path_id, resource_name, touch, update_mask_fields
from fireplace.control.deployments import tables as t
from fireplace.control.deployments.schemas import DeploymentCreate, DeploymentFields, DeploymentUpdate
from fireplace.control.deployments.tables import DeploymentRow
from fireplace.control.deployments.usage import count_deployments, count_replicas
from fireplace.control.locks import serialize_account
from fireplace.control.quotas.definitions import enforce_quota
from fireplace.db.base import utcnow
from fireplace.db.engine import add_unique
from fireplace.errors import FailedPrecondition, InvalidArgument, not_found
from fireplace.ids import parse_name, validate_id

KIND, COLLECTION = "deployment", "deployments"
SOFT_DELETE_RETENTION = timedelta(days=30)
BASE_KIND, ADDON_KIND = "HF_BASE_MODEL", "HF_PEFT_ADDON"
# field name in filters/orderBy -> (column, literal converter)
FIELDS: FieldMap = {
    "name": name_field(DeploymentRow.deployment_id, "accounts/", DeploymentRow.account_id, "/deployments/",
                       DeploymentRow.deployment_id),
    "state": (DeploymentRow.state, as_str),
    "display_name": (DeploymentRow.display_name, as_str),
    "base_model": (DeploymentRow.base_model, as_str),
    "enable_addons": (DeploymentRow.enable_addons, as_bool),
    "min_replica_count": (DeploymentRow.min_replica_count, as_int),
    "max_replica_count": (DeploymentRow.max_replica_count, as_int),
    "create_time": (DeploymentRow.create_time, as_time),
    "update_time": (DeploymentRow.update_time, as_time),
}


# ---- references to models (shared with deployed_models and fine_tuning) ----

def resolve_model(session: Session, account_id: str, value: str, field: str, *, ready: bool = True):
    """A model named in a request body of `account_id`: its own, the public catalog's, or one
    marked public. Missing and another account's private model answer the same 400."""
    from fireplace.control.models.tables import ModelRow

    model_account, model_id = parse_name(value, "models", account_id=account_id, what=field)
    name = resource_name(model_account, "models", model_id)
    row = session.get(ModelRow, (model_account, model_id))
    if row is not None and model_account not in (account_id, PUBLIC_ACCOUNT_ID) and not row.public:
        row = None
    if row is None:
        raise InvalidArgument(f"{field}: model {name!r} not found")
    if ready and row.state != "READY":
        raise FailedPrecondition(f"{field}: model {name!r} is {row.state}, not READY")
    return row


def resolve_addon_base(session: Session, account_id: str, addon, field: str):
    """The base model of `addon` (a model `account_id` may read), if `account_id` may read
    the base as well. A public addon over a base the caller cannot read answers exactly as
    if the addon were missing: no message names the base or its state."""
    try:
        if not addon.base_model:
            raise InvalidArgument("no base")
        return resolve_model(session, account_id, addon.base_model, field)
    except (InvalidArgument, FailedPrecondition) as exc:
        base_account = addon.base_model.split("/")[1] if addon.base_model.count("/") == 3 else ""
        if base_account in (account_id, PUBLIC_ACCOUNT_ID) and isinstance(exc, FailedPrecondition):
            raise  # the caller's own (or the catalog's) base: its state is theirs to know
        raise InvalidArgument(f"{field}: model {model_name(addon)!r} not found") from None


def model_name(row) -> str:
    return resource_name(row.account_id, "models", row.model_id)


def _check_deployable(session: Session, account_id: str, model, enable_addons: bool) -> None:
    if model.kind == BASE_KIND:
        return
    if model.kind != ADDON_KIND:
        raise InvalidArgument(f"baseModel: model {model_name(model)!r} of kind {model.kind} cannot be deployed "
                              f"(expected {BASE_KIND}, or {ADDON_KIND} for a live-merge deployment)")
    if enable_addons:
        raise InvalidArgument("enableAddons must be false when baseModel is a LoRA addon "
                              "(live merge serves one addon merged into its base model)")
    resolve_addon_base(session, account_id, model, "baseModel")


# ---- validation of the settable fields ----

SPEC_FIELDS = {"precision": "precision", "max_context_length": "maxContextLength"}


FIELD_ORDER = list(DeploymentFields.model_fields)


def _apply(row: DeploymentRow, body: DeploymentFields, fields: set[str]) -> None:
    """Copy the named settable fields of `body` onto the row (absent ones reset to default)."""
    spec = dict(row.spec or {})
    for field in sorted(fields, key=FIELD_ORDER.index):  # min before max: max defaults to max(1, min)
        value = getattr(body, field)
        if field in ("display_name", "description"):
            setattr(row, field, value or "")
        elif field == "enable_addons":
            row.enable_addons = bool(value)
        elif field == "min_replica_count":
            row.min_replica_count = value or 0
        elif field == "max_replica_count":
            row.max_replica_count = value if value is not None else max(1, row.min_replica_count)
        elif field in SPEC_FIELDS:
            if field == "precision" and value is not None:  # 400 naming a value this server cannot serve
                from fireplace.serving.precision import replica_precision, server_has_cuda
                replica_precision(value, server_has_cuda())
            if value is None:
                spec.pop(SPEC_FIELDS[field], None)
            else:
                spec[SPEC_FIELDS[field]] = value
    row.spec = spec
    if row.min_replica_count > row.max_replica_count:
        raise InvalidArgument(f"minReplicaCount ({row.min_replica_count}) must not exceed "
                              f"maxReplicaCount ({row.max_replica_count})")
    row.desired_replica_count = min(max(row.desired_replica_count, row.min_replica_count), row.max_replica_count)


def _new_id() -> str:
    tail = string.ascii_lowercase + string.digits
    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(tail) for _ in range(7))


def require_account(session: Session, account_id: str) -> None:
    from fireplace.control.accounts.tables import AccountRow
    if session.get(AccountRow, account_id) is None:
        raise not_found("account", f"accounts/{account_id}")


def _check_quotas(session: Session, account_id: str, *, adding_deployments: int, replicas_before: int,
                  replicas_after: int, replicas_usage: int | None = None) -> None:
    """replicas_usage: the account's replica usage counted before this deployment's row changed
    (an autoflush of the changed row would otherwise count the new value)."""
    if adding_deployments:
        enforce_quota(session, account_id, "deployments", usage=count_deployments(session, account_id),
                      adding=adding_deployments)
    if replicas_after > replicas_before:
        usage = count_replicas(session, account_id) if replicas_usage is None else replicas_usage
        enforce_quota(session, account_id, "replicas", usage=usage - replicas_before, adding=replicas_after)


# ---- the verbs ----

def create_deployment(session: Session, caller: Principal, account_id: str, body: DeploymentCreate, *,
                      deployment_id: str | None = None, validate_only: bool = False) -> DeploymentRow:
    validate_id(account_id, "account id")
    authorize(caller, account_id, Action.WRITE, kind="account")
    require_account(session, account_id)
    if not validate_only:
        serialize_account(session, account_id)  # the deployments and replicas quotas count, then insert
    deployment_id = validate_id(deployment_id, "deploymentId") if deployment_id else _new_id()
    model = resolve_model(session, account_id, body.base_model, "baseModel")
    _check_deployable(session, account_id, model, bool(body.enable_addons))
    now = utcnow()
    row = DeploymentRow(account_id=account_id, deployment_id=deployment_id, base_model=model_name(model),
                        state=t.CREATING, created_by=caller.user_name, replica_count=0, desired_replica_count=0,
                        min_replica_count=0, max_replica_count=1, description="", display_name="",
                        enable_addons=False, spec={}, status_code="OK",
                        status_message="waiting for a serving replica", create_time=now, update_time=now, etag=1)
    fields = {"display_name", "description", "enable_addons", "min_replica_count", "max_replica_count",
              *SPEC_FIELDS}
    _apply(row, body, fields)
    row.desired_replica_count = row.min_replica_count
    _check_quotas(session, account_id, adding_deployments=1, replicas_before=0, replicas_after=row.max_replica_count)
    if validate_only:
        return row
    add_unique(session, row, f"deployment {resource_name(account_id, COLLECTION, deployment_id)!r}")
    session.commit()
    return row


def row_name(row: DeploymentRow) -> str:
    return resource_name(row.account_id, COLLECTION, row.deployment_id)


def get_deployment(session: Session, caller: Principal, account_id: str, deployment_id: str,
                   action: Action = Action.READ, for_update: bool = False,
                   serialize: bool = False) -> DeploymentRow:
    """A soft-deleted deployment past its purgeTime is gone (the purger removes the row)."""
    row = fetch(session, DeploymentRow, caller, account_id, deployment_id, kind=KIND, collection=COLLECTION,
                action=action, for_update=for_update, serialize=serialize)
    if is_purgeable(row):
        raise not_found(KIND, row_name(row))
    return row


def is_purgeable(row: DeploymentRow) -> bool:
    return row.state == t.DELETED and row.purge_time is not None and row.purge_time < utcnow()


def purge_expired(session: Session, limit: int = 500) -> int:
    """Hard-delete soft-deleted deployments whose purgeTime has passed (the purger's step);
    returns how many."""
    ids = session.execute(select(DeploymentRow.account_id, DeploymentRow.deployment_id).where(
        DeploymentRow.state == t.DELETED, DeploymentRow.purge_time < utcnow()).limit(limit)).all()
    for account_id, deployment_id in ids:
        session.execute(delete(DeploymentRow).where(
            DeploymentRow.account_id == account_id, DeploymentRow.deployment_id == deployment_id,
            DeploymentRow.state == t.DELETED, DeploymentRow.purge_time < utcnow()))
    session.commit()
    return len(ids)


def list_deployments(session: Session, caller: Principal, account_id: str, params: ListParams):
    validate_id(account_id, "account id")
    authorize(caller, account_id, Action.READ, kind="account")
    stmt = select(DeploymentRow).where(DeploymentRow.account_id == account_id)
    if not params.show_deleted:
        stmt = stmt.where(DeploymentRow.state != t.DELETED)
    else:  # past purgeTime: gone, even before the purger ran
        stmt = stmt.where((DeploymentRow.state != t.DELETED) | (DeploymentRow.purge_time.is_(None))
                          | (DeploymentRow.purge_time >= utcnow()))
    return paginate(session, stmt, params, FIELDS, [DeploymentRow.deployment_id],
                    scope=f"deployments:{account_id}")


def _check_live(row: DeploymentRow, verb: str) -> None:
    if row.state in t.SOFT_DELETED:
        raise FailedPrecondition(f"cannot {verb} deployment "
                                 f"{row_name(row)!r}: it is {row.state}")


def update_deployment(session: Session, caller: Principal, account_id: str, deployment_id: str,
                      body: DeploymentUpdate, update_mask: str | None = None, *,
                      etag: str | None = None) -> DeploymentRow:
    from fireplace.control.deployed_models.usage import count_deployed_models

    row = get_deployment(session, caller, account_id, deployment_id, Action.WRITE, serialize=True)
    check_etag(row, etag)
    _check_live(row, "update")
    if body.base_model is not None:
        model_account, model_id = parse_name(body.base_model, "models", account_id=account_id, what="baseModel")
        if resource_name(model_account, "models", model_id) != row.base_model:
            raise InvalidArgument(f"baseModel cannot be changed (it is {row.base_model!r}); "
                                  "create a new deployment instead")
    settable = set(DeploymentFields.model_fields)
    mask = update_mask_fields(update_mask)
    if mask is not None:
        unknown = mask - settable - {"base_model"}
        if unknown:
            raise InvalidArgument(f"updateMask: unsupported field(s) {', '.join(sorted(unknown))}; "
                                  f"supported: {', '.join(sorted(settable))}")
        fields = mask & settable
    else:
        fields = body.model_dump(exclude_unset=True).keys() & settable
    old_max, replicas_usage = row.max_replica_count, count_replicas(session, account_id)
    _apply(row, body, fields)
    if row.enable_addons:
        model = resolve_model(session, account_id, row.base_model, "baseModel", ready=False)
        if model.kind == ADDON_KIND:
            raise InvalidArgument("enableAddons cannot be true on a live-merge deployment (its baseModel is an addon)")
    elif count_deployed_models(session, row.account_id, row_name(row), addons_only=True):
        raise FailedPrecondition("enableAddons cannot be turned off while addons are loaded; unload them first")
    _check_quotas(session, account_id, adding_deployments=0, replicas_before=old_max,
                  replicas_after=row.max_replica_count, replicas_usage=replicas_usage)
    touch(row)
    session.commit()
    return row


def scale_deployment(session: Session, caller: Principal, account_id: str, deployment_id: str,
                     replica_count: int, *, etag: str | None = None) -> DeploymentRow:
    row = get_deployment(session, caller, account_id, deployment_id, Action.WRITE, serialize=True)
    check_etag(row, etag)
    _check_live(row, "scale")
    if not row.min_replica_count <= replica_count <= row.max_replica_count:
        raise InvalidArgument(f"replicaCount {replica_count} is outside [minReplicaCount, maxReplicaCount] = "
                              f"[{row.min_replica_count}, {row.max_replica_count}]; update those first")
    row.desired_replica_count = replica_count
    touch(row)
    session.commit()
    return row


def delete_deployment(session: Session, caller: Principal, account_id: str, deployment_id: str, *,
                      hard: bool = False, ignore_checks: bool = False, etag: str | None = None) -> None:
    from fireplace.control.deployed_models.service import unload_all

    row = get_deployment(session, caller, account_id, deployment_id, Action.WRITE, serialize=True)
    check_etag(row, etag)
    name = row_name(row)
    if not hard and row.state == t.DELETED:
        raise FailedPrecondition(f"deployment {name!r} is already deleted; pass hard=true to purge it now")
    loaded = unload_all(session, account_id, name, dry_run=not ignore_checks)
    if loaded and not ignore_checks:
        raise FailedPrecondition(f"deployment {name!r} has {loaded} deployed model(s) loaded; unload them first "
                                 "or pass ignoreChecks=true to unload them as part of the delete")
    if hard:
        session.delete(row)
    else:
        now = utcnow()
        row.state = t.DELETING if row.replica_count else t.DELETED
        row.delete_time, row.purge_time = now, now + SOFT_DELETE_RETENTION
        row.status_code, row.status_message = "OK", "deleted"
        touch(row)
    session.commit()


def undelete_deployment(session: Session, caller: Principal, account_id: str, deployment_id: str, *,
                        etag: str | None = None) -> DeploymentRow:
    row = get_deployment(session, caller, account_id, deployment_id, Action.WRITE, serialize=True)
    check_etag(row, etag)
    if row.state not in t.SOFT_DELETED:
        raise FailedPrecondition(f"deployment {row_name(row)!r} is "
                                 f"{row.state}, not deleted: nothing to undelete")
    model = resolve_model(session, account_id, row.base_model, "baseModel")
    _check_deployable(session, account_id, model, row.enable_addons)
    _check_quotas(session, account_id, adding_deployments=1, replicas_before=0, replicas_after=row.max_replica_count)
    row.state, row.delete_time, row.purge_time = t.CREATING, None, None
    row.status_code, row.status_message = "OK", "waiting for a serving replica"
    touch(row)
    session.commit()
    return row

