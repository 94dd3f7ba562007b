"""Run the `fireplace` CLI against a real server: in-process with typer's CliRunner (fast), or
as a real subprocess of .venv/bin/fireplace. Both see only what a user's shell would: the
server's data dir (FIREPLACE_HOME, whose `credentials` file the CLI reads) and a login file of
their own; FIREPLACE_API_KEY / _BASE_URL / _ACCOUNT from the test process are removed."""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from typer.testing import CliRunner

from fireplace.cli.main import app
from tests.servers import FIREPLACE_BIN, Server

CLEARED = ("FIREPLACE_API_KEY", "FIREPLACE_BASE_URL", "FIREPLACE_ACCOUNT", "FIREPLACE_ACCOUNT_ID",
           "FIREPLACE_CONFIG", "XDG_CONFIG_HOME")


@dataclass
class Cli:
    server: Server
    login_file: Path
    env: dict = field(default_factory=dict)

    def environment(self, extra: dict | None = None) -> dict:
        env: dict = {k: None for k in CLEARED}
        env.update({"FIREPLACE_HOME": str(self.server.home), "FIREPLACE_CONFIG": str(self.login_file),
                    "COLUMNS": "200"})
        env.update(self.env)
        env.update(extra or {})
        return env

    def run(self, *args: str, expect: int | None = 0, input: str | None = None, env: dict | None = None):
        result = CliRunner().invoke(app, list(args), input=input, env=self.environment(env))
        if expect is not None:
            assert result.exit_code == expect, (
                f"fireplace {' '.join(args)} -> {result.exit_code} (wanted {expect})\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}\n{result.exception!r}")
        return result

    def json(self, *args: str, **kw):
        return json.loads(self.run(*args, "-o", "json", **kw).stdout)

    def yaml(self, *args: str, **kw):
        return yaml.safe_load(self.run(*args, "-o", "yaml", **kw).stdout)

    def names(self, *args: str, **kw) -> list[str]:
        return self.run(*args, "-q", **kw).stdout.split()

    def subprocess(self, *args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in CLEARED}
        env.update({k: v for k, v in self.environment().items() if v is not None})
        return subprocess.run([FIREPLACE_BIN, *args], input=input, capture_output=True, text=True, env=env,
                              timeout=timeout)

    def api(self, path: str, api_key: str | None = None) -> dict:
        """What the API itself answers (for comparing with -o json)."""
        r = httpx.get(self.server.base_url + path, headers={"Authorization": f"Bearer {api_key or self.server.api_key}"},
                      timeout=30)
        assert r.status_code == 200, r.text
        return r.json()


def write_files(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory
