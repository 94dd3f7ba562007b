"""--wait mechanics without a server: states in order, a failed state or the timeout end it
(exit 10 in the CLI), an unanswered poll does not; the sftj progress line."""
from __future__ import annotations

import pytest

from fireplace import errors
from fireplace.cli.exit_codes import WaitFailed
from fireplace.cli.resources.sft_jobs import ProgressLine
from fireplace.cli.waiting import wait_for
from fireplace.client import ConnectionFailed


def polls(*answers):
    it = iter(answers)

    def fetch():
        answer = next(it)
        if isinstance(answer, Exception):
            raise answer
        return answer
    return fetch


def test_waits_through_states_and_unanswered_polls(capsys):
    fetch = polls({"state": "CREATING"}, ConnectionFailed("GET x: no answer in time (ReadTimeout)"),
                  errors.Unavailable("no replica yet"), {"state": "CREATING"}, {"state": "READY", "n": 1})
    got = wait_for(fetch, done={"READY"}, failed={"FAILED"}, timeout=30, describe=lambda r: r["state"],
                   what="d", poll=0.01)
    assert got == {"state": "READY", "n": 1}
    err = capsys.readouterr().err
    assert err.count("CREATING") == 1 and "READY" in err and err.count("still waiting") == 2


def test_failed_state_and_timeout_end_the_wait():
    with pytest.raises(WaitFailed, match="ended FAILED: bad weights"):
        wait_for(polls({"state": "FAILED", "status": {"message": "bad weights"}}), done={"READY"},
                 failed={"FAILED"}, timeout=30, describe=lambda r: r["state"], what="d", poll=0.01)
    with pytest.raises(WaitFailed, match="still CREATING after"):
        wait_for(lambda: {"state": "CREATING"}, done={"READY"}, failed=set(), timeout=0.05,
                 describe=lambda r: r["state"], what="d", poll=0.01)
    with pytest.raises(errors.NotFound):   # anything but 'no answer' is not waited out
        wait_for(polls(errors.NotFound("gone")), done={"READY"}, failed=set(), timeout=30,
                 describe=lambda r: r["state"], what="d", poll=0.01)


def test_sftj_progress_line_reads_loss_once_per_step():
    reads = []

    def latest():
        reads.append(1)
        return {"step": 3, "trainLoss": 1.23456}
    line = ProgressLine(latest)
    job = {"name": "accounts/a/supervisedFineTuningJobs/j", "state": "JOB_STATE_RUNNING", "epochs": 2,
           "jobProgress": {"percent": 40, "epoch": 1, "step": 3, "totalSteps": 8, "etaSeconds": 125}}
    assert line(job) == "j: RUNNING  40%  epoch 1/2  step 3/8  loss 1.2346  ETA 2m05s"
    line(job)
    assert len(reads) == 1
    done = {**job, "state": "JOB_STATE_COMPLETED", "jobProgress": {"percent": 100, "epoch": 2, "step": 8,
                                                                     "totalSteps": 8}}
    assert line(done).startswith("j: COMPLETED  100%  epoch 2/2  step 8/8  loss ") and "ETA" not in line(done)
