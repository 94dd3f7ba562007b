"""The blob store on S3, against a real HTTP S3 endpoint: moto's standalone server, started
once per module as a subprocess on a free port and reached through the standard AWS settings
(AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...), exactly as a MinIO deployment would be.

1. BlobStore itself: streamed, hashed, size-limited multipart writes that publish only on
   completion (a failed or oversize write leaves no object and no open upload), reads, listings
   that see other writers' objects, move, delete.
2. A real `fireplace serve` with FIREPLACE_BLOB_URL=s3://...: a dataset and a model (signed-URL
   PUTs, then :validateUpload moves them from staging) land in the bucket and download equal.
3. The local copies replicas and training workers load models from.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import fsspec.config
import httpx
import pytest

from fireplace.errors import NotFound, PayloadTooLarge
from fireplace.serving import model_files
from fireplace.storage import BlobStore
from fireplace.training.errors import TrainingError
from fireplace.training.model_files import local_model_dir
from tests.conftest import sdk, start_server, stop_server
from tests.control.test_datasets import GOOD
from tests.control.test_models import ready_base, tiny_base_files
from tests.servers import free_port

MOTO_BIN = str(Path(sys.executable).parent / "moto_server")
BUCKET = "fireplace-test"
PART = 5 << 20      # S3's smallest multipart part: in-process stores use it, so 12 MiB is 3 parts


@dataclass
class S3:
    url: str
    env: dict
    client: object   # a boto3 S3 client: the test's own view of the bucket

    def objects(self, prefix: str) -> dict[str, bytes]:
        listed = self.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        return {o["Key"]: self.client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}

    def open_uploads(self) -> list:
        return self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("moto")
    port = free_port()
    log = open(tmp / "moto.log", "wb")
    proc = subprocess.Popen([MOTO_BIN, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp / "moto.log").read_text()
            try:
                httpx.get(f"{url}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        env = {"AWS_ENDPOINT_URL_S3": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp / "none"),
               "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none")}
        with pytest.MonkeyPatch.context() as mp:
            for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
                mp.delenv(name, raising=False)
            for name, value in env.items():
                mp.setenv(name, value)
            mp.setitem(fsspec.config.conf, "s3", {"default_block_size": PART})
            client = boto3.client("s3")
            client.create_bucket(Bucket=BUCKET)
            yield S3(url, env, client)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def store(s3) -> BlobStore:
    """A store under a prefix of its own in the shared bucket."""
    return BlobStore(f"s3://{BUCKET}/t-{uuid.uuid4().hex[:10]}")


def prefix_of(store: BlobStore) -> str:
    return store.url.split("/", 3)[3]


def chunked(data: bytes, size: int = 1 << 20):
    return (data[i:i + size] for i in range(0, len(data), size))


# ---- 1. BlobStore on S3 -----------------------------------------------------------------------

def test_write_read_list_exists_delete(s3, store):
    data = os.urandom(3 * PART // 2)
    info = store.write_stream("datasets/a1/d1/data.jsonl", chunked(data), max_bytes=len(data))
    assert (info.key, info.size) == ("datasets/a1/d1/data.jsonl", len(data))
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    root = prefix_of(store)
    assert s3.objects(root) == {f"{root}/datasets/a1/d1/data.jsonl": data}   # no staging objects left
    store.write_bytes("datasets/a1/d1/extra/b.bin", b"b")
    store.write_bytes("datasets/a1/d10/c.bin", b"c")      # a sibling prefix sharing the first characters
    store.write_bytes("datasets/a1/d1/empty", b"")

    assert store.read_bytes("datasets/a1/d1/data.jsonl") == data
    assert b"".join(store.iter_chunks("datasets/a1/d1/data.jsonl")) == data
    assert store.size("datasets/a1/d1/data.jsonl") == len(data) and store.size("datasets/a1/d1/empty") == 0
    assert store.read_bytes("datasets/a1/d1/empty") == b""
    assert store.list("datasets/a1/d1") == ["datasets/a1/d1/data.jsonl", "datasets/a1/d1/empty",
                                            "datasets/a1/d1/extra/b.bin"]
    assert store.list("datasets/a1/none") == []
    assert store.exists("datasets/a1/d1/data.jsonl") and store.exists("datasets/a1/d1")
    assert not store.exists("datasets/a1/d1/missing") and not store.exists("datasets/a1/none")
    assert store.local_path("datasets/a1/d1") is None
    with pytest.raises(NotFound):
        store.size("datasets/a1/d1/missing")
    with pytest.raises(NotFound):
        store.open("datasets/a1/d1/missing")

    store.delete("datasets/a1/d1/data.jsonl")
    assert not store.exists("datasets/a1/d1/data.jsonl")
    store.delete("datasets/a1/d1/data.jsonl")              # deleting what is gone is a no-op
    store.delete_prefix("datasets/a1/d1")
    assert store.list("datasets/a1/d1") == [] and store.list("datasets/a1") == ["datasets/a1/d10/c.bin"]
    assert set(s3.objects(root)) == {f"{root}/datasets/a1/d10/c.bin"}


def test_object_appears_only_when_the_upload_completes(s3, store):
    key, root = "models/a1/m1/model.safetensors", prefix_of(store)
    old = store.write_bytes(key, b"old bytes")
    seen = []

    def source():
        for i in range(3):
            yield os.urandom(PART)
            # parts are on the server by now; readers still see the old object, whole
            seen.append((len(s3.open_uploads()), s3.objects(f"{root}/{key}")))
    info = store.write_stream(key, source(), max_bytes=3 * PART)
    assert seen == [(1, {f"{root}/{key}": b"old bytes"})] * 3
    assert info.size == 3 * PART and info.sha256 != old.sha256
    assert hashlib.sha256(store.read_bytes(key)).hexdigest() == info.sha256
    assert s3.open_uploads() == []


def test_failed_or_oversize_write_leaves_no_object_and_no_upload(s3, store):
    root = prefix_of(store)
    with pytest.raises(PayloadTooLarge):
        store.write_stream("datasets/a1/d1/big.jsonl", chunked(os.urandom(3 * PART)), max_bytes=2 * PART + 1)

    def broken():
        yield os.urandom(PART + 1)
        yield os.urandom(PART)
        raise ConnectionResetError("client went away")
    with pytest.raises(ConnectionResetError):
        store.write_stream("datasets/a1/d1/cut.jsonl", broken(), max_bytes=10 * PART)
    assert s3.objects(root) == {} and s3.open_uploads() == []

    # a failed rewrite keeps the object that was there, whole
    store.write_bytes("datasets/a1/d1/kept.jsonl", b"v1")
    with pytest.raises(PayloadTooLarge):
        store.write_stream("datasets/a1/d1/kept.jsonl", chunked(b"v2" * 100, 50), max_bytes=150)
    assert store.read_bytes("datasets/a1/d1/kept.jsonl") == b"v1" and s3.open_uploads() == []


def test_move_publishes_a_staged_blob(s3, store):
    data = os.urandom(1000)
    store.write_bytes("uploads/models/a1/m1/config.json", data)
    store.move("uploads/models/a1/m1/config.json", "models/a1/m1/config.json")
    root = prefix_of(store)
    assert s3.objects(root) == {f"{root}/models/a1/m1/config.json": data}
    assert store.list("uploads") == []


def test_listings_see_what_other_writers_wrote(s3, store):
    """Several servers and workers share one bucket: a listing must never come from a cache."""
    store.write_bytes("models/a1/m1/config.json", b"{}")
    assert store.list("models/a1") == ["models/a1/m1/config.json"] and not store.exists("models/a1/m1/x")
    before = store.versions("models/a1")
    root = prefix_of(store)
    s3.client.put_object(Bucket=BUCKET, Key=f"{root}/models/a1/m1/x", Body=b"from elsewhere")
    s3.client.put_object(Bucket=BUCKET, Key=f"{root}/models/a1/m1/config.json", Body=b"{ }")
    assert store.exists("models/a1/m1/x") and store.read_bytes("models/a1/m1/x") == b"from elsewhere"
    assert store.list("models/a1") == ["models/a1/m1/config.json", "models/a1/m1/x"]
    after = store.versions("models/a1")
    assert after["models/a1/m1/config.json"] != before["models/a1/m1/config.json"]
    s3.client.delete_object(Bucket=BUCKET, Key=f"{root}/models/a1/m1/x")
    assert not store.exists("models/a1/m1/x") and store.list("models/a1") == ["models/a1/m1/config.json"]


# ---- 2. a real server on s3:// ------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_server(s3, tmp_path_factory):
    root = f"e2e-{uuid.uuid4().hex[:8]}"
    srv = start_server(tmp_path_factory, "sqlite", extra_env={**s3.env, "FIREPLACE_BLOB_URL": f"s3://{BUCKET}/{root}"})
    srv.blob_root = root
    yield srv
    stop_server(srv)


def test_dataset_upload_lands_in_the_bucket_and_downloads_equal(s3, s3_server):
    admin, root = sdk(s3_server), s3_server.blob_root
    dataset_id = f"ds-{uuid.uuid4().hex[:8]}"
    admin.datasets.create(dataset_id=dataset_id, dataset={"displayName": "t", "userUploaded": {}})
    uploaded = admin.datasets.upload(dataset_id, file=("train.jsonl", GOOD))
    assert uploaded.bytes == len(GOOD) and admin.datasets.get(dataset_id).state == "READY"
    objects = s3.objects(f"{root}/datasets/{s3_server.account_id}/{dataset_id}/")
    assert list(objects.values()) == [GOOD], objects
    assert not (s3_server.home / "blobs").exists()

    url = admin.datasets.get_download_endpoint(dataset_id).filename_to_signed_urls["train.jsonl"]
    got = httpx.get(url, timeout=30)
    assert got.status_code == 200 and got.content == GOOD

    admin.datasets.delete(dataset_id)
    assert s3.objects(f"{root}/datasets/{s3_server.account_id}/{dataset_id}/") == {}


def test_model_signed_upload_is_moved_into_place_in_the_bucket(s3, s3_server):
    admin, root, account = sdk(s3_server), s3_server.blob_root, s3_server.account_id
    model_id = f"tiny-{uuid.uuid4().hex[:8]}"
    files = tiny_base_files()
    assert ready_base(admin, model_id, files).state == "READY"
    assert s3.objects(f"{root}/models/{account}/{model_id}/") == {
        f"{root}/models/{account}/{model_id}/{name}": data for name, data in files.items()}
    assert s3.objects(f"{root}/uploads/models/{account}/{model_id}/") == {}   # staging emptied by the move
    for name, url in admin.models.get_download_endpoint(model_id).filename_to_signed_urls.items():
        got = httpx.get(url, timeout=30)
        assert got.status_code == 200 and got.content == files[name], name

    admin.models.delete(model_id)
    assert s3.objects(f"{root}/models/{account}/{model_id}/") == {}
    assert s3.open_uploads() == []


# ---- 3. local copies for replicas and training workers ---------------------------------------------

def test_materialize_copies_once_into_the_cache(s3, store, tmp_path):
    files = {"config.json": b"{}", "model.safetensors": os.urandom(PART + 7)}
    for name, data in files.items():
        store.write_bytes(f"models/a1/m1/{name}", data)
    store.write_bytes("models/a1/m1/checkpoints/step-1.bin", b"nested: not copied")
    cache = tmp_path / "cache"

    local = model_files.materialize(store, "models/a1/m1", cache)
    assert local.parent == cache and (local / ".complete").exists()
    assert {p.name: p.read_bytes() for p in local.iterdir() if p.name != ".complete"} == files
    assert [p.name for p in cache.iterdir()] == [local.name]             # no partial copy left behind
    (local / "sentinel").write_bytes(b"")
    assert model_files.materialize(store, "models/a1/m1", cache) == local and (local / "sentinel").exists()

    # the model deleted and re-created under the same name: a fresh copy, never the old one
    store.delete_prefix("models/a1/m1")
    store.write_bytes("models/a1/m1/config.json", b'{"v": 2}')
    again = model_files.materialize(store, "models/a1/m1", cache)
    assert again != local and (again / "config.json").read_bytes() == b'{"v": 2}'
    assert not (again / "model.safetensors").exists()

    with pytest.raises(NotFound):
        model_files.materialize(store, "models/a1/none", cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted([local.name, again.name])


def test_training_copy_and_adapter_files(s3, store, tmp_path):
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"weights"}
    for name, data in files.items():
        store.write_bytes(f"models/a1/base/{name}", data)
    got = local_model_dir(store, "accounts/a1/models/base", tmp_path)
    assert {p.name: p.read_bytes() for p in got.iterdir() if p.name != ".complete"} == files
    assert local_model_dir(store, "accounts/a1/models/base", tmp_path) == got
    with pytest.raises(TrainingError, match="has no files"):
        local_model_dir(store, "accounts/a1/models/none", tmp_path)

    adapter = {"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": b"lora"}
    for name, data in adapter.items():
        store.write_bytes(f"models/a1/lora/{name}", data)
    assert model_files.adapter_files(store, "accounts/a1/models/lora") == adapter


def test_local_store_is_read_in_place(tmp_path):
    store = BlobStore(str(tmp_path / "blobs"))
    store.write_bytes("models/a1/m1/config.json", b"{}")
    assert model_files.materialize(store, "models/a1/m1", tmp_path / "cache") == tmp_path / "blobs/models/a1/m1"
    assert not (tmp_path / "cache").exists()
    assert local_model_dir(store, "accounts/a1/models/m1", tmp_path / "cache") == tmp_path / "blobs/models/a1/m1"
