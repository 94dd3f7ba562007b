"""Fine-tuning jobs end to end against a real `fireplace serve` (SQLite), with the official
fireworks-ai SDK: lifecycle and observability, validation failures, cancel/resume, a worker
killed with SIGKILL mid-run and in WRITING_RESULTS. The base model is the tiny random Llama
(tests/training/tiny_model.py), so each job takes seconds of compute."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ADMIN_KEY, sdk
from tests.servers import Server
from tests.training.helpers import chat_lines, dataset, job_id_of, job_list, tiny_base, wait_for

REGISTER_ONCE_JOB = "register-once"
KILL_JOB, CANCEL_JOB = "kill-mid-run", "cancel-mid-run"
PAUSE_S = 8
# The tiny model trains a whole job in about a second: the workers of the kill and cancel tests
# pause after their first checkpoint so the kill or cancel lands mid-run, not after the end.
FAULTS = ",".join([f"before-register:{REGISTER_ONCE_JOB}:{PAUSE_S}",
                   f"after-first-checkpoint:{KILL_JOB}:{PAUSE_S}",
                   f"after-first-checkpoint:{CANCEL_JOB}:5"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(home=tmp_path_factory.mktemp("fp-train"), backend="sqlite", api_key=ADMIN_KEY,
                 extra_env={"FIREPLACE_TRAINING_FAULT": FAULTS}).start()
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


def worker_pids(job_name: str) -> list[int]:
    """`fireplace train --job NAME` processes (children of the server's executor)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"train" in argv and job_name.encode() in argv:
            pids.append(int(entry.name))
    return pids


def kill_worker(job_name: str) -> None:
    pids = worker_pids(job_name)
    assert pids, f"no worker process for {job_name}"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def output_dir(server: Server, model_name: str) -> Path:
    _, account, _, model = model_name.split("/")
    return server.home / "blobs" / "models" / account / model


def reference_adapter(server: Server, job) -> dict[str, torch.Tensor]:
    """The same job trained uninterrupted in this process, from the job's own stored examples."""
    from fireplace.storage import BlobStore
    from fireplace.training.example_store import read_examples
    from fireplace.training.hyperparams import from_spec
    from fireplace.training.trainer import Trainer

    blobs = BlobStore(str(server.home / "blobs"))
    account, job_id = job.name.split("/")[1], job_id_of(job)
    spec = {k: v for k, v in job.model_dump(by_alias=True).items() if v is not None}
    spec.update(job.model_extra or {})
    trainer = Trainer(from_spec(spec), output_dir(server, job.base_model), read_examples(blobs, account, job_id, "train"))
    trainer.run()
    from safetensors.torch import load
    return load(trainer.adapter_files()["adapter_model.safetensors"])


def assert_same_adapter(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    assert max(float((got[k] - want[k]).abs().max()) for k in got) <= 1e-5


def test_job_lifecycle_observability_and_output(server, client, base):
    long_reply = "the quick brown fox " * 30
    lines = chat_lines(12) + [{"messages": [{"role": "user", "content": "tell me"},
                                            {"role": "assistant", "content": long_reply}]}]
    ds = dataset(server, lines)
    job = client.supervised_fine_tuning_jobs.create(
        dataset=ds, base_model=base, epochs=2, batch_size=96, learning_rate=5e-3, lora_rank=4,
        max_context_length=64, display_name="lifecycle", extra_body={"checkpointIntervalSteps": 3, "seed": 11})
    assert job.state == "JOB_STATE_CREATING" and job.job_progress.percent == 0
    job = wait_for(client, job_id_of(job), {"JOB_STATE_COMPLETED"}, server=server)
    job_id = job_id_of(job)
    progress = job.job_progress.model_extra
    assert job.job_progress.percent == 100 and progress["step"] == progress["totalSteps"] > 3
    assert job.job_progress.input_tokens > 0 and job.completed_time is not None
    assert job.status.code == "OK" and job.output_model in job.status.message

    events = job_list(server, job_id, "events", pageSize=2)
    states = [e["message"] for e in events if e["type"] == "STATE" and e["message"].startswith("JOB_STATE_")]
    assert states == ["JOB_STATE_CREATING", "JOB_STATE_VALIDATING", "JOB_STATE_PENDING", "JOB_STATE_RUNNING",
                      "JOB_STATE_WRITING_RESULTS", "JOB_STATE_COMPLETED"]
    truncation = [e for e in events if e["level"] == "WARNING" and "truncated" in e["message"]]
    assert len(truncation) == 1 and "1 examples are longer than maxContextLength=64" in truncation[0]["message"]
    assert "line 13" in truncation[0]["message"]
    assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)

    metrics = job_list(server, job_id, "metrics", pageSize=3)
    assert [m["step"] for m in metrics] == list(range(1, progress["totalSteps"] + 1))
    assert all(m["tokens"] > 0 and m["tokensPerSecond"] > 0 and m["learningRate"] > 0 for m in metrics)
    assert metrics[-1]["trainLoss"] < metrics[0]["trainLoss"]
    checkpoints = job_list(server, job_id, "checkpoints")
    assert [c["step"] for c in checkpoints] == [s for s in range(3, progress["totalSteps"], 3)] + \
        [progress["totalSteps"]]
    assert checkpoints[-1]["isFinal"] and "trainLoss" in checkpoints[0]["metrics"]
    assert [c["step"] for c in job.model_extra["checkpoints"]] == [c["step"] for c in checkpoints]

    model = client.models.get(job.output_model.rsplit("/", 1)[1])
    assert (model.kind, model.state, model.fine_tuning_job) == ("HF_PEFT_ADDON", "READY", job.name)
    assert model.peft_details.base_model == base and model.peft_details.r == 4
    assert sorted(model.peft_details.target_modules) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                                         "up_proj", "v_proj"]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    tiny = AutoModelForCausalLM.from_pretrained(str(output_dir(server, base)))
    PeftModel.from_pretrained(tiny, str(output_dir(server, job.output_model)))

    # Delete: the job, its checkpoints and records go; its output model stays.
    blobs = server.home / "blobs"
    assert (blobs / "checkpoints" / server.account_id / job_id).is_dir()
    client.supervised_fine_tuning_jobs.delete(job_id)
    with pytest.raises(Exception):
        client.supervised_fine_tuning_jobs.get(job_id)
    assert not (blobs / "checkpoints" / server.account_id / job_id).exists()
    assert client.models.get(job.output_model.rsplit("/", 1)[1]).state == "READY"


def test_dataset_that_cannot_train_fails_with_an_actionable_status(server, client, base):
    lines = [{"messages": [{"role": "user", "content": "the quick brown fox " * 20},
                           {"role": "assistant", "content": "ok"}]} for _ in range(3)]
    job = client.supervised_fine_tuning_jobs.create(dataset=dataset(server, lines), base_model=base,
                                                    max_context_length=16)
    job = _wait_failed(client, job_id_of(job), server)
    assert job.status.code == "INVALID_ARGUMENT"
    assert "all 3 examples" in job.status.message and "maxContextLength=16" in job.status.message
    assert "line 1" in job.status.message
    events = job_list(server, job_id_of(job), "events", filter='level="ERROR"')
    assert len(events) == 1 and "maxContextLength=16" in events[0]["message"]


def _wait_failed(client, job_id: str, server: Server, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.supervised_fine_tuning_jobs.get(job_id)
        if job.state == "JOB_STATE_FAILED":
            return job
        assert job.state in ("JOB_STATE_CREATING", "JOB_STATE_VALIDATING"), job.state
        time.sleep(0.25)
    raise AssertionError("job did not fail in time")


def _wait_checkpoint(server: Server, job_id: str, min_step: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [c["step"] for c in job_list(server, job_id, "checkpoints")]
        if steps and max(steps) >= min_step:
            return max(steps)
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at step >= {min_step} in time:\n{server.log_text()[-2000:]}")


def test_kill9_worker_mid_run_resumes_to_the_same_adapter(server, client, base, data):
    interval = 4
    job = client.supervised_fine_tuning_jobs.create(
        supervised_fine_tuning_job_id=KILL_JOB, dataset=data, base_model=base, epochs=2, batch_size=64,
        learning_rate=3e-3, lora_rank=4, extra_body={"checkpointIntervalSteps": interval, "seed": 5})
    job_id = job_id_of(job)
    last_ckpt = _wait_checkpoint(server, job_id, interval)
    step_at_kill = client.supervised_fine_tuning_jobs.get(job_id).job_progress.model_extra.get("step", 0)
    kill_worker(job.name)
    job = wait_for(client, job_id, {"JOB_STATE_COMPLETED"}, 240, server=server)
    events = job_list(server, job_id, "events")
    restarts = [e for e in events if e["type"] == "RESTART"]
    resumes = [e for e in events if e["type"] == "RESUME"]
    assert len(restarts) == 1 and "exited with code -9" in restarts[0]["message"]
    assert len(resumes) == 1
    resumed_from = resumes[0]["data"]["step"]
    assert resumed_from >= last_ckpt and max(0, step_at_kill - resumed_from) <= interval
    total = job.job_progress.model_extra["totalSteps"]
    assert [m["step"] for m in job_list(server, job_id, "metrics")] == list(range(1, total + 1))
    got = load_file(str(output_dir(server, job.output_model) / "adapter_model.safetensors"))
    assert_same_adapter(got, reference_adapter(server, job))


def test_cancel_then_resume_continues_from_the_checkpoint(server, client, base, data):
    job = client.supervised_fine_tuning_jobs.create(
        supervised_fine_tuning_job_id=CANCEL_JOB, dataset=data, base_model=base, epochs=2, batch_size=64,
        learning_rate=3e-3, lora_rank=4, extra_body={"checkpointIntervalSteps": 3, "seed": 9})
    job_id = job_id_of(job)
    ckpt = _wait_checkpoint(server, job_id, 3)
    cancelled_at = time.monotonic()
    client.supervised_fine_tuning_jobs.cancel(job_id, body={})
    assert client.supervised_fine_tuning_jobs.get(job_id).state in ("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED")
    job = wait_for(client, job_id, {"JOB_STATE_CANCELLED"}, 30, server=server)
    assert time.monotonic() - cancelled_at < 15
    assert not worker_pids(job.name)
    ckpt = max(c["step"] for c in job_list(server, job_id, "checkpoints"))
    assert f"step {ckpt}" in job.status.message
    client.supervised_fine_tuning_jobs.resume(job_id, body={})
    job = wait_for(client, job_id, {"JOB_STATE_COMPLETED"}, 240, server=server)
    resumes = [e for e in job_list(server, job_id, "events") if e["type"] == "RESUME"]
    assert [e["data"]["step"] for e in resumes if "attempt" in e["data"]] == [ckpt]
    total = job.job_progress.model_extra["totalSteps"]
    assert [m["step"] for m in job_list(server, job_id, "metrics")] == list(range(1, total + 1))
    got = load_file(str(output_dir(server, job.output_model) / "adapter_model.safetensors"))
    assert_same_adapter(got, reference_adapter(server, job))


def test_worker_killed_in_writing_results_registers_the_model_once(server, client, base, data):
    job = client.supervised_fine_tuning_jobs.create(
        supervised_fine_tuning_job_id=REGISTER_ONCE_JOB, dataset=data, base_model=base, batch_size=256,
        lora_rank=4)
    wait_for(client, REGISTER_ONCE_JOB, {"JOB_STATE_WRITING_RESULTS"}, 180, server=server)
    deadline = time.monotonic() + 30  # the worker is paused just before registering (fault injection)
    while not (output_dir(server, job.output_model) / "adapter_model.safetensors").exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    kill_worker(job.name)
    job = wait_for(client, REGISTER_ONCE_JOB, {"JOB_STATE_COMPLETED"}, 120, server=server)
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.api_key}"}) as c:
        models = c.get(f"/v1/accounts/{server.account_id}/models", params={"pageSize": 200}).json()["models"]
    made = [m for m in models if m.get("fineTuningJob") == job.name]
    assert [m["name"] for m in made] == [job.output_model] and made[0]["state"] == "READY"
    events = job_list(server, REGISTER_ONCE_JOB, "events")
    assert len([e for e in events if e["type"] == "OUTPUT"]) == 1
    assert len([e for e in events if e["type"] == "RESTART"]) == 1
    assert json.loads((output_dir(server, job.output_model) / "adapter_config.json").read_text())["r"] == 4
