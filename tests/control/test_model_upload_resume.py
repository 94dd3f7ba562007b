""":getUploadEndpoint says which files already arrived (`filenameToSha256`, a Fireplace
extension), on SQLite and PostgreSQL: a file counts once a PUT delivered it whole at the size
declared now; declaring another size discards it. This is what resumable uploads rest on."""
from __future__ import annotations

import hashlib
import uuid

import httpx

from tests.conftest import http
from tests.control.helpers_resources import tiny_base_files, uploading_model


def plan(server, model: str, sizes: dict[str, int]) -> dict:
    with http(server) as c:
        r = c.post(f"/v1/{model}:getUploadEndpoint", json={"filenameToSize": {k: str(v) for k, v in sizes.items()}})
    assert r.status_code == 200, r.text
    return r.json()


def test_upload_endpoint_names_the_files_already_received(server):
    files = tiny_base_files()
    sizes = {k: len(v) for k, v in files.items()}
    model = uploading_model(server, f"resume-{uuid.uuid4().hex[:8]}")
    first = plan(server, model, sizes)
    assert set(first["filenameToSignedUrls"]) == set(files) and first["filenameToSha256"] == {}

    name, data = "config.json", files["config.json"]
    assert httpx.put(first["filenameToSignedUrls"][name], content=data, timeout=30).status_code == 200
    again = plan(server, model, sizes)
    assert again["filenameToSha256"] == {name: hashlib.sha256(data).hexdigest()}
    assert set(again["filenameToSignedUrls"]) == set(files)          # a URL for every file still
    assert plan(server, model, {"model.safetensors": sizes["model.safetensors"]})["filenameToSha256"] == {}

    # a file declared at another size is new bytes: what arrived before no longer counts
    assert plan(server, model, {**sizes, name: len(data) + 1})["filenameToSha256"] == {}
    assert plan(server, model, sizes)["filenameToSha256"] == {}

    # a PUT cut short (fewer bytes than declared) delivers nothing
    urls = plan(server, model, sizes)["filenameToSignedUrls"]
    assert httpx.put(urls[name], content=data[:-1], timeout=30).status_code == 400
    assert plan(server, model, sizes)["filenameToSha256"] == {}
