"""Fine-tuning jobs, reconciled: the controller calls `reconcile_jobs(ctx)` every tick while it
holds the lease. Level-triggered: every decision is made from the DB rows and the executor's
process list as they are now, so a controller restart loses nothing.

    CREATING        -> VALIDATING
    VALIDATING      validation running in this process? no -> start it (training.job_validation);
                    it moves the job to PENDING or FAILED itself
    RE_QUEUEING     -> PENDING
    PENDING         oldest first, while a TRAINER slot is free and the account has fewer jobs
                    holding a worker (RUNNING, WRITING_RESULTS, CANCELLING) than its
                    concurrent-fine-tuning-jobs quota: worker_attempt += 1, -> RUNNING, start
                    `fireplace train --job NAME --attempt N`; else the job's status.message
                    says what it waits for (a worker slot, or the quota)
    RUNNING /       the worker is dead (exited, lost for LOST_GRACE_S, or no heartbeat for
    WRITING_RESULTS HEARTBEAT_TIMEOUT_S): restart_count += 1; past MAX_RESTARTS -> FAILED with the
                    worker's last output; else RUNNING -> RE_QUEUEING (a new worker resumes from
                    the last checkpoint), WRITING_RESULTS stays and gets a new worker
    CANCELLING      stop the worker (SIGTERM, then SIGKILL after STOP_GRACE_S) -> CANCELLED
Trainer processes no active job owns (its job was re-queued, cancelled, finished) are stopped
and forgotten. A worker writes only while the job still carries its attempt (fencing), so a
late or duplicate worker cannot corrupt its successor's work.

Only the holder of the controller lease reconciles, but a tick that outlives the lease (a
stalled process, a slow DB) can overlap its successor's: so PENDING -> RUNNING recounts the
account's jobs holding a worker under the account lock (control.locks, the lock job create and
:resume take), and two controllers never start more than the quota between them.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select

from fireplace.control.fine_tuning import runtime, states
from fireplace.control.fine_tuning.tables import SftJobRow
from fireplace.db.base import utcnow
from fireplace.orchestration.executor import EXITED, TRAINER, CapacityError, ProcessInfo, ProcessSpec

log = logging.getLogger("fireplace.jobs")

HEARTBEAT_TIMEOUT_S = 120.0  # a live worker beats every 2 s (generous: a loaded machine stalls it)
LOST_GRACE_S = 15.0          # a worker the executor does not list (controller restarted) is dead after this
MAX_RESTARTS = 3             # crashes retried per start (a user :resume starts the count again)
STOP_GRACE_S = 3.0
QUOTA = "concurrent-fine-tuning-jobs"
WITH_WORKER = tuple(sorted(states.HOLDING_WORKER))
RECONCILED = (states.CREATING, states.VALIDATING, states.RE_QUEUEING, states.PENDING) + WITH_WORKER

_validations: dict[tuple[str, str], Future] = {}
_validation_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _validation_pool
    with _pool_lock:
        if _validation_pool is None:
            _validation_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sft-validate")
        return _validation_pool


def job_name(row: SftJobRow) -> str:
    return f"accounts/{row.account_id}/supervisedFineTuningJobs/{row.job_id}"


def _age_s(when: datetime | None) -> float:
    if when is None:
        return float("inf")
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (utcnow() - when).total_seconds()


def worker_env(ctx) -> dict[str, str]:
    settings = ctx.settings
    return {"FIREPLACE_DATABASE_URL": settings.resolved_database_url,
            "FIREPLACE_BLOB_URL": settings.resolved_blob_url, "FIREPLACE_HOME": str(settings.home)}


def reconcile_jobs(ctx) -> None:
    procs = {p.process_id: p for p in ctx.executor.list() if p.kind == TRAINER}
    with ctx.session_factory() as s:
        rows = list(s.scalars(select(SftJobRow).where(SftJobRow.state.in_(RECONCILED))
                              .order_by(SftJobRow.create_time, SftJobRow.job_id)))
        s.expunge_all()
    for row in rows:
        try:
            if row.state == states.CREATING:
                _move(ctx, row, states.CREATING, states.VALIDATING, "validating the dataset against the base model")
            elif row.state == states.VALIDATING:
                _ensure_validation(ctx, row)
            elif row.state == states.RE_QUEUEING:
                _move(ctx, row, states.RE_QUEUEING, states.PENDING, "re-queued; waiting for a training worker")
            elif row.state in (states.RUNNING, states.WRITING_RESULTS):
                _check_worker(ctx, row, procs.get(row.worker_process_id))
            elif row.state == states.CANCELLING:
                _finish_cancel(ctx, row, procs.get(row.worker_process_id))
        except Exception:  # one bad job must not stop the others
            log.exception("reconciling %s failed", job_name(row))
    _start_workers(ctx, rows)
    _reap(ctx, procs)


def _locked(s, row: SftJobRow, state: str, attempt: int | None = None) -> SftJobRow | None:
    """The row again, locked, if it is still in `state` (and attempt); else None."""
    fresh = s.get(SftJobRow, (row.account_id, row.job_id), with_for_update=True, populate_existing=True)
    if fresh is None or fresh.state != state or (attempt is not None and fresh.worker_attempt != attempt):
        return None
    return fresh


def _move(ctx, row: SftJobRow, frm: str, to: str, message: str) -> None:
    with ctx.session_factory() as s:
        fresh = _locked(s, row, frm)
        if fresh is None:
            return
        states.transition(fresh, to, message=message)
        runtime.add_event(s, row.account_id, row.job_id, runtime.STATE, to)
        s.commit()


def _ensure_validation(ctx, row: SftJobRow) -> None:
    from fireplace.training.job_validation import validate_job

    key = (row.account_id, row.job_id)
    running = _validations.get(key)
    if running is not None and not running.done():
        return
    cache = Path(ctx.settings.home) / "cache" / "training-models"
    _validations[key] = _pool().submit(validate_job, ctx.session_factory, ctx.blobs, cache, *key)
    for done in [k for k, f in _validations.items() if f.done() and k != key]:
        _validations.pop(done, None)


def _check_worker(ctx, row: SftJobRow, proc: ProcessInfo | None) -> None:
    if row.state == states.WRITING_RESULTS and not row.worker_process_id:
        return  # waiting for a new worker (_start_workers)
    why = None
    if proc is None:
        if _age_s(row.heartbeat_time) > LOST_GRACE_S:
            why = "the training worker is gone"
    elif proc.state == EXITED:
        tail = (proc.log_tail or "").strip().splitlines()[-3:]
        why = f"the training worker exited with code {proc.exit_code}" + (f": {' | '.join(tail)[-600:]}" if tail else "")
    elif _age_s(row.heartbeat_time) > HEARTBEAT_TIMEOUT_S:
        why = f"the training worker sent no heartbeat for {int(_age_s(row.heartbeat_time))} s"
        ctx.executor.stop(proc.process_id, grace_s=STOP_GRACE_S)
    if why is None:
        return
    with ctx.session_factory() as s:
        fresh = _locked(s, row, row.state, row.worker_attempt)
        if fresh is None:
            return
        ckpt = runtime.latest_checkpoint(s, row.account_id, row.job_id)
        fresh.restart_count += 1
        fresh.worker_process_id = ""
        if fresh.restart_count > MAX_RESTARTS:
            message = f"{why}; gave up after {MAX_RESTARTS} restarts (resume the job to try again)"
            states.transition(fresh, states.FAILED, message=message, code="INTERNAL")
            runtime.add_event(s, row.account_id, row.job_id, runtime.STATE, f"{states.FAILED}: {message}",
                              level=runtime.ERROR)
        else:
            where = f"the checkpoint at step {ckpt.step}" if ckpt is not None else "the start"
            message = f"{why}; restart {fresh.restart_count} of {MAX_RESTARTS} will resume from {where}"
            if fresh.state == states.RUNNING:
                states.transition(fresh, states.RE_QUEUEING, message=message)
            else:
                fresh.status_message = message
            runtime.add_event(s, row.account_id, row.job_id, runtime.RESTART, message, level=runtime.WARNING,
                              data={"restart": fresh.restart_count, "checkpointStep": ckpt.step if ckpt else None})
        s.commit()
    if proc is not None:
        ctx.executor.forget(proc.process_id)


def _finish_cancel(ctx, row: SftJobRow, proc: ProcessInfo | None) -> None:
    if proc is not None and proc.state != EXITED:
        ctx.executor.stop(proc.process_id, grace_s=STOP_GRACE_S)
    with ctx.session_factory() as s:
        fresh = _locked(s, row, states.CANCELLING)
        if fresh is None:
            return
        ckpt = runtime.latest_checkpoint(s, row.account_id, row.job_id)
        fresh.worker_process_id = ""
        where = f"; :resume continues from the checkpoint at step {ckpt.step}" if ckpt else ""
        states.transition(fresh, states.CANCELLED, message=(fresh.status_message or "cancelled") + where)
        runtime.add_event(s, row.account_id, row.job_id, runtime.STATE, states.CANCELLED)
        s.commit()
    if proc is not None:
        ctx.executor.forget(proc.process_id)


def _start_workers(ctx, rows: list[SftJobRow]) -> None:
    from fireplace.control.quotas.definitions import quota_limit

    waiting = [r for r in rows if r.state == states.PENDING
               or (r.state == states.WRITING_RESULTS and not r.worker_process_id)]
    if not waiting:
        return
    with ctx.session_factory() as s:
        busy = _holding_workers(s)
        limits = {a: quota_limit(s, a, QUOTA) for a in {r.account_id for r in waiting}}
    for row in waiting:
        used, total = ctx.executor.capacity(TRAINER)
        if used >= total:   # every waiting job says so, not only the first
            _note_waiting(ctx, row, f"waiting for a training worker slot ({used} of {total} in use)")
            continue
        # A WRITING_RESULTS job getting a new worker already holds its place in the quota.
        if row.state == states.PENDING and busy.get(row.account_id, 0) >= limits[row.account_id]:
            _note_waiting(ctx, row, _quota_message(busy.get(row.account_id, 0), limits[row.account_id]))
            continue
        try:
            started = _start(ctx, row)
        except Exception:  # one bad job must not stop the others
            log.exception("starting a worker for %s failed", job_name(row))
            continue
        if started and row.state == states.PENDING:
            busy[row.account_id] = busy.get(row.account_id, 0) + 1


def _holding_workers(s, account_id: str | None = None) -> dict[str, int]:
    """account -> its jobs holding a worker (the concurrent-fine-tuning-jobs quota's usage)."""
    stmt = select(SftJobRow.account_id).where(SftJobRow.state.in_(WITH_WORKER))
    if account_id is not None:
        stmt = stmt.where(SftJobRow.account_id == account_id)
    busy: dict[str, int] = {}
    for account, in s.execute(stmt):
        busy[account] = busy.get(account, 0) + 1
    return busy


def _quota_message(used: int, limit: int) -> str:
    then = "this job starts when one of them finishes" if limit else "no job of the account starts until it is raised"
    return (f"waiting for the account's {QUOTA} quota: {used} of its jobs hold a training worker, the quota is "
            f"{limit}; {then}")


def _note_waiting(ctx, row: SftJobRow, message: str) -> None:
    if row.state != states.PENDING or row.status_message == message:
        return
    with ctx.session_factory() as s:
        fresh = _locked(s, row, states.PENDING)
        if fresh is not None:
            fresh.status_message = message
            s.commit()


def _start(ctx, row: SftJobRow) -> bool:
    from fireplace.control.locks import serialize_account
    from fireplace.control.quotas.definitions import quota_limit

    process_id = f"train-{uuid.uuid4().hex[:12]}"
    with ctx.session_factory() as s:
        if row.state == states.PENDING:
            serialize_account(s, row.account_id)   # first, as job create and :resume take it
        fresh = _locked(s, row, row.state)
        if fresh is None or (fresh.state == states.WRITING_RESULTS and fresh.worker_process_id):
            return False
        if fresh.state == states.PENDING:
            used = _holding_workers(s, row.account_id).get(row.account_id, 0)
            limit = quota_limit(s, row.account_id, QUOTA)
            if used >= limit:   # another controller started one since this tick counted
                message = _quota_message(used, limit)
                if fresh.status_message != message:
                    fresh.status_message = message
                s.commit()
                return False
        fresh.worker_attempt += 1
        fresh.worker_process_id = process_id
        fresh.heartbeat_time = utcnow()
        attempt = fresh.worker_attempt
        if fresh.state == states.PENDING:
            states.transition(fresh, states.RUNNING, message="training")
            runtime.add_event(s, row.account_id, row.job_id, runtime.STATE, states.RUNNING,
                              data={"attempt": attempt})
        s.commit()
    name = job_name(row)
    spec = ProcessSpec(process_id=process_id, kind=TRAINER, owner=name,
                       argv=["train", "--job", name, "--attempt", str(attempt)], env=worker_env(ctx),
                       labels={"attempt": str(attempt)})
    try:
        ctx.executor.start(spec)
    except (CapacityError, OSError) as exc:
        log.warning("could not start a worker for %s: %s", name, exc)
        with ctx.session_factory() as s:
            fresh = _locked(s, row, states.RUNNING if row.state == states.PENDING else row.state, attempt)
            if fresh is not None:
                fresh.worker_process_id = ""
                if fresh.state == states.RUNNING:
                    states.transition(fresh, states.RE_QUEUEING, message=f"could not start a worker: {exc}")
                s.commit()
        return False
    return True


def _reap(ctx, procs: dict[str, ProcessInfo]) -> None:
    """Stop and forget trainer processes that no active job attempt owns."""
    if not procs:
        return
    with ctx.session_factory() as s:
        owned = set(s.scalars(select(SftJobRow.worker_process_id).where(
            SftJobRow.state.in_(WITH_WORKER), SftJobRow.worker_process_id != "")))
    for pid, proc in procs.items():
        if pid in owned:
            continue
        if proc.state != EXITED:
            if time.time() - proc.started_at < 2.0:
                continue  # just started this tick by someone else's view; look again next tick
            ctx.executor.stop(pid, grace_s=STOP_GRACE_S)
        ctx.executor.forget(pid)
