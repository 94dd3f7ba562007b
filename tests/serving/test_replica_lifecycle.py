"""Replica processes follow their server: a deployment that cannot be placed says why, and
after `kill -9` of `fireplace serve` no replica process is left behind."""
from __future__ import annotations

import subprocess
import time

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
