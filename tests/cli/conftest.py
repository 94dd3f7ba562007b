"""One real `fireplace serve` per test module (SQLite unless the module parametrizes
`backend`), and a `cli` bound to it."""
from __future__ import annotations

import pytest

from tests.cli.helpers import Cli
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
