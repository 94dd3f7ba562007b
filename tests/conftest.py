"""Shared fixtures: a real server per backend (SQLite, PostgreSQL), SDK clients, accounts.

In CI (CI=true) a missing PostgreSQL is a failure, never a skip.
"""
from __future__ import annotations

import os
import uuid

import httpx
import pytest

from tests.servers import Server, create_pg_database, drop_pg_database, postgres_available

BACKENDS = ["sqlite", "postgres"]
ADMIN_KEY = "fw_test_admin_key_0123456789abcdefghijklmnop"


def _require_postgres():
    if not postgres_available():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is required in CI (FIREPLACE_TEST_PG_URL) but is not reachable")
        pytest.skip("PostgreSQL not reachable")


def start_server(tmp_path_factory, backend: str, timeout: float = 60, **kw) -> Server:
    home = tmp_path_factory.mktemp(f"fp-{backend}")
    db_url = None
    if backend == "postgres":
        _require_postgres()
        db_url = create_pg_database()
    return Server(home=home, backend=backend, api_key=ADMIN_KEY, database_url=db_url, **kw).start(timeout)


def stop_server(server: Server) -> None:
    server.stop()
    if server.database_url:
        drop_pg_database(server.database_url)


@pytest.fixture(scope="session", params=BACKENDS)
def server(request, tmp_path_factory) -> Server:
    """One server per backend for the whole session; tests create uniquely named resources."""
    srv = start_server(tmp_path_factory, request.param)
    yield srv
    stop_server(srv)


@pytest.fixture
def fresh_server(request, tmp_path_factory):
    """A server of its own (for restart / kill -9 tests). Parametrize with backend."""
    servers = []

    def _make(backend: str, **kw) -> Server:
        srv = start_server(tmp_path_factory, backend, **kw)
        servers.append(srv)
        return srv
    yield _make
    for srv in servers:
        stop_server(srv)


def expect_status(call, status: int, code: int):
    """Run an SDK call that must fail with this HTTP status and gRPC code; returns the error."""
    import fireworks
    with pytest.raises(fireworks.APIStatusError) as info:
        call()
    assert info.value.status_code == status, info.value.body
    assert info.value.body["code"] == code, info.value.body
    return info.value


def sdk(server: Server, api_key: str | None = None, account_id: str | None = None):
    from fireworks import Fireworks
    return Fireworks(api_key=api_key or server.api_key, account_id=account_id or server.account_id,
                     base_url=server.base_url, max_retries=0)


@pytest.fixture
def admin(server):
    """The platform admin's SDK client in the first account."""
    return sdk(server)


def http(server: Server, api_key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=30,
                        headers={"Authorization": f"Bearer {api_key or server.api_key}"})


@pytest.fixture
def unique():
    """A fresh resource-ID suffix per test."""
    return lambda prefix="r": f"{prefix}-{uuid.uuid4().hex[:10]}"


def new_account(server: Server, email: str | None = None, role: str = "admin") -> tuple[str, str]:
    """Create an account (as platform admin) and an API key for its admin user.
    Returns (account_id, api_key). With role != admin, also creates a user of that role
    and returns that user's key instead."""
    email = email or f"dev-{uuid.uuid4().hex[:8]}@example.com"
    with http(server) as c:
        r = c.post("/v1/accounts", json={"email": email, "displayName": email, "accountType": "DEVELOPER"})
        assert r.status_code == 200, r.text
        account_id = r.json()["name"].split("/")[1]
        users = c.get(f"/v1/accounts/{account_id}/users").json()["users"]
        user_id = users[0]["name"].split("/")[-1]
        if role != "admin":
            user_id = f"u-{uuid.uuid4().hex[:8]}"
            r = c.post(f"/v1/accounts/{account_id}/users", params={"userId": user_id},
                       json={"role": role, "email": f"{user_id}@example.com"})
            assert r.status_code == 200, r.text
        r = c.post(f"/v1/accounts/{account_id}/users/{user_id}/apiKeys", json={"apiKey": {"displayName": "t"}})
        assert r.status_code == 200, r.text
        return account_id, r.json()["key"]


def user_key(server: Server, role: str) -> str:
    """An API key for a new user of `role` in the server's first account."""
    user_id = f"u-{uuid.uuid4().hex[:8]}"
    with http(server) as c:
        r = c.post(f"/v1/accounts/{server.account_id}/users", params={"userId": user_id},
                   json={"role": role, "email": f"{user_id}@example.com"})
        assert r.status_code == 200, r.text
        r = c.post(f"/v1/accounts/{server.account_id}/users/{user_id}/apiKeys", json={"apiKey": {}})
        assert r.status_code == 200, r.text
        return r.json()["key"]
