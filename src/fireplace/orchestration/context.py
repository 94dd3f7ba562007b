"""What every reconciler gets each tick (shared by deployments and fine-tuning jobs)."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from fireplace.config import Settings
from fireplace.orchestration.executor import Executor
from fireplace.storage import BlobStore


@dataclass
class ControllerContext:
    session_factory: sessionmaker[Session]
    executor: Executor
    settings: Settings
    blobs: BlobStore
    holder: str                      # this controller's identity (host:pid:random)
