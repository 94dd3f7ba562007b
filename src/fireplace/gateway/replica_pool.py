"""The gateway's view of replicas: READY rows from the DB (cached briefly), and the choice
among them: least outstanding requests (this server's in-flight count plus what the replica
last reported), preferring replicas where the addon is already resident."""
from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fireplace.orchestration import tables as rt
from fireplace.orchestration.tables import ReplicaRow

CACHE_S = 0.5


@dataclass(frozen=True)
class ReplicaView:
    replica_id: str
    address: str
    secret: str
    adapters: frozenset[str]
    num_outstanding: int


class ReplicaPool:
    def __init__(self, factory: sessionmaker[Session]):
        self.factory = factory
        self._cache: tuple[float, dict[str, list[ReplicaView]]] = (0.0, {})
        self.in_flight: dict[str, int] = defaultdict(int)

    def ready(self, deployment: str) -> list[ReplicaView]:
        stamp, by_deployment = self._cache
        if time.monotonic() - stamp > CACHE_S:
            by_deployment = defaultdict(list)
            with self.factory() as session:
                for row in session.scalars(select(ReplicaRow).where(ReplicaRow.state == rt.READY)):
                    by_deployment[row.deployment].append(ReplicaView(
                        row.replica_id, row.address, row.secret, frozenset(row.adapters or []), row.num_outstanding))
            self._cache = (time.monotonic(), by_deployment)
        return by_deployment.get(deployment, [])

    def invalidate(self) -> None:
        self._cache = (0.0, {})

    def choose(self, deployment: str, adapter: str | None) -> ReplicaView | None:
        """None when no ready replica can serve (none ready, or none holds the addon yet)."""
        candidates = self.ready(deployment)
        if adapter is not None:
            candidates = [r for r in candidates if adapter in r.adapters]
        if not candidates:
            return None
        return min(candidates, key=lambda r: (max(self.in_flight[r.replica_id], r.num_outstanding), random.random()))

    def acquire(self, replica: ReplicaView) -> None:
        self.in_flight[replica.replica_id] += 1

    def release(self, replica: ReplicaView) -> None:
        self.in_flight[replica.replica_id] -= 1
