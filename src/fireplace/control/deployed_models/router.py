"""HTTP routes for deployed models (fireworks/resources/lora.py: load, get, list, update, unload)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

import fireplace.api.paths  # noqa: F401  (the {x:ref} convertor)
from fireplace.api.update_mask import UpdateMask
from fireplace.api.auth import CallerDep
from fireplace.api.read_mask import ReadMask
from fireplace.api.deps import SessionDep
from fireplace.api.etags import EtagDep, body_or_header
from fireplace.api.listing import ListQuery
from fireplace.api.wire import Empty, refuse_unhonoured
from fireplace.control.deployed_models import service
from fireplace.control.deployed_models.schemas import (UNHONOURED, DeployedModel, DeployedModelLoad,
                                                       DeployedModelUpdate, ListDeployedModelsResponse,
                                                       deployed_model_out)

router = APIRouter(tags=["deployed models"])
DEPLOYED_MODEL_MASK = UpdateMask({*service.SETTABLE, "model", "deployment", "serverless"})
COLLECTION = "/v1/accounts/{account_id}/deployedModels"
ITEM = COLLECTION + "/{deployed_model_id:ref}"  # an ID or a full name
OUT = {"response_model": DeployedModel, "response_model_exclude_none": True}


@router.post(COLLECTION, summary="Load a model (LoRA addon) into a deployment; stays DEPLOYING until a replica "
                                 "has it", **OUT)
def load_deployed_model(account_id: str, body: DeployedModelLoad, caller: CallerDep, session: SessionDep,
                        request: Request):
    # The SDK sends replaceMergedAddon in the query: refused by name like the body fields.
    refuse_unhonoured({k: v.lower() not in ("", "false", "0") for k, v in request.query_params.items()},
                      UNHONOURED, "deployed model")
    return deployed_model_out(service.load(session, caller, account_id, body))


@router.get(COLLECTION, response_model=ListDeployedModelsResponse, response_model_exclude_none=True,
            summary="List deployed models; filter fields: model, deployment, state, display_name, default, "
                    "public, create_time, update_time")
def list_deployed_models(account_id: str, params: ListQuery, caller: CallerDep, session: SessionDep):
    rows, next_token, total = service.list_rows(session, caller, account_id, params)
    return ListDeployedModelsResponse(deployed_models=[deployed_model_out(r) for r in rows],
                                      next_page_token=next_token, total_size=total)


@router.get(ITEM, summary="Get a deployed model", **OUT)
def get_deployed_model(account_id: str, deployed_model_id: str, caller: CallerDep, session: SessionDep,
                       read_mask: ReadMask = None):
    return deployed_model_out(service.get(session, caller, account_id, deployed_model_id))


@router.patch(ITEM, summary="Update a deployed model (displayName, description, public, default)", **OUT)
def update_deployed_model(account_id: str, deployed_model_id: str, body: DeployedModelUpdate, caller: CallerDep,
                          session: SessionDep, etag: EtagDep,
                          update_mask: DEPLOYED_MODEL_MASK = None):
    return deployed_model_out(service.update_row(session, caller, account_id, deployed_model_id, body, update_mask,
                                                 etag=body_or_header(body.etag, etag)))


@router.delete(ITEM, response_model=Empty, summary="Unload a deployed model (its default moves to the oldest "
                                                   "other deployment of the model)")
def unload_deployed_model(account_id: str, deployed_model_id: str, caller: CallerDep, session: SessionDep,
                          etag: EtagDep):
    service.unload(session, caller, account_id, deployed_model_id, etag=etag)
    return {}
