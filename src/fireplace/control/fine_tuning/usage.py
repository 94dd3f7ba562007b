"""What fine-tuning jobs use, for quotas and in-use checks by other packages."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fireplace.control.fine_tuning.states import FINAL, HOLDING_WORKER
from fireplace.control.fine_tuning.tables import SftJobRow
from fireplace.errors import AlreadyExists


def _name(account_id: str, job_id: str) -> str:
    return f"accounts/{account_id}/supervisedFineTuningJobs/{job_id}"


def count_jobs_holding_workers(session: Session, account_id: str) -> int:
    """Jobs holding a training worker: the concurrent-fine-tuning-jobs quota's usage (the
    controller starts a PENDING job only while this is below the quota)."""
    return session.scalar(select(func.count()).select_from(SftJobRow).where(
        SftJobRow.account_id == account_id, SftJobRow.state.in_(HOLDING_WORKER))) or 0


def dataset_usage(session: Session, dataset_name: str) -> list[str]:
    """Unfinished jobs that train or evaluate on `dataset_name` (deleting it would break them)."""
    rows = session.execute(select(SftJobRow.account_id, SftJobRow.job_id).where(
        (SftJobRow.dataset == dataset_name) | (SftJobRow.evaluation_dataset == dataset_name),
        SftJobRow.state.not_in(FINAL)).order_by(SftJobRow.job_id)).all()
    return [_name(a, j) for a, j in rows]


def output_model_claims(session: Session, model_name: str) -> list[str]:
    """Unfinished jobs that will register `model_name` as their output."""
    account_id = model_name.split("/")[1]
    rows = session.scalars(select(SftJobRow.job_id).where(
        SftJobRow.account_id == account_id, SftJobRow.output_model == model_name,
        SftJobRow.state.not_in(FINAL)).order_by(SftJobRow.job_id))
    return [_name(account_id, j) for j in rows]


def require_unclaimed(session: Session, model_name: str, *, by_job: str | None = None) -> None:
    """409 ALREADY_EXISTS naming the job while an unfinished job other than `by_job` will register
    `model_name` as its output: every path that creates a model calls this (under the account
    lock, as job create checks the model's absence under it), so the job's WRITING_RESULTS
    never finds its name taken."""
    holders = [j for j in output_model_claims(session, model_name) if j != by_job]
    if holders:
        raise AlreadyExists(f"model {model_name!r} is reserved as the outputModel of the unfinished fine-tuning "
                            f"job {holders[0]!r}; choose another model ID, or wait until that job finishes "
                            "(or cancel it)")
