"""Issue 11, class 5: serialized quotas and invariants under concurrent requests, on SQLite
and PostgreSQL, and etags (AIP-154): a stale one is 409 ABORTED, and read-modify-write
clients that send theirs never lose an update."""
from __future__ import annotations

import threading
import uuid

import httpx

from tests.conftest import http, new_account, sdk
from tests.control.helpers_resources import ready_addon, ready_base_model

N_CLIENTS = 12


def _together(n: int, work) -> list:
    """Run work(i) in n threads released at once; returns the results in order."""
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        out[i] = work(i)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _client(server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=60, headers={"Authorization": f"Bearer {key}"})


def test_concurrent_creates_never_overshoot_a_quota(server):
    account_id, key = new_account(server)
    base = ready_base_model(server, api_key=key, account_id=account_id)
    limit = 3
    with http(server) as c:
        assert c.patch(f"/v1/accounts/{account_id}/quotas/deployments", json={"maxValue": str(limit)}).status_code == 200
    clients = [_client(server, key) for _ in range(N_CLIENTS)]

    def create(i: int) -> int:
        return clients[i].post(f"/v1/accounts/{account_id}/deployments",
                               json={"baseModel": base, "minReplicaCount": 0, "maxReplicaCount": 1}).status_code
    statuses = _together(N_CLIENTS, create)
    for c in clients:
        c.close()
    assert sorted(statuses) == [200] * limit + [429] * (N_CLIENTS - limit), statuses
    listed = sdk(server, key, account_id).deployments.list()
    assert len(list(listed)) == limit


def test_concurrent_loads_leave_exactly_one_default(server):
    account_id, key = new_account(server)
    client = sdk(server, key, account_id)
    base = ready_base_model(server, api_key=key, account_id=account_id)
    addon = ready_addon(server, base, api_key=key, account_id=account_id)
    deployments = [client.deployments.create(base_model=base, enable_addons=True, max_replica_count=1).name
                   for _ in range(6)]
    clients = [_client(server, key) for _ in deployments]

    def load(i: int) -> int:
        return clients[i].post(f"/v1/accounts/{account_id}/deployedModels",
                               json={"model": addon, "deployment": deployments[i]}).status_code
    assert _together(len(deployments), load) == [200] * len(deployments)
    for c in clients:
        c.close()
    rows = [d for d in client.lora.list() if d.model == addon]
    assert len(rows) == len(deployments) and sum(1 for d in rows if d.default) == 1


def test_concurrent_demotions_keep_an_admin(server):
    account_id, key = new_account(server)
    with http(server) as c:
        first = c.get(f"/v1/accounts/{account_id}/users").json()["users"][0]["name"].split("/")[-1]
        second = f"u-{uuid.uuid4().hex[:8]}"
        assert c.post(f"/v1/accounts/{account_id}/users", params={"userId": second},
                      json={"role": "admin", "email": f"{second}@example.com"}).status_code == 200
    users = [first, second]
    clients = [_client(server, key), _client(server, key)]

    def demote(i: int) -> int:
        return clients[i].patch(f"/v1/accounts/{account_id}/users/{users[i]}", json={"role": "user"}).status_code
    for _ in range(3):
        statuses = _together(2, demote)
        with http(server) as c:
            roles = [u["role"] for u in c.get(f"/v1/accounts/{account_id}/users").json()["users"]]
            assert "admin" in roles, (statuses, roles)
            for u in users:   # make both admins again for the next round
                c.patch(f"/v1/accounts/{account_id}/users/{u}", json={"role": "admin"})
    for c in clients:
        c.close()


def test_a_stale_etag_is_409_aborted(server, unique):
    client = sdk(server)
    dataset_id = unique("ds")
    client.datasets.create(dataset_id=dataset_id, dataset={"displayName": "a"})
    with http(server) as c:
        url = f"/v1/accounts/{server.account_id}/datasets/{dataset_id}"
        etag = c.get(url).json()["etag"]
        r = c.patch(url, json={"displayName": "b", "etag": etag})
        assert r.status_code == 200 and r.json()["etag"] != etag
        stale = c.patch(url, json={"displayName": "c", "etag": etag})
        assert stale.status_code == 409 and stale.json()["code"] == 10, stale.text
        assert c.delete(url, headers={"If-Match": etag}).status_code == 409
        assert c.get(url).json()["displayName"] == "b"
        client.models.create(model_id=unique("m"), model={"kind": "HF_BASE_MODEL"})
        for collection in ("users", "models", "datasets"):
            items = c.get(f"/v1/accounts/{server.account_id}/{collection}").json()[collection]
            assert items and all(item.get("etag") for item in items), collection
        assert c.get(f"/v1/accounts/{server.account_id}").json()["etag"]


def test_read_modify_write_clients_lose_no_update(server, unique):
    """2 clients x 15 increments of a counter kept in displayName, each read-modify-write
    sending the etag it read and retrying on 409: the counter ends at exactly 30."""
    client = sdk(server)
    dataset_id = unique("ds")
    client.datasets.create(dataset_id=dataset_id, dataset={"displayName": "0"})
    url = f"/v1/accounts/{server.account_id}/datasets/{dataset_id}"
    rounds = 15

    def increment(_i: int) -> int:
        aborted = 0
        with http(server) as c:
            for _ in range(rounds):
                while True:
                    got = c.get(url).json()
                    r = c.patch(url, json={"displayName": str(int(got["displayName"]) + 1), "etag": got["etag"]})
                    if r.status_code == 200:
                        break
                    assert r.status_code == 409 and r.json()["code"] == 10, r.text
                    aborted += 1
        return aborted
    _together(2, increment)
    with http(server) as c:
        assert c.get(url).json()["displayName"] == str(2 * rounds)
