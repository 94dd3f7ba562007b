"""Supervised fine-tuning jobs: the state table (hypothesis) and the API against a real server."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fireplace.control.fine_tuning import states
from fireplace.errors import FailedPrecondition
from tests.conftest import BACKENDS, http, new_account, sdk, start_server, stop_server, user_key
from tests.control.helpers_resources import (expect_error, ready_addon, ready_base_model, ready_dataset,
                                             uploading_dataset)

# ---- the state table, without a server ----


class JobLife(RuleBasedStateMachine):
    """Random user verbs and worker transitions on one job: every change the table allows
    happens, every other is refused with FAILED_PRECONDITION and leaves the job as it was."""

    def __init__(self):
        super().__init__()
        self.job = SimpleNamespace(state=states.PENDING, completed_time=None, status_code="OK", status_message="")

    @rule(new_state=st.sampled_from(sorted(states.STATES)))
    def worker_moves(self, new_state):
        before = self.job.state
        if states.can_transition(before, new_state):
            states.transition(self.job, new_state)
            assert self.job.state == new_state
        else:
            with pytest.raises(FailedPrecondition):
                states.transition(self.job, new_state)
            assert self.job.state == before

    @rule(verb=st.sampled_from(["cancel", "resume"]))
    def user_verb(self, verb):
        table = states.CANCEL if verb == "cancel" else states.RESUME
        before = self.job.state
        if before in table:
            states.transition(self.job, states.verb_target(table, verb, before))
            assert self.job.state in ({states.CANCELLED, states.CANCELLING} if verb == "cancel" else {states.PENDING})
        else:
            with pytest.raises(FailedPrecondition, match=verb):
                states.verb_target(table, verb, before)
            assert self.job.state == before

    @rule()
    def delete(self):
        if self.job.state in states.DELETABLE:
            states.check_deletable(self.job.state)
        else:
            with pytest.raises(FailedPrecondition, match="cancel it first"):
                states.check_deletable(self.job.state)
            assert self.job.state in states.ACTIVE

    @invariant()
    def consistent(self):
        assert self.job.state in states.STATES
        assert (self.job.completed_time is not None) == (self.job.state in states.FINAL)


TestJobLife = JobLife.TestCase
TestJobLife.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


def test_state_table_shape():
    assert all(targets <= states.STATES for targets in states.TRANSITIONS.values())
    for final in (states.COMPLETED, states.EARLY_STOPPED, states.EXPIRED):
        assert not states.TRANSITIONS[final]
    assert states.ACTIVE.isdisjoint(states.FINAL) and states.STATES - states.DELETABLE <= states.ACTIVE
    # From every state that is not finished, some path reaches a finished state.
    for start in states.STATES - states.FINAL:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in states.TRANSITIONS[frontier.pop()] - seen:
                seen.add(nxt)
                frontier.append(nxt)
        assert seen & states.FINAL, start
    for verb in (states.CANCEL, states.RESUME):
        assert all(states.can_transition(a, b) for a, b in verb.items())


# ---- the API ----


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    """A server without the controller: jobs stay in the state the API put them in (the
    runtime — validation, workers, crashes — is tested in tests/training)."""
    srv = start_server(tmp_path_factory, request.param, extra_env={"FIREPLACE_WORKERS_ENABLED": "false"})
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def base(server) -> str:
    return ready_base_model(server)


@pytest.fixture(scope="module")
def dataset(server) -> str:
    return ready_dataset(server)


def _id(name: str) -> str:
    return name.rsplit("/", 1)[1]


UUID_LIKE = re.compile(r"^[a-z][0-9a-f]{7}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_create_defaults_get_list_cancel_resume_delete(server, admin, base, dataset):
    job = admin.supervised_fine_tuning_jobs.create(dataset=dataset, base_model=base, display_name="first")
    job_id = _id(job.name)
    assert UUID_LIKE.match(job_id) and job.name == f"accounts/{server.account_id}/supervisedFineTuningJobs/{job_id}"
    assert job.state == "JOB_STATE_CREATING" and job.status.code == "OK" and job.completed_time is None
    assert (job.dataset, job.base_model, job.warm_start_from) == (dataset, base, None)
    assert job.output_model == f"accounts/{server.account_id}/models/{job_id}"
    assert (job.epochs, job.learning_rate, job.lora_rank, job.max_context_length) == (1, 1e-4, 8, 8192)
    assert job.job_progress.percent == 0
    assert admin.supervised_fine_tuning_jobs.get(job_id).model_dump() == job.model_dump()
    assert admin.supervised_fine_tuning_jobs.get(job.name).name == job.name
    listed = admin.supervised_fine_tuning_jobs.list(filter='state="JOB_STATE_CREATING" AND display_name="first"')
    assert job.name in [j.name for j in listed]

    admin.supervised_fine_tuning_jobs.cancel(job_id, body={})
    cancelled = admin.supervised_fine_tuning_jobs.get(job_id)
    assert cancelled.state == "JOB_STATE_CANCELLED" and cancelled.completed_time is not None
    err = expect_error(400, 9, admin.supervised_fine_tuning_jobs.cancel, job_id, body={})
    assert "JOB_STATE_CANCELLED" in err.body["message"]
    resumed = admin.supervised_fine_tuning_jobs.resume(job_id, body={})
    # never validated, so it validates again before it waits for a worker
    assert resumed.state == "JOB_STATE_VALIDATING" and resumed.completed_time is None
    expect_error(400, 9, admin.supervised_fine_tuning_jobs.resume, job_id, body={})  # VALIDATING is not resumable
    admin.supervised_fine_tuning_jobs.delete(job_id)
    expect_error(404, 5, admin.supervised_fine_tuning_jobs.get, job_id)


def test_explicit_id_settings_and_warm_start(server, admin, base, dataset, unique):
    job_id, out = unique("sft"), unique("out")
    job = admin.supervised_fine_tuning_jobs.create(
        supervised_fine_tuning_job_id=job_id, dataset=_id(dataset), base_model=base, output_model=out, epochs=3,
        learning_rate=3e-4, lora_rank=16, max_context_length=512, batch_size=4096, gradient_accumulation_steps=2,
        learning_rate_warmup_steps=5, evaluation_dataset=dataset, jinja_template="{{ messages }}" * 500, nodes=1)
    assert job.name.endswith(f"/{job_id}") and job.output_model == f"accounts/{server.account_id}/models/{out}"
    assert (job.epochs, job.learning_rate, job.lora_rank, job.max_context_length, job.batch_size) == \
        (3, 3e-4, 16, 512, 4096)
    assert job.evaluation_dataset == dataset and len(job.jinja_template) == 7000
    assert job.nodes == 1 and job.wandb_config is None
    # The same output model cannot be claimed twice while this job is unfinished.
    err = expect_error(409, 6, admin.supervised_fine_tuning_jobs.create, dataset=dataset, base_model=base,
                       output_model=out)
    assert job.name in err.body["message"]
    expect_error(409, 6, admin.supervised_fine_tuning_jobs.create, supervised_fine_tuning_job_id=job_id,
                 dataset=dataset, base_model=base)
    admin.supervised_fine_tuning_jobs.delete(job_id)

    addon = ready_addon(server, base)
    warm = admin.supervised_fine_tuning_jobs.create(dataset=dataset, warm_start_from=addon)
    assert warm.warm_start_from == addon and warm.base_model is None
    admin.supervised_fine_tuning_jobs.delete(_id(warm.name))


def test_create_refusals(server, admin, base, dataset):
    jobs = admin.supervised_fine_tuning_jobs
    addon = ready_addon(server, base)
    both = expect_error(400, 3, jobs.create, dataset=dataset, base_model=base, warm_start_from=addon)
    assert "exactly one of baseModel and warmStartFrom" in both.body["message"]
    expect_error(400, 3, jobs.create, dataset=dataset)
    expect_error(400, 3, jobs.create, dataset=dataset, base_model=addon)        # an addon is not a base
    expect_error(400, 3, jobs.create, dataset=dataset, warm_start_from=base)    # a base is not an addon
    expect_error(400, 3, jobs.create, dataset=dataset + "-missing", base_model=base)
    err = expect_error(400, 9, jobs.create, dataset=uploading_dataset(server), base_model=base)
    assert "READY" in err.body["message"]
    expect_error(400, 3, jobs.create, dataset=dataset, base_model=base + "-missing")
    for bad in ({"lora_rank": 65}, {"lora_rank": 2}, {"epochs": 0}, {"learning_rate": -1.0},
                {"supervised_fine_tuning_job_id": "Bad_ID"}, {"display_name": "x" * 5000}):
        expect_error(400, 3, jobs.create, dataset=dataset, base_model=base, **bad)
    expect_error(409, 6, jobs.create, dataset=dataset, base_model=base, output_model=_id(base))  # exists
    expect_error(400, 3, jobs.create, dataset=dataset, base_model=base, output_model="accounts/other/models/x")


def test_concurrent_jobs_quota_bounds_workers_not_creates(server, admin):
    """The quota bounds how many of the account's jobs hold a training worker at once; the
    controller enforces it when it starts workers (tests/training/test_job_queue.py). Create and
    :resume are never refused for it: a job over the quota waits in PENDING."""
    account_id, key = new_account(server)
    client = sdk(server, key, account_id)
    base = ready_base_model(server, api_key=key, account_id=account_id)
    dataset = ready_dataset(server, api_key=key, account_id=account_id)
    url = f"/v1/accounts/{account_id}/quotas/concurrent-fine-tuning-jobs"
    with http(server) as c:
        r = c.patch(url, json={"maxValue": "1"})
        assert r.status_code == 200, r.text
    first = client.supervised_fine_tuning_jobs.create(dataset=dataset, base_model=base)
    second = client.supervised_fine_tuning_jobs.create(dataset=dataset, base_model=base)
    third = client.supervised_fine_tuning_jobs.create(dataset=dataset, base_model=base)
    assert {first.state, second.state, third.state} == {"JOB_STATE_CREATING"}
    client.supervised_fine_tuning_jobs.cancel(_id(first.name), body={})
    resumed = client.supervised_fine_tuning_jobs.resume(_id(first.name), body={})
    assert resumed.state == "JOB_STATE_VALIDATING"
    with http(server) as c:   # usage: jobs holding a worker (none: this server runs no controller)
        quota = c.get(url).json()
        assert (quota["usage"], quota["maxValue"]) == ("0", "1") and "PENDING" in quota["description"], quota
    for job in (first, second, third):
        client.supervised_fine_tuning_jobs.cancel(_id(job.name), body={})


def test_an_output_model_claimed_by_an_unfinished_job_cannot_be_created(server, admin, base, dataset, unique):
    out = unique("claimed")
    job = admin.supervised_fine_tuning_jobs.create(dataset=dataset, base_model=base, output_model=out)
    for model in ({"kind": "HF_PEFT_ADDON", "peftDetails": {"baseModel": base}}, {"kind": "HF_BASE_MODEL"}):
        err = expect_error(409, 6, admin.models.create, model_id=out, model=model)
        assert job.name in err.body["message"] and "outputModel" in err.body["message"]
    expect_error(404, 5, admin.models.get, out)
    admin.supervised_fine_tuning_jobs.cancel(_id(job.name), body={})   # finished: the claim ends
    admin.models.create(model_id=out, model={"kind": "HF_BASE_MODEL"})
    err = expect_error(400, 9, admin.supervised_fine_tuning_jobs.resume, _id(job.name), body={})
    assert out in err.body["message"]
    admin.supervised_fine_tuning_jobs.delete(_id(job.name))
    admin.models.delete(out)


def test_warm_start_shows_the_addon_rank_and_refuses_another(server, admin, base, dataset):
    addon = ready_addon(server, base, r=16)
    jobs = admin.supervised_fine_tuning_jobs
    warm = jobs.create(dataset=dataset, warm_start_from=addon)
    assert warm.lora_rank == 16 and jobs.get(_id(warm.name)).lora_rank == 16
    same = jobs.create(dataset=dataset, warm_start_from=addon, lora_rank=16)
    assert same.lora_rank == 16
    err = expect_error(400, 3, jobs.create, dataset=dataset, warm_start_from=addon, lora_rank=8)
    assert "loraRank 8" in err.body["message"] and "rank 16" in err.body["message"] and addon in err.body["message"]
    for job in (warm, same):
        jobs.delete(_id(job.name))


def test_isolation_and_roles(server, admin, base, dataset):
    job = admin.supervised_fine_tuning_jobs.create(dataset=dataset, base_model=base)
    account_id, key = new_account(server)
    stranger = sdk(server, key, account_id)
    theirs = expect_error(404, 5, stranger.supervised_fine_tuning_jobs.get, _id(job.name),
                          account_id=server.account_id)
    missing = expect_error(404, 5, stranger.supervised_fine_tuning_jobs.get, "no-such-job",
                           account_id=server.account_id)
    assert theirs.body["message"].replace(_id(job.name), "X") == missing.body["message"].replace("no-such-job", "X")
    expect_error(404, 5, stranger.supervised_fine_tuning_jobs.list, account_id=server.account_id)
    expect_error(404, 5, stranger.supervised_fine_tuning_jobs.cancel, _id(job.name), account_id=server.account_id,
                 body={})
    # Another account's dataset looks exactly like a missing one.
    own_base = ready_base_model(server, api_key=key, account_id=account_id)
    priv = expect_error(400, 3, stranger.supervised_fine_tuning_jobs.create, dataset=dataset, base_model=own_base)
    gone = expect_error(400, 3, stranger.supervised_fine_tuning_jobs.create, dataset=dataset + "-x",
                        base_model=own_base)
    assert priv.body["message"].replace(dataset, "D") == gone.body["message"].replace(dataset + "-x", "D")
    assert list(stranger.supervised_fine_tuning_jobs.list()) == []
    reader = sdk(server, user_key(server, "user"))
    assert reader.supervised_fine_tuning_jobs.get(_id(job.name)).name == job.name
    expect_error(403, 7, reader.supervised_fine_tuning_jobs.create, dataset=dataset, base_model=base)
    expect_error(403, 7, reader.supervised_fine_tuning_jobs.delete, _id(job.name))
    expect_error(403, 7, sdk(server, user_key(server, "inference-user")).supervised_fine_tuning_jobs.list)
    admin.supervised_fine_tuning_jobs.delete(_id(job.name))


def test_dataset_in_use_by_an_unfinished_job_cannot_be_deleted(server, admin, base):
    dataset = ready_dataset(server)
    job = admin.supervised_fine_tuning_jobs.create(dataset=dataset, base_model=base)
    err = expect_error(400, 9, admin.datasets.delete, _id(dataset))
    assert job.name in err.body["message"]
    admin.supervised_fine_tuning_jobs.cancel(_id(job.name), body={})
    admin.datasets.delete(_id(dataset))
    # Resuming a job whose dataset is gone cannot succeed.
    err = expect_error(400, 9, admin.supervised_fine_tuning_jobs.resume, _id(job.name), body={})
    assert dataset in err.body["message"]
    admin.supervised_fine_tuning_jobs.delete(_id(job.name))


def test_a_stale_etag_on_cancel_resume_or_delete_is_409_aborted(server, admin, base, dataset):
    """AIP-154 on jobs: every state change gives a new etag; :cancel, :resume (body or If-Match)
    and delete (?etag= or If-Match) based on an older one are 409 ABORTED and change nothing."""
    job_id = _id(admin.supervised_fine_tuning_jobs.create(dataset=dataset, base_model=base).name)
    url = f"/v1/accounts/{server.account_id}/supervisedFineTuningJobs/{job_id}"
    with http(server) as c:
        first = c.get(url).json()["etag"]
        assert first and first in [j.get("etag") for j in c.get(
            f"/v1/accounts/{server.account_id}/supervisedFineTuningJobs").json()["supervisedFineTuningJobs"]]
        cancelled = c.post(url + ":cancel", json={"etag": first})
        assert cancelled.status_code == 200 and cancelled.json()["etag"] != first, cancelled.text
        second = cancelled.json()["etag"]
        stale = c.post(url + ":resume", json={"etag": first})
        assert stale.status_code == 409 and stale.json()["code"] == 10, stale.text
        assert c.post(url + ":resume", json={}, headers={"If-Match": first}).status_code == 409
        assert c.get(url).json()["state"] == "JOB_STATE_CANCELLED"
        resumed = c.post(url + ":resume", json={}, headers={"If-Match": f'"{second}"'})
        assert resumed.status_code == 200 and resumed.json()["state"] == "JOB_STATE_VALIDATING", resumed.text
        third = resumed.json()["etag"]
        assert c.post(url + ":cancel", json={"etag": second}).status_code == 409
        assert c.delete(url, params={"etag": second}).status_code == 409
        assert c.delete(url, headers={"If-Match": first}).status_code == 409
        assert c.get(url).json()["etag"] == third
        assert c.delete(url, params={"etag": third}).status_code == 200
        assert c.get(url).status_code == 404


@pytest.mark.parametrize("field,value", [("wandbConfig", {"enabled": True, "project": "p"}), ("region", "US_IOWA_1"),
                                         ("awsS3Config", {"iamRoleArn": "arn:x"}), ("mtpEnabled", True),
                                         ("isTurbo", True)])
def test_unhonoured_job_fields_are_refused_by_name(server, admin, base, dataset, field, value):
    with http(server) as c:
        r = c.post(f"/v1/accounts/{server.account_id}/supervisedFineTuningJobs",
                   json={"dataset": dataset, "baseModel": base, field: value})
        assert r.status_code == 400 and r.json()["code"] == 3 and field in r.json()["message"], r.text


def test_honoured_job_fields_are_returned(server, admin, base, dataset):
    err = expect_error(400, 3, admin.supervised_fine_tuning_jobs.create, dataset=dataset, base_model=base, nodes=2)
    assert "nodes" in err.body["message"]
    job = admin.supervised_fine_tuning_jobs.create(dataset=dataset, base_model=base, nodes=1, early_stop=True,
                                                   eval_auto_carveout=True, optimizer_weight_decay=0.01)
    assert (job.nodes, job.early_stop, job.eval_auto_carveout, job.optimizer_weight_decay) == (1, True, True, 0.01)
    admin.supervised_fine_tuning_jobs.delete(_id(job.name))


def test_rename_is_the_only_update(server, admin, base, dataset):
    """PATCH (our extension): displayName changes in any state and bumps the etag; the training
    settings are refused by name; a stale etag is 409; a viewer-only role may not rename."""
    job_id = _id(admin.supervised_fine_tuning_jobs.create(dataset=dataset, base_model=base,
                                                          display_name="before").name)
    url = f"/v1/accounts/{server.account_id}/supervisedFineTuningJobs/{job_id}"
    with http(server) as c:
        etag = c.get(url).json()["etag"]
        renamed = c.patch(url, json={"displayName": "after", "etag": etag})
        assert renamed.status_code == 200 and renamed.json()["displayName"] == "after", renamed.text
        assert renamed.json()["etag"] != etag and renamed.json()["epochs"] == 1
        assert c.patch(url, json={"displayName": "again", "etag": etag}).status_code == 409
        refused = c.patch(url, json={"epochs": 3, "displayName": "x"})
        assert refused.status_code == 400 and "epochs" in refused.json()["message"], refused.text
        masked = c.patch(url, params={"updateMask": "learningRate"}, json={})
        assert masked.status_code == 400 and "learningRate" in masked.json()["message"], masked.text
        assert c.patch(url, params={"updateMask": "displayName"}, json={}).json()["displayName"] == ""
        assert c.post(url + ":cancel", json={}).status_code == 200
        assert c.patch(url, json={"displayName": "cancelled run"}).json()["state"] == "JOB_STATE_CANCELLED"
    with http(server, user_key(server, "inference-user")) as c:
        assert c.patch(url, json={"displayName": "mine"}).status_code == 403
    with http(server, new_account(server)[1]) as c:   # another account: as if missing
        assert c.patch(url, json={"displayName": "theirs"}).status_code == 404
    assert admin.supervised_fine_tuning_jobs.get(job_id).display_name == "cancelled run"
