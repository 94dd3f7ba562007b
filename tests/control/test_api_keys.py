"""API keys through the official SDK: the secret once, only a hash stored, revocation and expiry
immediate, admins manage everyone's keys and users their own."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import MetaData, create_engine, select

from fireplace.db.engine import normalize_url
from tests.conftest import expect_status, http, new_account, sdk


@pytest.fixture
def account(server):
    """(account_id, admin user id, SDK client as that admin)."""
    account_id, key = new_account(server)
    client = sdk(server, key, account_id)
    admin_id = next(iter(client.users.list())).name.rsplit("/", 1)[1]
    return account_id, admin_id, client


def add_user(client, role: str) -> str:
    user_id = f"u-{uuid.uuid4().hex[:8]}"
    client.users.create(role=role, user_id=user_id, email=f"{user_id}@example.com")
    return user_id


def test_create_list_delete(server, account):
    account_id, admin_id, client = account
    created = client.api_keys.create(admin_id, api_key={"display_name": "ci"})
    assert created.key.startswith("fw_") and len(created.key) >= 40
    assert created.prefix == created.key[:8] and created.display_name == "ci" and created.key_id
    assert created.create_time is not None and created.expire_time is None and created.secure is True
    listed = {k.key_id: k for k in client.api_keys.list(admin_id)}
    assert created.key_id in listed
    assert listed[created.key_id].key is None and listed[created.key_id].prefix == created.prefix
    # The new key works for the same user.
    assert sdk(server, created.key, account_id).accounts.get().name == f"accounts/{account_id}"
    client.api_keys.delete(admin_id, key_id=created.key_id)
    # Revocation is immediate.
    expect_status(lambda: sdk(server, created.key, account_id).accounts.get(), 401, 16)
    assert created.key_id not in {k.key_id for k in client.api_keys.list(admin_id)}
    expect_status(lambda: client.api_keys.delete(admin_id, key_id=created.key_id), 404, 5)


def test_default_display_name_and_raw_list_has_no_secret(server, account):
    account_id, admin_id, client = account
    created = client.api_keys.create(admin_id, api_key={})
    assert created.display_name == "default"
    with http(server, created.key) as c:
        r = c.get(f"/v1/accounts/{account_id}/users/{admin_id}/apiKeys")
    assert r.status_code == 200 and created.key not in r.text
    assert "key\"" not in r.text.replace("keyId\"", "") and "hash" not in r.text.lower()


def test_expire_time(server, account):
    account_id, admin_id, client = account
    soon = datetime.now(timezone.utc) + timedelta(seconds=2)
    created = client.api_keys.create(admin_id, api_key={"expire_time": soon})
    assert abs(created.expire_time - soon) < timedelta(milliseconds=2)
    user_client = sdk(server, created.key, account_id)
    assert user_client.accounts.get()
    time.sleep(max(0.0, (soon - datetime.now(timezone.utc)).total_seconds()) + 0.2)
    error = expect_status(lambda: user_client.accounts.get(), 401, 16)
    assert "expired" in error.body["message"]
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    expect_status(lambda: client.api_keys.create(admin_id, api_key={"expire_time": past}), 400, 3)
    expect_status(lambda: client.api_keys.create(admin_id, api_key={"expire_time": "yesterday"}), 400, 3)


def test_users_manage_their_own_keys_admins_everyones(server, account):
    account_id, admin_id, client = account
    me, peer = add_user(client, "inference-user"), add_user(client, "contributor")
    my_key = client.api_keys.create(me, api_key={}).key
    mine = sdk(server, my_key, account_id)
    second = mine.api_keys.create(me, api_key={"display_name": "laptop"})
    assert {k.key_id for k in mine.api_keys.list(me)} >= {second.key_id}
    mine.api_keys.delete(me, key_id=second.key_id)
    # Not someone else's keys.
    expect_status(lambda: mine.api_keys.create(peer, api_key={}), 403, 7)
    expect_status(lambda: mine.api_keys.list(peer), 403, 7)
    peer_key = client.api_keys.create(peer, api_key={})
    expect_status(lambda: mine.api_keys.delete(peer, key_id=peer_key.key_id), 403, 7)
    # A key ID of another user under my path is "not found", not a way to revoke theirs.
    expect_status(lambda: mine.api_keys.delete(me, key_id=peer_key.key_id), 404, 5)
    # The admin revokes anyone's key.
    client.api_keys.delete(peer, key_id=peer_key.key_id)
    expect_status(lambda: sdk(server, peer_key.key, account_id).accounts.get(), 401, 16)


def test_keys_of_missing_user_and_bad_ids(account):
    _, admin_id, client = account
    expect_status(lambda: client.api_keys.create("ghost", api_key={}), 404, 5)
    expect_status(lambda: client.api_keys.list("ghost"), 404, 5)
    expect_status(lambda: client.api_keys.delete(admin_id, key_id="no-such-key"), 404, 5)
    expect_status(lambda: client.api_keys.delete(admin_id, key_id="../../etc"), 400, 3)
    expect_status(lambda: client.api_keys.create(admin_id, api_key={"display_name": "d" * 300}), 400, 3)


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer fw_not_a_real_key"},
    {"Authorization": "Bearer"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer " + "x" * 5000},
    {"x-api-key": "fw_not_a_real_key"},
])
def test_wrong_keys_are_401(server, headers):
    with http(server) as c:
        c.headers.pop("Authorization")
        r = c.get("/v1/accounts", headers=headers)
    assert r.status_code == 401 and r.json()["code"] == 16 and r.headers["x-should-retry"] == "false"


def test_x_api_key_header_works(server):
    with http(server) as c:
        key = c.headers.pop("Authorization")[len("Bearer "):]
        assert c.get("/v1/accounts", headers={"x-api-key": key}).status_code == 200


def test_secrets_are_never_stored(server, account):
    """Every column of every table, read back: no plaintext key anywhere, only its hash."""
    _, admin_id, client = account
    secret = client.api_keys.create(admin_id, api_key={"display_name": "canary"}).key
    url = server.database_url or f"sqlite:///{server.home / 'fireplace.db'}"
    engine = create_engine(normalize_url(url))
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            dump = "\n".join(str(row) for table in meta.sorted_tables for row in conn.execute(select(table)))
    finally:
        engine.dispose()
    assert "canary" in dump and secret not in dump and secret[8:] not in dump
    assert server.api_key not in dump
    assert secret not in server.log_text()


def test_rename_a_key(server, account):
    """PATCH .../apiKeys/{keyId} (our extension): displayName only; its owner or an admin;
    the secret keeps working; a revoked key or another user's key is 404."""
    account_id, admin_id, client = account
    me, peer = add_user(client, "inference-user"), add_user(client, "contributor")
    created = client.api_keys.create(me, api_key={"display_name": "laptop"})
    base = f"/v1/accounts/{account_id}/users/{me}/apiKeys"
    with http(server, created.key) as c:
        renamed = c.patch(f"{base}/{created.key_id}", json={"displayName": "desktop"})
        assert renamed.status_code == 200, renamed.text
        assert renamed.json()["displayName"] == "desktop" and "key" not in renamed.json()
        refused = c.patch(f"{base}/{created.key_id}", json={"expireTime": "2030-01-01T00:00:00Z"})
        assert refused.status_code == 400 and "expireTime" in refused.json()["message"], refused.text
        stale = c.patch(f"{base}/{created.key_id}", json={"displayName": "x"}, headers={"If-Match": "1"})
        assert stale.status_code == 409, stale.text
        peer_key = client.api_keys.create(peer, api_key={})
        assert c.patch(f"/v1/accounts/{account_id}/users/{peer}/apiKeys/{peer_key.key_id}",
                       json={"displayName": "theirs"}).status_code == 403
        assert c.patch(f"{base}/{peer_key.key_id}", json={"displayName": "theirs"}).status_code == 404
    with http(server, client.api_key) as c:   # the admin renames anyone's key
        assert c.patch(f"/v1/accounts/{account_id}/users/{peer}/apiKeys/{peer_key.key_id}",
                       json={"displayName": "ci"}).json()["displayName"] == "ci"
    assert {k.key_id: k.display_name for k in client.api_keys.list(me)}[created.key_id] == "desktop"
    client.api_keys.delete(me, key_id=created.key_id)
    with http(server, client.api_key) as c:
        assert c.patch(f"{base}/{created.key_id}", json={"displayName": "gone"}).status_code == 404
