"""/v1/accounts/{a}/quotas[/{id}] and /v1/accounts/{a}/usage (Fireplace extensions)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fireplace.api.auth import CallerDep
from fireplace.api.deps import SessionDep
from fireplace.control.quotas import service
from fireplace.control.quotas.schemas import ListQuotasResponse, Quota, QuotaUpdate, Usage

router = APIRouter(tags=["quotas"])
OUT = {"response_model_exclude_none": True}


@router.get("/v1/accounts/{account_id}/quotas", response_model=ListQuotasResponse, **OUT,
            summary="List the account's quotas with their limits and current usage")
def list_quotas(account_id: str, caller: CallerDep, session: SessionDep) -> ListQuotasResponse:
    account_id, views = service.list_quotas(session, caller, account_id)
    quotas = [Quota.of(account_id, *view) for view in views]
    return ListQuotasResponse(quotas=quotas, total_size=len(quotas))


@router.get("/v1/accounts/{account_id}/quotas/{quota_id}", response_model=Quota, **OUT, summary="Get a quota")
def get_quota(account_id: str, quota_id: str, caller: CallerDep, session: SessionDep) -> Quota:
    account_id, view = service.get_quota(session, caller, account_id, quota_id)
    return Quota.of(account_id, *view)


@router.patch("/v1/accounts/{account_id}/quotas/{quota_id}", response_model=Quota, **OUT,
              summary="Change a quota's maxValue (platform admin only)")
def update_quota(account_id: str, quota_id: str, body: QuotaUpdate, caller: CallerDep, session: SessionDep,
                 update_mask: Annotated[str | None, Query(alias="updateMask", max_length=1024)] = None) -> Quota:
    account_id, view = service.update_quota(session, caller, account_id, quota_id, body, update_mask)
    return Quota.of(account_id, *view)


@router.get("/v1/accounts/{account_id}/usage", response_model=Usage, **OUT,
            summary="Current usage of every quota of the account")
def get_usage(account_id: str, caller: CallerDep, session: SessionDep) -> Usage:
    account_id, usage = service.get_usage(session, caller, account_id)
    return Usage(name=f"accounts/{account_id}/usage", usage=usage)
