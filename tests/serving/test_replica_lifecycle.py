"""Replica processes follow their server: a deployment that cannot be placed says why, and
after `kill -9` of `fireplace serve` no replica process is left behind."""
from __future__ import annotations

import subprocess
import time

import fireworks
import pytest

from tests.conftest import sdk
from tests.serving.serving_helpers import SERVING_ENV, SMOL, wait_for

pytestmark = pytest.mark.slow


def replica_pids(home) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"fireplace.cli.main replica .*{home}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_capacity_message_and_no_orphans_after_kill9(fresh_server):
    srv = fresh_server("sqlite", extra_env={**SERVING_ENV, "FIREPLACE_SERVING_LOCAL_REPLICA_SLOTS": "1"},
                       timeout=300)
    assert replica_pids(srv.home), "the serverless replicas run as child processes"
    client = sdk(srv)
    client.deployments.create(base_model=SMOL, deployment_id="no-room")

    def waiting():
        d = client.deployments.get("no-room")
        return d if "waiting for capacity: 1 of 1 replica slots in use" in d.status.message else None
    dep = wait_for(waiting, 60, what="the capacity message")
    assert dep.state == "CREATING" and dep.replica_count == 0
    srv.kill()
    deadline = time.monotonic() + 20
    while replica_pids(srv.home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert replica_pids(srv.home) == []


def test_standalone_controllers_fail_over(fresh_server, tmp_path):  # noqa: C901
    """`fireplace controller` alone (the API server runs none): one holds the lease and serves the
    bundled model; kill -9 it, its replicas exit, and the second takes over."""
    import httpx

    from tests.servers import FIREPLACE_BIN
    env_extra = {**SERVING_ENV, "FIREPLACE_WORKERS_ENABLED": "false", "FIREPLACE_SERVING_LEASE_TTL_S": "3"}
    srv = fresh_server("sqlite", extra_env=env_extra, timeout=300)
    env = {**srv.env(), "FIREPLACE_LOG_LEVEL": "warning"}
    logs = [open(tmp_path / f"controller-{i}.log", "ab") for i in range(2)]
    first = subprocess.Popen([FIREPLACE_BIN, "controller"], env=env, stdout=logs[0], stderr=subprocess.STDOUT)
    second = None
    try:
        client = sdk(srv, account_id="fireplace")

        def serving():
            try:
                d = client.deployments.get("smollm2-135m-instruct")
            except fireworks.NotFoundError:  # the catalog import has not created it yet
                return None
            return d if d.state == "READY" else None
        wait_for(serving, 300, what="the first controller to serve the bundled model")
        second = subprocess.Popen([FIREPLACE_BIN, "controller"], env=env, stdout=logs[1], stderr=subprocess.STDOUT)
        time.sleep(5)
        pids = replica_pids(srv.home)
        assert len(pids) == 2, pids  # SmolLM2 + MiniLM, started by the lease holder only
        first.kill()
        first.wait(10)
        wait_for(lambda: not (set(replica_pids(srv.home)) & set(pids)), 30, what="the first one's replicas to exit")
        def answered():  # until the new leader's replica serves, the old rows answer 503 + Retry-After
            r = httpx.post(f"{srv.base_url}/v1/completions", headers={"Authorization": f"Bearer {srv.api_key}"},
                           json={"model": SMOL, "prompt": "Hello", "max_tokens": 2}, timeout=300)
            assert r.status_code in (200, 503), r.text
            return r if r.status_code == 200 else None
        wait_for(answered, 300, interval=1, what="the second controller's replica to answer")
        assert set(replica_pids(srv.home)).isdisjoint(pids)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        wait_for(lambda: not replica_pids(srv.home), 30, what="no replica left")
