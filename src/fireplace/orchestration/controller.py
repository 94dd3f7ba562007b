"""The controller: a level-triggered reconcile loop over deployments and fine-tuning jobs.

Runs in `fireplace serve` (a thread) or alone (`fireplace controller`). Every tick it renews
its DB lease; only the holder reconciles, so several API servers can run one each safely.
The executor's processes are children of this process (local executor): the thread that
starts them lives as long as the process (PR_SET_PDEATHSIG is tied to the starting thread).
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading

from sqlalchemy.orm import Session, sessionmaker

from fireplace.config import Settings
from fireplace.orchestration.context import ControllerContext
from fireplace.orchestration.deployments import DeploymentReconciler
from fireplace.orchestration.executor import EMBEDDER, REPLICA, TRAINER, Executor
from fireplace.orchestration.lease import Lease
from fireplace.storage import BlobStore

log = logging.getLogger("fireplace.controller")
LEASE_NAME = "controller"


def local_executor(settings: Settings) -> Executor:
    from fireplace.orchestration.local_executor import LocalExecutor
    serving = settings.serving
    return LocalExecutor(settings.home / "logs", {REPLICA: serving.replica_slots(),
                                                  EMBEDDER: serving.local_embedding_slots,
                                                  TRAINER: serving.local_trainer_slots},
                         host=serving.replica_host)


class Controller:
    def __init__(self, settings: Settings, session_factory: sessionmaker[Session], blobs: BlobStore,
                 executor: Executor | None = None):
        holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.ctx = ControllerContext(session_factory=session_factory, executor=executor or local_executor(settings),
                                     settings=settings, blobs=blobs, holder=holder)
        self.lease = Lease(session_factory, LEASE_NAME, holder, ttl_s=settings.serving.lease_ttl_s)
        self.deployments = DeploymentReconciler(self.ctx)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.is_leader = False

    def tick(self) -> None:
        self.is_leader = self.lease.try_acquire()
        if not self.is_leader:
            return
        self.deployments.reconcile()
        try:
            from fireplace.orchestration.jobs import reconcile_jobs
        except ImportError:
            return
        reconcile_jobs(self.ctx)

    def run_forever(self) -> None:
        interval = self.ctx.settings.serving.reconcile_interval_s
        try:
            while not self._stop.is_set():
                try:
                    self.tick()
                except Exception:  # one bad tick (DB hiccup) must not end the loop
                    log.exception("controller tick failed")
                self._stop.wait(interval)
        finally:
            # from this thread: its children get SIGKILL by PR_SET_PDEATHSIG once it ends
            self.ctx.executor.shutdown()

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run_forever, name="fireplace-controller", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        else:
            self.ctx.executor.shutdown()
        if self.is_leader:
            try:
                self.lease.release()
            except Exception:
                log.exception("controller: releasing the lease failed")
        self.deployments.close()
