"""Issue 11, class 5: serialized quotas and invariants under concurrent requests, on SQLite
and PostgreSQL, and etags (AIP-154): a stale one is 409 ABORTED, and read-modify-write
clients that send theirs never lose an update."""
from __future__ import annotations

import threading
import uuid

import httpx
import pytest

from tests.conftest import http, new_account, sdk
from tests.control.helpers_resources import chat_jsonl, ready_addon, ready_base_model, ready_dataset

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


def test_a_stale_quota_etag_is_409_aborted(server):
    """Quotas had no etag and update_quota checked none: now they carry one ("0" at the
    default), and a PATCH with a stale one (body or If-Match) is 409 ABORTED, as elsewhere."""
    account_id, _key = new_account(server)
    url = f"/v1/accounts/{account_id}/quotas/replicas"
    with http(server) as c:
        default = c.get(url).json()["etag"]
        listed = c.get(f"/v1/accounts/{account_id}/quotas").json()["quotas"]
        assert all(q.get("etag") for q in listed), listed
        first = c.patch(url, json={"maxValue": "7", "etag": default})
        assert first.status_code == 200 and first.json()["etag"] != default, first.text
        stale = c.patch(url, json={"maxValue": "8", "etag": default})
        assert stale.status_code == 409 and stale.json()["code"] == 10, stale.text
        stale = c.patch(url, json={"maxValue": "8"}, headers={"If-Match": default})
        assert stale.status_code == 409 and stale.json()["code"] == 10, stale.text
        assert c.get(url).json()["maxValue"] == "7"
        second = c.patch(url, json={"maxValue": "9"}, headers={"If-Match": first.json()["etag"]})
        assert second.status_code == 200 and second.json()["maxValue"] == "9", second.text


def _set_quota(server, account_id: str, quota_id: str, value: int) -> None:
    with http(server) as c:
        r = c.patch(f"/v1/accounts/{account_id}/quotas/{quota_id}", json={"maxValue": str(value)})
        assert r.status_code == 200, r.text


def _statuses(server, key: str, requests: list) -> list[int]:
    """Send requests[i] = (method, path, json) from its own client, all released at once."""
    clients = [_client(server, key) for _ in requests]
    try:
        return _together(len(requests), lambda i: clients[i].request(
            requests[i][0], requests[i][1], json=requests[i][2]).status_code)
    finally:
        for c in clients:
            c.close()


def _jobs_account(server):
    account_id, key = new_account(server)
    base = ready_base_model(server, api_key=key, account_id=account_id)
    dataset = ready_dataset(server, api_key=key, account_id=account_id)
    return account_id, key, base, dataset


def test_concurrent_resumes_of_one_job_resume_it_once(quiet_server):
    """:resume read the job under a row lock only (a no-op on SQLite): concurrent resumes of
    one cancelled job each moved it and each logged a resume. Exactly one may win; the others
    find it no longer resumable (400 FAILED_PRECONDITION)."""
    account_id, key, base, dataset = _jobs_account(quiet_server)
    jobs = sdk(quiet_server, key, account_id).supervised_fine_tuning_jobs
    name = jobs.create(dataset=dataset, base_model=base).name
    job_id = name.rsplit("/", 1)[1]
    for _ in range(3):
        jobs.cancel(job_id, body={})
        statuses = _statuses(quiet_server, key, [("POST", f"/v1/{name}:resume", {})] * 6)
        assert sorted(statuses) == [200] + [400] * 5, statuses
    with http(quiet_server, key) as c:
        events = c.get(f"/v1/{name}/events", params={"filter": 'type = "RESUME"', "pageSize": 100}).json()
    assert len(events["events"]) == 3, events


def test_concurrent_replica_raises_never_overshoot_the_replicas_quota(quiet_server):
    """The replicas quota (sum of maxReplicaCount) on create and on update."""
    account_id, key = new_account(quiet_server)
    base = ready_base_model(quiet_server, api_key=key, account_id=account_id)
    _set_quota(quiet_server, account_id, "replicas", 3)
    url = f"/v1/accounts/{account_id}/deployments"
    created = _statuses(quiet_server, key, [("POST", url, {"baseModel": base, "maxReplicaCount": 1})] * 8)
    assert sorted(created) == [200] * 3 + [429] * 5, created
    client = sdk(quiet_server, key, account_id)
    names = [d.name for d in client.deployments.list()]
    _set_quota(quiet_server, account_id, "replicas", 5)   # room for 2 more: raise each of the 3 by one
    raised = _statuses(quiet_server, key, [("PATCH", f"/v1/{name}", {"maxReplicaCount": 2}) for name in names])
    assert sorted(raised) == [200] * 2 + [429], raised
    assert sum(d.max_replica_count for d in client.deployments.list()) == 5


def test_concurrent_loads_never_overshoot_the_loaded_addons_quota(quiet_server):
    account_id, key = new_account(quiet_server)
    client = sdk(quiet_server, key, account_id)
    base = ready_base_model(quiet_server, api_key=key, account_id=account_id)
    addons = [ready_addon(quiet_server, base, api_key=key, account_id=account_id) for _ in range(5)]
    deployment = client.deployments.create(base_model=base, enable_addons=True, max_replica_count=1).name
    _set_quota(quiet_server, account_id, "loaded-addons", 2)
    statuses = _statuses(quiet_server, key, [("POST", f"/v1/accounts/{account_id}/deployedModels",
                                       {"model": addon, "deployment": deployment}) for addon in addons])
    assert sorted(statuses) == [200] * 2 + [429] * 3, statuses
    assert len(list(client.lora.list())) == 2


def test_concurrent_uploads_never_overshoot_the_dataset_bytes_quota(quiet_server):
    account_id, key = new_account(quiet_server)
    client = sdk(quiet_server, key, account_id)
    content = chat_jsonl()
    _set_quota(quiet_server, account_id, "dataset-bytes", 2 * len(content) + len(content) // 2)
    ids = [f"ds-{uuid.uuid4().hex[:8]}" for _ in range(6)]
    for dataset_id in ids:
        client.datasets.create(dataset_id=dataset_id, dataset={"format": "CHAT"})
    clients = [_client(quiet_server, key) for _ in ids]

    def upload(i: int) -> int:
        return clients[i].post(f"/v1/accounts/{account_id}/datasets/{ids[i]}:upload",
                               files={"file": ("train.jsonl", content, "application/jsonl")}).status_code
    statuses = _together(len(ids), upload)
    for c in clients:
        c.close()
    assert sorted(statuses) == [200] * 2 + [429] * 4, statuses
    assert sum(1 for d in client.datasets.list() if d.state == "READY") == 2


# ---- no lost update between read-modify-write clients, for every resource with an etag ----

def _rmw_target(server, kind: str):
    """(key, url, field, read): a fresh resource of `kind` whose `field` holds a counter at "0"
    (displayName; maxValue for a quota), the caller's key, its URL, and read(client) -> the
    resource as GET returns it (an API key has no GET: it is read from its user's list)."""
    account_id, key = new_account(server)
    client = sdk(server, key, account_id)
    root = f"/v1/accounts/{account_id}"
    with http(server, key) as c:
        if kind == "accounts":
            url = root
        elif kind == "users":
            url = f"/v1/{c.get(root + '/users').json()['users'][0]['name']}"
        elif kind == "apiKeys":
            user = c.get(root + "/users").json()["users"][0]["name"]
            url = f"/v1/{c.post(f'/v1/{user}/apiKeys', json={'apiKey': {}}).json()['name']}"
        elif kind == "datasets":
            url = f"/v1/{ready_dataset(server, api_key=key, account_id=account_id)}"
        elif kind == "models":
            url = f"/v1/{ready_base_model(server, api_key=key, account_id=account_id)}"
        elif kind == "deployments":
            base = ready_base_model(server, api_key=key, account_id=account_id)
            url = f"/v1/{client.deployments.create(base_model=base, max_replica_count=1).name}"
        elif kind == "deployedModels":
            base = ready_base_model(server, api_key=key, account_id=account_id)
            dep = client.deployments.create(base_model=base, max_replica_count=1).name
            url = f"/v1/{client.lora.load(model=base, deployment=dep).name}"
        elif kind == "supervisedFineTuningJobs":
            base = ready_base_model(server, api_key=key, account_id=account_id)
            dataset = ready_dataset(server, api_key=key, account_id=account_id)
            url = f"/v1/{client.supervised_fine_tuning_jobs.create(dataset=dataset, base_model=base).name}"
        elif kind == "quotas":
            url = f"{root}/quotas/deployments"
            key = server.api_key   # quotas change through a platform admin only
        field = "maxValue" if kind == "quotas" else "displayName"
    with http(server, key) as c:
        r = c.patch(url, json={field: "0"})
        assert r.status_code == 200, r.text

    def read(c: httpx.Client) -> dict:
        if kind != "apiKeys":
            return c.get(url).json()
        keys = c.get(url.rsplit("/", 1)[0]).json()["apiKeys"]
        return next(k for k in keys if url.endswith("/" + k["name"]))
    return key, url, field, read


RMW_KINDS = ["accounts", "users", "apiKeys", "datasets", "models", "deployments", "deployedModels",
             "supervisedFineTuningJobs", "quotas"]


@pytest.mark.parametrize("kind", RMW_KINDS)
def test_read_modify_write_clients_lose_no_update(quiet_server, kind):
    """2 clients x 15 increments of a counter kept in the resource, each read-modify-write
    sending the etag it read and retrying on 409: the counter ends at exactly 30 (on SQLite,
    where a row lock is a no-op, two PATCHes with the same etag both succeeded)."""
    key, url, field, read = _rmw_target(quiet_server, kind)
    rounds = 15

    def increment(_i: int) -> int:
        aborted = 0
        with http(quiet_server, key) as c:
            for _ in range(rounds):
                while True:
                    got = read(c)
                    assert got.get("etag"), got
                    r = c.patch(url, json={field: str(int(got[field]) + 1), "etag": got["etag"]})
                    if r.status_code == 200:
                        break
                    assert r.status_code == 409 and r.json()["code"] == 10, r.text
                    aborted += 1
        return aborted
    _together(2, increment)
    with http(quiet_server, key) as c:
        assert read(c)[field] == str(2 * rounds)


def test_validate_upload_keeps_a_concurrent_patch(quiet_server, unique):
    """:validateUpload read the model, checked its files and wrote the whole spec back: a PATCH
    landing in between was lost on SQLite (its etag compare passed on both sides)."""
    from tests.control.helpers_resources import tiny_base_files

    client = sdk(quiet_server)
    files = tiny_base_files()
    for round_ in range(8):
        model_id = unique("m")
        client.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
        urls = client.models.get_upload_endpoint(
            model_id, filename_to_size={k: str(len(v)) for k, v in files.items()}).filename_to_signed_urls
        for filename, data in files.items():
            assert httpx.put(urls[filename], content=data).status_code == 200
        url = f"/v1/accounts/{quiet_server.account_id}/models/{model_id}"
        clients = [http(quiet_server), http(quiet_server)]

        def act(i: int) -> int:
            if i == 0:
                return clients[0].get(url + ":validateUpload").status_code
            return clients[1].patch(url, json={"description": f"kept {round_}"}).status_code
        statuses = _together(2, act)
        for c in clients:
            c.close()
        assert statuses == [200, 200], statuses
        got = client.models.get(model_id)
        assert got.state == "READY" and got.description == f"kept {round_}", (round_, statuses, got)
