"""LocalExecutor: replicas and training workers as `fireplace` subprocesses on this machine.

Each process runs `python -m fireplace.cli.main <argv>`, with "{port}" in argv replaced by a
free port on the bind host, and its output appended to <logs dir>/<process_id>.log.
No process outlives the server: children get PR_SET_PDEATHSIG(SIGKILL) (Linux) and are also
handed `--parent-pid`-style watching by the commands themselves (FIREPLACE_PARENT_PID).

Capacity is counted per kind: `slots[kind]` processes at most (replica slots default to one
per GPU, else 2 on CPU; see ServingSettings).
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fireplace.orchestration.executor import (EXITED, RUNNING, CapacityError, Executor, ProcessInfo,
                                              ProcessSpec)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def tail(path: Path, limit: int = 4000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


@dataclass
class _Proc:
    spec: ProcessSpec
    popen: subprocess.Popen
    address: str | None
    started_at: float
    log_path: Path


class LocalExecutor(Executor):
    def __init__(self, logs_dir: Path, slots: dict[str, int], *, host: str = "127.0.0.1",
                 env: dict[str, str] | None = None):
        self.logs_dir = Path(logs_dir)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.slots = dict(slots)
        self.host = host
        self.base_env = dict(env or {})
        self._procs: dict[str, _Proc] = {}
        self._lock = threading.Lock()

    def capacity(self, kind: str) -> tuple[int, int]:
        with self._lock:
            used = sum(1 for p in self._procs.values() if p.spec.kind == kind and p.popen.poll() is None)
        return used, self.slots.get(kind, 0)

    def start(self, spec: ProcessSpec) -> ProcessInfo:
        used, total = self.capacity(spec.kind)
        if used >= total:
            raise CapacityError(f"waiting for capacity: {used} of {total} {spec.kind} slots in use")
        port = free_port(self.host)
        argv = [a.replace("{port}", str(port)).replace("{host}", self.host) for a in spec.argv]
        env = {**os.environ, **self.base_env, **spec.env, "FIREPLACE_PARENT_PID": str(os.getpid())}
        log_path = self.logs_dir / f"{spec.process_id}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen([sys.executable, "-m", "fireplace.cli.main", *argv], env=env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        uses_port = any("{port}" in a for a in spec.argv)
        proc = _Proc(spec, popen, f"http://{self.host}:{port}" if uses_port else None, time.time(), log_path)
        with self._lock:
            self._procs[spec.process_id] = proc
        return self._info(proc)

    def stop(self, process_id: str, *, grace_s: float = 10.0) -> None:
        with self._lock:
            proc = self._procs.get(process_id)
        if proc is None or proc.popen.poll() is not None:
            return
        proc.popen.terminate()
        try:
            proc.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(5)

    def kill(self, process_id: str) -> None:
        """SIGKILL at once (fault tests)."""
        with self._lock:
            proc = self._procs.get(process_id)
        if proc is not None and proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait(5)

    def list(self) -> list[ProcessInfo]:
        with self._lock:
            procs = list(self._procs.values())
        return [self._info(p) for p in procs]

    def forget(self, process_id: str) -> None:
        with self._lock:
            proc = self._procs.get(process_id)
            if proc is not None and proc.popen.poll() is not None:
                del self._procs[process_id]

    def shutdown(self) -> None:
        for info in self.list():
            with self._lock:
                proc = self._procs.get(info.process_id)
            if proc is not None and proc.popen.poll() is None:
                proc.popen.terminate()
        deadline = time.monotonic() + 8
        for info in self.list():
            proc = self._procs.get(info.process_id)
            if proc is None:
                continue
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()

    def _info(self, proc: _Proc) -> ProcessInfo:
        code = proc.popen.poll()
        return ProcessInfo(process_id=proc.spec.process_id, kind=proc.spec.kind, owner=proc.spec.owner,
                           state=RUNNING if code is None else EXITED, address=proc.address, exit_code=code,
                           started_at=proc.started_at, labels=dict(proc.spec.labels),
                           log_tail=tail(proc.log_path, 2000) if code is not None else "")

    def pid(self, process_id: str) -> int | None:
        with self._lock:
            proc = self._procs.get(process_id)
        return proc.popen.pid if proc else None
