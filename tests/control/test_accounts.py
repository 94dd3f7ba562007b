"""Accounts through the official SDK (list, get) and our `POST /v1/accounts` extension."""
from __future__ import annotations

import uuid

import pytest

from fireplace.ids import is_valid_id
from tests.conftest import expect_status, http, new_account, sdk


def create(server, body: dict, key: str | None = None, **params):
    with http(server, key) as c:
        return c.post("/v1/accounts", json=body, params=params)


def email() -> str:
    return f"Dev.{uuid.uuid4().hex[:8]}@Example.com"


def test_get_own_account(server, admin):
    account = admin.accounts.get()
    assert account.name == f"accounts/{server.account_id}"
    assert account.email == "admin@localhost"
    assert account.state == "READY" and account.suspend_state == "UNSUSPENDED"
    assert account.status.code == "OK" and account.create_time is not None


def test_platform_admin_lists_every_account(server, admin):
    account_id, _ = new_account(server)
    names = [a.name for a in admin.accounts.list()]
    assert {f"accounts/{server.account_id}", "accounts/fireplace", f"accounts/{account_id}"} <= set(names)
    assert names == sorted(names)


def test_member_lists_only_their_account(server):
    account_id, key = new_account(server)
    client = sdk(server, key, account_id)
    assert [a.name for a in client.accounts.list()] == [f"accounts/{account_id}"]
    assert client.accounts.get().name == f"accounts/{account_id}"


def test_create_developer_account_generates_id_and_admin_user(server, admin):
    address = email()
    r = create(server, {"email": address, "displayName": "Dev", "accountType": "DEVELOPER"})
    assert r.status_code == 200, r.text
    body = r.json()
    account_id = body["name"].split("/")[1]
    assert is_valid_id(account_id) and account_id.startswith("dev-")
    assert body["email"] == address.lower() and body["accountType"] == "DEVELOPER"
    assert body["displayName"] == "Dev" and body["state"] == "READY" and body["status"]["code"] == "OK"
    users = list(admin.users.list(account_id=account_id))
    assert [(u.role, u.email) for u in users] == [("admin", address.lower())]
    assert admin.accounts.get(account_id=account_id).email == address.lower()


def test_same_local_part_gets_different_ids(server):
    local = f"same-{uuid.uuid4().hex[:6]}"
    a = create(server, {"email": f"{local}@a.example.com"}).json()["name"]
    b = create(server, {"email": f"{local}@b.example.com"}).json()["name"]
    assert a != b


def test_same_email_twice_is_409(server):
    address = email()
    assert create(server, {"email": address}).status_code == 200
    r = create(server, {"email": address.upper()})
    assert r.status_code == 409 and r.json()["code"] == 6 and "already exists" in r.json()["message"]
    assert r.headers["x-should-retry"] == "false"


def test_enterprise_account_chooses_its_id(server):
    chosen = f"acme-{uuid.uuid4().hex[:8]}"
    r = create(server, {"email": email(), "accountType": "ENTERPRISE"}, accountId=chosen)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == f"accounts/{chosen}" and r.json()["accountType"] == "ENTERPRISE"
    again = create(server, {"email": email(), "accountType": "ENTERPRISE"}, accountId=chosen)
    assert again.status_code == 409 and again.json()["code"] == 6
    public = create(server, {"email": email(), "accountType": "ENTERPRISE"}, accountId="fireplace")
    assert public.status_code == 409


@pytest.mark.parametrize("body,params,needle", [
    ({"email": "not-an-email"}, {}, "email"),
    ({"email": ""}, {}, "email"),
    ({"email": "a b@example.com"}, {}, "email"),
    ({"email": "x" * 400 + "@example.com"}, {}, "email"),
    ({}, {}, "email"),
    ({"email": "ok@example.com", "accountType": "GALACTIC"}, {}, "accountType"),
    ({"email": "dev-choice@example.com"}, {"accountId": "chosen-id"}, "ENTERPRISE"),
    ({"email": "bad-id@example.com", "accountType": "ENTERPRISE"}, {"accountId": "9starts-with-digit"}, "accountId"),
    ({"email": "bad-id@example.com", "accountType": "ENTERPRISE"}, {"accountId": "../etc"}, "accountId"),
])
def test_create_account_validation(server, body, params, needle):
    r = create(server, body, **params)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 3 and needle in r.json()["message"]


def test_only_platform_admin_creates_accounts(server):
    _, key = new_account(server)
    r = create(server, {"email": email()}, key=key)
    assert r.status_code == 403 and r.json()["code"] == 7
    with http(server) as c:
        anonymous = c.post("/v1/accounts", json={"email": email()}, headers={"Authorization": ""})
    assert anonymous.status_code == 401 and anonymous.json()["code"] == 16
    bad_key = create(server, {"email": email()}, key="fw_wrong")
    assert bad_key.status_code == 401 and bad_key.json()["code"] == 16


def test_other_account_is_indistinguishable_from_missing(server):
    a, _ = new_account(server)
    b, b_key = new_account(server)
    client = sdk(server, b_key, b)
    hidden = expect_status(lambda: client.accounts.get(account_id=a), 404, 5)
    missing = expect_status(lambda: client.accounts.get(account_id="no-such-account"), 404, 5)
    assert hidden.body["message"].replace(a, "X") == missing.body["message"].replace("no-such-account", "X")
    assert hidden.response.headers["x-should-retry"] == missing.response.headers["x-should-retry"]


def test_public_catalog_is_readable_by_everyone(server):
    account_id, key = new_account(server)
    assert sdk(server, key, account_id).accounts.get(account_id="fireplace").name == "accounts/fireplace"


def test_invalid_account_id_in_path_is_400(server, admin):
    expect_status(lambda: admin.accounts.get(account_id="Bad_ID"), 400, 3)


def test_open_signup(fresh_server):
    srv = fresh_server("sqlite", extra_args=["--allow-signup"])
    with http(srv) as c:
        r = c.post("/v1/accounts", json={"email": "walk-in@example.com"}, headers={"Authorization": ""})
        assert r.status_code == 200, r.text
        account_id = r.json()["name"].split("/")[1]
        # The walk-in's admin user exists; a platform admin can give it a key.
        users = c.get(f"/v1/accounts/{account_id}/users").json()["users"]
        assert [u["role"] for u in users] == ["admin"]


def test_rename_an_account(server):
    """PATCH /v1/accounts/{a} (our extension): the account's admins change its displayName;
    email, type and state are refused by name; members below admin get 403, others 404."""
    account_id, key = new_account(server)
    url = f"/v1/accounts/{account_id}"
    with http(server, key) as c:
        before = c.get(url).json()
        renamed = c.patch(url, json={"displayName": "Research", "etag": before["etag"]})
        assert renamed.status_code == 200, renamed.text
        after = renamed.json()
        assert after["displayName"] == "Research" and after["etag"] != before["etag"]
        assert {k: v for k, v in after.items() if k not in ("displayName", "etag", "updateTime")} == \
            {k: v for k, v in before.items() if k not in ("displayName", "etag", "updateTime")}
        assert c.patch(url, json={"displayName": "x", "etag": before["etag"]}).status_code == 409
        refused = c.patch(url, json={"email": "new@example.com"})
        assert refused.status_code == 400 and "email" in refused.json()["message"], refused.text
        assert c.get(url).json()["displayName"] == "Research"
    with http(server, new_account(server)[1]) as c:
        assert c.patch(url, json={"displayName": "theirs"}).status_code == 404
    _, member = new_account(server, role="user")
    member_account = next(iter(http(server, member).get("/v1/accounts").json()["accounts"]))["name"]
    with http(server, member) as c:
        assert c.patch(f"/v1/{member_account}", json={"displayName": "mine"}).status_code == 403


def test_delete_an_empty_account(server):
    """DELETE /v1/accounts/{a} (our extension): platform admins only; refused while anything
    user-made is left (naming it); then its users and keys go with it."""
    account_id, key = new_account(server)
    url = f"/v1/accounts/{account_id}"
    with http(server, key) as own:
        assert own.delete(url).status_code == 403           # its own admin may not
        made = own.post(f"{url}/datasets", json={"datasetId": "keep-me", "dataset": {}})
        assert made.status_code == 200, made.text
    with http(server) as c:                                # the platform admin
        refused = c.delete(url)
        assert refused.status_code == 400 and refused.json()["code"] == 9, refused.text
        assert "1 dataset" in refused.json()["message"]
        assert c.get(url).status_code == 200
        assert c.delete(f"{url}/datasets/keep-me").status_code == 200
        assert c.delete(url, headers={"If-Match": "0"}).status_code == 409
        assert c.delete(url).status_code == 200
        assert c.get(url).status_code == 404 and c.delete(url).status_code == 404
        assert c.delete("/v1/accounts/fireplace").status_code == 400           # the public catalog
        assert c.delete(f"/v1/accounts/{server.account_id}").status_code == 400  # holds a platform admin
    with http(server, key) as gone:
        assert gone.get(url).status_code == 401
    with http(server, new_account(server)[1]) as other:
        assert other.delete(f"/v1/accounts/{server.account_id}").status_code == 404
