"""Training options through real jobs (`fireplace serve` on SQLite, the official SDK, the tiny
random Llama): jobProgress moving during a run, evaluation (evalAutoCarveout and
evaluationDataset: evalLoss each epoch, EVAL events) with earlyStop, and warmStartFrom
continuing an addon's training (its first loss near its parent's last, at the addon's rank)."""
from __future__ import annotations

import time

import pytest

from tests.conftest import ADMIN_KEY, sdk
from tests.servers import Server
from tests.training.helpers import chat_lines, dataset, job_id_of, job_list, tiny_base, wait_for

DONE = {"JOB_STATE_COMPLETED", "JOB_STATE_EARLY_STOPPED"}
SLOW_JOB, STEP_PAUSE_S = "slow-steps", 0.4   # its worker sleeps after each step (fault injection)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(home=tmp_path_factory.mktemp("fp-options"), backend="sqlite", api_key=ADMIN_KEY,
                 extra_env={"FIREPLACE_SERVING_RECONCILE_INTERVAL_S": "0.5",
                            "FIREPLACE_TRAINING_FAULT": f"each-step:{SLOW_JOB}:{STEP_PAUSE_S}"}).start()
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


@pytest.fixture(scope="module")
def parent(server, client, base, data):
    """A finished job with a held-out 10% (evalAutoCarveout) and earlyStop."""
    job = client.supervised_fine_tuning_jobs.create(
        dataset=data, base_model=base, epochs=3, batch_size=48, learning_rate=5e-3, lora_rank=4,
        learning_rate_warmup_steps=3, eval_auto_carveout=True, early_stop=True, extra_body={"seed": 4})
    return wait_for(client, job_id_of(job), DONE, 180, server=server)


def epochs_of(metrics: list[dict]) -> list[list[dict]]:
    out: dict[int, list[dict]] = {}
    for m in metrics:
        out.setdefault(m["epoch"], []).append(m)
    return [out[e] for e in sorted(out)]


def assert_eval_each_epoch_and_the_stop_rule(server: Server, job) -> list[float]:
    """evalLoss on each epoch's last step and an EVAL event per epoch; the job stopped after the
    first epoch whose eval loss was not below the best before it (earlyStop), else ran them all."""
    job_id = job_id_of(job)
    per_epoch = epochs_of(job_list(server, job_id, "metrics"))
    losses = [e[-1].get("evalLoss") for e in per_epoch]
    assert all(loss is not None for loss in losses) and all(m.get("evalLoss") is None for e in per_epoch
                                                              for m in e[:-1])
    events = [e for e in job_list(server, job_id, "events") if e["type"] == "EVAL"]
    epoch_events = [e for e in events if e["message"].startswith("epoch ")]
    assert [e["data"]["epoch"] for e in epoch_events] == list(range(1, len(losses) + 1))
    assert [e["data"]["evalLoss"] for e in epoch_events] == pytest.approx(losses)
    first_worse = next((i for i in range(1, len(losses)) if losses[i] >= min(losses[:i])), None)
    if first_worse is not None and first_worse < job.epochs - 1:
        assert job.state == "JOB_STATE_EARLY_STOPPED" and len(losses) == first_worse + 1
        assert any(e["message"].startswith(f"early stop after epoch {first_worse + 1}") for e in events)
    else:
        assert job.state == "JOB_STATE_COMPLETED" and len(losses) == job.epochs
    return losses


def test_job_progress_moves_while_the_job_runs(server, client, base, data):
    """Each step of this job takes STEP_PAUSE_S longer, so the run spans several heartbeats."""
    jobs = client.supervised_fine_tuning_jobs
    job = jobs.create(supervised_fine_tuning_job_id=SLOW_JOB, dataset=data, base_model=base, batch_size=48,
                      lora_rank=4)
    seen, deadline = [], time.monotonic() + 180
    while job.state not in DONE | {"JOB_STATE_FAILED"} and time.monotonic() < deadline:
        if job.state == "JOB_STATE_RUNNING":
            seen.append(dict(job.job_progress.model_dump(by_alias=True, exclude_none=True),
                             **(job.job_progress.model_extra or {})))
        time.sleep(0.5)
        job = jobs.get(SLOW_JOB)
    job = wait_for(client, SLOW_JOB, {"JOB_STATE_COMPLETED"}, 10, server=server)
    steps = [p.get("step", 0) for p in seen]
    assert len(set(steps)) >= 3, seen                 # heartbeats publish progress every few seconds
    assert steps == sorted(steps)
    assert [p["percent"] for p in seen] == sorted(p["percent"] for p in seen)
    assert [p.get("inputTokens", 0) for p in seen] == sorted(p.get("inputTokens", 0) for p in seen)
    moving = [p for p in seen if p.get("step")]
    assert moving and all(p["totalSteps"] == job.job_progress.model_extra["totalSteps"] for p in moving)
    assert all(0 <= p["percent"] < 100 and p["etaSeconds"] >= 0 for p in moving)
    assert any(p["etaSeconds"] > 0 for p in moving) and any(p["percent"] > 0 for p in moving)
    assert job.job_progress.percent == 100


def test_eval_auto_carveout_reports_eval_loss_each_epoch(server, parent):
    job = parent
    validation = [e for e in job_list(server, job_id_of(job), "events") if e["type"] == "VALIDATION"][0]
    assert (validation["data"]["examples"], validation["data"]["evalExamples"]) == (22, 2)   # 10% held out
    losses = assert_eval_each_epoch_and_the_stop_rule(server, job)
    assert losses[0] > 0
    assert [c["metrics"].get("evalLoss") for c in job_list(server, job_id_of(job), "checkpoints")][-1] == \
        pytest.approx(losses[-1])


def test_evaluation_dataset_and_early_stop(server, client, base, data):
    """learningRate 1e-12 moves no weight far enough to change a float32 logit: the eval loss
    cannot improve after the first epoch, so earlyStop must end the job after the second."""
    eval_data = dataset(server, chat_lines(6, reply="the quick brown fox", seed=3))
    job = client.supervised_fine_tuning_jobs.create(
        dataset=data, base_model=base, evaluation_dataset=eval_data, epochs=4, batch_size=128,
        learning_rate=1e-12, lora_rank=4, early_stop=True)
    job = wait_for(client, job_id_of(job), DONE, 180, server=server)
    losses = assert_eval_each_epoch_and_the_stop_rule(server, job)
    assert job.state == "JOB_STATE_EARLY_STOPPED" and len(losses) == 2 and losses[1] >= losses[0]
    model = client.models.get(job.output_model.rsplit("/", 1)[1])
    assert (model.state, model.fine_tuning_job) == ("READY", job.name)


def test_warm_start_continues_from_the_parent_addon(server, client, parent, data):
    job = parent
    parent_losses = [m["trainLoss"] for m in job_list(server, job_id_of(job), "metrics")]
    warm = client.supervised_fine_tuning_jobs.create(dataset=data, warm_start_from=job.output_model, epochs=1,
                                                     batch_size=48, learning_rate=5e-3, extra_body={"seed": 4})
    assert warm.lora_rank == 4 and warm.base_model is None   # the addon's rank, not the default 8
    warm = wait_for(client, job_id_of(warm), DONE, 180, server=server)
    warm_losses = [m["trainLoss"] for m in job_list(server, job_id_of(warm), "metrics")]
    k = 5
    parent_first, parent_last = sum(parent_losses[:k]) / k, sum(parent_losses[-k:]) / k
    warm_first = sum(warm_losses[:k]) / k
    learned = parent_first - parent_last
    assert learned > 0.2, parent_losses
    assert abs(warm_first - parent_last) < learned / 3, (parent_first, parent_last, warm_first)
    model = client.models.get(warm.output_model.rsplit("/", 1)[1])
    assert model.peft_details.r == 4 and model.peft_details.base_model == job.base_model
