"""Issue 11, classes 7 and 8: what Fireplace does not implement says so (501, or a 400 naming
the field), readMask is refused rather than ignored, and soft-deleted deployments are purged
by the background purger, never by a read."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import fireworks
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import http, sdk
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


@pytest.mark.parametrize("field,value", [("expireTime", "2030-01-01T00:00:00Z"), ("region", "US_IOWA_1"),
                                         ("draftModel", "accounts/fireplace/models/x"), ("enableMtp", True)])
def test_unhonoured_deployment_fields_are_refused_by_name(server, base, field, value):
    with http(server) as c:
        r = c.post(f"/v1/accounts/{server.account_id}/deployments", json={"baseModel": base, field: value})
        assert r.status_code == 400 and r.json()["code"] == 3 and field in r.json()["message"], r.text


def test_honoured_deployment_fields_are_returned(server, base):
    dep = sdk(server).deployments.create(base_model=base, display_name="d", description="x", max_replica_count=2,
                                         accelerator_type="NVIDIA_H100_80GB", precision="BF16",
                                         max_context_length=1024, enable_session_affinity=True)
    assert (dep.display_name, dep.description, dep.max_replica_count, dep.accelerator_type, dep.precision,
            dep.max_context_length, dep.enable_session_affinity) == (
        "d", "x", 2, "NVIDIA_H100_80GB", "BF16", 1024, True)


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
