"""One fine-tuning job end to end on PostgreSQL (the SQLite runs are tests/training/test_jobs_e2e.py):
its worker killed with SIGKILL mid-run, the job resumed by a new worker from the last
checkpoint, completed with the adapter of an uninterrupted run, and its output registered once.
PostgreSQL's row locks (worker fencing, the account lock at start) are real here."""
from __future__ import annotations

import pytest
from safetensors.torch import load_file

from tests.conftest import start_server, stop_server, sdk
from tests.training.helpers import chat_lines, dataset, job_list, tiny_base, wait_for
from tests.training.test_jobs_e2e import (_wait_checkpoint, assert_same_adapter, kill_worker, output_dir,
                                          reference_adapter)

JOB = "pg-kill-mid-run"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "postgres", extra_env={
        "FIREPLACE_TRAINING_FAULT": f"after-first-checkpoint:{JOB}:8",
        "FIREPLACE_SERVING_RECONCILE_INTERVAL_S": "0.5"})
    yield srv
    stop_server(srv)


def test_job_on_postgres_survives_kill9_and_registers_its_output_once(server):
    client = sdk(server)
    interval = 4
    job = client.supervised_fine_tuning_jobs.create(
        supervised_fine_tuning_job_id=JOB, dataset=dataset(server, chat_lines(24)), base_model=tiny_base(server),
        epochs=2, batch_size=64, learning_rate=3e-3, lora_rank=4,
        extra_body={"checkpointIntervalSteps": interval, "seed": 5})
    _wait_checkpoint(server, JOB, interval)
    kill_worker(job.name)
    job = wait_for(client, JOB, {"JOB_STATE_COMPLETED"}, 240, server=server)
    events = job_list(server, JOB, "events")
    assert len([e for e in events if e["type"] == "RESTART"]) == 1
    assert [e["data"]["step"] for e in events if e["type"] == "RESUME"] == [interval]
    assert len([e for e in events if e["type"] == "OUTPUT"]) == 1
    total = job.job_progress.model_extra["totalSteps"]
    assert [m["step"] for m in job_list(server, JOB, "metrics")] == list(range(1, total + 1))
    got = load_file(str(output_dir(server, job.output_model) / "adapter_model.safetensors"))
    assert_same_adapter(got, reference_adapter(server, job))
    model = client.models.get(job.output_model.rsplit("/", 1)[1])
    assert (model.state, model.kind, model.fine_tuning_job) == ("READY", "HF_PEFT_ADDON", job.name)
