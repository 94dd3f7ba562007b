"""The executor interface: how the controller starts, stops and lists the processes it runs.

Both kinds of process go through it: replicas (`fireplace replica`, one engine behind an
internal HTTP API) and training workers (`fireplace train --job NAME`). An executor keeps no
truth the controller depends on across a restart: `list()` reports what actually runs, and
the controller converges from that plus the desired state in the DB.

    spec = ProcessSpec(process_id="r-ab12cd34", kind=REPLICA, owner="accounts/a/deployments/d",
                       argv=["replica", "--port", "{port}", ...], env={...})
    executor.start(spec)         # returns at once; the process starts in the background
    executor.list()              # -> [ProcessInfo(process_id, kind, owner, address, state, ...)]
    executor.stop("r-ab12cd34")  # SIGTERM, then SIGKILL after a grace period
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

REPLICA, EMBEDDER, TRAINER = "replica", "embedding-replica", "trainer"
# ProcessInfo.state
STARTING, RUNNING, EXITED = "starting", "running", "exited"


class CapacityError(Exception):
    """No free slot for a process of this kind; the message says why (shown to users)."""


@dataclass(frozen=True)
class ProcessSpec:
    process_id: str               # unique per start; [a-z0-9-]
    kind: str                     # REPLICA | EMBEDDER | TRAINER (each kind has its own slots)
    owner: str                    # full name of the deployment or fine-tuning job served
    argv: list[str]               # `fireplace` sub-command and flags; "{port}" is filled by the executor
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # free-form, reported back by list()


@dataclass
class ProcessInfo:
    process_id: str
    kind: str
    owner: str
    state: str                    # STARTING | RUNNING | EXITED
    address: str | None = None    # "http://127.0.0.1:PORT" for replicas
    exit_code: int | None = None
    started_at: float = 0.0       # time.time()
    labels: dict[str, str] = field(default_factory=dict)
    log_tail: str = ""            # last lines of the process's output (for status messages)


class Executor(abc.ABC):
    @abc.abstractmethod
    def capacity(self, kind: str) -> tuple[int, int]:
        """(slots in use, slots in all) for processes of this kind."""

    @abc.abstractmethod
    def start(self, spec: ProcessSpec) -> ProcessInfo:
        """Start a process; raises CapacityError when no slot is free."""

    @abc.abstractmethod
    def stop(self, process_id: str, *, grace_s: float = 10.0) -> None:
        """Stop a process (no error if it already exited or is unknown)."""

    @abc.abstractmethod
    def list(self) -> list[ProcessInfo]:
        """Every process this executor started that has not been forgotten; EXITED ones stay
        listed (with exit_code and log_tail) until `forget` so the controller can see why."""

    @abc.abstractmethod
    def forget(self, process_id: str) -> None:
        """Drop an EXITED process from list()."""

    def shutdown(self) -> None:
        """Stop every process (server shutdown)."""
        for info in self.list():
            self.stop(info.process_id, grace_s=5.0)
