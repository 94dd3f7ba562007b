"""When a fine-tuning job runs, and what happens when its worker fails, against a real
`fireplace serve` (SQLite) with two training worker slots and the official SDK:
  - PENDING waits for the account's concurrent-fine-tuning-jobs quota (with the reason in
    status.message) while a worker slot is free, then for a slot, and then runs;
  - a worker that crashes is restarted at most MAX_RESTARTS times, then the job is FAILED with
    a message saying so; :resume of that FAILED job continues from its last checkpoint;
  - a deterministic failure inside the worker (a TrainingError) fails the job once, no retry.
The tiny random Llama trains each job in seconds; fault injection (FIREPLACE_TRAINING_FAULT)
pauses or crashes the workers of named jobs."""
from __future__ import annotations

import time

import pytest
from safetensors.torch import load_file

from fireplace.orchestration.jobs import MAX_RESTARTS
from fireplace.training.worker import CRASH_EXIT_CODE
from tests.conftest import ADMIN_KEY, http, new_account, sdk
from tests.servers import Server
from tests.training.helpers import FINAL, chat_lines, dataset, job_id_of, job_list, tiny_base, wait_for
from tests.training.test_jobs_e2e import assert_same_adapter, output_dir, reference_adapter

QUOTA_FIRST, SLOT_FIRST, CRASH_JOB = "quota-first", "slot-first", "crash-always"
FAULTS = ",".join([f"after-first-checkpoint:{QUOTA_FIRST}:300", f"after-first-checkpoint:{SLOT_FIRST}:300",
                   f"crash-after-checkpoint:{CRASH_JOB}:{MAX_RESTARTS + 1}"])
KW = dict(epochs=1, batch_size=64, learning_rate=3e-3, lora_rank=4, extra_body={"checkpointIntervalSteps": 4})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(home=tmp_path_factory.mktemp("fp-sched"), backend="sqlite", api_key=ADMIN_KEY,
                 extra_env={"FIREPLACE_TRAINING_FAULT": FAULTS, "FIREPLACE_SERVING_LOCAL_TRAINER_SLOTS": "2",
                            "FIREPLACE_SERVING_RECONCILE_INTERVAL_S": "0.5"}).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return sdk(server)


@pytest.fixture(scope="module")
def base(server) -> str:
    return tiny_base(server)


@pytest.fixture(scope="module")
def data(server) -> str:
    return dataset(server, chat_lines(24))


def set_quota(server: Server, account_id: str, value: int) -> None:
    with http(server) as c:
        r = c.patch(f"/v1/accounts/{account_id}/quotas/concurrent-fine-tuning-jobs", json={"maxValue": str(value)})
        assert r.status_code == 200, r.text


def wait_message(client, job_id: str, text: str, timeout: float = 90):
    """The job once its status.message says `text` (it must not finish before)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.supervised_fine_tuning_jobs.get(job_id)
        if text in job.status.message:
            return job
        assert job.state not in FINAL and time.monotonic() < deadline, (job.state, job.status)
        time.sleep(0.2)


def wait_final(client, job_id: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while True:
        job = client.supervised_fine_tuning_jobs.get(job_id)
        if job.state in FINAL:
            return job
        assert time.monotonic() < deadline, (job.state, job.status)
        time.sleep(0.25)


def state_events(server: Server, job_id: str, state: str, **kw) -> list[dict]:
    return [e for e in job_list(server, job_id, "events", **kw) if e["type"] == "STATE" and e["message"] == state]


def an_account(server: Server):
    account_id, key = new_account(server)
    theirs = sdk(server, key, account_id)
    return (account_id, theirs, tiny_base(server, api_key=key, account_id=account_id),
            dataset(server, chat_lines(24), api_key=key, account_id=account_id))


def test_pending_waits_for_the_quota_then_for_a_worker_slot_then_runs(server, client, base, data):
    """The two holders pause mid-run (fault injection) until the test cancels them, so who waits
    for what is decided by the rule, not by timing."""
    account_id, theirs, their_base, their_data = an_account(server)
    set_quota(server, account_id, 1)
    jobs = theirs.supervised_fine_tuning_jobs
    first = jobs.create(supervised_fine_tuning_job_id=QUOTA_FIRST, dataset=their_data, base_model=their_base, **KW)
    second = jobs.create(dataset=their_data, base_model=their_base, **KW)   # over the quota: accepted
    assert second.state == "JOB_STATE_CREATING"
    wait_for(theirs, QUOTA_FIRST, {"JOB_STATE_RUNNING"}, server=server)
    waiting = wait_message(theirs, job_id_of(second), "concurrent-fine-tuning-jobs quota")
    assert waiting.state == "JOB_STATE_PENDING"
    assert "1 of its jobs hold a training worker, the quota is 1" in waiting.status.message
    # One of the two slots is free: another account's job takes it at once.
    other = client.supervised_fine_tuning_jobs.create(supervised_fine_tuning_job_id=SLOT_FIRST, dataset=data,
                                                      base_model=base, **KW)
    wait_for(client, SLOT_FIRST, {"JOB_STATE_RUNNING"}, server=server)
    third = client.supervised_fine_tuning_jobs.create(dataset=data, base_model=base, **KW)
    slot_wait = wait_message(client, job_id_of(third), "waiting for a training worker slot (2 of 2 in use)")
    assert slot_wait.state == "JOB_STATE_PENDING"
    assert jobs.get(job_id_of(second)).state == "JOB_STATE_PENDING"
    assert {jobs.get(QUOTA_FIRST).state, client.supervised_fine_tuning_jobs.get(SLOT_FIRST).state} == \
        {"JOB_STATE_RUNNING"}
    # The holders go; the waiting jobs run and complete.
    jobs.cancel(QUOTA_FIRST, body={})
    client.supervised_fine_tuning_jobs.cancel(SLOT_FIRST, body={})
    for c, job in ((theirs, second), (client, third)):
        wait_for(c, job_id_of(job), {"JOB_STATE_COMPLETED"}, 180, server=server)
    theirs_kw = {"account_id": account_id, "api_key": theirs.api_key}
    first_gone = state_events(server, QUOTA_FIRST, "JOB_STATE_CANCELLED", **theirs_kw)[0]["createTime"]
    second_ran = state_events(server, job_id_of(second), "JOB_STATE_RUNNING", **theirs_kw)
    assert len(second_ran) == 1 and second_ran[0]["createTime"] >= first_gone


def test_crashes_are_retried_a_bounded_number_of_times_and_resume_continues(server, client, base, data):
    jobs = client.supervised_fine_tuning_jobs
    job = jobs.create(supervised_fine_tuning_job_id=CRASH_JOB, dataset=data, base_model=base, epochs=1,
                      batch_size=64, learning_rate=3e-3, lora_rank=4,
                      extra_body={"checkpointIntervalSteps": 1, "seed": 2})
    job = wait_final(client, CRASH_JOB)
    assert job.state == "JOB_STATE_FAILED" and job.status.code == "INTERNAL", job.status
    assert f"exited with code {CRASH_EXIT_CODE}" in job.status.message
    assert f"gave up after {MAX_RESTARTS} restarts (resume the job to try again)" in job.status.message
    restarts = [e for e in job_list(server, CRASH_JOB, "events") if e["type"] == "RESTART"]
    assert [e["data"]["restart"] for e in restarts] == list(range(1, MAX_RESTARTS + 1))
    assert len(state_events(server, CRASH_JOB, "JOB_STATE_RUNNING")) == MAX_RESTARTS + 1
    # Each attempt got one checkpoint further (each resumed from its predecessor's).
    last = max(c["step"] for c in job_list(server, CRASH_JOB, "checkpoints"))
    assert last == MAX_RESTARTS + 1
    time.sleep(2)
    assert jobs.get(CRASH_JOB).state == "JOB_STATE_FAILED"   # given up: not retried again

    jobs.resume(CRASH_JOB, body={})   # the fault crashes only the first MAX_RESTARTS + 1 attempts
    job = wait_for(client, CRASH_JOB, {"JOB_STATE_COMPLETED"}, 120, server=server)
    resumed = [e["data"] for e in job_list(server, CRASH_JOB, "events") if e["type"] == "RESUME"]
    assert resumed[-1] == {"step": last, "attempt": MAX_RESTARTS + 2}
    assert any(e.get("checkpointStep") == last for e in resumed)   # the user's :resume event
    total = job.job_progress.model_extra["totalSteps"]
    assert [m["step"] for m in job_list(server, CRASH_JOB, "metrics")] == list(range(1, total + 1))
    got = load_file(str(output_dir(server, job.output_model) / "adapter_model.safetensors"))
    assert_same_adapter(got, reference_adapter(server, job))


def test_a_deterministic_failure_in_the_worker_fails_once_and_is_not_retried(server):
    account_id, theirs, their_base, their_data = an_account(server)
    set_quota(server, account_id, 0)   # holds the job in PENDING while its validated data goes missing
    job = theirs.supervised_fine_tuning_jobs.create(dataset=their_data, base_model=their_base, **KW)
    job_id = job_id_of(job)
    waiting = wait_message(theirs, job_id, "the quota is 0")
    assert waiting.state == "JOB_STATE_PENDING"
    (server.home / "blobs" / "jobs" / account_id / job_id / "train-examples.safetensors").unlink()
    set_quota(server, account_id, 1)
    job = wait_final(theirs, job_id)
    assert job.state == "JOB_STATE_FAILED" and job.status.code == "INVALID_ARGUMENT", job.status
    assert "the validated examples are missing" in job.status.message and "resume" in job.status.message
    time.sleep(3)   # several controller ticks: nothing restarts it
    assert theirs.supervised_fine_tuning_jobs.get(job_id).state == "JOB_STATE_FAILED"
    theirs_kw = {"account_id": account_id, "api_key": theirs.api_key}
    events = job_list(server, job_id, "events", **theirs_kw)
    assert not [e for e in events if e["type"] == "RESTART"]
    assert len(state_events(server, job_id, "JOB_STATE_RUNNING", **theirs_kw)) == 1
    assert len([e for e in events if e["level"] == "ERROR"]) == 1
