"""Issue 11, classes 1 and 2: resource use is bounded before authentication, and no input
gives a 500 (each example found in review answers 400 in the API's error shape)."""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading

import httpx
import pytest

from tests.conftest import BACKENDS, _require_postgres, http, new_account, sdk
from tests.servers import create_pg_database, drop_pg_database
from tests.control.helpers_resources import expect_error, tiny_addon_files

MIB = 1 << 20


def _chunked(total: int, piece: int = 64 << 10):
    sent = 0
    while sent < total:
        yield b" " * min(piece, total - sent)
        sent += piece


def _is_error(r: httpx.Response, status: int, code: int) -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert body["code"] == code and isinstance(body["message"], str) and body["details"] == [], body
    assert r.headers.get("x-request-id")


# ---- class 1: bounded before authentication ---------------------------------------------------

def test_chunked_oversize_body_is_cut_at_the_limit_before_auth(server):
    """No Content-Length, no key: the body is counted as it arrives and refused at 1 MiB
    (today a chunked body passed the Content-Length check and was read whole)."""
    for path in ("/v1/chat/completions", "/v1/completions"):
        r = httpx.post(server.base_url + path, content=_chunked(3 * MIB),
                       headers={"content-type": "application/json"}, timeout=60)
        _is_error(r, 413, 3)


def test_only_the_exact_upload_routes_skip_the_body_limit(server):
    """A path that merely contains '/uploads/' (a {model_ref:path} route) is not exempt."""
    with http(server) as c:
        r = c.patch(f"/v1/accounts/{server.account_id}/models/m/uploads/x", content=_chunked(3 * MIB),
                    headers={"content-type": "application/json"})
        _is_error(r, 413, 3)
        r = c.post(f"/v1/accounts/{server.account_id}/datasets/d:uploadx", content=_chunked(3 * MIB),
                   headers={"content-type": "application/json"})
        _is_error(r, 413, 3)


def test_no_body_is_read_before_the_key_is_checked(server):
    """A control-plane request with a bad key is answered 401 from its headers alone: the
    server does not wait for (or read) a body it was promised."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"POST /v1/accounts/{server.account_id}/datasets HTTP/1.1\r\nHost: x\r\n"
                  "Authorization: Bearer fw_wrong\r\nContent-Type: application/json\r\n"
                  "Content-Length: 1000000\r\n\r\n{".encode())
        head = s.recv(4096).decode("latin-1")   # answered although 999,999 bytes never came
    assert head.startswith("HTTP/1.1 401"), head[:200]


def test_free_form_json_fields_are_bounded(server, unique):
    client = sdk(server)
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["a"] = {}
        node = node["a"]
    expect_error(400, 3, client.datasets.create, dataset_id=unique("ds"), dataset={"userUploaded": deep})
    expect_error(400, 3, client.datasets.create, dataset_id=unique("ds"),
                 dataset={"evalProtocol": {"k": "x" * (200 << 10)}})


def test_filter_and_page_numbers_are_range_checked(server):
    with http(server) as c:
        r = c.get(f"/v1/accounts/{server.account_id}/datasets",
                  params={"filter": "example_count > 99999999999999999999"})
        _is_error(r, 400, 3)
        _is_error(c.get(f"/v1/accounts/{server.account_id}/datasets", params={"pageSize": 10 ** 12}), 400, 3)


# ---- class 2: no 500 from any input -----------------------------------------------------------

def test_non_ascii_signature_is_403_not_500(server):
    for path in (f"/v1/downloads/models/{server.account_id}/m/config.json",
                 f"/v1/uploads/datasets/{server.account_id}/d/train.jsonl"):
        r = httpx.get(server.base_url + path, params={"expires": "99999999999", "sig": "é" * 8})
        _is_error(r, 403, 7)


def test_forged_page_token_with_a_huge_offset_is_400(server):
    """Yesterday's token format (base64 {offset, fingerprint}) was forgeable: with the
    fingerprint recomputed and a 31-digit offset it gave an OverflowError (500)."""
    account = server.account_id
    fp = hashlib.sha256(f"models:{account}\x00\x00\x00False".encode()).hexdigest()[:16]
    forged = base64.urlsafe_b64encode(json.dumps({"o": 10 ** 30, "f": fp}).encode()).decode().rstrip("=")
    with http(server) as c:
        _is_error(c.get(f"/v1/accounts/{account}/models", params={"pageToken": forged}), 400, 3)
        _is_error(c.get(f"/v1/accounts/{account}/models", params={"pageToken": "é" * 20}), 400, 3)


def test_page_token_is_bound_to_the_page_size(server, unique):
    account_id, key = new_account(server)
    client = sdk(server, key, account_id)
    for _ in range(3):
        client.datasets.create(dataset_id=unique("ds"), dataset={})
    with http(server, key) as c:
        first = c.get(f"/v1/accounts/{account_id}/datasets", params={"pageSize": 1}).json()
        assert first["nextPageToken"]
        ok = c.get(f"/v1/accounts/{account_id}/datasets", params={"pageSize": 1, "pageToken": first["nextPageToken"]})
        assert ok.status_code == 200 and len(ok.json()["datasets"]) == 1
        other = c.get(f"/v1/accounts/{account_id}/datasets",
                      params={"pageSize": 2, "pageToken": first["nextPageToken"]})
        _is_error(other, 400, 3)


def test_example_count_past_int64_is_400(server, unique):
    client = sdk(server)
    expect_error(400, 3, client.datasets.create, dataset_id=unique("ds"),
                 dataset={"exampleCount": "99999999999999999999"})
    with http(server) as c:
        r = c.post(f"/v1/accounts/{server.account_id}/datasets",
                   json={"datasetId": unique("ds"), "dataset": {"exampleCount": 2 ** 64}})
        _is_error(r, 400, 3)


def test_nan_and_infinity_in_a_json_field_are_400(server, unique):
    """Python's JSON reader takes NaN/Infinity; PostgreSQL's JSON type refuses them (500)."""
    with http(server) as c:
        for literal in ("NaN", "Infinity", "-Infinity"):
            body = '{"datasetId": "%s", "dataset": {"userUploaded": {"x": %s}}}' % (unique("ds"), literal)
            r = c.post(f"/v1/accounts/{server.account_id}/datasets", content=body,
                       headers={"content-type": "application/json"})
            _is_error(r, 400, 3)


def _safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_adapter_tensor_of_shape_empty_is_400(server, unique):
    """A lora_A tensor of shape [] (a scalar) made the rank check index an empty list (500)."""
    from tests.control.helpers_resources import ready_base_model
    base = ready_base_model(server)
    client = sdk(server)
    model_id = unique("lora")
    client.models.create(model_id=model_id, model={"kind": "HF_PEFT_ADDON", "peftDetails": {"baseModel": base}})
    files = {"adapter_config.json": tiny_addon_files()["adapter_config.json"],
             "adapter_model.safetensors": _safetensors(
                 {"base_model.model.layers.0.self_attn.q_proj.lora_A.weight":
                  {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}, b"\x00" * 4)}
    urls = client.models.get_upload_endpoint(
        model_id, filename_to_size={k: str(len(v)) for k, v in files.items()}).filename_to_signed_urls
    for name, data in files.items():
        assert httpx.put(urls[name], content=data).status_code == 200
    err = expect_error(400, 3, client.models.validate_upload, model_id)
    assert "lora_A" in err.body["message"]


def test_concurrent_get_upload_endpoint_of_one_file_never_500(server, unique):
    """Two :getUploadEndpoint declaring the same new file raced into an IntegrityError on SQLite."""
    client = sdk(server)
    model_id = unique("base")
    client.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def declare():
        with http(server) as c:
            barrier.wait()
            r = c.post(f"/v1/accounts/{server.account_id}/models/{model_id}:getUploadEndpoint",
                       json={"filenameToSize": {"config.json": "10", "model.safetensors": "20"}})
            statuses.append(r.status_code)
    threads = [threading.Thread(target=declare) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses and all(s == 200 for s in statuses), statuses


@pytest.mark.parametrize("backend", BACKENDS)
def test_integrity_errors_are_mapped_by_cause(tmp_path, backend):
    """A unique clash is 409 ALREADY_EXISTS; a foreign key to nothing is 400: from SQLite's
    messages and from PostgreSQL's SQLSTATEs (through psycopg 3, as the server connects)."""
    from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table, insert
    from sqlalchemy.exc import IntegrityError

    from fireplace.db.engine import make_engine
    from fireplace.errors import AlreadyExists, FailedPrecondition, integrity_violation

    meta = MetaData()
    parent = Table("parent", meta, Column("id", Integer, primary_key=True))
    child = Table("child", meta, Column("id", Integer, primary_key=True),
                  Column("parent_id", Integer, ForeignKey("parent.id")))
    url = None
    if backend == "postgres":
        _require_postgres()
        url = create_pg_database()
        engine = make_engine(url)
    else:
        engine = make_engine(f"sqlite:///{tmp_path / 'i.db'}")
    try:
        meta.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(parent).values(id=1))
        for stmt, expected in ((insert(parent).values(id=1), AlreadyExists),
                               (insert(child).values(id=1, parent_id=99), FailedPrecondition)):
            with pytest.raises(IntegrityError) as info, engine.begin() as conn:
                conn.execute(stmt)
            assert isinstance(integrity_violation(info.value, "it"), expected), info.value
    finally:
        engine.dispose()
        if url:
            drop_pg_database(url)


def test_safetensors_header_read_is_capped_and_streamed(tmp_path):
    from fireplace.control.models.files import MAX_HEADER_BYTES, safetensors_header
    from fireplace.errors import InvalidArgument
    from fireplace.storage import BlobStore

    blobs = BlobStore(str(tmp_path))
    blobs.write_bytes("big.safetensors", struct.pack("<Q", MAX_HEADER_BYTES + 1) + b" " * (MAX_HEADER_BYTES + 16))
    with pytest.raises(InvalidArgument, match="header length"):
        safetensors_header(blobs, "big.safetensors", "big.safetensors")
    assert MAX_HEADER_BYTES <= 16 * MIB


def test_an_unexpected_500_is_not_marked_retryable():
    """Transient trouble is 503 (retry); a bug's 500 carries x-should-retry: false."""
    from fireplace.api.errors import error_response
    assert error_response(500, 13, "internal error").headers["x-should-retry"] == "false"
    assert "x-should-retry" not in error_response(503, 14, "busy", retryable=True).headers


def test_an_unexpected_500_from_a_route_is_not_marked_retryable(tmp_path):
    """Through the app's own handlers: a route that raises a bug answers 500 INTERNAL in the
    plane's error shape with `x-should-retry: false` (the SDKs retry a bare 500), on the
    control plane and on the inference plane alike."""
    from fastapi.testclient import TestClient

    from fireplace.api.app import create_app
    from fireplace.config import Settings

    app = create_app(Settings(home=tmp_path, workers_enabled=False, import_catalog=False))

    def bug() -> None:
        raise RuntimeError("a bug")
    app.add_api_route("/v1/accounts/{account_id}/bugs", bug, methods=["GET"])
    app.add_api_route("/v1/completions", bug, methods=["PUT"])   # an inference path (OpenAI error shape)
    creds = dict(line.split("=", 1) for line in (tmp_path / "credentials").read_text().splitlines())
    with TestClient(app, raise_server_exceptions=False,
                    headers={"Authorization": f"Bearer {creds['FIREPLACE_API_KEY']}"}) as client:
        control = client.get("/v1/accounts/a/bugs")
        inference = client.put("/v1/completions")
    assert control.status_code == 500 and control.json() == {"code": 13, "message": "internal error", "details": []}
    assert control.headers["x-should-retry"] == "false"
    assert inference.status_code == 500 and inference.json()["error"]["message"] == "internal error"
    assert inference.headers["x-should-retry"] == "false"



DEEP = b"[" * 100_000 + b"]" * 100_000   # past the JSON decoder's recursion limit


def _upload_files(server, model: dict, files: dict[str, bytes], model_id: str) -> None:
    client = sdk(server)
    client.models.create(model_id=model_id, model=model)
    urls = client.models.get_upload_endpoint(
        model_id, filename_to_size={k: str(len(v)) for k, v in files.items()}).filename_to_signed_urls
    for name, data in files.items():
        assert httpx.put(urls[name], content=data).status_code == 200


def test_deeply_nested_json_in_uploaded_files_is_400(server, unique):
    """config.json, adapter_config.json and a safetensors header nested past the decoder's
    recursion limit raised RecursionError in :validateUpload (500); each is a 400 naming the file."""
    from tests.control.helpers_resources import ready_base_model, tiny_base_files
    base = ready_base_model(server)
    weights = tiny_base_files()["model.safetensors"]
    deep_header = struct.pack("<Q", len(DEEP)) + DEEP + b"\x00" * 8
    cases = [({"kind": "HF_BASE_MODEL"}, {"config.json": b'{"model_type": ' + DEEP + b"}",
                                          "model.safetensors": weights}, "config.json"),
             ({"kind": "HF_BASE_MODEL"}, {"config.json": tiny_base_files()["config.json"],
                                          "model.safetensors": deep_header}, "model.safetensors"),
             ({"kind": "HF_PEFT_ADDON", "peftDetails": {"baseModel": base}},
              {"adapter_config.json": b'{"r": ' + DEEP + b"}",
               "adapter_model.safetensors": tiny_addon_files()["adapter_model.safetensors"]}, "adapter_config.json"),
             ({"kind": "HF_PEFT_ADDON", "peftDetails": {"baseModel": base}},
              {"adapter_config.json": tiny_addon_files()["adapter_config.json"],
               "adapter_model.safetensors": deep_header}, "adapter_model.safetensors")]
    for model, files, culprit in cases:
        model_id = unique("deep")
        _upload_files(server, model, files, model_id)
        with http(server) as c:
            r = c.get(f"/v1/accounts/{server.account_id}/models/{model_id}:validateUpload")
        _is_error(r, 400, 3)
        assert culprit in r.json()["message"], r.text
    assert "RecursionError" not in server.log_text()


def test_deeply_nested_json_request_bodies_are_400(server):
    """Request bodies nested past the decoder's limit: the control plane and the inference
    gateway (which parses bodies itself) answer 400 in their error shapes."""
    deep = b'{"messages": ' + DEEP[:400_000] + b"}"
    with http(server) as c:
        r = c.post(f"/v1/accounts/{server.account_id}/datasets", content=deep,
                   headers={"content-type": "application/json"})
        _is_error(r, 400, 3)
        r = c.post("/v1/chat/completions", content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["message"], r.text
    assert "RecursionError" not in server.log_text()
