"""Issue 11, class 4: uploads are sealed once validated. A signed PUT URL writes once, into a
blob of its own; a late or replayed PUT never changes validated bytes; URLs are bound to
the resource instance (a deleted and re-created ID accepts none of the old ones)."""
from __future__ import annotations

import hashlib
import threading
import time

import httpx

from tests.conftest import sdk
from tests.control.helpers_resources import chat_jsonl, tiny_base_files

FIRST = chat_jsonl()
SECOND = chat_jsonl([{"messages": [{"role": "user", "content": f"other {i}"},
                                   {"role": "assistant", "content": "x" * 5}]} for i in range(3)])


def _dataset_url(client, dataset_id: str, data: bytes) -> str:
    client.datasets.create(dataset_id=dataset_id, dataset={"format": "CHAT"})
    return client.datasets.get_upload_endpoint(
        dataset_id, filename_to_size={"train.jsonl": str(len(data))}).filename_to_signed_urls["train.jsonl"]


def test_a_replayed_or_late_dataset_put_never_changes_validated_bytes(server, unique):
    client = sdk(server)
    dataset_id = unique("ds")
    body = FIRST + b" " * max(0, len(SECOND) - len(FIRST))
    other = SECOND + b" " * max(0, len(FIRST) - len(SECOND))
    url = _dataset_url(client, dataset_id, body)
    done: dict = {}

    def slow_put():   # a PUT still streaming while the same URL is used again
        def chunks():
            yield body[:10]
            time.sleep(1.5)
            yield body[10:]
        done["slow"] = httpx.put(url, content=chunks(), timeout=30).status_code
    t = threading.Thread(target=slow_put)
    t.start()
    time.sleep(0.5)
    replay = httpx.put(url, content=other, timeout=30)
    t.join()
    assert replay.status_code == 400 and replay.json()["code"] == 9, replay.text   # each URL writes once
    assert done["slow"] == 200
    client.datasets.validate_upload(dataset_id, body={})
    assert httpx.put(url, content=other).status_code == 400            # after validation: refused
    download = client.datasets.get_download_endpoint(dataset_id).filename_to_signed_urls["train.jsonl"]
    got = httpx.get(download).content
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(body).hexdigest()


def test_a_newer_upload_endpoint_voids_the_older_url(server, unique):
    client = sdk(server)
    dataset_id = unique("ds")
    old = _dataset_url(client, dataset_id, FIRST)
    client.datasets.get_upload_endpoint(dataset_id, filename_to_size={"train.jsonl": str(len(FIRST))})
    r = httpx.put(old, content=FIRST)
    assert r.status_code in (400, 403) and r.json()["code"] in (7, 9), r.text


def test_dataset_urls_are_bound_to_the_instance(server, unique):
    client = sdk(server)
    dataset_id = unique("ds")
    old = _dataset_url(client, dataset_id, FIRST)
    client.datasets.delete(dataset_id)
    _dataset_url(client, dataset_id, FIRST)          # same ID, same file name, a new instance
    r = httpx.put(old, content=FIRST)
    assert r.status_code == 403 and r.json()["code"] == 7, r.text


def test_model_put_urls_are_single_use_and_instance_bound(server, unique):
    client = sdk(server)
    model_id = unique("base")
    config = tiny_base_files()["config.json"]
    client.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    url = client.models.get_upload_endpoint(
        model_id, filename_to_size={"config.json": str(len(config))}).filename_to_signed_urls["config.json"]
    assert httpx.put(url, content=config).status_code == 200
    again = httpx.put(url, content=config)
    assert again.status_code == 400 and again.json()["code"] == 9, again.text
    client.models.delete(model_id)
    client.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    client.models.get_upload_endpoint(model_id, filename_to_size={"config.json": str(len(config))})
    r = httpx.put(url, content=config)
    assert r.status_code == 403 and r.json()["code"] == 7, r.text
