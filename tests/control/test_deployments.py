"""Deployments through the official SDK against a real server (SQLite and PostgreSQL)."""
from __future__ import annotations

import fireworks
import pytest

from tests.conftest import http, new_account, sdk, user_key
from tests.control.helpers_resources import expect_error, ready_addon, ready_base_model, uploading_model


@pytest.fixture(scope="module")
def base(server) -> str:
    return ready_base_model(server)


@pytest.fixture(scope="module")
def addon(server, base) -> str:
    return ready_addon(server, base)


@pytest.fixture(scope="module")
def other(server) -> tuple[str, str]:
    """A second account: (account_id, admin key)."""
    return new_account(server)


def test_lifecycle_create_get_list_update_soft_delete_undelete_hard_delete(server, admin, base, unique):
    dep_id = unique("dep")
    d = admin.deployments.create(base_model=base, deployment_id=dep_id, display_name="mine", min_replica_count=1,
                                 max_replica_count=3, precision="BF16", enable_addons=True)
    assert d.name == f"accounts/{server.account_id}/deployments/{dep_id}"
    assert d.base_model == base and d.display_name == "mine" and d.enable_addons
    # Nothing serves yet: CREATING, no replicas, never READY.
    assert d.state == "CREATING" and d.replica_count == 0 and d.desired_replica_count == 1
    assert d.replica_stats.ready_replica_count == 0 and d.status.code == "OK"
    assert d.autoscaling_policy is None and d.accelerator_type is None   # not honoured: neither taken nor shown
    assert admin.deployments.get(dep_id).model_dump() == d.model_dump()
    assert dep_id in [x.name.rsplit("/", 1)[1] for x in admin.deployments.list()]

    # PATCH merges the present fields: the rest stays.
    u = admin.deployments.update(dep_id, base_model=base, description="desc", max_replica_count=2)
    assert (u.description, u.display_name, u.min_replica_count, u.max_replica_count) == ("desc", "mine", 1, 2)
    assert u.precision == "BF16" and u.enable_addons

    admin.deployments.delete(dep_id)
    gone = admin.deployments.get(dep_id)
    assert gone.state == "DELETED" and gone.delete_time and gone.purge_time > gone.delete_time
    assert dep_id not in [x.name.rsplit("/", 1)[1] for x in admin.deployments.list()]
    assert dep_id in [x.name.rsplit("/", 1)[1] for x in admin.deployments.list(show_deleted=True)]
    expect_error(400, 9, admin.deployments.update, dep_id, base_model=base, description="x")
    expect_error(400, 9, admin.deployments.delete, dep_id)  # already soft-deleted

    back = admin.deployments.undelete(dep_id, body={})
    assert back.state == "CREATING" and back.delete_time is None and back.display_name == "mine"
    expect_error(400, 9, admin.deployments.undelete, dep_id, body={})  # not deleted

    admin.deployments.delete(dep_id, hard=True)
    missing = expect_error(404, 5, admin.deployments.get, dep_id)
    assert dep_id in missing.body["message"]


def test_full_name_in_path_and_generated_id(admin, base):
    d = admin.deployments.create(base_model=base.rsplit("/", 1)[1])  # an ID means the caller's account
    dep_id = d.name.rsplit("/", 1)[1]
    assert d.base_model == base and dep_id[0].isalpha() and len(dep_id) <= 63
    assert d.min_replica_count == 0 and d.max_replica_count == 1 and d.desired_replica_count == 0
    assert admin.deployments.get(d.name).name == d.name  # full name, percent-encoded by the SDK
    admin.deployments.delete(d.name, hard=True)


def test_validate_only_writes_nothing(admin, base, unique):
    dep_id = unique("dep")
    d = admin.deployments.create(base_model=base, deployment_id=dep_id, validate_only=True, min_replica_count=2)
    assert d.name.endswith(dep_id) and d.state == "CREATING" and d.max_replica_count == 2
    expect_error(404, 5, admin.deployments.get, dep_id)
    expect_error(400, 3, admin.deployments.create, base_model="accounts/nobody/models/x", validate_only=True)


def test_create_refusals(server, admin, base, addon, unique):
    expect_error(400, 3, admin.deployments.create, base_model=f"accounts/{server.account_id}/models/no-such")
    not_ready = uploading_model(server)
    err = expect_error(400, 9, admin.deployments.create, base_model=not_ready)
    assert "READY" in err.body["message"]
    expect_error(400, 3, admin.deployments.create, base_model=base, deployment_id="9starts-with-digit")
    expect_error(400, 3, admin.deployments.create, base_model=base, deployment_id="UPPER")
    expect_error(400, 3, admin.deployments.create, base_model=base, min_replica_count=3, max_replica_count=2)
    expect_error(400, 3, admin.deployments.create, base_model=base, min_replica_count=-1)
    err = expect_error(400, 3, admin.deployments.create, base_model=base, autoscaling_policy={"scaleUpWindow": "45s"})
    assert "autoscalingPolicy" in err.body["message"]   # no autoscaler reads it: refused by name
    expect_error(400, 3, admin.deployments.create, base_model=base, display_name="x" * 5000)
    # Live merge: an addon as the base model, but then enableAddons must be false.
    expect_error(400, 3, admin.deployments.create, base_model=addon, enable_addons=True)
    merged = admin.deployments.create(base_model=addon, deployment_id=unique("merge"))
    assert merged.base_model == addon and not merged.enable_addons
    expect_error(400, 3, admin.deployments.update, merged.name, base_model=addon, enable_addons=True)
    dup = unique("dup")
    admin.deployments.create(base_model=base, deployment_id=dup)
    expect_error(409, 6, admin.deployments.create, base_model=base, deployment_id=dup)
    for name in (merged.name, dup):
        admin.deployments.delete(name, hard=True)


def test_update_rules_and_update_mask(server, admin, base, unique):
    d = admin.deployments.create(base_model=base, deployment_id=unique("upd"), display_name="a", description="b",
                                 min_replica_count=1, max_replica_count=2)
    dep_id = d.name.rsplit("/", 1)[1]
    other_base = "accounts/fireplace/models/other"
    err = expect_error(400, 3, admin.deployments.update, dep_id, base_model=other_base)
    assert "baseModel cannot be changed" in err.body["message"]
    expect_error(400, 3, admin.deployments.update, dep_id, base_model=base, min_replica_count=5)
    with http(server) as c:
        path = f"/v1/accounts/{server.account_id}/deployments/{dep_id}"
        # updateMask: only the named fields change; a masked field absent from the body resets.
        r = c.patch(path, params={"updateMask": "displayName,description"},
                    json={"displayName": "new", "minReplicaCount": 0})
        assert r.status_code == 200, r.text
        assert (r.json()["displayName"], r.json()["description"], r.json()["minReplicaCount"]) == ("new", "", 1)
        r = c.patch(path, params={"updateMask": "state"}, json={"state": "READY"})
        assert r.status_code == 400 and r.json()["code"] == 3
        # Output-only fields in the body are ignored: state, replicaCount, createTime, name.
        before = c.get(path).json()
        r = c.patch(path, json={"state": "READY", "replicaCount": 7, "createTime": "2000-01-01T00:00:00Z",
                                "name": "accounts/x/deployments/y", "createdBy": "someone"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["state"], body["replicaCount"], body["name"]) == ("CREATING", 0, d.name)
        assert body["createTime"] == before["createTime"]
        assert body["createdBy"] == before["createdBy"] == f"accounts/{server.account_id}/users/admin"
    admin.deployments.delete(dep_id, hard=True)


def test_scale(admin, base, unique):
    d = admin.deployments.create(base_model=base, deployment_id=unique("scale"), min_replica_count=0,
                                 max_replica_count=3)
    admin.deployments.scale(d.name.rsplit("/", 1)[1], replica_count=2)
    got = admin.deployments.get(d.name)
    assert got.desired_replica_count == 2 and got.replica_count == 0 and got.state == "CREATING"
    expect_error(400, 3, admin.deployments.scale, d.name.rsplit("/", 1)[1], replica_count=4)
    admin.deployments.delete(d.name, hard=True)


def test_list_filter_order_and_pages(admin, base, unique):
    tag = unique("lst")
    names = [admin.deployments.create(base_model=base, deployment_id=f"{tag}-{i}", display_name=tag,
                                      max_replica_count=1 + i).name for i in range(3)]
    page = admin.deployments.list(filter=f'display_name="{tag}"', page_size=2)
    assert [d.name for d in page.deployments] == names[:2] and page.next_page_token
    assert [d.name for d in page] == names  # the SDK follows nextPageToken
    desc = admin.deployments.list(filter=f'display_name="{tag}" AND max_replica_count > 1',
                                  order_by="max_replica_count desc")
    assert [d.name for d in desc.deployments] == names[:0:-1]
    assert [d.name for d in admin.deployments.list(filter=f'base_model="{base}" AND state="CREATING" '
                                                          f'AND display_name="{tag}"')] == names
    expect_error(400, 3, admin.deployments.list, filter="no_such_field = 1")
    expect_error(400, 3, admin.deployments.list, filter='display_name : "x"')
    for name in names:
        admin.deployments.delete(name, hard=True)


def test_delete_refused_while_models_are_loaded_unless_ignore_checks(admin, base, addon, unique):
    d = admin.deployments.create(base_model=base, deployment_id=unique("busy"), enable_addons=True)
    loaded = admin.lora.load(model=addon, deployment=d.name)
    err = expect_error(400, 9, admin.deployments.delete, d.name)
    assert "ignoreChecks" in err.body["message"]
    expect_error(400, 9, admin.deployments.update, d.name, base_model=base, enable_addons=False)
    admin.deployments.delete(d.name, ignore_checks=True)
    expect_error(404, 5, admin.lora.get, loaded.name.rsplit("/", 1)[1])
    assert admin.deployments.get(d.name).state == "DELETED"
    admin.deployments.delete(d.name, hard=True)


def test_model_in_use_by_a_deployment_cannot_be_deleted(server, admin, unique):
    model = ready_base_model(server)
    d = admin.deployments.create(base_model=model, deployment_id=unique("use"))
    err = expect_error(400, 9, admin.models.delete, model.rsplit("/", 1)[1])
    assert d.name in err.body["message"]
    admin.deployments.delete(d.name, hard=True)
    admin.models.delete(model.rsplit("/", 1)[1])


def test_quotas_deployments_and_replicas(server, admin, base):
    account_id, key = new_account(server)
    client = sdk(server, key, account_id)
    own_base = ready_base_model(server, api_key=key, account_id=account_id)
    for quota_id, value in (("deployments", 1), ("replicas", 3)):
        with http(server) as c:
            r = c.patch(f"/v1/accounts/{account_id}/quotas/{quota_id}", json={"maxValue": str(value)})
            assert r.status_code == 200, r.text
    first = client.deployments.create(base_model=own_base, max_replica_count=2)
    err = expect_error(429, 8, client.deployments.create, base_model=own_base)
    assert "deployments" in err.body["message"]
    err = expect_error(429, 8, client.deployments.update, first.name, base_model=own_base, max_replica_count=4)
    assert "replicas" in err.body["message"]
    client.deployments.update(first.name, base_model=own_base, max_replica_count=3)
    client.deployments.delete(first.name)  # soft-deleted ones do not count
    second = client.deployments.create(base_model=own_base)
    expect_error(429, 8, client.deployments.undelete, first.name, body={})
    assert second.state == "CREATING"


def test_another_accounts_deployment_looks_missing(server, admin, base, other, unique):
    account_id, key = other
    stranger = sdk(server, key, account_id)
    d = admin.deployments.create(base_model=base, deployment_id=unique("priv"))
    dep_id = d.name.rsplit("/", 1)[1]
    theirs = expect_error(404, 5, stranger.deployments.get, dep_id, account_id=server.account_id)
    missing = expect_error(404, 5, stranger.deployments.get, "no-such-dep", account_id=server.account_id)
    assert theirs.body["code"] == missing.body["code"] and theirs.body.keys() == missing.body.keys()
    assert theirs.body["message"].replace(dep_id, "X") == missing.body["message"].replace("no-such-dep", "X")
    for call in (lambda: stranger.deployments.list(account_id=server.account_id),
                 lambda: stranger.deployments.delete(dep_id, account_id=server.account_id),
                 lambda: stranger.deployments.create(base_model=base, account_id=server.account_id)):
        expect_error(404, 5, call)
    # Another account's private model as baseModel answers like a missing one.
    priv = expect_error(400, 3, stranger.deployments.create, base_model=base)
    gone = expect_error(400, 3, stranger.deployments.create, base_model=base + "-nope")
    assert priv.body["message"].replace(base, "X") == gone.body["message"].replace(base + "-nope", "X")
    assert [x.name for x in stranger.deployments.list()] == []
    admin.deployments.delete(dep_id, hard=True)


def test_roles(server, base, unique):
    reader = sdk(server, user_key(server, "user"))
    inference = sdk(server, user_key(server, "inference-user"))
    contributor = sdk(server, user_key(server, "contributor"))
    d = contributor.deployments.create(base_model=base, deployment_id=unique("role"))
    assert reader.deployments.get(d.name).name == d.name
    expect_error(403, 7, reader.deployments.create, base_model=base)
    expect_error(403, 7, reader.deployments.delete, d.name)
    expect_error(403, 7, inference.deployments.get, d.name)
    expect_error(403, 7, inference.deployments.list)
    contributor.deployments.delete(d.name, hard=True)


def test_bad_keys_are_401(server):
    bad = sdk(server, "fw_not_a_key")
    err = expect_error(401, 16, bad.deployments.list)
    assert isinstance(err, fireworks.AuthenticationError)
