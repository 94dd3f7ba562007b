"""The whole loop from the shell, as the README shows it: create a dataset, fine-tune the bundled
SmolLM2 with `create sftj --wait` (live progress), read its metrics, deploy the base model with
`--wait`, `load-lora --wait` the tuned addon, chat with it, and clean up."""
from __future__ import annotations

import httpx
import pytest

from tests.cli.helpers import Cli
from tests.cli.serving import BUNDLED, route_exists
from tests.control.helpers_resources import chat_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loop_cli(serving_server, tmp_path_factory):
    srv = serving_server
    if not route_exists(srv, f"/v1/accounts/{srv.account_id}/supervisedFineTuningJobs/probe/metrics", "GET"):
        pytest.skip("fine-tuning metrics are not served yet (fine-tuning not in this tree)")
    return Cli(srv, tmp_path_factory.mktemp("loop-login") / "credentials")


def test_dataset_to_chat_with_the_tuned_addon(loop_cli, tmp_path):
    cli = loop_cli
    data = tmp_path / "train.jsonl"
    data.write_bytes(chat_jsonl())
    dataset = cli.json("create", "dataset", "loop-chats", str(data))
    assert dataset["state"] == "READY"

    trained = cli.run("create", "sftj", "--dataset", "loop-chats", "--base-model", BUNDLED,
                      "--output-model", "loop-lora", "--job-id", "loop-job", "--epochs", "1", "--lora-rank", "4",
                      "--max-context-length", "256", "--wait", "--wait-timeout", "20m", "-o", "json")
    assert "loop-job: RUNNING" in trained.stderr and "step " in trained.stderr
    job = cli.json("get", "sftj", "loop-job")
    assert job["state"] == "JOB_STATE_COMPLETED" and job["jobProgress"]["percent"] == 100
    metrics = cli.json("get", "sftj", "loop-job", "--metrics")
    assert metrics and any("loss" in key.lower() for key in metrics[0])
    assert "STEP" in cli.run("get", "sftj", "loop-job", "--metrics").stdout.upper()
    assert any(ch in cli.run("get", "sftj", "loop-job", "--metrics", "--chart").stdout for ch in "▁▂▃▄▅▆▇█")
    addon = cli.json("get", "model", "loop-lora")
    assert addon["state"] == "READY" and addon["kind"] == "HF_PEFT_ADDON"

    deployed = cli.run("create", "deployment", BUNDLED, "--deployment-id", "loop", "--enable-addons",
                       "--min-replica-count", "1", "--max-replica-count", "1", "--wait", "--wait-timeout", "10m",
                       "-o", "json")
    assert "loop: CREATING" in deployed.stderr
    assert cli.json("get", "deployment", "loop")["state"] == "READY"

    loaded = cli.run("load-lora", "loop-lora", "--deployment", "loop", "--wait", "--wait-timeout", "5m", "-o", "json")
    assert "loop-lora on loop: DEPLOYED" in loaded.stderr
    question = "What is 2+2?"
    answer = cli.run("chat", "loop-lora", "-m", question, "--temperature", "0", "--max-tokens", "8").stdout
    r = httpx.post(cli.server.base_url + "/v1/chat/completions", timeout=300,
                   headers={"Authorization": f"Bearer {cli.server.api_key}"},
                   json={"model": addon["name"], "messages": [{"role": "user", "content": question}],
                         "temperature": 0, "max_tokens": 8})
    assert r.status_code == 200, r.text
    assert answer == r.json()["choices"][0]["message"]["content"] + "\n" and answer.strip()

    cli.run("unload-lora", "loop-lora", "--deployment", "loop")
    cli.run("delete", "deployment", "loop", "--hard")
    cli.run("get", "deployment", "loop", expect=4)
