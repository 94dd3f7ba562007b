"""What a job's runs record, written by the controller and the worker alike: events, per-step
metrics, checkpoints; and the worker-side fenced access to the job row.

    add_event(session, account_id, job_id, "WARNING", "message text", level="WARNING", data={...})
    owned_job(session, account_id, job_id, attempt)   # the row, locked, or raises Superseded
"""
from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fireplace.control.fine_tuning.tables import SftJobCheckpointRow, SftJobEventRow, SftJobMetricRow, SftJobRow

INFO, WARNING, ERROR = "INFO", "WARNING", "ERROR"
# Event types
STATE, VALIDATION, CHECKPOINT, RESUME, RESTART, EVAL, OUTPUT = (
    "STATE", "VALIDATION", "CHECKPOINT", "RESUME", "RESTART", "EVAL", "OUTPUT")
MAX_MESSAGE = 4096


class Superseded(Exception):
    """The job no longer belongs to this worker (re-queued, cancelled or deleted)."""


def add_event(session: Session, account_id: str, job_id: str, type_: str, message: str, *,
              level: str = INFO, data: dict | None = None) -> None:
    session.add(SftJobEventRow(account_id=account_id, job_id=job_id, type=type_, level=level,
                               message=message[:MAX_MESSAGE], data=data or {}))


def owned_job(session: Session, account_id: str, job_id: str, attempt: int) -> SftJobRow:
    row = session.scalars(select(SftJobRow).where(SftJobRow.account_id == account_id, SftJobRow.job_id == job_id)
                          .with_for_update()).first()
    if row is None or row.worker_attempt != attempt:
        raise Superseded(f"job {job_id!r} is no longer run by attempt {attempt}")
    return row


def latest_checkpoint(session: Session, account_id: str, job_id: str) -> SftJobCheckpointRow | None:
    return session.scalars(select(SftJobCheckpointRow).where(
        SftJobCheckpointRow.account_id == account_id, SftJobCheckpointRow.job_id == job_id)
        .order_by(SftJobCheckpointRow.step.desc()).limit(1)).first()


def forget_runtime(session: Session, account_id: str, job_id: str) -> list[str]:
    """Delete a job's events, metrics and checkpoint rows; returns the checkpoints' blob prefixes."""
    prefixes = list(session.scalars(select(SftJobCheckpointRow.blob_prefix).where(
        SftJobCheckpointRow.account_id == account_id, SftJobCheckpointRow.job_id == job_id)))
    for table in (SftJobEventRow, SftJobMetricRow, SftJobCheckpointRow):
        session.execute(delete(table).where(table.account_id == account_id, table.job_id == job_id))
    return prefixes


def drop_metrics_after(session: Session, account_id: str, job_id: str, step: int) -> None:
    """Steps past a checkpoint are redone on resume; their old rows go first."""
    session.execute(delete(SftJobMetricRow).where(SftJobMetricRow.account_id == account_id,
                                                  SftJobMetricRow.job_id == job_id, SftJobMetricRow.step > step))
