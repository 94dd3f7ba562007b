"""Quotas and usage (Fireplace extensions): read by the account, changed by a platform admin,
enforced as 429 RESOURCE_EXHAUSTED naming the quota."""
from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from fireplace.control.quotas.definitions import QUOTAS, enforce_quota
from fireplace.errors import ResourceExhausted
from tests.conftest import http, new_account

MAX_INT64 = str((1 << 63) - 1)


@pytest.fixture
def account(server):
    return new_account(server)


def test_list_quotas(server, account):
    account_id, key = account
    with http(server, key) as c:
        r = c.get(f"/v1/accounts/{account_id}/quotas")
    assert r.status_code == 200, r.text
    quotas = {q["quotaId"]: q for q in r.json()["quotas"]}
    assert set(quotas) == set(QUOTAS) and r.json()["totalSize"] == len(QUOTAS)
    for quota_id, q in quotas.items():
        assert q["name"] == f"accounts/{account_id}/quotas/{quota_id}"
        assert q["maxValue"] == str(QUOTAS[quota_id].default) == q["defaultValue"]
        assert isinstance(q["usage"], str) and int(q["usage"]) >= 0
        assert q["status"]["code"] == "OK" and q["description"] and q["unit"]


def test_get_quota_and_unknown_quota(server, account):
    account_id, key = account
    with http(server, key) as c:
        r = c.get(f"/v1/accounts/{account_id}/quotas/deployments")
        assert r.status_code == 200 and r.json()["maxValue"] == str(QUOTAS["deployments"].default)
        missing = c.get(f"/v1/accounts/{account_id}/quotas/gpus-on-the-moon")
    assert missing.status_code == 404 and missing.json()["code"] == 5
    assert "gpus-on-the-moon" in missing.json()["message"]


def test_platform_admin_changes_a_quota(server, account):
    account_id, key = account
    with http(server) as c:
        r = c.patch(f"/v1/accounts/{account_id}/quotas/replicas", json={"maxValue": "3"})
        assert r.status_code == 200, r.text
        assert r.json()["maxValue"] == "3" and r.json()["defaultValue"] == str(QUOTAS["replicas"].default)
        assert r.json()["updateTime"]
        r = c.patch(f"/v1/accounts/{account_id}/quotas/replicas", json={"maxValue": 7})
        assert r.json()["maxValue"] == "7"
        r = c.patch(f"/v1/accounts/{account_id}/quotas/dataset-bytes", json={"maxValue": MAX_INT64})
        assert r.json()["maxValue"] == MAX_INT64
    with http(server, key) as c:
        assert c.get(f"/v1/accounts/{account_id}/quotas/replicas").json()["maxValue"] == "7"
        listed = {q["quotaId"]: q["maxValue"] for q in c.get(f"/v1/accounts/{account_id}/quotas").json()["quotas"]}
    assert listed["replicas"] == "7" and listed["dataset-bytes"] == MAX_INT64
    assert listed["deployments"] == str(QUOTAS["deployments"].default)


@pytest.mark.parametrize("body,params", [
    ({"maxValue": -1}, {}),
    ({"maxValue": "lots"}, {}),
    ({"maxValue": str(1 << 63)}, {}),
    ({"maxValue": True}, {}),
    ({}, {}),
    ({"maxValue": 5}, {"updateMask": "description"}),
])
def test_bad_quota_updates_are_400(server, account, body, params):
    account_id, _ = account
    with http(server) as c:
        r = c.patch(f"/v1/accounts/{account_id}/quotas/replicas", json=body, params=params)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 3


def test_only_platform_admin_changes_quotas(server, account):
    account_id, key = account
    with http(server, key) as c:
        r = c.patch(f"/v1/accounts/{account_id}/quotas/replicas", json={"maxValue": 1000})
        assert r.status_code == 403 and r.json()["code"] == 7
        assert c.get(f"/v1/accounts/{account_id}/quotas/replicas").json()["maxValue"] == str(QUOTAS["replicas"].default)


def test_other_accounts_quotas_are_invisible(server, account):
    account_id, _ = account
    _, other_key = new_account(server)
    with http(server, other_key) as c:
        for method, path, body in [("GET", "quotas", None), ("GET", "quotas/replicas", None),
                                   ("PATCH", "quotas/replicas", {"maxValue": 1}), ("GET", "usage", None)]:
            hidden = c.request(method, f"/v1/accounts/{account_id}/{path}", json=body)
            missing = c.request(method, f"/v1/accounts/no-such-account/{path}", json=body)
            assert hidden.status_code == missing.status_code == 404, (path, hidden.text)
            assert hidden.json()["code"] == missing.json()["code"] == 5
            assert hidden.json()["message"].replace(account_id, "X") == \
                missing.json()["message"].replace("no-such-account", "X")


def test_usage_matches_quotas(server, account):
    account_id, key = account
    with http(server, key) as c:
        usage = c.get(f"/v1/accounts/{account_id}/usage")
        quotas = c.get(f"/v1/accounts/{account_id}/quotas").json()["quotas"]
    assert usage.status_code == 200, usage.text
    assert usage.json()["name"] == f"accounts/{account_id}/usage"
    assert usage.json()["usage"] == {q["quotaId"]: q["usage"] for q in quotas}


def test_enforce_quota_names_the_quota(tmp_path):
    """The one check every create path calls (unit: a real SQLite database, no server)."""
    from fireplace.control.accounts.tables import AccountRow
    from fireplace.control.quotas.tables import QuotaRow
    from fireplace.db.base import Base
    import fireplace.db.all_tables  # noqa: F401

    engine = create_engine(f"sqlite:///{tmp_path / 'q.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(AccountRow(account_id="acme", email="a@example.com"))
        session.add(QuotaRow(account_id="acme", quota_id="deployments", max_value=2))
        session.commit()
        enforce_quota(session, "acme", "deployments", usage=1)
        with pytest.raises(ResourceExhausted) as info:
            enforce_quota(session, "acme", "deployments", usage=2)
        assert "deployments" in info.value.message and info.value.http_status == 429
        assert info.value.grpc_code == 8
        # Without an override, the default applies.
        enforce_quota(session, "acme", "replicas", usage=QUOTAS["replicas"].default - 1)
        with pytest.raises(ResourceExhausted):
            enforce_quota(session, "acme", "replicas", usage=QUOTAS["replicas"].default, adding=1)
    engine.dispose()


def _has_path(server, path: str) -> bool:
    with http(server) as c:
        return path in c.get("/openapi.json").json()["paths"]


def test_creating_past_a_quota_is_429(server, account):
    """End to end through a resource that counts against a quota (once its owner has built it):
    uploading a dataset larger than the account's dataset-bytes quota."""
    if not _has_path(server, "/v1/accounts/{account_id}/datasets/{dataset_id}:upload"):
        pytest.skip("dataset upload endpoint not present yet")
    account_id, key = account
    with http(server) as c:
        assert c.patch(f"/v1/accounts/{account_id}/quotas/dataset-bytes", json={"maxValue": 10}).status_code == 200
    dataset_id = f"ds-{uuid.uuid4().hex[:8]}"
    lines = "".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n" for i in range(3))
    with http(server, key) as c:
        r = c.post(f"/v1/accounts/{account_id}/datasets",
                   json={"datasetId": dataset_id, "dataset": {"userUploaded": {}, "format": "CHAT"}})
        assert r.status_code == 200, r.text
        r = c.post(f"/v1/accounts/{account_id}/datasets/{dataset_id}:upload",
                   files={"file": ("train.jsonl", lines.encode(), "application/jsonl")})
    assert r.status_code == 429, r.text
    assert r.json()["code"] == 8 and "dataset-bytes" in r.json()["message"]
