"""Supervised fine-tuning job wire shapes (fireworks/types/supervised_fine_tuning_job*.py).

Defaults (Fireworks docs): epochs 1, learningRate 1e-4, loraRank 8, maxContextLength 8192; the
rest are training.hyperparams' (the descriptions below are the OpenAPI spec's, and the README's
"Fine-tuning" section says the same).
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
    epochs: int | None = Field(default=None, ge=1, le=100, description="Passes over the dataset. Default 1.")
    learning_rate: float | None = Field(
        default=None, gt=0, le=1, description="AdamW's peak learning rate (after the warmup, then linear decay to 0 "
                                              "at the last step; gradients clipped at norm 1.0). Default 1e-4.")
    lora_rank: int | None = Field(
        default=None, ge=4, le=64,
        description="LoRA rank r, on every linear projection of the decoder (never the embeddings or the LM head), "
                    "with alpha = 2 x r and dropout 0.05. Default 8. With warmStartFrom: the addon's own rank "
                    "(shown here; another value is refused).")
    max_context_length: int | None = Field(
        default=None, ge=16, le=1 << 20,
        description="Tokens per example, capped at the base model's max_position_embeddings. Longer examples are "
                    "truncated (a WARNING event counts them); if every example is longer, the job fails naming "
                    "the limit and the shortest example's length. Default 8192.")
    batch_size: int | None = Field(
        default=None, ge=1, le=1 << 24,
        description="Tokens per micro-batch: examples are packed without padding (attention kept within each "
                    "example) until the next one would pass this; an example longer than it gets a micro-batch "
                    "of its own. Default 4096.")
    batch_size_samples: int | None = Field(default=None, ge=1, le=65536,
                                           description="At most this many examples per micro-batch. Default: no limit.")
    gradient_accumulation_steps: int | None = Field(
        default=None, ge=1, le=1024, description="Micro-batches per optimizer step; the loss is the mean over all "
                                                 "their trained tokens. Default 1.")
    learning_rate_warmup_steps: int | None = Field(
        default=None, ge=0, le=1_000_000, description="Optimizer steps of linear warmup (step s at learningRate x "
                                                      "(s+1)/(W+1)), then linear decay to 0. Default 0.")
    optimizer_weight_decay: float | None = Field(default=None, ge=0, le=1, description="AdamW weight decay. Default 0.")
    eval_auto_carveout: bool | None = Field(
        default=None, description="Without evaluationDataset: hold out 10% of the examples (at least 1, at most "
                                  "1000, chosen by seed) and report their loss after each epoch (evalLoss).")
    early_stop: bool | None = Field(
        default=None, description="Stop after the first epoch whose eval loss is not below the best before it "
                                  "(JOB_STATE_EARLY_STOPPED; the output is registered). Needs evaluationDataset or "
                                  "evalAutoCarveout.")
    jinja_template: str | None = Field(default=None, max_length=MAX_TEMPLATE_CHARS,
                                       description="A chat template used instead of the base model's.")
    # Fireplace extensions: the RNG seed (same seed + data -> same adapter on CPU) and the
    # checkpoint cadence (default: about 10 checkpoints per job).
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1,
                             description="Fireplace extension: the RNG seed (LoRA init, data order, dropout, "
                                         "carve-out); the same seed and data give the same adapter bits on CPU. "
                                         "Default 42.")
    checkpoint_interval_steps: int | None = Field(
        default=None, ge=1, le=1_000_000,
        description="Fireplace extension: a checkpoint every N optimizer steps (a crashed worker's successor "
                    "resumes from the last one). Default: about 10 per job (ceil(total steps / 10), at most 500).")
    nodes: int | None = Field(default=None, ge=1, le=1, description="A job trains on one node.")


class SftJobCreate(Hyperparameters):
    @model_validator(mode="before")
    @classmethod
    def _refuse_unhonoured(cls, data):
        return refuse_unhonoured(data, UNHONOURED, "supervised fine-tuning job")

    dataset: str = Field(max_length=300, description="A READY dataset of the job's account (name or ID).")
    base_model: str | None = Field(default=None, max_length=300,
                                   description="A READY HF_BASE_MODEL to train a new LoRA on. Exactly one of "
                                               "baseModel and warmStartFrom.")
    warm_start_from: str | None = Field(default=None, max_length=300,
                                        description="A READY HF_PEFT_ADDON whose weights training continues from "
                                                    "(at its rank, alpha, dropout and target modules).")
    output_model: str | None = Field(
        default=None, max_length=300,
        description="The model ID (in the job's account) the addon is registered as; default the job ID. Reserved "
                    "while the job is unfinished: creating a model of that name is 409 ALREADY_EXISTS.")
    evaluation_dataset: str | None = Field(default=None, max_length=300,
                                           description="A READY dataset whose loss is reported after each epoch.")
    display_name: Str | None = Field(default=None, max_length=256)


class JobVerbRequest(Wire):
    """Body of :cancel and :resume (the SDK sends `{}`): optionally the etag the verb is based on."""
    etag: str | None = Field(default=None, max_length=64)


class JobProgress(Wire):
    """Updated by the worker every 2 seconds while it trains."""
    percent: int = Field(default=0, description="Optimizer steps done, as a percentage of all.")
    epoch: int = Field(default=0, description="The epoch in progress (0-based).")
    input_tokens: int | None = Field(default=None, description="Tokens trained on so far (there is no padding).")
    output_tokens: int | None = None
    # Fireplace extensions
    step: int | None = Field(default=None, description="Fireplace extension: optimizer steps done.")
    total_steps: int | None = Field(default=None, description="Fireplace extension: optimizer steps in the job.")
    total_input_tokens: int | None = Field(default=None, description="Fireplace extension: epochs x dataset tokens.")
    eta_seconds: int | None = Field(default=None, description="Fireplace extension: estimated seconds to the last "
                                                              "step, at this run's pace so far.")


class CheckpointRef(Wire):
    step: int
    epoch: int
    create_time: str | None = None
    is_final: bool = False
    metrics: dict = Field(default_factory=dict)   # trainLoss, learningRate, evalLoss


class SupervisedFineTuningJob(Hyperparameters):
    name: str
    display_name: str | None = None
    state: State = Field(description="CREATING -> VALIDATING -> PENDING -> RUNNING -> WRITING_RESULTS -> COMPLETED "
                                     "(or EARLY_STOPPED); FAILED, CANCELLING -> CANCELLED; RE_QUEUEING after a "
                                     "worker crash.")
    status: Status = Field(description="In PENDING: what the job waits for (a worker slot or the "
                                       "concurrent-fine-tuning-jobs quota); in FAILED: what went wrong and what to "
                                       "change (the example's line, the limit).")
    dataset: str
    evaluation_dataset: str | None = None
    base_model: str | None = None
    warm_start_from: str | None = None
    output_model: str = Field(description="The full name of the addon the job registers (reserved until it "
                                          "finishes).")
    create_time: str | None = None
    update_time: str | None = None
    completed_time: str | None = None
    created_by: str | None = None
    job_progress: JobProgress
    checkpoints: list[CheckpointRef] = Field(default_factory=list, description="Fireplace extension: the job's "
                                             "checkpoints with their step and metrics, oldest first.")
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
