"""One real `fireplace serve` per test module (SQLite unless the module parametrizes
`backend`), and a `cli` bound to it; and one serving the bundled SmolLM2 for the session (chat
and the whole loop share it: importing and serving the model is the expensive part)."""
from __future__ import annotations

import pytest

from tests.cli.helpers import Cli
from tests.cli.scripted import Scripted
from tests.cli.serving import start_serving_server, wait_for_bundled_model
from tests.conftest import start_server, stop_server


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"


@pytest.fixture(scope="module")
def cli_server(backend, tmp_path_factory):
    srv = start_server(tmp_path_factory, backend)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def cli(cli_server, tmp_path_factory) -> Cli:
    return Cli(cli_server, tmp_path_factory.mktemp("cli-login") / "credentials")


@pytest.fixture(scope="session")
def serving_server(tmp_path_factory):
    srv = start_serving_server(tmp_path_factory)   # skips when the data plane is not served yet
    try:
        wait_for_bundled_model(srv)
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture
def scripted():
    """scripted(*responses) -> a Scripted server; all are closed after the test."""
    servers = []

    def make(*script):
        servers.append(Scripted(list(script)))
        return servers[-1]
    yield make
    for s in servers:
        s.close()
