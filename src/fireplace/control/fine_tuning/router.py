"""HTTP routes for supervised fine-tuning jobs (fireworks/resources/supervised_fine_tuning_jobs.py).
Verb routes come before the plain `{job_id}` routes."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request

import fireplace.api.paths  # noqa: F401  (the {x:ref} convertor)
from fireplace.ids import ID_PATTERN
from fireplace.api.update_mask import UpdateMask
from fireplace.api.auth import CallerDep
from fireplace.api.etags import EtagDep, body_or_header
from fireplace.api.read_mask import ReadMask
from fireplace.api.deps import SessionDep
from fireplace.api.listing import ListQuery
from fireplace.api.wire import DisplayNameUpdate, Empty
from fireplace.control.fine_tuning import service
from fireplace.control.fine_tuning import history
from fireplace.control.fine_tuning.schemas import (ListJobCheckpointsResponse, ListJobEventsResponse,
                                                   ListJobMetricsResponse, ListSftJobsResponse, JobVerbRequest,
                                                   SftJobCreate, SupervisedFineTuningJob, job_out)

router = APIRouter(tags=["supervised fine-tuning jobs"])
JOB_MASK = UpdateMask(["display_name"])
COLLECTION = "/v1/accounts/{account_id}/supervisedFineTuningJobs"
ITEM = COLLECTION + "/{job_id:ref}"  # an ID or a full name
OUT = {"response_model": SupervisedFineTuningJob, "response_model_exclude_none": True}


@router.post(ITEM + ":cancel", summary="Cancel a job (PENDING -> CANCELLED, RUNNING -> CANCELLING)", **OUT)
def cancel_job(account_id: str, job_id: str, caller: CallerDep, session: SessionDep, etag: EtagDep,
               body: Annotated[JobVerbRequest | None, Body()] = None):
    return job_out(service.cancel_job(session, caller, account_id, job_id,
                                      etag=body_or_header(body.etag if body else None, etag)))


@router.post(ITEM + ":resume", summary="Resume a FAILED, CANCELLED or PAUSED job (back to PENDING, where it waits "
                                        "for a worker slot and the concurrent-jobs quota) from its last checkpoint",
             **OUT)
def resume_job(account_id: str, job_id: str, caller: CallerDep, session: SessionDep, etag: EtagDep,
               body: Annotated[JobVerbRequest | None, Body()] = None):
    return job_out(service.resume_job(session, caller, account_id, job_id,
                                      etag=body_or_header(body.etag if body else None, etag)))


@router.patch(ITEM, summary="Rename a job: displayName only (Fireplace extension; the training settings are "
                            "fixed at create)", **OUT)
def update_job(account_id: str, job_id: str, body: DisplayNameUpdate, caller: CallerDep, session: SessionDep,
               etag: EtagDep, update_mask: JOB_MASK = None):
    return job_out(service.rename_job(session, caller, account_id, job_id, body, update_mask, etag))


@router.post(COLLECTION, summary="Create a supervised fine-tuning job (returned in JOB_STATE_CREATING)",
             description="The job is validated against the base model's tokenizer and chat template "
                         "(JOB_STATE_VALIDATING), then waits in JOB_STATE_PENDING for a training worker slot and for "
                         "the account's concurrent-fine-tuning-jobs quota: at most that many of the account's jobs "
                         "hold a worker (RUNNING, WRITING_RESULTS, CANCELLING) at once; create and :resume are not "
                         "refused for it, and status.message says what a PENDING job waits for. outputModel is "
                         "reserved until the job finishes. A crashed worker is restarted from the last checkpoint up "
                         "to 3 times; a deterministic failure (data, limits, out of memory) fails the job once.",
             **OUT)
def create_job(
    account_id: str, body: SftJobCreate, caller: CallerDep, session: SessionDep,
    job_id: Annotated[str | None, Query(alias="supervisedFineTuningJobId", max_length=63, pattern=ID_PATTERN)] = None,
):
    return job_out(service.create_job(session, caller, account_id, body, job_id))


@router.get(COLLECTION, response_model=ListSftJobsResponse, response_model_exclude_none=True,
            summary="List supervised fine-tuning jobs; filter fields: state, display_name, dataset, base_model, "
                    "warm_start_from, output_model, create_time, update_time, completed_time")
def list_jobs(account_id: str, params: ListQuery, caller: CallerDep, session: SessionDep):
    rows, next_token, total = service.list_jobs(session, caller, account_id, params)
    return ListSftJobsResponse(supervised_fine_tuning_jobs=[job_out(r) for r in rows], next_page_token=next_token,
                               total_size=total)


@router.get(ITEM + "/metrics", response_model=ListJobMetricsResponse, response_model_exclude_none=True,
            summary="Per-step training metrics of a job (Fireplace extension): train loss, learning rate, grad norm, "
                    "tokens and tokens/s per step, eval loss at each epoch's last step; oldest first; "
                    "filter fields: step, epoch")
def list_job_metrics(account_id: str, job_id: str, params: ListQuery, caller: CallerDep, session: SessionDep):
    return history.list_metrics(session, caller, account_id, job_id, params)


@router.get(ITEM + "/events", response_model=ListJobEventsResponse, response_model_exclude_none=True,
            summary="Events of a job (Fireplace extension): state changes, validation warnings (e.g. truncated "
                    "examples), checkpoints, restarts and resumes; oldest first; filter fields: level, type")
def list_job_events(account_id: str, job_id: str, params: ListQuery, caller: CallerDep, session: SessionDep):
    return history.list_events(session, caller, account_id, job_id, params)


@router.get(ITEM + "/checkpoints", response_model=ListJobCheckpointsResponse,
            response_model_exclude_none=True,
            summary="Checkpoints of a job (Fireplace extension), with step and metrics; oldest first")
def list_job_checkpoints(account_id: str, job_id: str, params: ListQuery, caller: CallerDep, session: SessionDep):
    return history.list_checkpoints(session, caller, account_id, job_id, params)


@router.get(ITEM, summary="Get a supervised fine-tuning job", **OUT)
def get_job(account_id: str, job_id: str, caller: CallerDep, session: SessionDep,
            read_mask: ReadMask = None):
    return job_out(service.get_job(session, caller, account_id, job_id))


@router.delete(ITEM, response_model=Empty,
               summary="Delete a job no worker runs for (not RUNNING, WRITING_RESULTS or CANCELLING: cancel it "
                       "first), with its checkpoints, metrics and events; its output model stays")
def delete_job(account_id: str, job_id: str, caller: CallerDep, session: SessionDep, request: Request,
               etag: EtagDep):
    service.delete_job(session, caller, account_id, job_id, blobs=request.app.state.blobs, etag=etag)
    return {}
