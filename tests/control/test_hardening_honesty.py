"""Issue 11, classes 7 and 8: what Fireplace does not implement says so (501, or a 400 naming
the field), readMask is refused rather than ignored, and soft-deleted deployments are purged
by the background purger, never by a read."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import fireworks
import pytest
from sqlalchemy import create_engine, text

from fireplace.serving.precision import replica_precision, server_has_cuda
from tests.conftest import BACKENDS, http, sdk
from tests.control.helpers_resources import expect_error, ready_base_model


def _sdk_calls(client):
    return [
        lambda: client.batch_inference_jobs.list(),
        lambda: client.secrets.create(key_name="k", name="n", value="v"),
        lambda: client.evaluators.list(),
        lambda: client.dpo_jobs.get("job-1"),
        lambda: client.reinforcement_fine_tuning_jobs.list(),
        lambda: client.deployment_shapes.list(),
        lambda: client.evaluation_jobs.list(),
    ]


def test_sdk_resources_not_served_answer_501(server):
    client = sdk(server)
    for call in _sdk_calls(client):
        with pytest.raises(fireworks.APIStatusError) as info:
            call()
        assert info.value.status_code == 501 and info.value.body["code"] == 12, info.value.body
    with http(server) as c:
        assert c.get(f"/v1/accounts/{server.account_id}/noSuchThings").status_code == 404
        assert c.get("/v1/accounts/x/secrets", headers={"Authorization": "Bearer fw_bad"}).status_code == 401
        # the inference endpoints are not shadowed
        assert c.post("/v1/chat/completions", json={"model": "m", "messages": []}).status_code != 501


@pytest.fixture(scope="module")
def base(server):
    return ready_base_model(server)


@pytest.mark.parametrize("field,value", [
    ("expireTime", "2030-01-01T00:00:00Z"), ("region", "US_IOWA_1"),
    ("draftModel", "accounts/fireplace/models/x"), ("enableMtp", True),
    # stored and echoed before, read by nothing in orchestration/ or gateway/:
    ("acceleratorType", "NVIDIA_H100_80GB"), ("acceleratorCount", 2), ("deploymentShape", "accounts/a/x"),
    ("enableSessionAffinity", True), ("autoscalingPolicy", {"scaleToZeroWindow": "600s"}),
    ("autoscalingPolicy", {"loadTargets": {"default": 0.8}})])
def test_unhonoured_deployment_fields_are_refused_by_name(server, base, field, value):
    with http(server) as c:
        r = c.post(f"/v1/accounts/{server.account_id}/deployments", json={"baseModel": base, field: value})
        assert r.status_code == 400 and r.json()["code"] == 3 and field in r.json()["message"], r.text
        dep = c.post(f"/v1/accounts/{server.account_id}/deployments", json={"baseModel": base,
                                                                          "minReplicaCount": 0}).json()
        assert field not in dep, dep     # nothing unhonoured is shown as if it applied
        r = c.patch(f"/v1/{dep['name']}", json={field: value})
        assert r.status_code == 400 and field in r.json()["message"], r.text
        c.delete(f"/v1/{dep['name']}", params={"hard": "true"})


def _replica_argv(base_model: str, timeout: float = 60) -> list[str]:
    """The command line of the replica process the controller started for `base_model`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            except OSError:
                continue
            if "replica" in argv and base_model in argv:
                return argv
        time.sleep(0.2)
    raise AssertionError(f"no replica process for {base_model} within {timeout}s")


@pytest.mark.parametrize("backend", BACKENDS)
def test_honoured_deployment_fields_are_used_not_only_echoed(fresh_server, backend):
    """Every settable deployment field is returned AND acted on: precision, maxContextLength
    and enableAddons reach the replica the controller starts (its command line), the replica
    bounds bound :scale and count in the replicas quota. An echo alone proves nothing."""
    srv = fresh_server(backend)
    base = ready_base_model(srv)
    client = sdk(srv)
    dep = client.deployments.create(base_model=base, display_name="d", description="x", min_replica_count=1,
                                    max_replica_count=2, precision="BF16", max_context_length=128,
                                    enable_addons=True)
    assert (dep.display_name, dep.description, dep.min_replica_count, dep.max_replica_count, dep.precision,
            dep.max_context_length, dep.enable_addons) == ("d", "x", 1, 2, "BF16", 128, True)
    argv = _replica_argv(base)
    assert argv[argv.index("--max-model-len") + 1] == "128", argv
    assert "--enable-lora" in argv, argv
    flags = replica_precision("BF16", server_has_cuda()).argv()
    assert flags and " ".join(flags) in " ".join(argv), (flags, argv)
    dep_id = dep.name.rsplit("/", 1)[1]
    expect_error(400, 3, client.deployments.scale, dep_id, replica_count=3)    # above maxReplicaCount
    expect_error(400, 3, client.deployments.scale, dep_id, replica_count=0)    # below minReplicaCount
    with http(srv) as c:
        assert c.get(f"/v1/accounts/{srv.account_id}/quotas/replicas").json()["usage"] == "2"
    client.deployments.delete(dep_id, hard=True, ignore_checks=True)


def test_read_mask_is_refused_not_ignored(server):
    with http(server) as c:
        for path in (f"/v1/accounts/{server.account_id}", f"/v1/accounts/{server.account_id}/models"):
            r = c.get(path, params={"readMask": "name"})
            assert r.status_code == 400 and "readMask" in r.json()["message"], r.text
            assert c.get(path, params={"readMask": "*"}).status_code == 200


def test_soft_deleted_deployments_are_purged_in_the_background(fresh_server):
    srv = fresh_server("sqlite", extra_env={"FIREPLACE_LIMIT_PURGE_INTERVAL_S": "0.5"})
    base_name = ready_base_model(srv)
    client = sdk(srv)
    dep_id = client.deployments.create(base_model=base_name).name.split("/")[-1]
    client.deployments.delete(dep_id)
    engine = create_engine(f"sqlite:///{srv.home / 'fireplace.db'}")
    past = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with engine.begin() as conn:
        conn.execute(text("UPDATE deployments SET purge_time = :p WHERE deployment_id = :d"),
                     {"p": past, "d": dep_id})
    expect_error(404, 5, client.deployments.get, dep_id)        # past purgeTime: gone at once
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if not conn.execute(text("SELECT 1 FROM deployments WHERE deployment_id = :d"), {"d": dep_id}).first():
                break
        time.sleep(0.2)
    else:
        pytest.fail("the purger did not remove the row")
    engine.dispose()
