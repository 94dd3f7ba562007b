"""/v1/accounts/{a}/quotas[/{id}] and /v1/accounts/{a}/usage (Fireplace extensions; usage adds the
metered inference rows of control/usage to the quota counts)."""
from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request

import fireplace.api.paths  # noqa: F401  (the {x:ref} convertor)
from fireplace.api.update_mask import UpdateMask
from fireplace.api.auth import CallerDep
from fireplace.api.deps import SessionDep
from fireplace.api.etags import EtagDep
from fireplace.control.quotas import service
from fireplace.control.quotas.schemas import ListQuotasResponse, ModelUsage, Quota, QuotaUpdate, Usage
from fireplace.control.usage.service import DATE_PATTERN, day_range, model_usage

log = logging.getLogger("fireplace.metering")
router = APIRouter(tags=["quotas"])
QUOTA_MASK = UpdateMask(["max_value"])
OUT = {"response_model_exclude_none": True}


@router.get("/v1/accounts/{account_id}/quotas", response_model=ListQuotasResponse, **OUT,
            summary="List the account's quotas with their limits and current usage")
def list_quotas(account_id: str, caller: CallerDep, session: SessionDep) -> ListQuotasResponse:
    account_id, views = service.list_quotas(session, caller, account_id)
    quotas = [Quota.of(account_id, *view) for view in views]
    return ListQuotasResponse(quotas=quotas, total_size=len(quotas))


@router.get("/v1/accounts/{account_id}/quotas/{quota_id:ref}", response_model=Quota, **OUT,
            summary="Get a quota (its ID or full name)")
def get_quota(account_id: str, quota_id: str, caller: CallerDep, session: SessionDep) -> Quota:
    account_id, view = service.get_quota(session, caller, account_id, quota_id)
    return Quota.of(account_id, *view)


@router.patch("/v1/accounts/{account_id}/quotas/{quota_id:ref}", response_model=Quota, **OUT,
              summary="Change a quota's maxValue (platform admin only); a stale etag (body or If-Match) is "
                      "409 ABORTED")
def update_quota(account_id: str, quota_id: str, body: QuotaUpdate, caller: CallerDep, session: SessionDep,
                 etag: EtagDep,
                 update_mask: QUOTA_MASK = None) -> Quota:
    account_id, view = service.update_quota(session, caller, account_id, quota_id, body, update_mask, etag)
    return Quota.of(account_id, *view)


def _flush_meter(request: Request) -> None:
    """This server's pending counts go to the DB before the read (and before the read's first
    query: a SQLite read transaction would not see a later write)."""
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is None:
        return
    try:
        gateway.meter.flush()
    except Exception:   # the counts stay pending; answer with what the DB has
        log.warning("metering flush before a usage read failed", exc_info=True)


def _day(alias: str, description: str):
    return Query(alias=alias, pattern=DATE_PATTERN, max_length=10, description=description)


@router.get("/v1/accounts/{account_id}/usage", response_model=Usage, **OUT,
            summary="Current usage of every quota, and metered inference per model and UTC day",
            description="`modelUsage` has one row per model and UTC day with completed inference requests "
                        "and the prompt and completion tokens their answers reported (requests that failed "
                        "are not counted), over startDate..endDate inclusive (default: the 30 days ending "
                        "today; at most 366 days). This server's own pending counts are written first; other "
                        "API servers' appear within a few seconds.")
def get_usage(account_id: str, request: Request, caller: CallerDep, session: SessionDep,
              start_date: Annotated[str | None, _day("startDate", "First UTC day, YYYY-MM-DD (inclusive)")] = None,
              end_date: Annotated[str | None, _day("endDate", "Last UTC day, YYYY-MM-DD (inclusive; default today)")] = None,
              ) -> Usage:
    first, last = day_range(start_date, end_date)
    _flush_meter(request)
    account_id, usage = service.get_usage(session, caller, account_id)
    rows = [ModelUsage(model=r.model, day=r.day.isoformat(), requests=r.requests, prompt_tokens=r.prompt_tokens,
                       completion_tokens=r.completion_tokens) for r in model_usage(session, account_id, first, last)]
    return Usage(name=f"accounts/{account_id}/usage", usage=usage, start_date=first.isoformat(),
                 end_date=last.isoformat(), model_usage=rows)
