"""Datasets end to end: a real `fireplace serve` (SQLite and PostgreSQL) driven by the official SDK."""
from __future__ import annotations

import json

import fireworks
import httpx
import pytest

from tests.conftest import http, new_account, sdk, user_key

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "hello"}]}
COMPLETION = {"prompt": "2+2=", "completion": "4"}


def jsonl(*objs) -> bytes:
    return b"".join((o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n" for o in objs)


GOOD = jsonl(CHAT, CHAT, CHAT, CHAT)


def error_of(exc_info, status: int, code: int) -> dict:
    err = exc_info.value
    assert err.status_code == status, err.body
    assert err.body["code"] == code, err.body
    return err.body


def new_dataset(client, unique, **fields):
    dataset_id = unique("ds")
    client.datasets.create(dataset_id=dataset_id, dataset={"displayName": "t", "userUploaded": {}, **fields})
    return dataset_id


def ready_dataset(client, unique, data: bytes = GOOD, **fields) -> str:
    dataset_id = new_dataset(client, unique, **fields)
    client.datasets.upload(dataset_id, file=("train.jsonl", data))
    return dataset_id


def test_create_upload_get_list(server, admin, unique):
    dataset_id = unique("ds")
    created = admin.datasets.create(dataset_id=dataset_id,
                                    dataset={"displayName": "My data", "userUploaded": {}, "format": "CHAT"})
    name = f"accounts/{server.account_id}/datasets/{dataset_id}"
    assert created.name == name and created.state == "UPLOADING" and created.display_name == "My data"
    assert created.status.code == "OK" and created.create_time is not None and created.user_uploaded == {}

    uploaded = admin.datasets.upload(dataset_id, file=("train.jsonl", GOOD))
    assert uploaded.bytes == len(GOOD) and uploaded.filename == "train.jsonl" and uploaded.id == dataset_id

    got = admin.datasets.get(dataset_id)
    assert got.state == "READY" and got.format == "CHAT"
    assert got.example_count == "4"                              # int64 as a string
    assert got.estimated_token_count == str(-(-4 * len("Be brief.hihello") // 4))
    assert got.average_turn_count == 3.0
    raw = http(server).get(f"/v1/accounts/{server.account_id}/datasets/{dataset_id}").json()
    assert raw["exampleCount"] == "4" and raw["createTime"].endswith("Z") and raw["status"] == {"code": "OK",
                                                                                                  "message": ""}
    listed = [d.name for d in admin.datasets.list(filter=f'state="READY" AND name="{name}"')]
    assert listed == [name]


def test_output_only_fields_on_create_are_ignored(server, admin, unique):
    dataset_id = unique("ds")
    with http(server) as c:
        r = c.post(f"/v1/accounts/{server.account_id}/datasets", json={
            "datasetId": dataset_id, "dataset": {"state": "READY", "name": "accounts/other/datasets/x",
                                                 "estimatedTokenCount": "99", "createdBy": "mallory"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "UPLOADING" and body["name"].endswith(f"/datasets/{dataset_id}")
    assert body["createdBy"] != "mallory" and body.get("estimatedTokenCount", "0") == "0"


def test_create_errors(server, admin, unique):
    dataset_id = new_dataset(admin, unique)
    with pytest.raises(fireworks.ConflictError) as exc:
        admin.datasets.create(dataset_id=dataset_id, dataset={})
    error_of(exc, 409, 6)
    for bad in ("1starts-with-digit", "Upper", "ends-", "a" * 64, "has_underscore"):
        with pytest.raises(fireworks.BadRequestError) as exc:
            admin.datasets.create(dataset_id=bad, dataset={})
        assert "invalid dataset id" in error_of(exc, 400, 3)["message"]
    with pytest.raises(fireworks.BadRequestError) as exc:
        admin.datasets.create(dataset_id=unique("ds"), dataset={"format": "IMAGES"})
    error_of(exc, 400, 3)


def test_bad_jsonl_names_lines_and_fields_and_changes_nothing(server, admin, unique):
    dataset_id = new_dataset(admin, unique)
    bad_role = {"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}
    data = jsonl(CHAT, bad_role, CHAT, b"{not json", CHAT, {"messages": [{"role": "user", "content": "q"}]})
    with pytest.raises(fireworks.BadRequestError) as exc:
        admin.datasets.upload(dataset_id, file=("train.jsonl", data))
    body = error_of(exc, 400, 3)
    assert "line 2, messages[0].role" in body["message"] and "line 4: invalid JSON at column 2" in body["message"]
    assert [(d["line"], d["field"]) for d in body["details"]] == [(2, "messages[0].role"), (4, ""), (6, "messages")]
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert admin.datasets.get(dataset_id).state == "UPLOADING"
    admin.datasets.upload(dataset_id, file=("train.jsonl", GOOD))       # a fixed file goes through
    assert admin.datasets.get(dataset_id).state == "READY"


def test_too_few_examples_and_format_disagreement(server, admin, unique):
    dataset_id = new_dataset(admin, unique)
    with pytest.raises(fireworks.BadRequestError) as exc:
        admin.datasets.upload(dataset_id, file=("train.jsonl", jsonl(CHAT, CHAT)))
    assert "at least 3" in error_of(exc, 400, 3)["message"]
    declared = new_dataset(admin, unique, format="COMPLETION")
    with pytest.raises(fireworks.BadRequestError) as exc:
        admin.datasets.upload(declared, file=("train.jsonl", GOOD))
    assert "a CHAT example in a COMPLETION dataset" in error_of(exc, 400, 3)["message"]
    mixed = new_dataset(admin, unique)
    with pytest.raises(fireworks.BadRequestError) as exc:
        admin.datasets.upload(mixed, file=("train.jsonl", jsonl(CHAT, CHAT, COMPLETION)))
    assert error_of(exc, 400, 3)["details"][0]["line"] == 3


def test_completion_dataset(server, admin, unique):
    dataset_id = ready_dataset(admin, unique, jsonl(COMPLETION, COMPLETION, COMPLETION))
    got = admin.datasets.get(dataset_id)
    assert (got.state, got.format, got.example_count, got.estimated_token_count) == ("READY", "COMPLETION", "3", "4")


def test_ready_dataset_is_immutable(server, admin, unique):
    dataset_id = ready_dataset(admin, unique)
    with pytest.raises(fireworks.BadRequestError) as exc:
        admin.datasets.upload(dataset_id, file=("other.jsonl", GOOD))
    assert "immutable" in error_of(exc, 400, 9)["message"]
    for change in ({"format": "COMPLETION"}, {"example_count": "7"}, {"user_uploaded": {"x": 1}}):
        with pytest.raises(fireworks.BadRequestError) as exc:
            admin.datasets.update(dataset_id, **change)
        error_of(exc, 400, 9)
    renamed = admin.datasets.update(dataset_id, display_name="renamed", format="CHAT", example_count="4")
    assert renamed.display_name == "renamed" and renamed.state == "READY" and renamed.example_count == "4"
    with http(server) as c:   # privileged / output-only fields in a PATCH are ignored
        r = c.patch(f"/v1/accounts/{server.account_id}/datasets/{dataset_id}",
                    json={"state": "UPLOADING", "name": "accounts/x/datasets/y", "displayName": "again"})
    assert r.status_code == 200 and r.json()["state"] == "READY" and r.json()["displayName"] == "again"


def test_update_merges_and_accepts_update_mask(server, admin, unique):
    dataset_id = new_dataset(admin, unique, externalUrl="gs://b/x.jsonl")
    updated = admin.datasets.update(dataset_id, display_name="one")
    assert updated.display_name == "one" and updated.external_url == "gs://b/x.jsonl"
    url = f"/v1/accounts/{server.account_id}/datasets/{dataset_id}"
    with http(server) as c:
        r = c.patch(url, params={"updateMask": "externalUrl"}, json={"displayName": "ignored"})
        assert r.status_code == 200, r.text
        assert r.json()["displayName"] == "one" and "externalUrl" not in r.json()
        r = c.patch(url, params={"updateMask": "no_such_field"}, json={})
        assert r.status_code == 400 and r.json()["code"] == 3


def test_signed_upload_validate_and_download(server, admin, unique):
    dataset_id = new_dataset(admin, unique)
    with pytest.raises(fireworks.BadRequestError) as exc:
        admin.datasets.validate_upload(dataset_id, body={})
    assert "nothing was uploaded" in error_of(exc, 400, 9)["message"]
    urls = admin.datasets.get_upload_endpoint(dataset_id, filename_to_size={"train.jsonl": str(len(GOOD))})
    url = urls.filename_to_signed_urls["train.jsonl"]
    assert "/uploads/" in url and "sig=" in url and url.startswith(server.base_url)
    with pytest.raises(fireworks.BadRequestError) as exc:
        admin.datasets.validate_upload(dataset_id, body={})
    assert "has not been uploaded" in error_of(exc, 400, 9)["message"]
    forged = httpx.put(url.replace("sig=", "sig=0"), content=GOOD)
    assert forged.status_code == 403 and forged.json()["code"] == 7
    assert httpx.put(url, content=GOOD).status_code == 200

    validated = admin.datasets.validate_upload(dataset_id, body={})
    assert validated["state"] == "READY" and validated["exampleCount"] == "4"
    downloads = admin.datasets.get_download_endpoint(dataset_id).filename_to_signed_urls
    assert list(downloads) == ["train.jsonl"]
    got = httpx.get(downloads["train.jsonl"])
    assert got.status_code == 200 and got.content == GOOD
    assert httpx.get(downloads["train.jsonl"].replace("sig=", "sig=f")).status_code == 403
    assert httpx.put(url, content=b"overwrite").status_code == 400          # READY: immutable


def test_signed_upload_of_bad_file_is_refused_with_lines(server, admin, unique):
    dataset_id = new_dataset(admin, unique)
    data = jsonl(CHAT, CHAT, {"prompt": "p", "completion": ""})
    url = admin.datasets.get_upload_endpoint(
        dataset_id, filename_to_size={"d.jsonl": str(len(data))}).filename_to_signed_urls["d.jsonl"]
    assert httpx.put(url, content=data).status_code == 200
    with pytest.raises(fireworks.BadRequestError) as exc:
        admin.datasets.validate_upload(dataset_id, body={})
    assert error_of(exc, 400, 3)["details"][0] == {"line": 3, "field": "prompt",
                                                   "message": "a COMPLETION example in a CHAT dataset (the format "
                                                              "was set by line 1); one file holds one format"}
    assert admin.datasets.get(dataset_id).state == "UPLOADING"
    with pytest.raises(fireworks.BadRequestError) as exc:
        admin.datasets.get_upload_endpoint(dataset_id, filename_to_size={"a.jsonl": "1", "b.jsonl": "1"})
    error_of(exc, 400, 3)
    with pytest.raises(fireworks.BadRequestError) as exc:
        admin.datasets.get_upload_endpoint(dataset_id, filename_to_size={"../x": "1"})
    error_of(exc, 400, 3)


def test_download_before_ready_is_failed_precondition(server, admin, unique):
    dataset_id = new_dataset(admin, unique)
    with pytest.raises(fireworks.BadRequestError) as exc:
        admin.datasets.get_download_endpoint(dataset_id)
    error_of(exc, 400, 9)


def test_upload_needs_the_file_field(server, admin, unique):
    dataset_id = new_dataset(admin, unique)
    url = f"/v1/accounts/{server.account_id}/datasets/{dataset_id}:upload"
    with http(server) as c:
        r = c.post(url, files={"other": ("x.jsonl", GOOD)})
        assert r.status_code == 400 and "'file'" in r.json()["message"]
        r = c.post(url, content=GOOD, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == 3
        r = c.post(url, content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 400 and r.json()["code"] == 3


def test_list_filter_order_and_paging(server, unique):
    account_id, key = new_account(server)
    client = sdk(server, api_key=key, account_id=account_id)
    ids = sorted(new_dataset(client, unique) for _ in range(3))
    ready = ready_dataset(client, unique, jsonl(COMPLETION, COMPLETION, COMPLETION))
    everything = [d.name.rsplit("/", 1)[1] for d in client.datasets.list()]
    assert everything == sorted(ids + [ready])                           # default order: name
    page = client.datasets.list(page_size=2)
    assert len(page.datasets) == 2 and page.next_page_token
    assert [d.name.rsplit("/", 1)[1] for d in client.datasets.list(page_size=2)] == everything  # auto-paging
    assert [d.name.rsplit("/", 1)[1] for d in client.datasets.list(order_by="name desc")] == everything[::-1]
    assert [d.name for d in client.datasets.list(filter='format = "COMPLETION"')] == [
        f"accounts/{account_id}/datasets/{ready}"]
    assert len(list(client.datasets.list(filter='state = "UPLOADING" AND example_count < 1'))) == 3
    assert len(list(client.datasets.list(filter='NOT state = "UPLOADING" OR display_name != "t"'))) == 1
    with pytest.raises(fireworks.BadRequestError) as exc:
        client.datasets.list(filter='color = "red"')
    assert "unsupported field 'color'" in error_of(exc, 400, 3)["message"]


def test_delete_removes_the_dataset_and_its_files(server, admin, unique):
    dataset_id = ready_dataset(admin, unique)
    download = admin.datasets.get_download_endpoint(dataset_id).filename_to_signed_urls["train.jsonl"]
    admin.datasets.delete(dataset_id)
    with pytest.raises(fireworks.NotFoundError) as exc:
        admin.datasets.get(dataset_id)
    error_of(exc, 404, 5)
    with pytest.raises(fireworks.NotFoundError):
        admin.datasets.delete(dataset_id)
    assert httpx.get(download).status_code == 403   # bound to the deleted instance: refused
    admin.datasets.create(dataset_id=dataset_id, dataset={})             # the ID is free again
    assert admin.datasets.get(dataset_id).state == "UPLOADING"
    assert httpx.get(download).status_code == 403   # ... also for the re-created dataset


def test_source_dataset_copies_ready_data(server, admin, unique):
    source = ready_dataset(admin, unique)
    copy_id = unique("ds")
    copy = admin.datasets.create(dataset_id=copy_id, dataset={},
                                 source_dataset_id=f"accounts/{server.account_id}/datasets/{source}")
    assert copy.state == "READY" and copy.example_count == "4"
    url = admin.datasets.get_download_endpoint(copy_id).filename_to_signed_urls["train.jsonl"]
    assert httpx.get(url).content == GOOD
    pending = new_dataset(admin, unique)
    with pytest.raises(fireworks.BadRequestError) as exc:
        admin.datasets.create(dataset_id=unique("ds"), dataset={}, source_dataset_id=pending)
    error_of(exc, 400, 9)


def test_another_accounts_dataset_answers_like_a_missing_one(server, admin, unique):
    dataset_id = ready_dataset(admin, unique)
    missing_id = unique("ds")
    other_account, other_key = new_account(server)
    other = sdk(server, api_key=other_key, account_id=server.account_id)   # aimed at the first account

    def outcome(call):
        with pytest.raises(fireworks.NotFoundError) as exc:
            call()
        body = error_of(exc, 404, 5)
        return body["message"].replace(dataset_id, "X").replace(missing_id, "X"), body["details"]

    calls = [lambda d: other.datasets.get(d), lambda d: other.datasets.update(d, display_name="x"),
             lambda d: other.datasets.delete(d), lambda d: other.datasets.get_download_endpoint(d),
             lambda d: other.datasets.upload(d, file=("t.jsonl", GOOD)),
             lambda d: other.datasets.validate_upload(d, body={}),
             lambda d: other.datasets.get_upload_endpoint(d, filename_to_size={"t.jsonl": "1"})]
    for call in calls:
        assert outcome(lambda: call(dataset_id)) == outcome(lambda: call(missing_id))
    with pytest.raises(fireworks.NotFoundError):
        list(other.datasets.list())
    with pytest.raises(fireworks.NotFoundError):
        other.datasets.create(dataset_id=unique("ds"), dataset={})
    assert admin.datasets.get(dataset_id).display_name == "t"          # untouched
    mine = sdk(server, api_key=other_key, account_id=other_account)
    assert [d.name for d in mine.datasets.list()] == []


def test_roles(server, admin, unique):
    dataset_id = ready_dataset(admin, unique)
    reader = sdk(server, api_key=user_key(server, "user"))
    assert reader.datasets.get(dataset_id).state == "READY"
    with pytest.raises(fireworks.PermissionDeniedError) as exc:
        reader.datasets.create(dataset_id=unique("ds"), dataset={})
    error_of(exc, 403, 7)
    with pytest.raises(fireworks.PermissionDeniedError):
        reader.datasets.delete(dataset_id)
    inference_only = sdk(server, api_key=user_key(server, "inference-user"))
    with pytest.raises(fireworks.PermissionDeniedError):
        inference_only.datasets.get(dataset_id)
    contributor = sdk(server, api_key=user_key(server, "contributor"))
    mine = ready_dataset(contributor, unique)
    contributor.datasets.delete(mine)


def test_dataset_bytes_quota(server, unique):
    account_id, key = new_account(server)
    with http(server) as c:
        r = c.patch(f"/v1/accounts/{account_id}/quotas/dataset-bytes", json={"maxValue": str(len(GOOD) + 10)})
        assert r.status_code == 200, r.text
    client = sdk(server, api_key=key, account_id=account_id)
    ready_dataset(client, unique)
    second = new_dataset(client, unique)
    with pytest.raises(fireworks.RateLimitError) as exc:
        client.datasets.upload(second, file=("train.jsonl", GOOD))
    assert "dataset-bytes" in error_of(exc, 429, 8)["message"]
    assert client.datasets.get(second).state == "UPLOADING"
    with pytest.raises(fireworks.RateLimitError):
        client.datasets.get_upload_endpoint(second, filename_to_size={"t.jsonl": str(len(GOOD))})


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_size_limit_is_413(fresh_server, backend, unique):
    server = fresh_server(backend, extra_env={"FIREPLACE_LIMIT_MAX_DATASET_BYTES": str(len(GOOD) + 100)})
    client = sdk(server)
    dataset_id = new_dataset(client, unique)
    big = jsonl(*[CHAT] * 8)
    with pytest.raises(fireworks.APIStatusError) as exc:
        client.datasets.upload(dataset_id, file=("train.jsonl", big))
    assert "limit" in error_of(exc, 413, 3)["message"]
    assert exc.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(fireworks.APIStatusError) as exc:
        client.datasets.get_upload_endpoint(dataset_id, filename_to_size={"t.jsonl": str(len(big))})
    error_of(exc, 413, 3)
    url = client.datasets.get_upload_endpoint(
        dataset_id, filename_to_size={"t.jsonl": str(len(GOOD))}).filename_to_signed_urls["t.jsonl"]
    assert httpx.put(url, content=big).status_code == 413
    client.datasets.upload(dataset_id, file=("train.jsonl", GOOD))      # within the limit
    assert client.datasets.get(dataset_id).state == "READY"


def test_dataset_of_an_unfinished_fine_tuning_job_cannot_be_deleted(server, admin, unique):
    from tests.control.helpers_resources import ready_base_model
    dataset_id = ready_dataset(admin, unique)
    base = ready_base_model(server)
    job = admin.supervised_fine_tuning_jobs.create(
        dataset=f"accounts/{server.account_id}/datasets/{dataset_id}", base_model=base,
        output_model=unique("out"))
    job_id = job.name.rsplit("/", 1)[1]
    with pytest.raises(fireworks.BadRequestError) as exc:
        admin.datasets.delete(dataset_id)
    assert job.name in error_of(exc, 400, 9)["message"]
    admin.supervised_fine_tuning_jobs.cancel(job_id, body={})
    admin.datasets.delete(dataset_id)
