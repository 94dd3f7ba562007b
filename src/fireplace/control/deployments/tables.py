"""deployments: model servers (replicas) hosting one base model (or one addon, merged live).

Columns are what filters, quotas and the (later) controller read; the rest of the Fireworks
fields live in `spec` (JSON, lowerCamelCase keys as on the wire).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from fireplace.db.base import AccountScoped, Base, UTCDateTime

# States (Fireworks' Deployment.state). Only the controller of the data-plane issue may set
# READY, and only once a replica serves; until then a deployment stays CREATING.
CREATING, READY, UPDATING, DELETING, DELETED, FAILED = (
    "CREATING", "READY", "UPDATING", "DELETING", "DELETED", "FAILED")
SOFT_DELETED = (DELETING, DELETED)


class DeploymentRow(AccountScoped, Base):
    __tablename__ = "deployments"
    __table_args__ = (Index("ix_deployments_base_model", "base_model"),)

    deployment_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    base_model: Mapped[str] = mapped_column(String(300), nullable=False)   # full model name
    state: Mapped[str] = mapped_column(String(32), default=CREATING, nullable=False)
    description: Mapped[str] = mapped_column(String(4096), default="", nullable=False)
    enable_addons: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    min_replica_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    max_replica_count: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    replica_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)         # serving now
    desired_replica_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)  # target
    status_code: Mapped[str] = mapped_column(String(32), default="OK", nullable=False)
    status_message: Mapped[str] = mapped_column(String(4096), default="", nullable=False)
    delete_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    purge_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # autoscalingPolicy, acceleratorType, acceleratorCount, precision, maxContextLength, ...
    spec: Mapped[dict] = mapped_column(JSON, default=dict, nullable=False)
