"""The HTTP edge every resource shares: health, request ids, the one error shape, limits."""
from __future__ import annotations

import httpx

from tests.conftest import http


def test_health_and_readiness(server):
    assert httpx.get(f"{server.base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.base_url}/readyz").json() == {"status": "ready"}


def test_every_response_has_a_request_id(server):
    ok = httpx.get(f"{server.base_url}/healthz")
    unauth = httpx.get(f"{server.base_url}/v1/accounts")
    missing = httpx.get(f"{server.base_url}/no/such/path")
    for r in (ok, unauth, missing):
        assert len(r.headers["x-request-id"]) >= 16
    echoed = httpx.get(f"{server.base_url}/healthz", headers={"x-request-id": "trace-abc.123"})
    assert echoed.headers["x-request-id"] == "trace-abc.123"
    hostile = httpx.get(f"{server.base_url}/healthz", headers={"x-request-id": "a b<script>"})
    assert hostile.headers["x-request-id"] != "a b<script>"


def test_missing_and_wrong_keys_are_401_in_the_error_shape(server):
    for headers in ({}, {"Authorization": "Bearer fw_nope"}, {"x-api-key": "fw_nope"}):
        r = httpx.get(f"{server.base_url}/v1/accounts", headers=headers)
        assert r.status_code == 401
        body = r.json()
        assert body["code"] == 16 and body["message"] and body["details"] == []
        assert r.headers["x-should-retry"] == "false"


def test_x_api_key_header_authenticates(server):
    r = httpx.get(f"{server.base_url}/v1/accounts/{server.account_id}", headers={"x-api-key": server.api_key})
    assert r.status_code == 200, r.text


def test_unknown_path_is_404_in_the_error_shape(server):
    with http(server) as c:
        r = c.get("/v1/accounts/x/nothing-here")
    assert r.status_code == 404
    assert r.json()["code"] == 5


def test_oversized_json_body_is_413(server):
    with http(server) as c:
        r = c.post(f"/v1/accounts/{server.account_id}/datasets", content=b"{" + b" " * (2 << 20) + b"}",
                   headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["code"] == 3


def test_malformed_json_is_400_not_500(server):
    with http(server) as c:
        r = c.post(f"/v1/accounts/{server.account_id}/datasets", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["code"] == 3


def test_openapi_describes_the_resource_paths(server):
    spec = httpx.get(f"{server.base_url}/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/accounts", "/v1/accounts/{account_id}/models", "/v1/accounts/{account_id}/datasets",
                 "/v1/accounts/{account_id}/deployments", "/v1/accounts/{account_id}/deployedModels",
                 "/v1/accounts/{account_id}/supervisedFineTuningJobs", "/v1/accounts/{account_id}/quotas"):
        assert path in paths, path
