"""What the controller publishes for the gateways, and its lease.

replicas: one row per replica process the controller started (observed state, not desired):
the gateway of every API server routes from these rows. Rows whose process is gone are removed
by the controller holding the lease, so a restart converges without any memory of the past.

controller_leases: one row per named lease; the holder renews it every tick, another server
takes it over once expire_time has passed.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from fireplace.db.base import Base, Timestamps, UTCDateTime

# replica states
STARTING, LOADING, READY, FAILED, STOPPING = "STARTING", "LOADING", "READY", "FAILED", "STOPPING"


class ReplicaRow(Timestamps, Base):
    __tablename__ = "replicas"

    replica_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    deployment: Mapped[str] = mapped_column(String(300), nullable=False, index=True)  # full name
    address: Mapped[str] = mapped_column(String(300), default="", nullable=False)
    secret: Mapped[str] = mapped_column(String(128), nullable=False)
    state: Mapped[str] = mapped_column(String(32), default=STARTING, nullable=False)
    adapters: Mapped[list] = mapped_column(JSON, default=list, nullable=False)  # addon names resident
    num_outstanding: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    # the deployment's etag when this replica started: a FAILED row counts as a failed start
    # of that version of the deployment (an update or :scale bumps the etag and retries)
    deployment_etag: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    status_message: Mapped[str] = mapped_column(String(4096), default="", nullable=False)
    controller: Mapped[str] = mapped_column(String(200), default="", nullable=False)  # who started it


class LeaseRow(Base):
    __tablename__ = "controller_leases"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200), nullable=False)
    expire_time: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
