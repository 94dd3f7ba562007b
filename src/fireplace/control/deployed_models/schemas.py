"""Deployed-model wire shapes (fireworks/types/shared/deployed_model.py, lora_*_params.py)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fireplace.api.wire import Status, Str, Wire, documented, refuse_unhonoured
from fireplace.ids import ref_pattern

State = Literal["STATE_UNSPECIFIED", "UNDEPLOYING", "DEPLOYING", "DEPLOYED", "UPDATING"]


# Fields of Fireworks' load/update bodies that Fireplace does not honour: refused by name.
UNHONOURED = {"replaceMergedAddon": "addons are never merged into the base model: each is served as a LoRA "
                                    "slot beside the others"}


class DeployedModelFields(Wire):
    @model_validator(mode="before")
    @classmethod
    def _refuse_unhonoured(cls, data):
        return refuse_unhonoured(data, UNHONOURED, "deployed model")


MODEL_REF = documented(ref_pattern("models"))
DEPLOYMENT_REF = documented(ref_pattern("deployments"))


class DeployedModelLoad(DeployedModelFields):
    model: str = Field(max_length=300, json_schema_extra=MODEL_REF)
    deployment: str = Field(max_length=300, json_schema_extra=DEPLOYMENT_REF)
    default: bool | None = None
    display_name: Str | None = Field(default=None, max_length=256)
    description: Str | None = None
    public: bool | None = None
    serverless: bool | None = None   # not applicable to addons; must be false when given


class DeployedModelUpdate(DeployedModelFields):
    # model and deployment are immutable: given, they must name the current ones.
    model: str | None = Field(default=None, max_length=300, json_schema_extra=MODEL_REF)
    deployment: str | None = Field(default=None, max_length=300, json_schema_extra=DEPLOYMENT_REF)
    default: bool | None = None
    display_name: Str | None = Field(default=None, max_length=256)
    description: Str | None = None
    public: bool | None = None
    serverless: bool | None = None
    etag: str | None = Field(default=None, max_length=64)   # AIP-154: a stale one is 409 ABORTED


class DeployedModel(Wire):
    name: str
    model: str
    deployment: str
    default: bool
    display_name: str | None = None
    description: str | None = None
    public: bool
    serverless: bool
    state: State
    status: Status
    create_time: str | None = None
    update_time: str | None = None
    etag: str | None = None


class ListDeployedModelsResponse(Wire):
    deployed_models: list[DeployedModel]
    next_page_token: str = ""
    total_size: int = 0


def deployed_model_out(row) -> DeployedModel:
    from fireplace.api.wire import rfc3339

    return DeployedModel(
        name=f"accounts/{row.account_id}/deployedModels/{row.deployed_model_id}", model=row.model,
        deployment=row.deployment, default=row.is_default, display_name=row.display_name,
        description=row.description, public=row.public,
        serverless=row.deployment.startswith("accounts/fireplace/"), state=row.state,
        status=Status(code=row.status_code, message=row.status_message),
        create_time=rfc3339(row.create_time), update_time=rfc3339(row.update_time), etag=str(row.etag))
