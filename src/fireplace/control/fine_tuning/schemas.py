"""Supervised fine-tuning job wire shapes (fireworks/types/supervised_fine_tuning_job*.py).

Defaults (Fireworks docs): epochs 1, learningRate 1e-4, loraRank 8, maxContextLength 8192.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fireplace.api.wire import Status, Str, Wire, refuse_unhonoured

MAX_TEMPLATE_CHARS = 65536
DEFAULTS = {"epochs": 1, "learningRate": 1e-4, "loraRank": 8, "maxContextLength": 8192,
            "gradientAccumulationSteps": 1, "learningRateWarmupSteps": 0}

State = Literal[
    "JOB_STATE_UNSPECIFIED", "JOB_STATE_CREATING", "JOB_STATE_RUNNING", "JOB_STATE_COMPLETED", "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLED", "JOB_STATE_DELETING", "JOB_STATE_WRITING_RESULTS", "JOB_STATE_VALIDATING",
    "JOB_STATE_DELETING_CLEANING_UP", "JOB_STATE_PENDING", "JOB_STATE_EXPIRED", "JOB_STATE_RE_QUEUEING",
    "JOB_STATE_CREATING_INPUT_DATASET", "JOB_STATE_IDLE", "JOB_STATE_CANCELLING", "JOB_STATE_EARLY_STOPPED",
    "JOB_STATE_PAUSED"]


# Fields of Fireworks' create body that Fireplace does not honour: refused by name.
UNHONOURED = {
    "awsS3Config": "no external storage: training data comes from Fireplace datasets",
    "azureBlobStorageConfig": "no external storage: training data comes from Fireplace datasets",
    "samplerCheckpointSaveIntervalSteps": "no sampler checkpoints; checkpointIntervalSteps (a Fireplace "
                                          "extension) sets the checkpoint cadence",
    "isTurbo": "no turbo mode",
    "metricsFileSignedUrl": "metrics are served at supervisedFineTuningJobs/{id}/metrics",
    "mtpEnabled": "no multi-token prediction", "mtpFreezeBaseModel": "no multi-token prediction",
    "mtpNumDraftTokens": "no multi-token prediction",
    "region": "one region",
    "rendererHuggingFaceRepoId": "prompts are rendered with the base model's chat template or jinjaTemplate",
    "usePurpose": "no job purposes",
    "reservationTarget": "no capacity reservations", "useReservation": "no capacity reservations",
    "wandbConfig": "no Weights & Biases logging; metrics are served at supervisedFineTuningJobs/{id}/metrics",
}


class WandbConfig(Wire):
    """Output only: jobs created before wandbConfig was refused may still carry one."""
    enabled: bool | None = None
    api_key: str | None = Field(default=None, max_length=256)   # never returned
    project: str | None = Field(default=None, max_length=256)
    entity: str | None = Field(default=None, max_length=256)
    run_id: str | None = Field(default=None, max_length=256)
    url: str | None = Field(default=None, max_length=2048)


class Hyperparameters(Wire):
    """Training settings: stored in SftJobRow.spec under their wire names."""
    epochs: int | None = Field(default=None, ge=1, le=100)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    lora_rank: int | None = Field(default=None, ge=4, le=64)
    max_context_length: int | None = Field(default=None, ge=16, le=1 << 20)
    batch_size: int | None = Field(default=None, ge=1, le=1 << 24)           # tokens per batch
    batch_size_samples: int | None = Field(default=None, ge=1, le=65536)
    gradient_accumulation_steps: int | None = Field(default=None, ge=1, le=1024)
    learning_rate_warmup_steps: int | None = Field(default=None, ge=0, le=1_000_000)
    optimizer_weight_decay: float | None = Field(default=None, ge=0, le=1)
    eval_auto_carveout: bool | None = None
    early_stop: bool | None = None
    jinja_template: str | None = Field(default=None, max_length=MAX_TEMPLATE_CHARS)
    # Fireplace extensions: the RNG seed (same seed + data -> same adapter on CPU) and the
    # checkpoint cadence (default: about 10 checkpoints per job).
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    checkpoint_interval_steps: int | None = Field(default=None, ge=1, le=1_000_000)
    nodes: int | None = Field(default=None, ge=1, le=1)   # a job trains on one node


class SftJobCreate(Hyperparameters):
    @model_validator(mode="before")
    @classmethod
    def _refuse_unhonoured(cls, data):
        return refuse_unhonoured(data, UNHONOURED, "supervised fine-tuning job")

    dataset: str = Field(max_length=300)
    base_model: str | None = Field(default=None, max_length=300)
    warm_start_from: str | None = Field(default=None, max_length=300)
    output_model: str | None = Field(default=None, max_length=300)
    evaluation_dataset: str | None = Field(default=None, max_length=300)
    display_name: Str | None = Field(default=None, max_length=256)


class JobVerbRequest(Wire):
    """Body of :cancel and :resume (the SDK sends `{}`): optionally the etag the verb is based on."""
    etag: str | None = Field(default=None, max_length=64)


class JobProgress(Wire):
    percent: int = 0
    epoch: int = 0
    input_tokens: int | None = None          # tokens trained on so far (no padding exists)
    output_tokens: int | None = None
    # Fireplace extensions
    step: int | None = None
    total_steps: int | None = None
    total_input_tokens: int | None = None    # epochs x dataset tokens
    eta_seconds: int | None = None


class CheckpointRef(Wire):
    step: int
    epoch: int
    create_time: str | None = None
    is_final: bool = False
    metrics: dict = Field(default_factory=dict)   # trainLoss, learningRate, evalLoss


class SupervisedFineTuningJob(Hyperparameters):
    name: str
    display_name: str | None = None
    state: State
    status: Status
    dataset: str
    evaluation_dataset: str | None = None
    base_model: str | None = None
    warm_start_from: str | None = None
    output_model: str
    create_time: str | None = None
    update_time: str | None = None
    completed_time: str | None = None
    created_by: str | None = None
    job_progress: JobProgress
    checkpoints: list[CheckpointRef] = Field(default_factory=list)   # Fireplace extension
    wandb_config: WandbConfig | None = None
    # AIP-154: changes with every state change (the controller's too) and every user verb;
    # a stale one on :cancel, :resume or delete is 409 ABORTED.
    etag: str | None = None


class ListSftJobsResponse(Wire):
    supervised_fine_tuning_jobs: list[SupervisedFineTuningJob]
    next_page_token: str = ""
    total_size: int = 0


def job_out(row) -> SupervisedFineTuningJob:
    from fireplace.api.wire import rfc3339

    spec = dict(row.spec or {})
    wandb = spec.pop("wandbConfig", None)
    if wandb:
        wandb = {k: v for k, v in wandb.items() if k != "apiKey"}
    return SupervisedFineTuningJob(
        **spec, wandb_config=wandb,
        name=f"accounts/{row.account_id}/supervisedFineTuningJobs/{row.job_id}",
        display_name=row.display_name, state=row.state,
        status=Status(code=row.status_code, message=row.status_message), dataset=row.dataset,
        evaluation_dataset=row.evaluation_dataset or None, base_model=row.base_model or None,
        warm_start_from=row.warm_start_from or None, output_model=row.output_model,
        create_time=rfc3339(row.create_time), update_time=rfc3339(row.update_time),
        completed_time=rfc3339(row.completed_time), created_by=row.created_by or None,
        job_progress=JobProgress(**(row.job_progress or {})),
        checkpoints=[checkpoint_out(c) for c in row.checkpoints], etag=str(row.etag))


def checkpoint_out(c) -> CheckpointRef:
    from fireplace.api.wire import rfc3339

    return CheckpointRef(step=c.step, epoch=c.epoch, create_time=rfc3339(c.create_time), is_final=c.is_final,
                         metrics={k: v for k, v in (c.metrics or {}).items() if k in ("trainLoss", "learningRate",
                                                                                      "evalLoss")})


class JobEvent(Wire):
    """One event of a job (OpenAI-style: level and message, plus typed data)."""
    id: str
    create_time: str
    level: Literal["INFO", "WARNING", "ERROR"]
    type: str
    message: str
    data: dict = Field(default_factory=dict)


class ListJobEventsResponse(Wire):
    events: list[JobEvent]
    next_page_token: str = ""
    total_size: int = 0


class StepMetric(Wire):
    step: int
    epoch: int
    train_loss: float
    learning_rate: float
    grad_norm: float
    tokens: int                  # non-padding tokens in the step
    tokens_per_second: float
    eval_loss: float | None = None
    create_time: str | None = None


class ListJobMetricsResponse(Wire):
    metrics: list[StepMetric]
    next_page_token: str = ""
    total_size: int = 0


class ListJobCheckpointsResponse(Wire):
    checkpoints: list[CheckpointRef]
    next_page_token: str = ""
    total_size: int = 0
