"""Users through the official SDK: create (?userId=), get, list, update; roles; what never changes."""
from __future__ import annotations

import uuid

import pytest

from tests.conftest import expect_status, http, new_account, sdk


@pytest.fixture
def account(server):
    """(account_id, admin key, SDK client as that admin) of a fresh account."""
    account_id, key = new_account(server)
    return account_id, key, sdk(server, key, account_id)


def uid() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


def test_create_get_list_update(account):
    account_id, _, client = account
    user_id = uid()
    user = client.users.create(role="contributor", user_id=user_id, email=f"{user_id}@Example.com",
                               display_name="Alice")
    assert user.name == f"accounts/{account_id}/users/{user_id}"
    assert (user.role, user.email, user.display_name, user.state) == ("contributor", f"{user_id}@example.com",
                                                                      "Alice", "READY")
    assert user.service_account is False and user.status.code == "OK" and user.create_time
    assert client.users.get(user_id) == user
    assert user.name in [u.name for u in client.users.list()]
    updated = client.users.update(user_id, role="user", display_name="Alice B.")
    assert (updated.role, updated.display_name, updated.email) == ("user", "Alice B.", user.email)
    assert updated.update_time >= user.update_time and updated.create_time == user.create_time
    assert client.users.get(user_id).role == "user"


def test_user_id_defaults_from_email(account):
    _, _, client = account
    local = f"Jane.Doe{uuid.uuid4().hex[:4]}"
    first = client.users.create(role="user", email=f"{local}@example.com")
    assert first.name.rsplit("/", 1)[1] == local.lower().replace(".", "-")
    second = client.users.create(role="user", email=f"{local}@other.example.com")
    assert second.name != first.name and second.name.endswith("-2")


def test_service_account_without_email(account):
    _, _, client = account
    user_id = uid()
    bot = client.users.create(role="inference-user", user_id=user_id, service_account=True)
    assert bot.service_account is True and bot.email.startswith(user_id + "@")


@pytest.mark.parametrize("kwargs,needle", [
    ({"role": "overlord"}, "role"),
    ({"role": ""}, "role"),
    ({"role": "user", "user_id": "9lives"}, "userId"),
    ({"role": "user", "user_id": "Bad_Id"}, "userId"),
    ({"role": "user", "user_id": "x" * 64}, "userId"),
    ({"role": "user", "email": "nope"}, "email"),
    ({"role": "user", "email": ""}, "email"),
    ({"role": "user", "display_name": "d" * 5000}, "displayName"),
])
def test_create_validation(account, kwargs, needle):
    _, _, client = account
    kwargs = dict(kwargs)
    kwargs.setdefault("email", f"{uid()}@example.com")
    if not kwargs["email"]:
        kwargs.pop("email")
    error = expect_status(lambda: client.users.create(**kwargs), 400, 3)
    assert needle in error.body["message"]


def test_role_is_required(server, account):
    account_id, key, _ = account
    with http(server, key) as c:
        r = c.post(f"/v1/accounts/{account_id}/users", params={"userId": uid()}, json={"email": "r@example.com"})
    assert r.status_code == 400 and r.json()["code"] == 3 and "role" in r.json()["message"]


def test_duplicates_are_409(account):
    _, _, client = account
    user_id = uid()
    client.users.create(role="user", user_id=user_id, email=f"{user_id}@example.com")
    expect_status(lambda: client.users.create(role="user", user_id=user_id, email=f"{uid()}@example.com"), 409, 6)
    expect_status(lambda: client.users.create(role="user", user_id=uid(), email=f"{user_id}@example.com"), 409, 6)


def test_missing_user_is_404(account):
    account_id, _, client = account
    error = expect_status(lambda: client.users.get("ghost"), 404, 5)
    assert f"accounts/{account_id}/users/ghost" in error.body["message"]
    expect_status(lambda: client.users.update("ghost", role="user"), 404, 5)


def test_update_refuses_immutable_fields(account):
    _, _, client = account
    user_id = uid()
    client.users.create(role="user", user_id=user_id, email=f"{user_id}@example.com")
    expect_status(lambda: client.users.update(user_id, role="user", email="new@example.com"), 400, 3)
    expect_status(lambda: client.users.update(user_id, role="user", service_account=True), 400, 3)
    expect_status(lambda: client.users.update(user_id, role="emperor"), 400, 3)
    # Echoing the current values back is fine.
    same = client.users.update(user_id, role="user", email=f"{user_id}@example.com", service_account=False)
    assert same.email == f"{user_id}@example.com"


def test_privileged_and_output_only_fields_are_ignored(server, account):
    account_id, key, client = account
    user_id = uid()
    created = client.users.create(role="user", user_id=user_id, email=f"{user_id}@example.com")
    with http(server, key) as c:
        r = c.patch(f"/v1/accounts/{account_id}/users/{user_id}", json={
            "displayName": "renamed", "name": f"accounts/{server.account_id}/users/admin", "state": "DELETING",
            "isPlatformAdmin": True, "is_platform_admin": True, "createTime": "2000-01-01T00:00:00Z",
            "accountId": server.account_id})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == created.name and body["state"] == "READY" and body["displayName"] == "renamed"
    assert body["createTime"] != "2000-01-01T00:00:00.000Z" and body["role"] == "user"
    # Still no platform power: another account stays invisible.
    with http(server, key) as c:
        assert c.get(f"/v1/accounts/{server.account_id}").status_code == 404


def test_update_mask(server, account):
    account_id, key, client = account
    user_id = uid()
    client.users.create(role="user", user_id=user_id, email=f"{user_id}@example.com", display_name="keep")
    with http(server, key) as c:
        r = c.patch(f"/v1/accounts/{account_id}/users/{user_id}", params={"updateMask": "role"},
                    json={"role": "contributor", "displayName": "ignored"})
        assert r.status_code == 200 and (r.json()["role"], r.json()["displayName"]) == ("contributor", "keep")
        r = c.patch(f"/v1/accounts/{account_id}/users/{user_id}", params={"updateMask": "displayName"},
                    json={"displayName": "masked"})
        assert r.json()["displayName"] == "masked"
        r = c.patch(f"/v1/accounts/{account_id}/users/{user_id}", params={"updateMask": "state"},
                    json={"state": "DELETING"})
        assert r.status_code == 400 and "state" in r.json()["message"]


def test_last_admin_cannot_be_demoted(account):
    account_id, _, client = account
    admin_user = next(u for u in client.users.list() if u.role == "admin")
    admin_id = admin_user.name.rsplit("/", 1)[1]
    error = expect_status(lambda: client.users.update(admin_id, role="user"), 400, 9)
    assert "last admin" in error.body["message"]
    other = uid()
    client.users.create(role="admin", user_id=other, email=f"{other}@example.com")
    assert client.users.update(other, role="contributor").role == "contributor"


def test_non_admin_may_rename_only_themself(server, account):
    account_id, key, client = account
    me, peer = uid(), uid()
    client.users.create(role="contributor", user_id=me, email=f"{me}@example.com")
    client.users.create(role="user", user_id=peer, email=f"{peer}@example.com")
    my_key = client.api_keys.create(me, api_key={}).key
    mine = sdk(server, my_key, account_id)
    assert mine.users.update(me, role="contributor", display_name="Me").display_name == "Me"
    expect_status(lambda: mine.users.update(me, role="admin"), 403, 7)
    expect_status(lambda: mine.users.update(peer, role="user", display_name="Peer"), 403, 7)
    expect_status(lambda: mine.users.create(role="user", user_id=uid(), email=f"{uid()}@example.com"), 403, 7)
    assert client.users.get(me).role == "contributor"


def test_platform_admin_manages_users_in_any_account(account, admin):
    account_id, _, _ = account
    user_id = uid()
    created = admin.users.create(account_id=account_id, role="user", user_id=user_id, email=f"{user_id}@example.com")
    assert created.name == f"accounts/{account_id}/users/{user_id}"
    expect_status(lambda: admin.users.list(account_id="no-such-account"), 404, 5)
    expect_status(lambda: admin.users.create(account_id="no-such-account", role="user", email="x@example.com"), 404, 5)
