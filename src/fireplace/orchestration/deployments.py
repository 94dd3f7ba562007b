"""Reconcile deployments: desired state in the DB -> replica processes through the executor.

Each tick (while holding the lease):
  1. replica rows vs the executor's processes: a row without a process is dropped (its process
     died with a previous server); an exited process becomes a FAILED row (a tombstone that
     counts one failed start of that deployment version) and is forgotten; a process without a
     row is stopped.
  2. poll every live replica's /internal/status at once; per deployment: a replica becomes
     READY once it answers ready AND holds every addon deployed there; start or stop replicas toward the target count; set
     state (CREATING -> READY, DELETING -> DELETED, FAILED after repeated failed starts),
     replicaCount, desiredReplicaCount's effect and replicaStats.
  3. per deployed model: load it on ready replicas that lack it, unload addons nobody deployed;
     DEPLOYED once every ready replica holds it.
Nothing here is remembered between ticks except pacing (retry back-off of failing loads).
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from fireplace.control.deployed_models import tables as dm
from fireplace.control.deployed_models.tables import DeployedModelRow
from fireplace.control.deployments import tables as dt
from fireplace.control.deployments.tables import DeploymentRow
from fireplace.control.models.tables import KIND_ADDON, ModelRow
from fireplace.db.base import utcnow
from fireplace.errors import InvalidArgument
from fireplace.orchestration import tables as rt
from fireplace.orchestration.context import ControllerContext
from fireplace.orchestration.executor import EMBEDDER, EXITED, REPLICA, CapacityError, ProcessSpec
from fireplace.orchestration.replica_client import ReplicaClient
from fireplace.orchestration.tables import ReplicaRow
from fireplace.serving.precision import replica_precision, server_has_cuda

log = logging.getLogger("fireplace.controller")
EMBEDDING_KIND = "EMBEDDING_MODEL"
LOAD_RETRY_S = 30.0
POLL_THREADS = 8         # replicas polled at once per tick


def deployment_name(row: DeploymentRow) -> str:
    return f"accounts/{row.account_id}/deployments/{row.deployment_id}"


def target_replicas(row: DeploymentRow) -> int:
    """Until autoscaling: max(1, desired (set by :scale)), capped by maxReplicaCount."""
    if row.state in dt.SOFT_DELETED:
        return 0
    return min(max(1, row.desired_replica_count), row.max_replica_count)


def _model(session: Session, name: str) -> ModelRow | None:
    parts = name.split("/")
    return session.get(ModelRow, (parts[1], parts[3])) if len(parts) == 4 else None


class DeploymentReconciler:
    def __init__(self, ctx: ControllerContext):
        self.ctx = ctx
        self.client = ReplicaClient()
        self._load_failures: dict[tuple[str, str], tuple[float, str]] = {}  # (replica, addon) -> (when, why)
        self._stopping: set[str] = set()
        self._status: dict[str, dict | None] = {}   # replica id -> its /internal/status this tick
        self._pollers = ThreadPoolExecutor(max_workers=POLL_THREADS, thread_name_prefix="replica-poll")

    # -- the tick ---------------------------------------------------------------------------------
    def reconcile(self) -> None:
        procs = {p.process_id: p for p in self.ctx.executor.list() if p.kind in (REPLICA, EMBEDDER)}
        with self.ctx.session_factory() as session:
            rows = list(session.scalars(select(ReplicaRow)))
            live: dict[str, list[ReplicaRow]] = defaultdict(list)
            tombstones: dict[str, list[ReplicaRow]] = defaultdict(list)
            for row in rows:
                if row.state == rt.FAILED:
                    tombstones[row.deployment].append(row)
                    continue
                proc = procs.get(row.replica_id)
                if proc is None:
                    session.delete(row)   # its process is gone (e.g. died with a previous server)
                elif proc.state == EXITED:
                    self._tombstone(row, f"replica exited with code {proc.exit_code}: "
                                         f"{_last_line(proc.log_tail)}")
                    self.ctx.executor.forget(row.replica_id)
                    tombstones[row.deployment].append(row)
                else:
                    live[row.deployment].append(row)
            self._poll([r for rows_ in live.values() for r in rows_])
            known = {r.replica_id for r in rows}
            for pid, proc in procs.items():
                if pid not in known and proc.state != EXITED:
                    self._stop_async(pid)
                elif pid not in known:
                    self.ctx.executor.forget(pid)
            session.commit()

            deployments = list(session.scalars(select(DeploymentRow).where(DeploymentRow.state != dt.DELETED)))
            names = set()
            for dep in deployments:
                name = deployment_name(dep)
                names.add(name)
                try:
                    self._reconcile_one(session, dep, live.get(name, []), tombstones.get(name, []))
                    session.commit()
                except Exception:
                    session.rollback()
                    log.exception("controller: reconciling %s failed", name)
            for name in set(live) - names:      # deployment deleted for good
                for row in live[name]:
                    self._stop_async(row.replica_id)
                    session.delete(row)
            for name in set(tombstones) - names:
                for row in tombstones[name]:
                    session.delete(row)
            session.commit()

    def _poll(self, rows: list[ReplicaRow]) -> None:
        """Every live replica's status at once (one GET each, in parallel), so a tick costs one
        round trip, not three per replica in turn."""
        answers = self._pollers.map(lambda r: self.client.status(r.address, r.secret), rows)
        self._status = {r.replica_id: a for r, a in zip(rows, answers)}

    # -- one deployment -------------------------------------------------------------------------------
    def _reconcile_one(self, session: Session, dep: DeploymentRow, replicas: list[ReplicaRow],
                       tombstones: list[ReplicaRow]) -> None:
        name = deployment_name(dep)
        settings = self.ctx.settings.serving
        if dep.state == dt.DELETING:
            for row in replicas:
                self._stop_async(row.replica_id)
                session.delete(row)
            for row in tombstones:
                session.delete(row)
            _set(dep, state=dt.DELETED, replica_count=0)
            return
        wanted = self._wanted_addons(session, name)
        for row in replicas:
            self._check_replica(row, dep, wanted, tombstones)
        replicas = [r for r in replicas if r.state != rt.FAILED]
        ready = [r for r in replicas if r.state == rt.READY]
        failures = [t for t in tombstones if t.deployment_etag == dep.etag]
        if ready and tombstones:
            for t in tombstones:   # it serves: earlier failed starts no longer count
                session.delete(t)
            failures = []
        target = target_replicas(dep)
        message = ""
        if len(failures) >= settings.max_replica_failures and not ready:
            last = max(failures, key=lambda t: t.update_time)
            for row in replicas:
                self._stop_async(row.replica_id)
                session.delete(row)
            _set(dep, state=dt.FAILED, replica_count=0, status_code="FAILED_PRECONDITION",
                 status_message=f"{len(failures)} replica starts failed; last: {last.status_message}"[:4000])
            self._set_stats(dep, 0, 0, 0)
            return
        pending = 0
        if len(replicas) < target:
            for _ in range(target - len(replicas)):
                try:
                    replicas.append(self._start(session, dep))
                except CapacityError as exc:
                    pending += 1
                    message = str(exc)
                    break
            pending = target - len(replicas)
        elif len(replicas) > target:
            extra = sorted(replicas, key=lambda r: (r.state == rt.READY, r.create_time), )[:len(replicas) - target]
            for row in extra:
                self._stop_async(row.replica_id)
                session.delete(row)
                replicas.remove(row)
            ready = [r for r in replicas if r.state == rt.READY]
        initializing = len([r for r in replicas if r.state != rt.READY])
        if ready:
            state, code = dt.READY, "OK"
            message = message or f"{len(ready)} of {target} replicas ready"
        else:
            state, code = dt.CREATING if dep.state != dt.READY else dt.UPDATING, "OK"
            if not message:
                message = "waiting for a replica to load the model" if replicas else "waiting for a replica"
            if failures:
                message += f" ({len(failures)} failed start(s); last: {failures[-1].status_message[:300]})"
        _set(dep, state=state, replica_count=len(ready), status_code=code, status_message=message)
        self._set_stats(dep, pending, initializing, len(ready))
        self._sync_deployed_models(session, name, ready, wanted)

    def _check_replica(self, row: ReplicaRow, dep: DeploymentRow, wanted: list[str],
                       tombstones: list[ReplicaRow]) -> None:
        health = self._status.get(row.replica_id)
        timeout = self.ctx.settings.serving.replica_start_timeout_s
        if health is None:
            if row.state != rt.READY and utcnow() - row.create_time > timedelta(seconds=timeout):
                self._fail(row, f"replica did not become ready within {timeout:.0f}s", tombstones)
            elif row.state == rt.READY:
                _set(row, state=rt.LOADING, status_message="replica stopped answering")
            return
        if health.get("state") == "failed":
            self._fail(row, f"model failed to load: {health.get('error')}", tombstones)
            return
        if not health.get("ready"):
            _set(row, state=rt.LOADING, status_message=f"replica is {health.get('state')}")
            return
        resident = list(health.get("adapters") or [])
        missing = [a for a in wanted if a not in resident]
        for addon in missing:
            if self._try_load(row, addon):
                resident.append(addon)
        for addon in [a for a in resident if a not in wanted]:
            if self.client.unload_adapter(row.address, row.secret, addon):
                resident.remove(addon)
        if sorted(row.adapters or []) != sorted(resident):
            row.adapters = sorted(resident)
        stats = health.get("stats") or {}
        outstanding = int(stats.get("num_outstanding", 0) or 0)
        if row.num_outstanding != outstanding:
            row.num_outstanding = outstanding
        # a new replica serves once it holds every addon (failed loads excepted: they are reported)
        if row.state != rt.READY and all(a in resident or (row.replica_id, a) in self._load_failures
                                         for a in wanted):
            _set(row, state=rt.READY, status_message="")

    def _try_load(self, row: ReplicaRow, addon: str) -> bool:
        key = (row.replica_id, addon)
        failed = self._load_failures.get(key)
        if failed is not None and time.monotonic() - failed[0] < LOAD_RETRY_S:
            return False
        error = self.client.load_adapter(row.address, row.secret, addon)
        if error is None:
            self._load_failures.pop(key, None)
            return True
        log.warning("controller: loading %s on %s failed: %s", addon, row.replica_id, error)
        self._load_failures[key] = (time.monotonic(), error)
        return False

    def _fail(self, row: ReplicaRow, message: str, tombstones: list[ReplicaRow]) -> None:
        self._stop_async(row.replica_id)
        self._tombstone(row, message)
        tombstones.append(row)

    @staticmethod
    def _tombstone(row: ReplicaRow, message: str) -> None:
        row.state, row.status_message, row.address = rt.FAILED, message[:4000], ""

    # -- deployed models --------------------------------------------------------------------------------
    @staticmethod
    def _wanted_addons(session: Session, deployment: str) -> list[str]:
        return sorted(set(session.scalars(select(DeployedModelRow.model).where(
            DeployedModelRow.deployment == deployment, DeployedModelRow.is_addon.is_(True)))))

    def _sync_deployed_models(self, session: Session, deployment: str, ready: list[ReplicaRow],
                              wanted: list[str]) -> None:
        for row in session.scalars(select(DeployedModelRow).where(DeployedModelRow.deployment == deployment)):
            if not ready:
                _set(row, state=dm.DEPLOYING, status_code="OK",
                     status_message="waiting for a serving replica to load the model")
                continue
            if not row.is_addon:
                _set(row, state=dm.DEPLOYED, status_code="OK", status_message="")
                continue
            holders = [r for r in ready if row.model in (r.adapters or [])]
            errors = [self._load_failures[(r.replica_id, row.model)][1] for r in ready
                      if (r.replica_id, row.model) in self._load_failures]
            if len(holders) == len(ready):
                _set(row, state=dm.DEPLOYED, status_code="OK", status_message="")
            elif errors:
                _set(row, state=dm.DEPLOYING, status_code="FAILED_PRECONDITION",
                     status_message=f"loading the addon failed: {errors[0]}"[:4000])
            else:
                _set(row, state=dm.DEPLOYING, status_code="OK",
                     status_message=f"loaded on {len(holders)} of {len(ready)} ready replicas")

    # -- processes ------------------------------------------------------------------------------------
    def _start(self, session: Session, dep: DeploymentRow) -> ReplicaRow:
        settings, serving = self.ctx.settings, self.ctx.settings.serving
        model = _model(session, dep.base_model)
        if model is None:
            raise CapacityError(f"base model {dep.base_model!r} no longer exists")
        replica_id = f"r-{secrets.token_hex(6)}"
        base, merged = dep.base_model, None
        if model.kind == KIND_ADDON:
            base, merged = model.base_model, dep.base_model
        kind = EMBEDDER if model.kind == EMBEDDING_KIND else REPLICA
        argv = ["replica", "--replica-id", replica_id, "--model", base, "--blob-url", self.ctx.blobs.url,
                "--cache-dir", str(settings.home / "cache" / "models"), "--port", "{port}", "--host", "{host}",
                "--kv-cache-mb", str(serving.replica_kv_cache_mb)]
        if kind == EMBEDDER:
            argv += ["--task", "embed"]
        if merged:
            argv += ["--merged-adapter", merged]
        if dep.enable_addons:
            argv += ["--enable-lora", "--max-loras", str(serving.replica_max_loras)]
        if serving.replica_threads:
            argv += ["--threads", str(serving.replica_threads)]
        try:  # dtype, device and weight quantization for the deployment's precision (serving/precision.py)
            precision = replica_precision((dep.spec or {}).get("precision"), server_has_cuda())
        except InvalidArgument as exc:  # validated at create; only a changed server gets here
            raise CapacityError(str(exc)) from None
        if kind == EMBEDDER:
            precision = replace(precision, quantization=None)  # the embedder has no quantized path
        argv += precision.argv()
        template = ((model.spec or {}).get("conversation_config") or {}).get("template")
        if template:  # the model's conversationConfig.template overrides its tokenizer's chat template
            argv += ["--chat-template-file", str(self._template_file(template))]
        max_len = (dep.spec or {}).get("maxContextLength")
        if max_len:
            argv += ["--max-model-len", str(max_len)]
        secret = secrets.token_urlsafe(32)
        info = self.ctx.executor.start(ProcessSpec(process_id=replica_id, kind=kind, owner=deployment_name(dep),
                                                   argv=argv, env={"FIREPLACE_REPLICA_SECRET": secret}))
        row = ReplicaRow(replica_id=replica_id, deployment=deployment_name(dep), address=info.address or "",
                         secret=secret, state=rt.STARTING, adapters=[], deployment_etag=dep.etag,
                         controller=self.ctx.holder, status_message="starting")
        session.add(row)
        session.flush()
        log.info("controller: started replica %s for %s", replica_id, deployment_name(dep))
        return row

    def _template_file(self, template: str):
        import hashlib
        directory = self.ctx.settings.home / "cache" / "chat-templates"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{hashlib.sha256(template.encode()).hexdigest()[:24]}.jinja"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(template)
            tmp.replace(path)
        return path

    def _stop_async(self, process_id: str) -> None:
        if process_id in self._stopping:
            return
        self._stopping.add(process_id)

        def run() -> None:
            try:
                self.ctx.executor.stop(process_id)
                self.ctx.executor.forget(process_id)
            finally:
                self._stopping.discard(process_id)
        threading.Thread(target=run, name=f"stop-{process_id}", daemon=True).start()

    @staticmethod
    def _set_stats(dep: DeploymentRow, pending: int, initializing: int, ready: int) -> None:
        stats = {"pendingSchedulingReplicaCount": pending, "initializingReplicaCount": initializing,
                 "readyReplicaCount": ready}
        if (dep.spec or {}).get("replicaStats") != stats:
            dep.spec = {**(dep.spec or {}), "replicaStats": stats}

    def close(self) -> None:
        self._pollers.shutdown(wait=False)
        self.client.close()


def _set(row, **values) -> None:
    """Assign only what changed (an unchanged row is not written, so update_time stays)."""
    for key, value in values.items():
        if getattr(row, key) != value:
            setattr(row, key, value)


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "(no output)"

