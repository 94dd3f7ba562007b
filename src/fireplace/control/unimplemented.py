"""Fireworks API resources the official SDK knows but Fireplace does not serve: every method
on them answers 501 UNIMPLEMENTED (code 12) in the one error shape, after authentication,
instead of a 404 that reads like a missing resource. Only /v1/accounts/{a}/<collection>
paths are claimed, so nothing here can shadow the inference endpoints. They stay out of
/openapi.json (which describes what Fireplace serves); the README lists them."""
from __future__ import annotations

from fastapi import APIRouter

from fireplace.api.auth import CallerDep
from fireplace.errors import Unimplemented

# collection (as in the SDK's paths) -> what it is, for the message
UNSERVED = {
    "batchInferenceJobs": "batch inference jobs",
    "deploymentShapes": "deployment shapes",
    "deploymentShapeVersions": "deployment shape versions",
    "dpoJobs": "DPO fine-tuning jobs",
    "evaluationJobs": "evaluation jobs",
    "evaluators": "evaluators",
    "evaluatorsV2": "evaluators",
    "reinforcementFineTuningJobs": "reinforcement fine-tuning jobs",
    "rlorTrainerJobs": "reinforcement fine-tuning steps (RLOR trainer jobs)",
    "secrets": "secrets",
}
METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]
RESPONSES = {501: {"description": "UNIMPLEMENTED (12): Fireplace does not serve this Fireworks resource"}}

router = APIRouter(tags=["not served by Fireplace"])


def _unserved(collection: str):
    what = UNSERVED[collection]

    def answer(account_id: str, caller: CallerDep) -> None:
        raise Unimplemented(f"{what} ({collection}) are not implemented by Fireplace; it serves accounts, "
                            "users, API keys, models, datasets, deployments, deployed models and "
                            "supervised fine-tuning jobs")
    return answer


for _collection in UNSERVED:
    _base = f"/v1/accounts/{{account_id}}/{_collection}"
    for _path in (_base, _base + "/{rest:path}", _base + ":{verb}"):
        router.add_api_route(_path, _unserved(_collection), methods=METHODS, responses=RESPONSES,
                             include_in_schema=False,
                             summary=f"Not served: {UNSERVED[_collection]} (501)")
