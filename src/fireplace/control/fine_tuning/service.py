"""Supervised fine-tuning jobs: create / get / list / delete / cancel / resume.

Create validates everything a worker will need, then records the job in JOB_STATE_CREATING;
the controller (orchestration/jobs.py) takes it through VALIDATING and PENDING to a worker:
  - dataset (and evaluationDataset): READY, in the job's own account (another account's
    dataset answers exactly like a missing one);
  - exactly one of baseModel (a READY HF_BASE_MODEL) and warmStartFrom (a READY HF_PEFT_ADDON),
    own account or the public catalog;
  - outputModel (default: the job ID) in the job's account, not an existing model and not the
    output of another unfinished job (409);
  - not the concurrent-fine-tuning-jobs quota: that bounds how many of the account's jobs hold a
    training worker at once, so a job over it is created (and resumed) and waits in PENDING;
    the controller starts it once one of them finishes (orchestration/jobs.py).
State changes follow fine_tuning/states.py (each bumps the etag; a stale etag on :cancel,
:resume or delete is 409 ABORTED). Delete removes the row (the output model, if any,
stays), with its events, metrics, checkpoints and encoded examples; only jobs with nothing
running may be deleted: CREATING, VALIDATING, PENDING, PAUSED or finished.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from fireplace.api.auth import Action, Principal, authorize
from fireplace.api.filtering import FieldMap, name_field, as_str, as_time
from fireplace.api.listing import ListParams, paginate
from fireplace.api.wire import DisplayNameUpdate
from fireplace.control.common import check_etag, fetch, rename, resource_name
from fireplace.control.deployments.service import (ADDON_KIND, BASE_KIND, model_name, path_id,
                                                   require_account, resolve_addon_base,
                                                   resolve_model)
from fireplace.control.fine_tuning import runtime, states
from fireplace.control.locks import serialize_account
from fireplace.control.fine_tuning.schemas import DEFAULTS, Hyperparameters, SftJobCreate
from fireplace.control.fine_tuning.tables import SftJobRow
from fireplace.control.fine_tuning.usage import output_model_claims
from fireplace.db.engine import add_unique
from fireplace.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from fireplace.ids import job_id as new_job_id
from fireplace.ids import parse_name, validate_id

KIND, COLLECTION = "supervised fine-tuning job", "supervisedFineTuningJobs"
FIELDS: FieldMap = {
    "name": name_field(SftJobRow.job_id, "accounts/", SftJobRow.account_id, "/supervisedFineTuningJobs/",
                       SftJobRow.job_id),
    "state": (SftJobRow.state, as_str),
    "display_name": (SftJobRow.display_name, as_str),
    "dataset": (SftJobRow.dataset, as_str),
    "base_model": (SftJobRow.base_model, as_str),
    "warm_start_from": (SftJobRow.warm_start_from, as_str),
    "output_model": (SftJobRow.output_model, as_str),
    "create_time": (SftJobRow.create_time, as_time),
    "update_time": (SftJobRow.update_time, as_time),
    "completed_time": (SftJobRow.completed_time, as_time),
}


def resolve_dataset(session: Session, account_id: str, value: str, field: str):
    """A READY dataset of the job's own account; anything else named looks missing."""
    from fireplace.control.datasets.tables import DatasetRow

    ds_account, ds_id = parse_name(value, "datasets", account_id=account_id, what=field)
    name = resource_name(ds_account, "datasets", ds_id)
    row = session.get(DatasetRow, (ds_account, ds_id)) if ds_account == account_id else None
    if row is None:
        raise InvalidArgument(f"{field}: dataset {name!r} not found")
    if row.state != "READY":
        raise FailedPrecondition(f"{field}: dataset {name!r} is {row.state}, not READY (upload it first)")
    return name


def _training_base(session: Session, account_id: str, body: SftJobCreate) -> tuple[str, str, str]:
    """(baseModel, warmStartFrom, the base model trained on) as full names."""
    base, warm = body.base_model or "", body.warm_start_from or ""
    if bool(base) == bool(warm):
        raise InvalidArgument("exactly one of baseModel and warmStartFrom must be set")
    if base:
        model = resolve_model(session, account_id, base, "baseModel")
        if model.kind != BASE_KIND:
            raise InvalidArgument(f"baseModel: {model_name(model)!r} is a {model.kind}, not a {BASE_KIND} "
                                  "(to continue training an addon, use warmStartFrom)")
        return model_name(model), "", model_name(model)
    model = resolve_model(session, account_id, warm, "warmStartFrom")
    if model.kind != ADDON_KIND:
        raise InvalidArgument(f"warmStartFrom: {model_name(model)!r} is a {model.kind}, not a {ADDON_KIND}")
    trained_on = model_name(resolve_addon_base(session, account_id, model, "warmStartFrom"))
    return "", model_name(model), trained_on


def _warm_start_spec(session: Session, account_id: str, warm: str, body: SftJobCreate) -> dict:
    """A warm start trains the addon's own LoRA further (its rank, alpha, dropout and target
    modules): the job shows the addon's r as loraRank, and a different loraRank is refused."""
    model = resolve_model(session, account_id, warm, "warmStartFrom")
    rank = ((model.spec or {}).get("peft_details") or {}).get("r")
    if rank is None:
        return {}
    if body.lora_rank is not None and body.lora_rank != rank:
        raise InvalidArgument(f"loraRank {body.lora_rank} differs from the rank {rank} of warmStartFrom {warm!r}: "
                              f"a warm start continues that addon at its own rank (omit loraRank or set it to {rank})")
    return {"loraRank": int(rank)}


def _check_output_free(session: Session, account_id: str, output: str, job_name: str) -> None:
    from fireplace.control.models.tables import ModelRow

    out_account, out_id = parse_name(output, "models", account_id=account_id)
    if session.get(ModelRow, (out_account, out_id)) is not None:
        raise AlreadyExists(f"outputModel {output!r} already exists; choose another name or delete that model")
    holders = [j for j in output_model_claims(session, output) if j != job_name]
    if holders:
        raise AlreadyExists(f"outputModel {output!r} is already the output of unfinished job {holders[0]!r}")


def _spec(body: Hyperparameters) -> dict:
    given = body.model_dump(by_alias=True, exclude_none=True, include=set(Hyperparameters.model_fields))
    return {**DEFAULTS, **given}


def create_job(session: Session, caller: Principal, account_id: str, body: SftJobCreate,
               job_id: str | None = None) -> SftJobRow:
    validate_id(account_id, "account id")
    authorize(caller, account_id, Action.WRITE, kind="account")
    require_account(session, account_id)
    job_id = validate_id(job_id, "supervisedFineTuningJobId") if job_id else new_job_id()
    dataset = resolve_dataset(session, account_id, body.dataset, "dataset")
    eval_dataset = resolve_dataset(session, account_id, body.evaluation_dataset, "evaluationDataset") \
        if body.evaluation_dataset else ""
    base, warm, trained_on = _training_base(session, account_id, body)
    spec = {**_spec(body), **(_warm_start_spec(session, account_id, warm, body) if warm else {})}
    out_account, out_id = parse_name(body.output_model or job_id, "models", account_id=account_id,
                                     what="outputModel")
    if out_account != account_id:
        raise InvalidArgument(f"outputModel must be in the job's account {account_id!r}")
    output = resource_name(account_id, "models", out_id)
    serialize_account(session, account_id)  # the output name's claims (models.create takes it too), then insert
    _check_output_free(session, account_id, output, resource_name(account_id, COLLECTION, job_id))
    row = SftJobRow(account_id=account_id, job_id=job_id, state=states.CREATING, dataset=dataset,
                    evaluation_dataset=eval_dataset, base_model=base, warm_start_from=warm,
                    training_base_model=trained_on, output_model=output, display_name=body.display_name or "",
                    created_by=caller.user_name, status_code="OK", status_message="created; validation follows",
                    job_progress={"percent": 0, "epoch": 0}, spec=spec)
    add_unique(session, row, f"supervised fine-tuning job {resource_name(account_id, COLLECTION, job_id)!r}")
    runtime.add_event(session, account_id, job_id, runtime.STATE, states.CREATING,
                      data={"by": caller.user_name})
    session.commit()
    return row


def get_job(session: Session, caller: Principal, account_id: str, job_id: str,
            action: Action = Action.READ) -> SftJobRow:
    """Writes (rename, cancel, resume, delete) take the account lock before reading the row:
    a row lock alone is a no-op on SQLite, where two PATCHes with one etag both passed and
    concurrent :resume calls of one job each moved it (and each logged a resume)."""
    job_id = path_id(account_id, job_id, COLLECTION, KIND)
    return fetch(session, SftJobRow, caller, account_id, job_id, kind=KIND, collection=COLLECTION,
                 action=action, serialize=action >= Action.WRITE)


def list_jobs(session: Session, caller: Principal, account_id: str, params: ListParams):
    validate_id(account_id, "account id")
    authorize(caller, account_id, Action.READ, kind="account")
    stmt = select(SftJobRow).where(SftJobRow.account_id == account_id)
    return paginate(session, stmt, params, FIELDS, [SftJobRow.job_id], scope=f"sftJobs:{account_id}")


def rename_job(session: Session, caller: Principal, account_id: str, job_id: str, body: DisplayNameUpdate,
               update_mask: str | None, etag: str | None) -> SftJobRow:
    """PATCH (our extension; Fireworks has none): displayName only, in any state. The training
    settings are fixed at create: to change them, create a new job (warmStartFrom continues one)."""
    row = get_job(session, caller, account_id, job_id, Action.WRITE)
    rename(row, body, update_mask, etag)
    session.commit()
    return row


def cancel_job(session: Session, caller: Principal, account_id: str, job_id: str, *,
               etag: str | None = None) -> SftJobRow:
    row = get_job(session, caller, account_id, job_id, Action.WRITE)
    check_etag(row, etag)
    target = states.verb_target(states.CANCEL, "cancel", row.state)
    states.transition(row, target, message="cancelled by " + caller.user_name)
    runtime.add_event(session, account_id, row.job_id, runtime.STATE, target, data={"by": caller.user_name})
    session.commit()
    return row


def resume_job(session: Session, caller: Principal, account_id: str, job_id: str, *,
               etag: str | None = None) -> SftJobRow:
    row = get_job(session, caller, account_id, job_id, Action.WRITE)
    check_etag(row, etag)
    target = states.verb_target(states.RESUME, "resume", row.state)
    try:
        resolve_dataset(session, account_id, row.dataset, "dataset")
    except InvalidArgument as exc:  # deleted since: resuming cannot succeed
        raise FailedPrecondition(exc.message) from None
    try:
        _check_output_free(session, account_id, row.output_model, resource_name(account_id, COLLECTION, row.job_id))
    except AlreadyExists as exc:
        raise FailedPrecondition(exc.message) from None
    ckpt = runtime.latest_checkpoint(session, account_id, row.job_id)
    if not row.validation and target == states.PENDING:
        target = states.VALIDATING  # it failed or was cancelled before its data was validated
    states.transition(row, target, message="resumed; waiting for a training worker")
    row.restart_count = 0
    runtime.add_event(session, account_id, row.job_id, runtime.RESUME,
                      f"resumed by {caller.user_name}; training continues from "
                      + (f"the checkpoint at step {ckpt.step}" if ckpt else "the start"),
                      data={"checkpointStep": ckpt.step if ckpt else None})
    session.commit()
    return row


def delete_job(session: Session, caller: Principal, account_id: str, job_id: str, blobs=None, *,
               etag: str | None = None) -> None:
    row = get_job(session, caller, account_id, job_id, Action.WRITE)
    check_etag(row, etag)
    states.check_deletable(row.state)
    runtime.forget_runtime(session, account_id, row.job_id)
    session.delete(row)
    session.commit()
    if blobs is not None:  # after the commit: a failure here leaves only unreferenced blobs
        from fireplace.training.checkpoint_store import delete_job_blobs
        delete_job_blobs(blobs, account_id, row.job_id)
