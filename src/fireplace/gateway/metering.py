"""Token metering of inference requests: sums in memory, added to the DB every few seconds.

    meter.record("acme", "accounts/fireplace/models/smollm2-135m-instruct", {"prompt_tokens": 12,
                 "completion_tokens": 30, ...})   # in the request path: a dict update, no I/O
    meter.flush()                                 # the flusher thread, GET .../usage, shutdown

What counts: a request that completed, as the usage the replica reported (the `usage` of a
non-streaming answer, the final usage chunk of a stream). A request that failed (any 4xx/5xx,
an error event mid-stream) or whose stream ended before its usage chunk (the client went away)
is not counted at all: usage is what was delivered.

Each flush adds the pending sums to inference_usage with one upsert per (account, day, model),
in key order (so servers flushing the same rows cannot deadlock), in one transaction; when the
DB refuses, the sums go back into the pending ones and the next flush retries them. Counts of a
server killed with -9 since its last flush are lost (at most FLUSH_INTERVAL_S of them).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import date

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from fireplace.control.usage.tables import UsageRow, utc_today
from fireplace.db.base import utcnow

log = logging.getLogger("fireplace.metering")

FLUSH_INTERVAL_S = 5.0
ROWS_PER_STATEMENT = 500   # well under SQLite's bound on variables per statement
Key = tuple[str, date, str]  # (account, UTC day, model)


@dataclass
class Counts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: "Counts") -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


def _tokens(usage: dict, key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class Meter:
    def __init__(self, factory: sessionmaker[Session], interval_s: float = FLUSH_INTERVAL_S):
        self.factory = factory
        self.interval_s = interval_s
        self._pending: dict[Key, Counts] = {}
        self._lock = threading.Lock()          # guards _pending (record runs on the event loop)
        self._flush_lock = threading.Lock()    # one flush at a time: a failed one re-merges first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, account_id: str, model: str, usage: dict, *, day: date | None = None) -> None:
        """One completed request and its usage ({prompt_tokens, completion_tokens, ...})."""
        counts = Counts(1, _tokens(usage, "prompt_tokens"), _tokens(usage, "completion_tokens"))
        with self._lock:
            self._pending.setdefault((account_id, day or utc_today(), model), Counts()).add(counts)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="fireplace-metering", daemon=True)
                self._thread.start()

    def pending(self) -> dict[Key, Counts]:
        with self._lock:
            return {k: Counts(v.requests, v.prompt_tokens, v.completion_tokens) for k, v in self._pending.items()}

    def flush(self) -> int:
        """Add the pending sums to the DB; returns how many rows were written. Raises what the
        DB raised (the sums stay pending)."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return 0
            try:
                self._write(batch)
            except BaseException:
                with self._lock:
                    for key, counts in batch.items():
                        self._pending.setdefault(key, Counts()).add(counts)
                raise
            return len(batch)

    def _write(self, batch: dict[Key, Counts]) -> None:
        rows = [{"account_id": a, "day": d, "model": m, "requests": c.requests, "prompt_tokens": c.prompt_tokens,
                 "completion_tokens": c.completion_tokens, "update_time": utcnow()}
                for (a, d, m), c in sorted(batch.items())]
        with self.factory() as session:
            insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                stmt = insert(UsageRow).values(rows[start:start + ROWS_PER_STATEMENT])
                stmt = stmt.on_conflict_do_update(
                    index_elements=[UsageRow.account_id, UsageRow.day, UsageRow.model],
                    set_={"requests": UsageRow.requests + stmt.excluded.requests,
                          "prompt_tokens": UsageRow.prompt_tokens + stmt.excluded.prompt_tokens,
                          "completion_tokens": UsageRow.completion_tokens + stmt.excluded.completion_tokens,
                          "update_time": stmt.excluded.update_time})
                session.execute(stmt)
            session.commit()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
            except Exception:
                log.warning("metering flush failed; retrying in %.0fs", self.interval_s, exc_info=True)

    def close(self) -> None:
        """Stop the flusher and write what is pending (at shutdown)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=self.interval_s + 30)
        try:
            self.flush()
        except Exception:
            log.error("metering: the last flush failed; %d usage rows are lost", len(self._pending), exc_info=True)
