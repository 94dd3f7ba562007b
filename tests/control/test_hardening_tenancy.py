"""Issue 11, class 3: no cross-tenant path (name filters, public addons over private bases,
publishing, public-model dependents, full names in paths)."""
from __future__ import annotations

import uuid

import pytest

from tests.conftest import http, new_account, sdk
from tests.control.helpers_resources import (expect_error, ready_addon, ready_base_model, ready_dataset,
                                             uploading_dataset, uploading_model)


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


def test_public_addon_over_a_private_base_answers_like_a_missing_model(quiet_server):
    """A public addon must not expose its owner's private base: GET and list name no base,
    and deploying, loading (deployedModels) or warm-starting from it is refused with the
    answer a missing model gets; no message names the base or its state."""
    server = quiet_server
    owner_id, owner_key = new_account(server)
    other_id, other_key = new_account(server)
    base = ready_base_model(server, api_key=owner_key, account_id=owner_id)     # private
    addon = ready_addon(server, base, api_key=owner_key, account_id=owner_id)
    addon_id = addon.split("/")[-1]
    sdk(server, owner_key, owner_id).models.update(addon_id, public=True)
    other = sdk(server, other_key, other_id)

    def hides_base(text: str) -> None:
        assert base not in text and base.split("/")[-1] not in text, text

    # GET: the addon is readable, its base is not named
    with http(server, other_key) as c:
        got = c.get(f"/v1/{addon}")
        assert got.status_code == 200 and got.json()["public"] is True, got.text
        assert got.json()["peftDetails"]["baseModel"] == "", got.text
        hides_base(got.text)
    assert other.models.get(addon_id, account_id=owner_id).peft_details.base_model == ""
    # ... while its owner still sees it
    assert sdk(server, owner_key, owner_id).models.get(addon_id).peft_details.base_model == base
    # list: a public addon in the catalog (the one account others can list) over that private base
    catalog_addon = ready_addon(server, base, api_key=server.api_key, account_id="fireplace")
    sdk(server).models.update(catalog_addon.split("/")[-1], account_id="fireplace", public=True)
    with http(server, other_key) as c:
        listed = c.get("/v1/accounts/fireplace/models", params={"pageSize": 200})
        assert listed.status_code == 200, listed.text
        row = next(m for m in listed.json()["models"] if m["name"] == catalog_addon)
        assert row["peftDetails"]["baseModel"] == ""
        hides_base(listed.text)

    missing = f"accounts/{owner_id}/models/no-such-{uuid.uuid4().hex[:6]}"

    def same_as_missing(call, **kw) -> None:
        refused = expect_error(400, 3, call, **{k: (addon if v is None else v) for k, v in kw.items()})
        absent = expect_error(400, 3, call, **{k: (missing if v is None else v) for k, v in kw.items()})
        assert refused.body["message"] == absent.body["message"].replace(missing, addon)
        hides_base(refused.body["message"])

    # deploy (live merge) and warm start
    same_as_missing(other.deployments.create, base_model=None)
    dataset = ready_dataset(server, api_key=other_key, account_id=other_id)
    same_as_missing(other.supervised_fine_tuning_jobs.create, dataset=dataset, warm_start_from=None)
    # load into a deployment of the caller's own base
    own_base = ready_base_model(server, api_key=other_key, account_id=other_id)
    deployment = other.deployments.create(base_model=own_base, enable_addons=True, max_replica_count=1).name
    same_as_missing(other.lora.load, deployment=deployment, model=None)


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


def _own_and_foreign(server, collection: str, a: tuple[str, str], b: tuple[str, str]) -> tuple[str, str]:
    """(a full name of A's, one of B's) in `collection`: existing resources, so only the
    account in the name tells them apart."""
    names = []
    for account_id, key in (a, b):
        client = sdk(server, key, account_id)
        with http(server, key) as c:
            user = c.get(f"/v1/accounts/{account_id}/users").json()["users"][0]["name"]
            if collection == "accounts":
                names.append(f"accounts/{account_id}")
            elif collection == "users":
                names.append(user)
            elif collection == "apiKeys":
                names.append(c.post(f"/v1/{user}/apiKeys", json={"apiKey": {}}).json()["name"])
            elif collection == "quotas":
                names.append(f"accounts/{account_id}/quotas/deployments")
            elif collection == "models":
                names.append(uploading_model(server, api_key=key, account_id=account_id))
            elif collection == "datasets":
                names.append(uploading_dataset(server, api_key=key, account_id=account_id))
            else:
                base = ready_base_model(server, api_key=key, account_id=account_id)
                if collection == "supervisedFineTuningJobs":
                    dataset = ready_dataset(server, api_key=key, account_id=account_id)
                    names.append(client.supervised_fine_tuning_jobs.create(dataset=dataset, base_model=base).name)
                    continue
                deployment = client.deployments.create(base_model=base, max_replica_count=1).name
                names.append(deployment if collection == "deployments"
                             else client.lora.load(model=base, deployment=deployment).name)
    return names[0], names[1]


def _in_path(name: str) -> str:
    """The full name as the SDK puts it in a path segment (slashes percent-encoded)."""
    return name.replace("/", "%2F")


COLLECTIONS = ["accounts", "users", "apiKeys", "quotas", "models", "datasets", "deployments", "deployedModels",
               "supervisedFineTuningJobs"]


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_full_names_in_paths_follow_one_rule(quiet_server, collection):
    """Every resource path takes the resource's ID or its full name (the SDK percent-encodes
    the slashes); a full name in another account answers exactly like a missing resource
    (404 NOT_FOUND), never "no such path". Checked on GET, PATCH and the sub-paths."""
    server = quiet_server
    a, b = new_account(server), new_account(server)
    own, foreign = _own_and_foreign(server, collection, a, b)
    a_id, a_key = a
    # the URL under A's account of a resource named `name`, as the SDK builds it
    parent = {"accounts": "/v1/accounts", "apiKeys": "/v1/" + own.rsplit("/apiKeys/", 1)[0] + "/apiKeys"}.get(
        collection, f"/v1/accounts/{a_id}/{collection}")
    patch_key = server.api_key if collection == "quotas" else a_key   # quotas: platform admins only
    body = {"maxValue": "5"} if collection == "quotas" else {"displayName": "renamed"}
    with http(server, a_key) as c, http(server, patch_key) as p:
        if collection != "apiKeys":   # an API key has no GET (it is listed under its user)
            r = c.get(f"{parent}/{_in_path(own)}")
            assert r.status_code == 200 and r.json()["name"] == own, r.text
            r = c.get(f"{parent}/{_in_path(foreign)}")
            assert r.status_code == 404 and r.json()["code"] == 5, r.text
            assert "no such path" not in r.json()["message"], r.text
        r = p.patch(f"{parent}/{_in_path(own)}", json=body)
        assert r.status_code == 200 and r.json()["name"] == own, r.text
        r = p.patch(f"{parent}/{_in_path(foreign)}", json=body)
        assert r.status_code == 404 and r.json()["code"] == 5 and "no such path" not in r.json()["message"], r.text
        if collection == "supervisedFineTuningJobs":
            for sub in ("metrics", "events", "checkpoints"):
                assert c.get(f"{parent}/{_in_path(own)}/{sub}").status_code == 200
                assert c.get(f"{parent}/{_in_path(foreign)}/{sub}").status_code == 404
        if collection == "apiKeys":   # the :delete verb takes the same rule in its body
            r = c.post(f"{parent}:delete", json={"keyId": foreign})
            assert r.status_code == 404 and r.json()["code"] == 5, r.text
            assert c.post(f"{parent}:delete", json={"keyId": own}).status_code == 200
