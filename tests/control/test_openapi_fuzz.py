"""Schemathesis over /openapi.json against a real server, every control-plane operation, with
all checks (server errors, documented statuses, bodies and headers, schema-valid data
accepted and invalid data refused, Allow on 405, undeclared methods, auth ignored nowhere,
use-after-free and resource availability through the spec's links), a fixed seed, on SQLite
and PostgreSQL. Inference paths belong to the gateway's own tests.

The tool is given what it cannot invent: the account to act in (a fresh one, so deleting it
or its users locks nobody out) and the IDs of resources that exist there (each used for most,
not all, generated cases), so operations reach their handlers instead of answering 404 for a
made-up account. Every operation must be tested, and every one must get an answer other than
404 at least once. The server runs without the controller: the deployments it creates start
no replicas. Bounded: a few examples per operation, one worker, --max-time for the run."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from tests.conftest import BACKENDS, http, new_account, sdk
from tests.control.helpers_resources import (ready_addon, ready_base_model, ready_dataset, uploading_dataset,
                                             uploading_model)

CONFIG = Path(__file__).with_name("schemathesis.toml")
CONTROL_PLANE = r"^/(v1/accounts|v1/uploads|v1/downloads|healthz|readyz)"
MAX_TIME_S = 75
METHODS = {"get", "put", "post", "patch", "delete"}


def _seed(server) -> tuple[str, dict[str, list[str]]]:
    """A fresh account holding one resource of every kind; returns (account id, path parameter
    -> IDs that exist). An anchor dataset whose ID the tool never learns keeps the account
    from being deleted mid-run."""
    account_id, key = new_account(server)
    client = sdk(server, key, account_id)
    uploading_dataset(server, f"anchor-{uuid.uuid4().hex[:12]}", api_key=key, account_id=account_id)
    base = ready_base_model(server, "fz-base", api_key=key, account_id=account_id)
    addon = ready_addon(server, base, "fz-lora", api_key=key, account_id=account_id)
    uploading = uploading_model(server, "fz-upload", api_key=key, account_id=account_id)
    dataset = ready_dataset(server, "fz-data", api_key=key, account_id=account_id)
    pending = uploading_dataset(server, "fz-pending", api_key=key, account_id=account_id)
    deployment = client.deployments.create(base_model=base, deployment_id="fz-dep", enable_addons=True).name
    loaded = client.lora.load(model=addon, deployment=deployment).name
    job = client.supervised_fine_tuning_jobs.create(dataset=dataset, base_model=base).name
    with http(server, key) as c:
        admin_user = c.get(f"/v1/accounts/{account_id}/users").json()["users"][0]["name"]
        user = c.post(f"/v1/accounts/{account_id}/users", params={"userId": "fz-user"},
                      json={"role": "contributor", "email": "fz-user@example.com"}).json()["name"]
        api_key = c.post(f"/v1/{user}/apiKeys", json={"apiKey": {}}).json()["name"]
    last = lambda name: name.rsplit("/", 1)[1]   # noqa: E731
    return account_id, {
        "model_ref": [last(base), last(addon), last(uploading)],
        "dataset_id": [last(dataset), last(pending)],
        "deployment_id": [last(deployment)],
        "deployed_model_id": [last(loaded)],
        "job_id": [last(job)],
        "user_id": [last(admin_user), last(user)],
        "key_id": [last(api_key)],
        "quota_id": ["deployments", "replicas", "loaded-addons", "dataset-bytes"],
    }


def _config(tmp_path: Path, account_id: str, ids: dict[str, list[str]]) -> Path:
    """tests/control/schemathesis.toml plus the account and the existing IDs."""
    lines = [CONFIG.read_text(), "", "[parameters]", f'"path.account_id" = "{account_id}"']
    lines += [f'"path.{name}" = {{ dictionary = "{name}", probability = 0.9 }}' for name in ids]
    for name, values in ids.items():
        lines += ["", f"[dictionaries.{name}]", "values = " + json.dumps(values)]
    path = tmp_path / "schemathesis.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _operations(spec: dict) -> set[str]:
    return {f"{method.upper()} {path}" for path, item in spec["paths"].items() if re.match(CONTROL_PLANE, path)
            for method in item if method in METHODS}


def _statuses(ndjson: Path) -> dict[str, set[int]]:
    """Operation label -> the statuses its own method got (not the undeclared-method probes)."""
    seen: dict[str, set[int]] = defaultdict(set)
    with ndjson.open() as events:
        for line in events:
            if not line.startswith('{"ScenarioFinished"'):
                continue
            recorder = json.loads(line)["ScenarioFinished"]["recorder"]
            label = recorder.get("label", "")
            for interaction in (recorder.get("interactions") or {}).values():
                request, response = interaction.get("request") or {}, interaction.get("response")
                if response is None:
                    continue
                if request.get("method", "").upper() == label.partition(" ")[0]:
                    seen[label].add(response["status_code"])
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_schemathesis_finds_no_failures(fresh_server, backend, tmp_path):
    server = fresh_server(backend, extra_env={"FIREPLACE_WORKERS_ENABLED": "false"})
    account_id, ids = _seed(server)
    config = _config(tmp_path, account_id, ids)
    junit, ndjson = tmp_path / "junit.xml", tmp_path / "events.ndjson"
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run",
           f"{server.base_url}/openapi.json", "-H", f"Authorization: Bearer {server.api_key}",
           "--checks", "all", "--include-path-regex", CONTROL_PLANE,
           "--max-examples", "5", "--seed", "20261125", "--phases", "examples,coverage,fuzzing,stateful",
           "--no-shrink", "--no-color", "--workers", "1", "--request-timeout", "30", "--max-time", str(MAX_TIME_S),
           "--report", "junit,ndjson", "--report-junit-path", str(junit), "--report-ndjson-path", str(ndjson)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert junit.exists(), out
    cases = list(ET.parse(junit).iter("testcase"))
    failures = [(case.get("name"), f.get("message") or (f.text or "")[:800]) for case in cases
                for f in case.findall("failure")]
    assert not failures, "\n".join(f"{name}: {msg}" for name, msg in failures) + out
    errors = [(case.get("name"), (e.get("message") or e.text or "")[:300]) for case in cases for e in case.findall("error")]
    assert not errors, errors
    # every control-plane operation was exercised, and each reached its handler at least once
    operations = _operations(httpx.get(f"{server.base_url}/openapi.json").json())
    assert {case.get("name") for case in cases} >= operations, sorted(operations - {c.get("name") for c in cases})
    statuses = _statuses(ndjson)
    only_404 = sorted(op for op in operations if statuses.get(op, {404}) <= {404})
    assert not only_404, (only_404, {op: sorted(statuses.get(op, ())) for op in only_404})
    assert "Stateful" in proc.stdout and "API Links:    0 covered" not in proc.stdout, out
    log = server.log_text()
    assert "Internal Server Error" not in log and "unhandled error on" not in log, log[-3000:]


def test_the_spec_links_each_create_to_its_resource(server):
    """OpenAPI links: a create's response names the operations on what it created, with the
    new resource's name as the item segment (every item segment takes a full name)."""
    spec = httpx.get(f"{server.base_url}/openapi.json").json()
    links = spec["paths"]["/v1/accounts/{account_id}/models"]["post"]["responses"]["200"]["links"]
    targets = {(path, method) for path, item in spec["paths"].items() for method, op in item.items()
               if isinstance(op, dict) and op.get("operationId") in links}
    assert ("/v1/accounts/{account_id}/models/{model_ref}", "get") in targets
    assert ("/v1/accounts/{account_id}/models/{model_ref}", "delete") in targets
    link = next(iter(links.values()))
    assert link["parameters"] == {"model_ref": "$response.body#/name", "account_id": "$request.path.account_id"}
    for collection in ("users", "datasets", "deployments", "deployedModels", "supervisedFineTuningJobs"):
        assert spec["paths"][f"/v1/accounts/{{account_id}}/{collection}"]["post"]["responses"]["200"].get("links")
    assert spec["paths"]["/v1/accounts"]["post"]["responses"]["200"].get("links")
