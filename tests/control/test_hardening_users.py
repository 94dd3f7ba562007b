"""Issue 11, class 6: users and keys an admin can control; open sign-up; the first-start key."""
from __future__ import annotations

import uuid

import httpx

from tests.conftest import http, new_account, sdk
from tests.control.helpers_resources import expect_error


def _user(c: httpx.Client, account_id: str, role: str) -> tuple[str, str]:
    user_id = f"u-{uuid.uuid4().hex[:8]}"
    assert c.post(f"/v1/accounts/{account_id}/users", params={"userId": user_id},
                  json={"role": role, "email": f"{user_id}@example.com"}).status_code == 200
    r = c.post(f"/v1/accounts/{account_id}/users/{user_id}/apiKeys", json={"apiKey": {}})
    assert r.status_code == 200, r.text
    return user_id, r.json()["key"]


def test_a_disabled_users_keys_stop_at_once(server):
    account_id, admin_key = new_account(server)
    with http(server, admin_key) as admin:
        user_id, key = _user(admin, account_id, "contributor")
        assert sdk(server, key, account_id).accounts.get(account_id=account_id).name == f"accounts/{account_id}"
        r = admin.post(f"/v1/accounts/{account_id}/users/{user_id}:disable")
        assert r.status_code == 200 and r.json()["state"] == "DISABLED", r.text
        expect_error(401, 16, sdk(server, key, account_id).accounts.get, account_id=account_id)
        listed = admin.get(f"/v1/accounts/{account_id}/users/{user_id}/apiKeys").json()["apiKeys"]
        assert listed == []                                    # revoked, not merely blocked
        assert admin.post(f"/v1/accounts/{account_id}/users/{user_id}:enable").json()["state"] == "READY"
        expect_error(401, 16, sdk(server, key, account_id).accounts.get, account_id=account_id)
        # the last admin cannot be disabled
        me = admin.get(f"/v1/accounts/{account_id}/users").json()["users"]
        admins = [u["name"].split("/")[-1] for u in me if u["role"] == "admin"]
        assert len(admins) == 1
        r = admin.post(f"/v1/accounts/{account_id}/users/{admins[0]}:disable")
        assert r.status_code == 403 or (r.status_code == 400 and r.json()["code"] == 9), r.text


def test_admin_lists_and_revokes_any_key_of_the_account(server):
    account_id, admin_key = new_account(server)
    with http(server, admin_key) as admin:
        user_id, key = _user(admin, account_id, "user")
        keys = admin.get(f"/v1/accounts/{account_id}/apiKeys").json()["apiKeys"]
        mine = [k for k in keys if k["name"].startswith(f"accounts/{account_id}/users/{user_id}/")]
        assert len(mine) == 1 and "key" not in mine[0]
        r = admin.post(f"/v1/accounts/{account_id}/users/{user_id}/apiKeys:delete", json={"keyId": mine[0]["keyId"]})
        assert r.status_code == 200
        expect_error(401, 16, sdk(server, key, account_id).accounts.get, account_id=account_id)
    _, reader_key = new_account(server, role="user")
    with http(server, reader_key) as reader:
        assert reader.get(f"/v1/accounts/{account_id}/apiKeys").status_code == 404   # another account


def test_no_key_above_the_creators_own(server):
    """An account admin of the platform admin's account cannot mint a platform admin's key."""
    with http(server) as platform:
        second_admin, second_key = _user(platform, server.account_id, "admin")
        boot_user = next(u["name"].split("/")[-1] for u in
                         platform.get(f"/v1/accounts/{server.account_id}/users").json()["users"]
                         if u["name"].split("/")[-1] not in (second_admin,) and u["role"] == "admin"
                         and u["email"] == "admin@localhost")
    with http(server, second_key) as second:
        r = second.post(f"/v1/accounts/{server.account_id}/users/{boot_user}/apiKeys", json={"apiKey": {}})
        assert r.status_code == 403 and r.json()["code"] == 7, r.text
        r = second.patch(f"/v1/accounts/{server.account_id}/users/{boot_user}", json={"role": "user"})
        assert r.status_code == 403, r.text
    with http(server) as platform:
        platform.post(f"/v1/accounts/{server.account_id}/users/{second_admin}:disable")


def test_open_signup_gives_a_key_once_is_rate_limited_and_never_enterprise(fresh_server):
    srv = fresh_server("sqlite", extra_env={"FIREPLACE_ALLOW_SIGNUP": "true", "FIREPLACE_API_KEY": "",
                                            "FIREPLACE_LIMIT_MAX_SIGNUPS_PER_HOUR": "2"})
    log = srv.log_text()
    secret = dict(line.split("=", 1) for line in (srv.home / "credentials").read_text().splitlines())
    assert secret["FIREPLACE_API_KEY"] not in log and str(srv.home / "credentials") in log
    anonymous = httpx.Client(base_url=srv.base_url, timeout=30)
    r = anonymous.post("/v1/accounts", json={"email": "corp@example.com", "accountType": "ENTERPRISE"},
                       params={"accountId": "enterprise"})
    assert r.status_code == 403 and r.json()["code"] == 7, r.text
    r = anonymous.post("/v1/accounts", json={"email": "dev1@example.com"})
    assert r.status_code == 200, r.text
    account_id, key = r.json()["name"].split("/")[1], r.json()["adminApiKey"]["key"]
    assert sdk(srv, key, account_id).accounts.get(account_id=account_id).name == f"accounts/{account_id}"
    assert anonymous.post("/v1/accounts", json={"email": "dev2@example.com"}).status_code == 200
    r = anonymous.post("/v1/accounts", json={"email": "dev3@example.com"})
    assert r.status_code == 429 and r.json()["code"] == 8 and r.headers.get("retry-after"), r.text
    anonymous.close()
