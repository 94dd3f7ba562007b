"""HTTP transport: one httpx client, the API key, and the retry policy.

Retried: 429 and 503 (the server asked to come back: `Retry-After` seconds or HTTP date is
honoured, capped at `max_retry_wait`), a connection that could not be opened, and a GET whose
answer did not come (timeout, dropped connection; reading twice changes nothing). Nothing
else is retried: a 4xx is the caller's to fix, and any other request that reached the server
and failed mid-way may have had its effect. Between retries without `Retry-After` the wait
doubles from `backoff` seconds.
"""
from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from fireplace import __version__
from fireplace.client.errors import ConnectionFailed, error_from_response

RETRY_STATUSES = frozenset({429, 503})
SAFE_METHODS = frozenset({"GET", "HEAD"})
DEFAULT_TIMEOUT = 60.0


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After: 3` or `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT` -> seconds (>= 0)."""
    if not value:
        return None
    value = value.strip()
    if value.replace(".", "", 1).isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Transport:
    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = DEFAULT_TIMEOUT,
                 max_retries: int = 3, backoff: float = 0.5, max_retry_wait: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.base_url = base_url.rstrip("/")
        self.max_retries, self.backoff, self.max_retry_wait = max_retries, backoff, max_retry_wait
        self.sleep = sleep
        headers = {"user-agent": f"fireplace-client/{__version__}"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._timeout, self._user_agent = timeout, headers["user-agent"]
        self._api = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self._bare: httpx.Client | None = None

    def close(self) -> None:
        self._api.close()
        if self._bare is not None:
            self._bare.close()

    def _client_for(self, url: str) -> httpx.Client:
        if not url.startswith(("http://", "https://")):
            return self._api
        # Signed URLs carry their own credential; the API key must not travel to them.
        if self._bare is None:
            self._bare = httpx.Client(timeout=self._timeout, headers={"user-agent": self._user_agent})
        return self._bare

    def _wait(self, attempt: int, response: httpx.Response | None) -> None:
        hinted = retry_after_seconds(response.headers.get("retry-after")) if response is not None else None
        delay = hinted if hinted is not None else self.backoff * (2 ** attempt)
        self.sleep(min(delay, self.max_retry_wait))

    @contextmanager
    def stream(self, method: str, url: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A response whose body is not read yet; a non-2xx status raises the typed error.
        Retries happen before any body is handed out, so a body is never read twice."""
        client = self._client_for(url)
        attempts = self.max_retries + 1 if _replayable(kwargs) else 1
        started = False   # once the body is handed out, a failure is the reader's: no retry
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                with client.stream(method, url, **kwargs) as response:
                    if response.status_code in RETRY_STATUSES and not last:
                        response.read()
                        retry_response = response
                    elif response.is_error:
                        response.read()
                        raise error_from_response(response)
                    else:
                        started = True
                        yield response
                        return
            except httpx.ConnectError as exc:
                if last:
                    raise ConnectionFailed(f"cannot reach {self.base_url}: {exc}") from None
                retry_response = None
            except httpx.TransportError as exc:
                if last or method not in SAFE_METHODS or started:
                    why = f"no answer in time ({type(exc).__name__})" if isinstance(exc, httpx.TimeoutException) \
                        else f"connection failed ({exc or type(exc).__name__})"
                    raise ConnectionFailed(f"{method} {url}: {why}") from None
                retry_response = None
            self._wait(attempt, retry_response)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """A fully read 2xx response (else the typed error)."""
        with self.stream(method, url, **kwargs) as response:
            response.read()
            return response

    def json(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self.request(method, url, **kwargs)
        return response.json() if response.content else {}


def _replayable(kwargs: dict) -> bool:
    """A body given as a one-shot iterator cannot be sent twice."""
    content = kwargs.get("content")
    return content is None or isinstance(content, (bytes, str))
