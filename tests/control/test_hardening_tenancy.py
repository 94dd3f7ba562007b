"""Issue 11, class 3: no cross-tenant path (name filters, public addons over private bases,
publishing, public-model dependents, full names in paths)."""
from __future__ import annotations

import uuid

import pytest

from tests.conftest import http, new_account, sdk
from tests.control.helpers_resources import (expect_error, ready_addon, ready_base_model, uploading_dataset,
                                             uploading_model)


@pytest.fixture
def two_accounts(server):
    a_id, a_key = new_account(server)
    b_id, b_key = new_account(server)
    return (a_id, a_key), (b_id, b_key)


def test_name_filter_compares_full_names(server, two_accounts):
    (a_id, a_key), (b_id, b_key) = two_accounts
    same = f"m-{uuid.uuid4().hex[:6]}"
    uploading_model(server, same, api_key=a_key, account_id=a_id)
    uploading_model(server, same, api_key=b_key, account_id=b_id)
    uploading_dataset(server, same, api_key=a_key, account_id=a_id)
    with http(server, a_key) as c:
        for collection in ("models", "datasets"):
            url = f"/v1/accounts/{a_id}/{collection}"
            other = c.get(url, params={"filter": f'name = "accounts/{b_id}/{collection}/{same}"'}).json()
            assert other[collection] == [], other          # B's name never matches A's row
            own = c.get(url, params={"filter": f'name = "accounts/{a_id}/{collection}/{same}"'}).json()
            assert [r["name"] for r in own[collection]] == [f"accounts/{a_id}/{collection}/{same}"]
            bare = c.get(url, params={"filter": f'name = "{same}"'}).json()
            assert len(bare[collection]) == 1


def test_public_addon_over_a_private_base_answers_like_a_missing_model(server, two_accounts):
    (owner_id, owner_key), (other_id, other_key) = two_accounts
    base = ready_base_model(server, api_key=owner_key, account_id=owner_id)     # private
    addon = ready_addon(server, base, api_key=owner_key, account_id=owner_id)
    sdk(server, owner_key, owner_id).models.update(addon.split("/")[-1], public=True)
    other = sdk(server, other_key, other_id)
    assert other.models.get(addon.split("/")[-1], account_id=owner_id).public is True   # the addon is readable
    missing = f"accounts/{owner_id}/models/no-such-{uuid.uuid4().hex[:6]}"
    refused = expect_error(400, 3, other.deployments.create, base_model=addon)
    absent = expect_error(400, 3, other.deployments.create, base_model=missing)
    assert refused.body["message"] == absent.body["message"].replace(missing, addon)
    assert base not in refused.body["message"] and base.split("/")[-1] not in refused.body["message"]


def test_only_admins_may_publish(server, unique):
    account_id, admin_key = new_account(server)
    contributor = sdk(server, new_account_user(server, account_id, "contributor"), account_id)
    expect_error(403, 7, contributor.models.create, model_id=unique("m"),
                 model={"kind": "HF_BASE_MODEL", "public": True})
    model_id = unique("m")
    contributor.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    expect_error(403, 7, contributor.models.update, model_id, public=True)
    assert sdk(server, admin_key, account_id).models.update(model_id, public=True).public is True


def new_account_user(server, account_id: str, role: str) -> str:
    user_id = f"u-{uuid.uuid4().hex[:8]}"
    with http(server) as c:
        assert c.post(f"/v1/accounts/{account_id}/users", params={"userId": user_id},
                      json={"role": role, "email": f"{user_id}@example.com"}).status_code == 200
        r = c.post(f"/v1/accounts/{account_id}/users/{user_id}/apiKeys", json={"apiKey": {}})
        return r.json()["key"]


def test_owner_sees_and_may_force_past_other_accounts_dependents(server, two_accounts):
    (owner_id, owner_key), (other_id, other_key) = two_accounts
    owner = sdk(server, owner_key, owner_id)
    base = ready_base_model(server, api_key=owner_key, account_id=owner_id)
    base_id = base.split("/")[-1]
    owner.models.update(base_id, public=True)
    uploading_model(server, base_model=base, api_key=other_key, account_id=other_id)   # B's addon pins it
    with http(server, owner_key) as c:
        got = c.get(f"/v1/accounts/{owner_id}/models/{base_id}").json()
        assert got["foreignDependentCount"] == 1
        r = c.delete(f"/v1/accounts/{owner_id}/models/{base_id}")
        assert r.status_code == 400 and r.json()["code"] == 9 and other_id not in r.json()["message"]
        assert c.delete(f"/v1/accounts/{owner_id}/models/{base_id}", params={"force": "true"}).status_code == 200
        assert c.get(f"/v1/accounts/{owner_id}/models/{base_id}").status_code == 404


@pytest.mark.parametrize("collection", ["models", "datasets", "users"])
def test_full_names_in_paths_follow_one_rule(server, two_accounts, collection):
    (a_id, a_key), (b_id, b_key) = two_accounts
    with http(server, a_key) as c:
        if collection == "users":
            own_id = c.get(f"/v1/accounts/{a_id}/users").json()["users"][0]["name"].split("/")[-1]
            other_id = "someone"
        else:
            own_id = other_id = f"x-{uuid.uuid4().hex[:6]}"
            maker = uploading_model if collection == "models" else uploading_dataset
            maker(server, own_id, api_key=a_key, account_id=a_id)
            maker(server, other_id, api_key=b_key, account_id=b_id)
        encoded = f"accounts%2F{a_id}%2F{collection}%2F{own_id}"
        r = c.get(f"/v1/accounts/{a_id}/{collection}/{encoded}")
        assert r.status_code == 200 and r.json()["name"] == f"accounts/{a_id}/{collection}/{own_id}", r.text
        foreign = f"accounts%2F{b_id}%2F{collection}%2F{other_id}"
        r = c.get(f"/v1/accounts/{a_id}/{collection}/{foreign}")
        assert r.status_code == 404 and r.json()["code"] == 5, r.text
