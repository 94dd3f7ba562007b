"""Deployment wire shapes (fireworks/types/deployment.py, deployment_create/update/scale_params.py).

Replica counts and maxContextLength are int32 on the wire (JSON numbers); times RFC 3339.
Every settable field is read by the controller (orchestration/deployments.py) or the quotas;
Fireworks fields nothing reads are refused by name (UNHONOURED), never stored and echoed.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fireplace.api.wire import Status, Str, Wire, documented, refuse_unhonoured
from fireplace.ids import ref_pattern
from fireplace.serving.precision import document_served

MAX_REPLICAS = 100
MAX_CONTEXT_LENGTH = 1 << 20

Precision = Literal[
    "PRECISION_UNSPECIFIED", "FP16", "FP8", "FP8_MM", "FP8_AR", "FP8_MM_KV_ATTN", "FP8_KV", "FP8_MM_V2",
    "FP8_V2", "FP8_MM_KV_ATTN_V2", "NF4", "FP4", "BF16", "FP4_BLOCKSCALED_MM", "FP4_MX_MOE",
    "FP32", "INT8", "INT4"]  # the last three: Fireplace extensions (see fireplace.serving.precision)
State = Literal["STATE_UNSPECIFIED", "CREATING", "READY", "DELETING", "FAILED", "UPDATING", "DELETED"]

ReplicaCount = Field(default=None, ge=0, le=MAX_REPLICAS)


class ReplicaStats(Wire):
    pending_scheduling_replica_count: int = 0
    downloading_model_replica_count: int = 0
    initializing_replica_count: int = 0
    ready_replica_count: int = 0


# Fields of Fireworks' create/update bodies that Fireplace does not honour: refused by name.
UNHONOURED = {
    "expireTime": "deployments do not expire; delete them",
    "region": "one region", "placement": "one region", "cluster": "one cluster",
    "draftModel": "no speculative decoding", "draftTokenCount": "no speculative decoding",
    "ngramSpeculationLength": "no speculative decoding", "enableMtp": "no speculative decoding",
    "activeModelVersion": "no model versions", "targetModelVersion": "no model versions",
    "autoTune": "no auto-tuning", "deploymentTemplate": "no deployment templates",
    "directRouteApiKeys": "no direct routes", "directRouteType": "no direct routes",
    "enableHotLoad": "no hot load", "enableHotReloadLatestAddon": "no hot load",
    "hotLoadBucketType": "no hot load", "hotLoadBucketUrl": "no hot load",
    "maxWithRevocableReplicaCount": "no revocable replicas", "pricingPlanId": "no pricing plans",
    "disableDeploymentSizeValidation": "sizes are always validated",
    # Read by nothing in the controller or the gateway (checked: orchestration/, gateway/):
    "acceleratorType": "replicas run on this server's devices; no accelerator is chosen per deployment",
    "acceleratorCount": "one device per replica", "deploymentShape": "no deployment shapes",
    "enableSessionAffinity": "requests go to the least-loaded ready replica; no sticky routing",
    "autoscalingPolicy": "no autoscaler: the controller runs the replicas :scale asks for, within "
                         "minReplicaCount..maxReplicaCount",
}


class DeploymentFields(Wire):
    """The settable fields, shared by create and update (all optional here)."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unhonoured(cls, data):
        return refuse_unhonoured(data, UNHONOURED, "deployment")

    display_name: Str | None = Field(default=None, max_length=256)
    description: Str | None = None
    min_replica_count: int | None = ReplicaCount          # the controller never runs fewer ...
    max_replica_count: int | None = ReplicaCount          # ... or more (and the replicas quota)
    precision: Precision | None = Field(default=None, json_schema_extra=document_served)  # replicas' dtype, quantization
    enable_addons: bool | None = None                     # replicas with LoRA slots; loads allowed
    max_context_length: int | None = Field(default=None, ge=0, le=MAX_CONTEXT_LENGTH)  # --max-model-len


class DeploymentCreate(DeploymentFields):
    base_model: str = Field(max_length=300, json_schema_extra=documented(ref_pattern("models")))


class DeploymentUpdate(DeploymentFields):
    # The SDK always sends baseModel on update; it must name the deployment's own base model.
    base_model: str | None = Field(default=None, max_length=300, json_schema_extra=documented(ref_pattern("models")))
    etag: str | None = Field(default=None, max_length=64)   # AIP-154: a stale one is 409 ABORTED


class ScaleRequest(Wire):
    replica_count: int = Field(ge=0, le=MAX_REPLICAS)
    etag: str | None = Field(default=None, max_length=64)


class Deployment(Wire):
    name: str
    base_model: str
    display_name: str | None = None
    description: str | None = None
    state: State
    status: Status
    create_time: str | None = None
    update_time: str | None = None
    delete_time: str | None = None
    purge_time: str | None = None
    created_by: str | None = None
    min_replica_count: int
    max_replica_count: int
    replica_count: int
    desired_replica_count: int
    replica_stats: ReplicaStats
    precision: Precision | None = None
    enable_addons: bool
    max_context_length: int | None = None
    etag: str | None = None


class ListDeploymentsResponse(Wire):
    deployments: list[Deployment]
    next_page_token: str = ""
    total_size: int = 0


def deployment_out(row) -> Deployment:
    """DeploymentRow -> wire model."""
    from fireplace.api.wire import rfc3339

    spec = row.spec or {}
    return Deployment(
        name=f"accounts/{row.account_id}/deployments/{row.deployment_id}",
        base_model=row.base_model, display_name=row.display_name, description=row.description,
        state=row.state, status=Status(code=row.status_code, message=row.status_message),
        create_time=rfc3339(row.create_time), update_time=rfc3339(row.update_time),
        delete_time=rfc3339(row.delete_time), purge_time=rfc3339(row.purge_time),
        created_by=row.created_by or None,
        min_replica_count=row.min_replica_count, max_replica_count=row.max_replica_count,
        replica_count=row.replica_count, desired_replica_count=row.desired_replica_count,
        replica_stats=ReplicaStats(**(spec.get("replicaStats") or {})),
        precision=spec.get("precision"), enable_addons=row.enable_addons,
        max_context_length=spec.get("maxContextLength"), etag=str(row.etag))
