"""Acknowledged writes survive `kill -9`, and a restart changes nothing (both backends).

Concurrent clients create users and API keys; the server is killed with SIGKILL right after the
last acknowledgement; a new server on the same data directory / database must show every
acknowledged user and accept every acknowledged key, with the same account and credentials.
"""
from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import BACKENDS, http
from tests.servers import Server

N_WRITES = 50


def _create_user_and_key(server: Server, i: int) -> tuple[str, str]:
    user_id = f"k9-{i:03d}"
    with http(server) as c:
        r = c.post(f"/v1/accounts/{server.account_id}/users", params={"userId": user_id},
                   json={"role": "user", "email": f"{user_id}@example.com"})
        assert r.status_code == 200, r.text
        r = c.post(f"/v1/accounts/{server.account_id}/users/{user_id}/apiKeys", json={"apiKey": {}})
        assert r.status_code == 200, r.text
        return user_id, r.json()["key"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_acknowledged_writes_survive_kill9(fresh_server, backend):
    server = fresh_server(backend)
    credentials = server.home / "credentials"
    before = credentials.read_bytes()
    # First start: the admin key (FIREPLACE_API_KEY here) and account in a private file.
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    lines = dict(line.split("=", 1) for line in before.decode().splitlines())
    assert (lines["FIREPLACE_API_KEY"], lines["FIREPLACE_ACCOUNT_ID"]) == (server.api_key, server.account_id)
    with http(server) as c:
        account_before = c.get(f"/v1/accounts/{server.account_id}").json()

    with ThreadPoolExecutor(8) as pool:
        acknowledged = list(pool.map(lambda i: _create_user_and_key(server, i), range(N_WRITES)))
    server.kill()  # SIGKILL right after the last acknowledgement

    restarted = Server(home=server.home, backend=backend, api_key=server.api_key,
                       database_url=server.database_url).start()
    try:
        with http(restarted) as c:
            users = c.get(f"/v1/accounts/{restarted.account_id}/users", params={"pageSize": 200}).json()["users"]
            names = [u["name"].rsplit("/", 1)[1] for u in users]
            assert sorted(n for n in names if n.startswith("k9-")) == sorted(u for u, _ in acknowledged)
            assert len(names) == len(set(names)) == N_WRITES + 1
            # Restart changed nothing: same account, same credentials file, still 0600.
            assert c.get(f"/v1/accounts/{restarted.account_id}").json() == account_before
            accounts = c.get("/v1/accounts").json()["accounts"]
            assert sorted(a["name"] for a in accounts) == sorted([account_before["name"], "accounts/fireplace"])
        assert restarted.account_id == server.account_id
        assert credentials.read_bytes() == before
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        for user_id, key in acknowledged:
            with http(restarted, key) as c:
                r = c.get(f"/v1/accounts/{restarted.account_id}/users/{user_id}")
                assert r.status_code == 200, (user_id, r.text)
    finally:
        restarted.stop()

