"""supervised_fine_tuning_jobs: an offline job training a LoRA addon from a dataset.

Hyperparameters live in `spec` (JSON, lowerCamelCase as on the wire); the columns are what
filters, quotas and the (later) training workers read. State changes go through
fine_tuning.states.transition, never by assigning `state` directly.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from fireplace.db.base import AccountScoped, Base, UTCDateTime


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
