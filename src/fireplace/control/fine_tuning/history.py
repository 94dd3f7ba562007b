"""Reading what a job's runs recorded: metrics, events, checkpoints, as paginated lists
(pageSize / pageToken / filter as everywhere; oldest first)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from fireplace.api.auth import Principal
from fireplace.api.filtering import FieldMap, as_int, as_str
from fireplace.api.listing import ListParams, paginate
from fireplace.api.wire import rfc3339
from fireplace.control.fine_tuning import service
from fireplace.control.fine_tuning.schemas import (JobEvent, ListJobCheckpointsResponse, ListJobEventsResponse,
                                                   ListJobMetricsResponse, StepMetric, checkpoint_out)
from fireplace.control.fine_tuning.tables import SftJobCheckpointRow, SftJobEventRow, SftJobMetricRow

METRIC_FIELDS: FieldMap = {"step": (SftJobMetricRow.step, as_int), "epoch": (SftJobMetricRow.epoch, as_int)}
EVENT_FIELDS: FieldMap = {"level": (SftJobEventRow.level, as_str), "type": (SftJobEventRow.type, as_str)}
CHECKPOINT_FIELDS: FieldMap = {"step": (SftJobCheckpointRow.step, as_int)}


def _job(session: Session, caller: Principal, account_id: str, job_id: str):
    return service.get_job(session, caller, account_id, job_id)


def list_metrics(session: Session, caller: Principal, account_id: str, job_id: str,
                 params: ListParams) -> ListJobMetricsResponse:
    job = _job(session, caller, account_id, job_id)
    stmt = select(SftJobMetricRow).where(SftJobMetricRow.account_id == job.account_id,
                                         SftJobMetricRow.job_id == job.job_id)
    rows, token, total = paginate(session, stmt, params, METRIC_FIELDS, [SftJobMetricRow.step],
                                  scope=f"sftMetrics:{job.account_id}/{job.job_id}")
    return ListJobMetricsResponse(metrics=[StepMetric(
        step=r.step, epoch=r.epoch, train_loss=r.train_loss, learning_rate=r.learning_rate, grad_norm=r.grad_norm,
        tokens=r.tokens, tokens_per_second=r.tokens_per_second, eval_loss=r.eval_loss,
        create_time=rfc3339(r.create_time)) for r in rows], next_page_token=token, total_size=total)


def list_events(session: Session, caller: Principal, account_id: str, job_id: str,
                params: ListParams) -> ListJobEventsResponse:
    job = _job(session, caller, account_id, job_id)
    stmt = select(SftJobEventRow).where(SftJobEventRow.account_id == job.account_id,
                                        SftJobEventRow.job_id == job.job_id)
    rows, token, total = paginate(session, stmt, params, EVENT_FIELDS, [SftJobEventRow.event_id],
                                  scope=f"sftEvents:{job.account_id}/{job.job_id}")
    return ListJobEventsResponse(events=[JobEvent(
        id=str(r.event_id), create_time=rfc3339(r.create_time), level=r.level, type=r.type, message=r.message,
        data=r.data or {}) for r in rows], next_page_token=token, total_size=total)


def list_checkpoints(session: Session, caller: Principal, account_id: str, job_id: str,
                     params: ListParams) -> ListJobCheckpointsResponse:
    job = _job(session, caller, account_id, job_id)
    stmt = select(SftJobCheckpointRow).where(SftJobCheckpointRow.account_id == job.account_id,
                                             SftJobCheckpointRow.job_id == job.job_id)
    rows, token, total = paginate(session, stmt, params, CHECKPOINT_FIELDS, [SftJobCheckpointRow.step],
                                  scope=f"sftCheckpoints:{job.account_id}/{job.job_id}")
    return ListJobCheckpointsResponse(checkpoints=[checkpoint_out(r) for r in rows], next_page_token=token,
                                      total_size=total)
