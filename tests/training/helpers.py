"""Shared by the fine-tuning tests: the tiny model uploaded as a base model, chat datasets,
and polling a job to a state through the official SDK."""
from __future__ import annotations

import json
import time
import uuid

import httpx

from tests.conftest import sdk
from tests.control.helpers_resources import ready_dataset, upload_model
from tests.servers import Server
from tests.training.tiny_model import tiny_model_files

FINAL = {"JOB_STATE_COMPLETED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EARLY_STOPPED"}


def tiny_base(server: Server, **kw) -> str:
    """The tiny Llama (with tokenizer and chat template) as a READY HF_BASE_MODEL."""
    return upload_model(server, f"tiny-{uuid.uuid4().hex[:8]}", tiny_model_files(), {"kind": "HF_BASE_MODEL"}, **kw)


def chat_lines(n: int, *, reply: str = "ahoy matey", seed: int = 0) -> list[dict]:
    words = ["one", "two", "three", "four", "five", "six", "seven"]
    return [{"messages": [{"role": "user", "content": f"count {words[(i + seed) % 7]} {i}"},
                          {"role": "assistant", "content": f"{reply} {words[(i * 3 + seed) % 7]}"}]}
            for i in range(n)]


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def dataset(server: Server, lines: list[dict], **kw) -> str:
    return ready_dataset(server, content=jsonl(lines), **kw)


def wait_for(client, job_id: str, states: set[str], timeout: float = 180.0, *, server: Server | None = None):
    deadline = time.monotonic() + timeout
    job = client.supervised_fine_tuning_jobs.get(job_id)
    while job.state not in states:
        if job.state in FINAL:
            raise AssertionError(f"job ended {job.state}: {job.status}")
        if time.monotonic() > deadline:
            tail = server.log_text()[-3000:] if server else ""
            raise AssertionError(f"job still {job.state} ({job.status}) after {timeout}s\n{tail}")
        time.sleep(0.25)
        job = client.supervised_fine_tuning_jobs.get(job_id)
    return job


def job_list(server: Server, job_id: str, what: str, *, account_id: str | None = None, api_key: str | None = None,
             **params) -> list[dict]:
    """Every item of GET .../supervisedFineTuningJobs/{job}/{what}, following nextPageToken
    (in the server's first account unless account_id and its api_key are given)."""
    key = what
    items, token = [], ""
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {api_key or server.api_key}"},
                      timeout=30) as c:
        while True:
            r = c.get(f"/v1/accounts/{account_id or server.account_id}/supervisedFineTuningJobs/{job_id}/{what}",
                      params={**params, **({"pageToken": token} if token else {})})
            assert r.status_code == 200, r.text
            body = r.json()
            items += body.get(key, [])
            token = body.get("nextPageToken", "")
            if not token:
                return items


def job_id_of(job) -> str:
    return job.name.rsplit("/", 1)[1]


__all__ = ["tiny_base", "chat_lines", "dataset", "wait_for", "job_list", "job_id_of", "sdk"]
