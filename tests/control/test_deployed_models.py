"""Deployed models (the SDK's `client.lora`) against a real server (SQLite and PostgreSQL)."""
from __future__ import annotations

import pytest

from tests.conftest import http, new_account, sdk, user_key
from tests.control.helpers_resources import expect_error, ready_addon, ready_base_model, uploading_model


@pytest.fixture(scope="module")
def base(server) -> str:
    return ready_base_model(server)


@pytest.fixture(scope="module")
def addon(server, base) -> str:
    return ready_addon(server, base)


@pytest.fixture
def deployment(admin, base, unique):
    d = admin.deployments.create(base_model=base, deployment_id=unique("dm"), enable_addons=True)
    yield d.name
    admin.deployments.delete(d.name, hard=True, ignore_checks=True)


def _id(name: str) -> str:
    return name.rsplit("/", 1)[1]


def test_load_get_list_update_unload(server, admin, addon, deployment):
    dm = admin.lora.load(model=addon, deployment=deployment, display_name="my lora", description="d")
    assert dm.name.startswith(f"accounts/{server.account_id}/deployedModels/")
    assert (dm.model, dm.deployment, dm.display_name, dm.description) == (addon, deployment, "my lora", "d")
    # No replica exists, so it is not DEPLOYED yet; the first deployment is the default.
    assert dm.state == "DEPLOYING" and dm.default is True and dm.serverless is False
    assert admin.lora.get(_id(dm.name)).model_dump() == dm.model_dump()
    assert admin.lora.get(dm.name).name == dm.name  # full name in the path
    listed = admin.lora.list(filter=f'deployment="{deployment}"')
    assert [x.name for x in listed] == [dm.name]
    refs = admin.models.get(_id(addon)).deployed_model_refs
    assert [(r.name, r.deployment, r.default) for r in refs] == [(dm.name, deployment, True)]

    upd = admin.lora.update(_id(dm.name), display_name="renamed")
    assert (upd.display_name, upd.description, upd.default) == ("renamed", "d", True)
    expect_error(400, 3, admin.lora.update, _id(dm.name), model=addon + "x")
    expect_error(400, 3, admin.lora.update, _id(dm.name), deployment=deployment + "x")

    admin.lora.unload(_id(dm.name))
    expect_error(404, 5, admin.lora.get, _id(dm.name))
    assert admin.models.get(_id(addon)).deployed_model_refs in (None, [])


def test_default_moves_with_default_true_and_on_unload(server, admin, base, addon, deployment, unique):
    second = admin.deployments.create(base_model=base, deployment_id=unique("dm2"), enable_addons=True).name
    first_dm = admin.lora.load(model=addon, deployment=deployment)
    second_dm = admin.lora.load(model=addon, deployment=second)
    assert first_dm.default and not second_dm.default
    admin.lora.update(_id(second_dm.name), default=True)
    assert not admin.lora.get(_id(first_dm.name)).default and admin.lora.get(_id(second_dm.name)).default
    assert [x.name for x in admin.lora.list(filter=f'model="{addon}" AND default=true')] == [second_dm.name]
    admin.lora.unload(_id(second_dm.name))
    assert admin.lora.get(_id(first_dm.name)).default
    expect_error(400, 9, admin.lora.update, _id(first_dm.name), default=False)  # the only one stays default
    third = admin.lora.load(model=addon, deployment=second, default=True)
    assert third.default and not admin.lora.get(_id(first_dm.name)).default
    admin.lora.unload(_id(third.name))
    admin.lora.unload(_id(first_dm.name))
    admin.deployments.delete(second, hard=True)


def test_load_refusals(server, admin, base, addon, deployment, unique):
    dm = admin.lora.load(model=addon, deployment=deployment)
    again = expect_error(400, 9, admin.lora.load, model=addon, deployment=deployment)  # second load
    assert "already loaded" in again.body["message"]
    plain = admin.deployments.create(base_model=base, deployment_id=unique("plain")).name
    err = expect_error(400, 9, admin.lora.load, model=addon, deployment=plain)
    assert "enableAddons" in err.body["message"]
    other_base = ready_base_model(server)
    foreign_addon = ready_addon(server, other_base)
    err = expect_error(400, 3, admin.lora.load, model=foreign_addon, deployment=deployment)
    assert other_base in err.body["message"]
    expect_error(400, 3, admin.lora.load, model=other_base, deployment=deployment)  # another base model
    expect_error(400, 3, admin.lora.load, model=addon + "-missing", deployment=deployment)
    expect_error(400, 3, admin.lora.load, model=addon, deployment=deployment + "-missing")
    expect_error(400, 9, admin.lora.load, model=uploading_model(server, base_model=base), deployment=deployment)
    expect_error(400, 3, admin.lora.load, model=addon, deployment=plain, serverless=True)
    # The deployment's own base model loads without enableAddons.
    own = admin.lora.load(model=base, deployment=plain)
    assert own.model == base and own.state == "DEPLOYING"
    # A deleted deployment loads nothing; a model in use cannot be deleted.
    admin.deployments.delete(plain, ignore_checks=True)
    expect_error(400, 9, admin.lora.load, model=addon, deployment=plain)
    err = expect_error(400, 9, admin.models.delete, _id(addon))
    assert dm.name in err.body["message"] or deployment in err.body["message"]
    admin.deployments.delete(plain, hard=True)


def test_loaded_addons_quota(server, admin):
    account_id, key = new_account(server)
    client = sdk(server, key, account_id)
    base = ready_base_model(server, api_key=key, account_id=account_id)
    addons = [ready_addon(server, base, api_key=key, account_id=account_id) for _ in range(2)]
    dep = client.deployments.create(base_model=base, enable_addons=True).name
    with http(server) as c:
        r = c.patch(f"/v1/accounts/{account_id}/quotas/loaded-addons", json={"maxValue": "1"})
        assert r.status_code == 200, r.text
    client.lora.load(model=addons[0], deployment=dep)
    err = expect_error(429, 8, client.lora.load, model=addons[1], deployment=dep)
    assert "loaded-addons" in err.body["message"]
    client.lora.load(model=base, deployment=dep)  # the base model is not an addon


def test_isolation_and_roles(server, admin, addon, deployment):
    dm = admin.lora.load(model=addon, deployment=deployment)
    account_id, key = new_account(server)
    stranger = sdk(server, key, account_id)
    theirs = expect_error(404, 5, stranger.lora.get, _id(dm.name), account_id=server.account_id)
    missing = expect_error(404, 5, stranger.lora.get, "no-such-dm", account_id=server.account_id)
    assert theirs.body["message"].replace(_id(dm.name), "X") == missing.body["message"].replace("no-such-dm", "X")
    expect_error(404, 5, stranger.lora.list, account_id=server.account_id)
    expect_error(404, 5, stranger.lora.unload, _id(dm.name), account_id=server.account_id)
    # Loading another account's private addon, or into another account's deployment, looks missing.
    own_base = ready_base_model(server, api_key=key, account_id=account_id)
    own_dep = stranger.deployments.create(base_model=own_base, enable_addons=True).name
    priv = expect_error(400, 3, stranger.lora.load, model=addon, deployment=own_dep)
    gone = expect_error(400, 3, stranger.lora.load, model=addon + "-nope", deployment=own_dep)
    assert priv.body["message"].replace(addon, "X") == gone.body["message"].replace(addon + "-nope", "X")
    expect_error(400, 3, stranger.lora.load, model=own_base, deployment=deployment)
    assert list(stranger.lora.list()) == []
    reader = sdk(server, user_key(server, "user"))
    assert reader.lora.get(_id(dm.name)).name == dm.name
    expect_error(403, 7, reader.lora.unload, _id(dm.name))
    expect_error(403, 7, sdk(server, user_key(server, "inference-user")).lora.list)
    admin.lora.unload(_id(dm.name))
