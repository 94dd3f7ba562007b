"""supervised_fine_tuning_jobs: an offline job training a LoRA addon from a dataset, and what
its runs leave behind: events, per-step metrics, checkpoints.

Hyperparameters live in `spec` (JSON, lowerCamelCase as on the wire); the columns are what
filters, quotas, the controller and the training workers read. State changes go through
fine_tuning.states.transition, never by assigning `state` directly.

Worker fencing: each start of a worker bumps `worker_attempt`; a worker writes only while the
row still carries its attempt, so a worker the controller gave up on can never overwrite the
work of its successor.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKeyConstraint, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fireplace.db.base import AccountScoped, Base, UTCDateTime, utcnow


class SftJobRow(AccountScoped, Base):
    __tablename__ = "supervised_fine_tuning_jobs"
    __table_args__ = (Index("ix_supervised_fine_tuning_jobs_dataset", "dataset"),
                      Index("ix_supervised_fine_tuning_jobs_output_model", "output_model"))

    job_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    state: Mapped[str] = mapped_column(String(40), nullable=False)
    dataset: Mapped[str] = mapped_column(String(300), nullable=False)            # full name
    evaluation_dataset: Mapped[str] = mapped_column(String(300), default="", nullable=False)
    base_model: Mapped[str] = mapped_column(String(300), default="", nullable=False)       # as requested
    warm_start_from: Mapped[str] = mapped_column(String(300), default="", nullable=False)  # addon name
    # The base model the worker trains on: base_model, or warm_start_from's peftDetails.baseModel.
    training_base_model: Mapped[str] = mapped_column(String(300), default="", nullable=False)
    output_model: Mapped[str] = mapped_column(String(300), nullable=False)       # full name
    status_code: Mapped[str] = mapped_column(String(32), default="OK", nullable=False)
    status_message: Mapped[str] = mapped_column(String(4096), default="", nullable=False)
    completed_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    job_progress: Mapped[dict] = mapped_column(JSON, default=dict, nullable=False)
    spec: Mapped[dict] = mapped_column(JSON, default=dict, nullable=False)
    # Runtime (controller and worker): see orchestration/jobs.py.
    worker_attempt: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    worker_process_id: Mapped[str] = mapped_column(String(63), default="", nullable=False)
    heartbeat_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    restart_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)  # crashes since last start
    validation: Mapped[dict] = mapped_column(JSON, default=dict, nullable=False)    # summary of VALIDATING
    checkpoints: Mapped[list["SftJobCheckpointRow"]] = relationship(
        viewonly=True, lazy="select", order_by="SftJobCheckpointRow.step",
        primaryjoin="and_(SftJobRow.account_id == foreign(SftJobCheckpointRow.account_id), "
                    "SftJobRow.job_id == foreign(SftJobCheckpointRow.job_id))")


class SftJobEventRow(Base):
    """One event: a state change, a warning, a checkpoint, a resume. `event_id` orders them."""
    __tablename__ = "sft_job_events"
    __table_args__ = (ForeignKeyConstraint(["account_id", "job_id"], ["supervised_fine_tuning_jobs.account_id",
                                                                      "supervised_fine_tuning_jobs.job_id"],
                                           ondelete="CASCADE"),
                      Index("ix_sft_job_events_job", "account_id", "job_id", "event_id"))

    event_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(63), nullable=False)
    job_id: Mapped[str] = mapped_column(String(63), nullable=False)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    level: Mapped[str] = mapped_column(String(16), default="INFO", nullable=False)   # INFO | WARNING | ERROR
    type: Mapped[str] = mapped_column(String(32), nullable=False)    # STATE | WARNING | CHECKPOINT | RESUME | ...
    message: Mapped[str] = mapped_column(String(4096), default="", nullable=False)
    data: Mapped[dict] = mapped_column(JSON, default=dict, nullable=False)


class SftJobMetricRow(Base):
    """Metrics of one optimizer step (eval_loss only at the end of an epoch)."""
    __tablename__ = "sft_job_metrics"
    __table_args__ = (ForeignKeyConstraint(["account_id", "job_id"], ["supervised_fine_tuning_jobs.account_id",
                                                                      "supervised_fine_tuning_jobs.job_id"],
                                           ondelete="CASCADE"),)

    account_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False)
    train_loss: Mapped[float] = mapped_column(Float, nullable=False)
    learning_rate: Mapped[float] = mapped_column(Float, nullable=False)
    grad_norm: Mapped[float] = mapped_column(Float, nullable=False)
    tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)            # non-padding tokens this step
    tokens_per_second: Mapped[float] = mapped_column(Float, nullable=False)
    eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class SftJobCheckpointRow(Base):
    """A checkpoint whose blobs are all written (the row is the commit point)."""
    __tablename__ = "sft_job_checkpoints"
    __table_args__ = (ForeignKeyConstraint(["account_id", "job_id"], ["supervised_fine_tuning_jobs.account_id",
                                                                      "supervised_fine_tuning_jobs.job_id"],
                                           ondelete="CASCADE"),)

    account_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False)
    blob_prefix: Mapped[str] = mapped_column(String(600), nullable=False)
    is_final: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict, nullable=False)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
