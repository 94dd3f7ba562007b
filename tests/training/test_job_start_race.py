"""The controller's start decision on both databases, without a server: two controllers whose
ticks overlap (the lease holder's tick outlived its lease and its successor ticks too) never
start more of an account's jobs than its concurrent-fine-tuning-jobs quota between them, and
never start one job twice. The executor is a fake of the real interface that starts nothing:
only the DB decision is under test here (real workers: tests/training/test_job_queue.py)."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from fireplace.config import Settings
from fireplace.control.accounts.tables import AccountRow
from fireplace.control.fine_tuning import states
from fireplace.control.fine_tuning.tables import SftJobRow
from fireplace.control.quotas.tables import QuotaRow
from fireplace.db.base import utcnow
from fireplace.db.engine import make_engine, make_session_factory
from fireplace.db.migrate import upgrade
from fireplace.errors import AlreadyExists
from fireplace.orchestration import jobs
from fireplace.orchestration.context import ControllerContext
from fireplace.orchestration.executor import RUNNING, Executor, ProcessInfo, ProcessSpec
from fireplace.storage import BlobStore
from tests.conftest import _require_postgres
from tests.servers import create_pg_database, drop_pg_database

ACCOUNT, QUOTA, NUM_JOBS = "racer", 2, 5


class IdleExecutor(Executor):
    """Lists what it was asked to start as RUNNING and runs nothing. Its first capacity() call
    waits for the other controller's, so both have counted the account's workers before
    either starts one: the overlap that a lost lease allows, made certain."""

    def __init__(self, barrier: threading.Barrier, slots: int = 8):
        self.barrier, self.slots, self.started = barrier, slots, []
        self.procs: dict[str, ProcessInfo] = {}
        self._waited = False

    def capacity(self, kind):
        if not self._waited:
            self._waited = True
            self.barrier.wait(timeout=30)
        return len(self.procs), self.slots

    def start(self, spec: ProcessSpec) -> ProcessInfo:
        self.started.append(spec.owner)
        info = ProcessInfo(spec.process_id, spec.kind, spec.owner, RUNNING, started_at=time.time(),
                           labels=spec.labels)
        self.procs[spec.process_id] = info
        return info

    def stop(self, process_id, *, grace_s=10.0):
        pass

    def list(self):
        return list(self.procs.values())

    def forget(self, process_id):
        self.procs.pop(process_id, None)


@pytest.fixture(params=["sqlite", "postgres"])
def factory(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    if request.param == "postgres":
        _require_postgres()
        url = create_pg_database()
    engine = make_engine(url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()
    if request.param == "postgres":
        drop_pg_database(url)


def _pending_jobs(factory) -> None:
    now = utcnow()
    with factory() as s:
        s.add(AccountRow(account_id=ACCOUNT, email="racer@example.com"))
        s.flush()
        s.add(QuotaRow(account_id=ACCOUNT, quota_id=jobs.QUOTA, max_value=QUOTA))
        for i in range(NUM_JOBS):
            s.add(SftJobRow(account_id=ACCOUNT, job_id=f"job-{i}", state=states.PENDING,
                            dataset=f"accounts/{ACCOUNT}/datasets/d", training_base_model="accounts/fireplace/models/m",
                            output_model=f"accounts/{ACCOUNT}/models/out-{i}", validation={"examples": 3},
                            create_time=now + timedelta(seconds=i)))
        s.commit()


def test_overlapping_controllers_start_at_most_the_quota(factory, tmp_path):
    _pending_jobs(factory)
    barrier = threading.Barrier(2)
    settings = Settings(home=tmp_path)
    contexts = [ControllerContext(session_factory=factory, executor=IdleExecutor(barrier), settings=settings,
                                  blobs=BlobStore(str(tmp_path / "blobs")), holder=f"controller-{i}")
                for i in range(2)]
    errors = []

    def tick(ctx):
        try:
            jobs.reconcile_jobs(ctx)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=tick, args=(ctx,)) for ctx in contexts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    started = [owner for ctx in contexts for owner in ctx.executor.started]
    with factory() as s:
        rows = {r.job_id: r for r in s.scalars(select(SftJobRow))}
    running = sorted(j for j, r in rows.items() if r.state == states.RUNNING)
    assert len(running) == QUOTA and len(started) == QUOTA and len(set(started)) == QUOTA, (running, started)
    assert all(rows[j].worker_attempt == 1 for j in running)
    waiting = [r for r in rows.values() if r.state == states.PENDING]
    assert len(waiting) == NUM_JOBS - QUOTA
    assert all(f"{jobs.QUOTA} quota: {QUOTA} of its jobs hold a training worker" in r.status_message
               for r in waiting), [r.status_message for r in waiting]

    # Later ticks (one controller again) start the next job only when one of these finishes.
    ctx = contexts[0]
    jobs.reconcile_jobs(ctx)
    with factory() as s:
        assert s.query(SftJobRow).filter(SftJobRow.state == states.RUNNING).count() == QUOTA
        done = s.get(SftJobRow, (ACCOUNT, running[0]))
        states.transition(done, states.WRITING_RESULTS)
        states.transition(done, states.COMPLETED)
        s.commit()
    jobs.reconcile_jobs(ctx)
    with factory() as s:
        assert s.query(SftJobRow).filter(SftJobRow.state == states.RUNNING).count() == QUOTA
        assert s.get(SftJobRow, (ACCOUNT, "job-2")).state == states.RUNNING   # the oldest waiting one


def test_a_claimed_output_name_is_refused_to_other_registrations(factory, tmp_path):
    """The internal registration path (catalog imports, job outputs) honours a job's claim too;
    the claiming job itself registers its output."""
    from fireplace.control.models.registry import register_model_files

    _pending_jobs(factory)
    blobs = BlobStore(str(tmp_path / "blobs"))
    with factory() as s:
        with pytest.raises(AlreadyExists, match=f"accounts/{ACCOUNT}/supervisedFineTuningJobs/job-0"):
            register_model_files(s, blobs, ACCOUNT, "out-0", kind="HF_BASE_MODEL",
                                 fine_tuning_job=f"accounts/{ACCOUNT}/supervisedFineTuningJobs/job-1")
