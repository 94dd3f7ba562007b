"""A sliding one-hour window per client address, for open sign-up (in this process: with
several API servers each counts its own; put them behind one address-aware proxy limit).

    SIGNUPS.take("203.0.113.7", per_hour=10)   # raises ResourceExhausted (429) past the limit
"""
from __future__ import annotations

import threading
import time
from collections import deque

from fireplace.errors import ResourceExhausted

WINDOW_S = 3600.0
MAX_CLIENTS = 100_000   # bounded memory: the oldest client windows are dropped first


class HourlyLimiter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits: dict[str, deque[float]] = {}

    def take(self, client: str, per_hour: int) -> None:
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault(client, deque())
            while hits and hits[0] <= now - WINDOW_S:
                hits.popleft()
            if len(hits) >= per_hour:
                retry = int(hits[0] + WINDOW_S - now) + 1
                raise ResourceExhausted(f"too many sign-ups from this address: at most {per_hour} per hour; "
                                        f"retry in {retry}s", headers={"retry-after": str(retry)})
            hits.append(now)
            if len(self._hits) > MAX_CLIENTS:
                self._hits.pop(next(iter(self._hits)))


SIGNUPS = HourlyLimiter()
