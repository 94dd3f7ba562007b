"""What fine-tuning jobs use, for quotas and in-use checks by other packages."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fireplace.control.fine_tuning.states import ACTIVE, FINAL
from fireplace.control.fine_tuning.tables import SftJobRow


def _name(account_id: str, job_id: str) -> str:
    return f"accounts/{account_id}/supervisedFineTuningJobs/{job_id}"


def count_active_jobs(session: Session, account_id: str) -> int:
    """Jobs holding or waiting for a worker: the concurrent-fine-tuning-jobs quota's usage."""
    return session.scalar(select(func.count()).select_from(SftJobRow).where(
        SftJobRow.account_id == account_id, SftJobRow.state.in_(ACTIVE))) or 0


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
