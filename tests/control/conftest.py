"""Fixtures of the control-plane tests beside the shared ones in tests/conftest.py."""
from __future__ import annotations

import pytest

from tests.conftest import BACKENDS, start_server, stop_server


@pytest.fixture(scope="session", params=BACKENDS)
def quiet_server(request, tmp_path_factory):
    """A server without the controller, one per backend: deployments start no replicas and
    jobs stay in the state the API put them in, so what is under test is the API alone
    (serialization, tenancy, names) and no replica or training worker competes for the CPU."""
    srv = start_server(tmp_path_factory, request.param, extra_env={"FIREPLACE_WORKERS_ENABLED": "false"})
    yield srv
    stop_server(srv)
