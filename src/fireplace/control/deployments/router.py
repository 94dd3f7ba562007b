"""HTTP routes for deployments (fireworks/resources/deployments.py). Verb routes come before
the plain `{deployment_id}` routes, which would otherwise swallow `d:scale`."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

import fireplace.api.paths  # noqa: F401  (the {x:ref} convertor)
from fireplace.ids import ID_PATTERN
from fireplace.control.deployments.schemas import DeploymentFields
from fireplace.api.update_mask import UpdateMask
from fireplace.api.auth import CallerDep
from fireplace.api.read_mask import ReadMask
from fireplace.api.deps import SessionDep
from fireplace.api.etags import EtagDep, body_or_header
from fireplace.api.listing import ListQuery
from fireplace.api.wire import Empty
from fireplace.control.deployments import service
from fireplace.control.deployments.schemas import (Deployment, DeploymentCreate, DeploymentUpdate,
                                                   ListDeploymentsResponse, ScaleRequest, deployment_out)

router = APIRouter(tags=["deployments"])
DEPLOYMENT_MASK = UpdateMask({*DeploymentFields.model_fields, "base_model"})
COLLECTION = "/v1/accounts/{account_id}/deployments"
ITEM = COLLECTION + "/{deployment_id:ref}"  # an ID or a full name
OUT = {"response_model": Deployment, "response_model_exclude_none": True}


@router.post(ITEM + ":undelete", summary="Undelete a soft-deleted deployment (back to CREATING)", **OUT)
def undelete_deployment(account_id: str, deployment_id: str, caller: CallerDep, session: SessionDep,
                        etag: EtagDep, body: Annotated[dict | None, Body()] = None):
    return deployment_out(service.undelete_deployment(session, caller, account_id, deployment_id, etag=etag))


@router.patch(ITEM + ":scale", summary="Set the desired replica count (within min/max)", **OUT)
def scale_deployment(account_id: str, deployment_id: str, body: ScaleRequest, caller: CallerDep,
                     session: SessionDep, etag: EtagDep):
    return deployment_out(service.scale_deployment(session, caller, account_id, deployment_id, body.replica_count,
                                                   etag=body_or_header(body.etag, etag)))


@router.post(COLLECTION, summary="Create a deployment (stays CREATING until a replica serves)", **OUT)
def create_deployment(
    account_id: str, body: DeploymentCreate, caller: CallerDep, session: SessionDep,
    deployment_id: Annotated[str | None, Query(alias="deploymentId", max_length=63, pattern=ID_PATTERN)] = None,
    validate_only: Annotated[bool, Query(alias="validateOnly")] = False,
):
    row = service.create_deployment(session, caller, account_id, body, deployment_id=deployment_id,
                                    validate_only=validate_only)
    return deployment_out(row)


@router.get(COLLECTION, response_model=ListDeploymentsResponse, response_model_exclude_none=True,
            summary="List deployments (showDeleted includes DELETED ones); filter fields: state, "
                    "display_name, base_model, enable_addons, min/max_replica_count, create_time, update_time")
def list_deployments(account_id: str, params: ListQuery, caller: CallerDep, session: SessionDep):
    rows, next_token, total = service.list_deployments(session, caller, account_id, params)
    return ListDeploymentsResponse(deployments=[deployment_out(r) for r in rows], next_page_token=next_token,
                                   total_size=total)


@router.get(ITEM, summary="Get a deployment", **OUT)
def get_deployment(account_id: str, deployment_id: str, caller: CallerDep, session: SessionDep,
                   read_mask: ReadMask = None):
    return deployment_out(service.get_deployment(session, caller, account_id, deployment_id))


@router.patch(ITEM, summary="Update a deployment (merges the fields present; updateMask also accepted)", **OUT)
def update_deployment(account_id: str, deployment_id: str, body: DeploymentUpdate, caller: CallerDep,
                      session: SessionDep, etag: EtagDep,
                      update_mask: DEPLOYMENT_MASK = None):
    row = service.update_deployment(session, caller, account_id, deployment_id, body, update_mask,
                                    etag=body_or_header(body.etag, etag))
    return deployment_out(row)


@router.delete(ITEM, response_model=Empty,
               summary="Delete a deployment: soft (DELETED, purged after 30 days) or hard=true (now); "
                       "refused while deployed models are loaded unless ignoreChecks=true (unloads them)")
def delete_deployment(account_id: str, deployment_id: str, caller: CallerDep, session: SessionDep,
                      etag: EtagDep, hard: Annotated[bool, Query()] = False,
                      ignore_checks: Annotated[bool, Query(alias="ignoreChecks")] = False):
    service.delete_deployment(session, caller, account_id, deployment_id, hard=hard, ignore_checks=ignore_checks,
                              etag=etag)
    return {}
