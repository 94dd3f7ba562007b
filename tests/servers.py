"""Start a real `fireplace serve` subprocess on a free port, on SQLite or PostgreSQL."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PG_ADMIN_URL = os.environ.get("FIREPLACE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
FIREPLACE_BIN = str(Path(sys.executable).parent / "fireplace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_available() -> bool:
    try:
        import psycopg
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def create_pg_database() -> str:
    """A fresh database per server, so tests never see each other's rows."""
    import psycopg
    name = f"fp_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Server:
    home: Path
    backend: str
    api_key: str
    database_url: str | None = None
    port: int = field(default_factory=free_port)
    extra_env: dict = field(default_factory=dict)
    extra_args: list = field(default_factory=list)
    proc: subprocess.Popen | None = None
    account_id: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict:
        env = dict(os.environ)
        env.update({"FIREPLACE_HOME": str(self.home), "FIREPLACE_API_KEY": self.api_key,
                    "FIREPLACE_LOG_LEVEL": "warning", "FIREPLACE_IMPORT_CATALOG": "false"})
        if self.database_url:
            env["FIREPLACE_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60) -> "Server":
        log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen(
            [FIREPLACE_BIN, "serve", "--port", str(self.port), *self.extra_args],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.home / 'server.log').read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("server did not become ready")
        creds = dict(line.split("=", 1) for line in (self.home / "credentials").read_text().splitlines())
        self.account_id = creds["FIREPLACE_ACCOUNT_ID"]
        return self

    def kill(self) -> None:
        """kill -9: no chance to flush anything."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return (self.home / "server.log").read_text(errors="replace")
