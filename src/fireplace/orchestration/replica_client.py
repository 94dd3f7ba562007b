"""The controller's calls to a replica's internal API (sync; short timeouts)."""
from __future__ import annotations

import httpx

from fireplace.serving.replica_headers import SECRET_HEADER

TIMEOUT = httpx.Timeout(5.0, connect=1.0)
LOAD_TIMEOUT = httpx.Timeout(120.0, connect=1.0)


class ReplicaClient:
    def __init__(self):
        self.http = httpx.Client(timeout=TIMEOUT)

    def _headers(self, secret: str) -> dict:
        return {SECRET_HEADER: secret}

    def status(self, address: str, secret: str) -> dict | None:
        """{"ready", "state", "error"} (+ "adapters": [names], "stats": {...} once ready), or None
        when it does not answer yet. Thread-safe (httpx.Client is): the controller polls every
        replica at once."""
        try:
            r = self.http.get(f"{address}/internal/status", headers=self._headers(secret))
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def load_adapter(self, address: str, secret: str, model: str) -> str | None:
        """None when loaded, else the replica's error message."""
        try:
            r = self.http.post(f"{address}/internal/adapters", json={"model": model},
                               headers=self._headers(secret), timeout=LOAD_TIMEOUT)
        except httpx.HTTPError as exc:
            return f"replica did not answer: {type(exc).__name__}"
        if r.status_code == 200:
            return None
        try:
            return r.json()["error"]["message"]
        except Exception:
            return f"HTTP {r.status_code}"

    def unload_adapter(self, address: str, secret: str, model: str) -> bool:
        try:
            r = self.http.delete(f"{address}/internal/adapters/{model}", headers=self._headers(secret))
        except httpx.HTTPError:
            return False
        return r.status_code in (200, 404)

    def close(self) -> None:
        self.http.close()
