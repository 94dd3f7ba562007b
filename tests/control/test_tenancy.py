"""Tenancy and roles, end to end.

Roles (least to most): inference-user (inference only; on the control plane it may read only its
own account and user, and manage its own keys) < user (read the account) < contributor (+ create
and manage models, datasets, deployments, jobs) < admin (+ users and everyone's keys). Quotas and
accounts change only by a platform admin. A wrong, revoked or expired key is 401. Another
account's private resource answers exactly like a missing one.

Rows for other packages' endpoints run once those endpoints exist (checked in /openapi.json).
"""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import http, new_account

ROLES = ("inference-user", "user", "contributor", "admin")
ALL, READERS, WRITERS, ADMINS, NOBODY = set(ROLES), set(ROLES[1:]), set(ROLES[2:]), {"admin"}, set()
SMOL = "accounts/fireplace/models/smollm2-135m-instruct"


def uid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_user(server, role: str) -> tuple[str, str]:
    """(user_id, api key) of a new user of `role` in the server's first account."""
    user_id = uid("u")
    with http(server) as c:
        r = c.post(f"/v1/accounts/{server.account_id}/users", params={"userId": user_id},
                   json={"role": role, "email": f"{user_id}@example.com"})
        assert r.status_code == 200, r.text
        r = c.post(f"/v1/accounts/{server.account_id}/users/{user_id}/apiKeys", json={"apiKey": {}})
        assert r.status_code == 200, r.text
        return user_id, r.json()["key"]


@pytest.fixture(scope="module")
def people(server):
    """One user per role, plus a peer (role user) everyone else acts on."""
    people = {role: make_user(server, role) for role in ROLES}
    people["peer"] = make_user(server, "user")
    return people


# (method, path, params, body, roles allowed). {a}: the account, {me}: the caller, {peer}: another user,
# {new}: a fresh ID. The body is always valid, so a refusal can only come from the role check.
OWN_ROWS = [
    ("GET", "/v1/accounts", {}, None, ALL),
    ("GET", "/v1/accounts/{a}", {}, None, ALL),
    ("GET", "/v1/accounts/{a}/users/{me}", {}, None, ALL),
    ("POST", "/v1/accounts/{a}/users/{me}/apiKeys", {}, {"apiKey": {}}, ALL),
    ("GET", "/v1/accounts/{a}/users/{me}/apiKeys", {}, None, ALL),
    ("GET", "/v1/accounts/{a}/users", {}, None, READERS),
    ("GET", "/v1/accounts/{a}/users/{peer}", {}, None, READERS),
    ("GET", "/v1/accounts/{a}/quotas", {}, None, READERS),
    ("GET", "/v1/accounts/{a}/quotas/replicas", {}, None, READERS),
    ("GET", "/v1/accounts/{a}/usage", {}, None, READERS),
    ("POST", "/v1/accounts/{a}/users", {"userId": "{new}"}, {"role": "user", "email": "{new}@example.com"}, ADMINS),
    ("PATCH", "/v1/accounts/{a}/users/{peer}", {}, {"displayName": "renamed"}, ADMINS),
    ("POST", "/v1/accounts/{a}/users/{peer}/apiKeys", {}, {"apiKey": {}}, ADMINS),
    ("GET", "/v1/accounts/{a}/users/{peer}/apiKeys", {}, None, ADMINS),
    ("POST", "/v1/accounts/{a}/users/{peer}/apiKeys:delete", {}, {"keyId": "no-such-key"}, ADMINS),
    ("PATCH", "/v1/accounts/{a}/quotas/replicas", {}, {"maxValue": 16}, NOBODY),
    ("POST", "/v1/accounts", {}, {"email": "{new}@example.com"}, NOBODY),
]
OTHER_ROWS = [
    *[("GET", f"/v1/accounts/{{a}}/{c}", {}, None, READERS)
      for c in ("models", "datasets", "deployments", "deployedModels", "supervisedFineTuningJobs")],
    ("POST", "/v1/accounts/{a}/datasets", {}, {"datasetId": "{new}", "dataset": {"userUploaded": {}, "format": "CHAT"}},
     WRITERS),
    ("POST", "/v1/accounts/{a}/models", {}, {"modelId": "{new}", "model": {"kind": "HF_BASE_MODEL"}}, WRITERS),
    ("POST", "/v1/accounts/{a}/deployments", {"deploymentId": "{new}", "validateOnly": "true"},
     {"baseModel": SMOL, "minReplicaCount": 0}, WRITERS),
    ("POST", "/v1/accounts/{a}/supervisedFineTuningJobs", {"supervisedFineTuningJobId": "{new}"},
     {"dataset": "accounts/{a}/datasets/{new}", "baseModel": SMOL}, WRITERS),
    ("POST", "/v1/accounts/{a}/deployedModels", {},
     {"model": SMOL, "deployment": "accounts/{a}/deployments/{new}"}, WRITERS),
]


def fill(value, values: dict):
    if isinstance(value, str):
        return value.format(**values)
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def paths(server) -> set[str]:
    with http(server) as c:
        return set(c.get("/openapi.json").json()["paths"])


def _template(path: str) -> str:
    """'/v1/accounts/{a}/users/{me}' -> the OpenAPI path it is served under."""
    return (path.replace("{a}", "{account_id}").replace("{me}", "{user_id}").replace("{peer}", "{user_id}"))


def run_row(server, people, row, role):
    method, path, params, body, allowed = row
    user_id, key = people[role]
    values = {"a": server.account_id, "me": user_id, "peer": people["peer"][0], "new": uid("n")}
    with http(server, key) as c:
        return c.request(method, fill(path, values), params=fill(params, values), json=fill(body, values))


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("row", OWN_ROWS, ids=lambda r: f"{r[0]} {r[1]}")
def test_role_matrix_own_endpoints(server, people, row, role):
    r = run_row(server, people, row, role)
    if role in row[4]:
        expected = 404 if row[1].endswith(":delete") else 200  # deleting a key that is not there
        assert r.status_code == expected, r.text
    else:
        assert r.status_code == 403, r.text
        assert r.json()["code"] == 7 and r.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("row", OTHER_ROWS, ids=lambda r: f"{r[0]} {r[1]}")
def test_role_matrix_other_resources(server, people, paths, row, role):
    if _template(row[1]) not in paths:
        pytest.skip(f"{row[1]} not served yet")
    r = run_row(server, people, row, role)
    if role in row[4]:
        assert r.status_code not in (401, 403), r.text
        assert r.status_code < 500, r.text
    else:
        assert r.status_code == 403, r.text
        assert r.json()["code"] == 7


# ---------------------------------------------------------------- keys that must not work

def _status(server, key: str) -> tuple[int, int]:
    with http(server, key) as c:
        r = c.get(f"/v1/accounts/{server.account_id}")
        return r.status_code, r.json()["code"] if r.status_code != 200 else 0


def test_wrong_revoked_and_expired_keys_are_401(server, people):
    assert _status(server, "fw_" + "0" * 43) == (401, 16)
    assert _status(server, server.api_key + "x") == (401, 16)
    user_id, _ = people["contributor"]
    with http(server) as c:
        base = f"/v1/accounts/{server.account_id}/users/{user_id}/apiKeys"
        doomed = c.post(base, json={"apiKey": {}}).json()
        assert _status(server, doomed["key"]) == (200, 0)
        assert c.post(base + ":delete", json={"keyId": doomed["keyId"]}).status_code == 200
        assert _status(server, doomed["key"]) == (401, 16)
        soon = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
        fleeting = c.post(base, json={"apiKey": {"expireTime": soon}}).json()
        assert _status(server, fleeting["key"]) == (200, 0)
        time.sleep(1.3)
        assert _status(server, fleeting["key"]) == (401, 16)


# ---------------------------------------------------------------- isolation

@pytest.fixture(scope="module")
def two_accounts(server):
    """A with a user and a key; B's admin key. B must learn nothing about A."""
    a, a_key = new_account(server)
    b, b_key = new_account(server)
    with http(server, a_key) as c:
        victim = uid("v")
        assert c.post(f"/v1/accounts/{a}/users", params={"userId": victim},
                      json={"role": "user", "email": f"{victim}@example.com"}).status_code == 200
        key = c.post(f"/v1/accounts/{a}/users/{victim}/apiKeys", json={"apiKey": {}}).json()
    return {"a": a, "b": b, "b_key": b_key, "victim": victim, "key_id": key["keyId"], "a_key": a_key}


# Each probe runs twice as B: on A's real resource and on a missing one; answers must match.
PROBES = [
    ("GET", "/v1/accounts/{acct}", None),
    ("GET", "/v1/accounts/{acct}/users", None),
    ("GET", "/v1/accounts/{acct}/users/{user}", None),
    ("PATCH", "/v1/accounts/{acct}/users/{user}", {"role": "admin"}),
    ("POST", "/v1/accounts/{acct}/users", {"role": "admin", "email": "intruder@example.com"}),
    ("GET", "/v1/accounts/{acct}/users/{user}/apiKeys", None),
    ("POST", "/v1/accounts/{acct}/users/{user}/apiKeys", {"apiKey": {}}),
    ("POST", "/v1/accounts/{acct}/users/{user}/apiKeys:delete", {"keyId": "{key}"}),
    ("GET", "/v1/accounts/{acct}/quotas", None),
    ("GET", "/v1/accounts/{acct}/quotas/deployments", None),
    ("PATCH", "/v1/accounts/{acct}/quotas/deployments", {"maxValue": 999}),
    ("GET", "/v1/accounts/{acct}/usage", None),
]


@pytest.mark.parametrize("method,path,body", PROBES, ids=lambda p: str(p))
def test_other_account_looks_missing(server, two_accounts, method, path, body):
    t = two_accounts
    real = {"acct": t["a"], "user": t["victim"], "key": t["key_id"]}
    fake = {"acct": "no-such-acct", "user": "no-such-user", "key": "kdeadbeef00000000"}
    with http(server, t["b_key"]) as c:
        hidden = c.request(method, fill(path, real), json=fill(body, real))
        missing = c.request(method, fill(path, fake), json=fill(body, fake))
    assert hidden.status_code == missing.status_code == 404, hidden.text
    assert hidden.json()["code"] == missing.json()["code"] == 5
    assert set(hidden.json()) == set(missing.json()) == {"code", "message", "details"}

    def blind(text: str, names: dict) -> str:
        for placeholder, value in (("ACCT", names["acct"]), ("USER", names["user"])):
            text = text.replace(value, placeholder)
        return text
    assert blind(hidden.json()["message"], real) == blind(missing.json()["message"], fake)
    skip = {"x-request-id", "date", "content-length"}
    assert {k: v for k, v in hidden.headers.items() if k not in skip} == \
        {k: v for k, v in missing.headers.items() if k not in skip}


@pytest.mark.parametrize("collection", ["models", "datasets", "deployments", "deployedModels",
                                        "supervisedFineTuningJobs"])
def test_other_account_collections_look_missing(server, paths, two_accounts, collection):
    if f"/v1/accounts/{{account_id}}/{collection}" not in paths:
        pytest.skip(f"{collection} not served yet")
    t = two_accounts
    with http(server, t["b_key"]) as c:
        hidden = c.get(f"/v1/accounts/{t['a']}/{collection}")
        missing = c.get(f"/v1/accounts/no-such-acct/{collection}")
        hidden_item = c.get(f"/v1/accounts/{t['a']}/{collection}/some-item")
        missing_item = c.get(f"/v1/accounts/no-such-acct/{collection}/some-item")
    assert hidden.status_code == missing.status_code == hidden_item.status_code == missing_item.status_code == 404
    assert hidden.json()["message"].replace(t["a"], "X") == missing.json()["message"].replace("no-such-acct", "X")
    assert hidden_item.json()["message"].replace(t["a"], "X") == \
        missing_item.json()["message"].replace("no-such-acct", "X")


def test_b_cannot_use_a_key_of_a_in_b(server, two_accounts):
    """A's key authenticates as A only: naming B's account with it is 'not found'."""
    t = two_accounts
    with http(server, t["a_key"]) as c:
        assert c.get(f"/v1/accounts/{t['b']}").status_code == 404
        assert c.get(f"/v1/accounts/{t['a']}").status_code == 200


def test_platform_admin_reaches_every_account(server, two_accounts):
    t = two_accounts
    with http(server) as c:
        assert c.get(f"/v1/accounts/{t['a']}").status_code == 200
        assert c.get(f"/v1/accounts/{t['a']}/users/{t['victim']}").status_code == 200
        assert c.get(f"/v1/accounts/{t['b']}/quotas").status_code == 200


def test_public_catalog_is_readable_not_writable(server, two_accounts):
    t = two_accounts
    with http(server, t["b_key"]) as c:
        assert c.get("/v1/accounts/fireplace").status_code == 200
        r = c.post("/v1/accounts/fireplace/users", params={"userId": uid()},
                   json={"role": "admin", "email": "me@example.com"})
        assert r.status_code == 404 and r.json()["code"] == 5
        r = c.patch("/v1/accounts/fireplace/quotas/deployments", json={"maxValue": 1})
        assert r.status_code == 403 and r.json()["code"] == 7
