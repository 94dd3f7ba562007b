"""Model files through our own signed URLs: a real tiny HF model and a real PEFT adapter go up
through :getUploadEndpoint + PUT, are checked by :validateUpload and come back byte-identical
through :getDownloadEndpoint; every refusal is checked to publish nothing."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import fireworks
import httpx
import pytest
from safetensors import safe_open

from tests.control.test_models import expect_error, put_files, ready_base, tiny_base_files


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, vocab_size=128,
                               max_position_embeddings=256)
    path = tmp_path_factory.mktemp("tiny-llama")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    path = tmp_path_factory.mktemp("tiny-lora")
    peft_model.save_pretrained(path)
    return path


def dir_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def safetensors_params(path: Path) -> int:
    total = 0
    for f in path.glob("*.safetensors"):
        with safe_open(str(f), "np") as st:
            for key in st.keys():
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def signed_urls(client, model_id: str, files: dict[str, bytes]) -> dict[str, str]:
    return client.models.get_upload_endpoint(
        model_id, filename_to_size={k: str(len(v)) for k, v in files.items()}).filename_to_signed_urls


def with_query(url: str, **changes) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    query = {k: v for k, v in query.items() if v is not None}
    return urlunsplit(parts._replace(query=urlencode(query)))


def blob_files(server, *parts: str) -> list[Path]:
    root = Path(server.home, "blobs", *parts)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# ---- the happy paths ------------------------------------------------------------------------

def test_base_model_upload_validate_download(admin, server, unique, tiny_model_dir):
    model_id = unique("tiny")
    m = admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL", "displayName": "tiny llama"})
    assert m.state == "UPLOADING"
    files = dir_files(tiny_model_dir)
    assert "config.json" in files and "model.safetensors" in files
    urls = signed_urls(admin, model_id, files)
    for name, url in urls.items():
        assert url.startswith(f"{server.base_url}/v1/uploads/models/{server.account_id}/{model_id}/{name}?")
        r = httpx.put(url, content=files[name])
        assert r.status_code == 200, r.text
    assert admin.models.get(model_id).state == "UPLOADING"
    assert admin.models.validate_upload(model_id).warnings == []
    got = admin.models.get(model_id)
    assert got.state == "READY"
    details = got.base_model_details
    assert details.checkpoint_format == "HUGGINGFACE" and details.api_model_type == "llama"
    assert details.parameter_count == str(safetensors_params(tiny_model_dir))
    assert got.context_length == 256
    assert admin.models.validate_upload(model_id).warnings == []  # idempotent once READY

    downloads = admin.models.get_download_endpoint(model_id).filename_to_signed_urls
    assert set(downloads) == set(files)
    for name, url in downloads.items():
        r = httpx.get(url)
        assert r.status_code == 200 and r.content == files[name], name
    # files are immutable once READY
    expect_error(fireworks.BadRequestError, 400, 9, admin.models.get_upload_endpoint, model_id,
                 filename_to_size={"extra.json": "2"})
    r = httpx.put(urls["config.json"], content=files["config.json"])
    assert r.status_code == 400 and r.json()["code"] == 9
    assert httpx.get(downloads["config.json"]).content == files["config.json"]


def test_addon_upload_fills_peft_details(admin, unique, tiny_model_dir, tiny_adapter_dir):
    base = ready_base(admin, unique("tiny"), dir_files(tiny_model_dir))
    model_id = unique("lora")
    admin.models.create(model_id=model_id, model={"kind": "HF_PEFT_ADDON", "peftDetails": {"baseModel": base.name}})
    put_files(admin, model_id, dir_files(tiny_adapter_dir))
    admin.models.validate_upload(model_id)
    got = admin.models.get(model_id)
    assert got.state == "READY" and got.kind == "HF_PEFT_ADDON"
    assert got.peft_details.r == 8 and sorted(got.peft_details.target_modules) == ["q_proj", "v_proj"]
    assert got.peft_details.base_model == base.name and got.peft_details.base_model_type == "llama"


def test_addon_rank_must_match_peft_details(admin, unique, tiny_model_dir, tiny_adapter_dir):
    base = ready_base(admin, unique("tiny"), dir_files(tiny_model_dir))
    model_id = unique("lora")
    admin.models.create(model_id=model_id, model={"peftDetails": {"baseModel": base.name, "r": 16}})
    put_files(admin, model_id, dir_files(tiny_adapter_dir))
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.validate_upload, model_id)
    assert "adapter_config.json" in body["message"] and "16" in body["message"]
    assert admin.models.get(model_id).state == "UPLOADING"


@pytest.mark.parametrize("r", [2, 65, "8"])
def test_adapter_config_rank_out_of_range(admin, unique, tiny_adapter_dir, r):
    base = ready_base(admin, unique("base"))
    model_id = unique("lora")
    admin.models.create(model_id=model_id, model={"peftDetails": {"baseModel": base.name}})
    files = dir_files(tiny_adapter_dir)
    config = json.loads(files["adapter_config.json"])
    config["r"] = r
    files["adapter_config.json"] = json.dumps(config).encode()
    put_files(admin, model_id, files)
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.validate_upload, model_id)
    assert "adapter_config.json" in body["message"] and "4" in body["message"] and "64" in body["message"]


def test_addon_needs_adapter_files(admin, unique):
    base = ready_base(admin, unique("base"))
    model_id = unique("lora")
    admin.models.create(model_id=model_id, model={"peftDetails": {"baseModel": base.name}})
    put_files(admin, model_id, {"adapter_config.json": b'{"r": 8, "peft_type": "LORA"}'})
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.validate_upload, model_id)
    assert "adapter_model.safetensors" in body["message"]


def test_parallel_puts_of_a_sharded_model(admin, unique):
    """Each file has its own row, so concurrent PUTs of one model's files all land."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from safetensors.numpy import save
    model_id = unique("sharded")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    files = {"config.json": tiny_base_files()["config.json"]}
    weight_map = {}
    for i in range(8):
        shard = f"model-{i + 1:05d}-of-00008.safetensors"
        files[shard] = save({f"layer{i}.weight": np.ones((4, 4 + i), dtype=np.float32)})
        weight_map[f"layer{i}.weight"] = shard
    files["model.safetensors.index.json"] = json.dumps({"weight_map": weight_map}).encode()
    urls = signed_urls(admin, model_id, files)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda kv: httpx.put(kv[1], content=files[kv[0]]).status_code, urls.items()))
    assert codes == [200] * len(files)
    admin.models.validate_upload(model_id)
    got = admin.models.get(model_id)
    assert got.state == "READY"
    assert got.base_model_details.parameter_count == str(sum(4 * (4 + i) for i in range(8)))


# ---- what validation refuses ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "x.pkl", "last.ckpt"])
def test_pickle_files_are_refused(admin, unique, name):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.get_upload_endpoint, model_id,
                        filename_to_size={"config.json": "10", name: "10"})
    assert name in body["message"] and "pickle" in body["message"]


def test_missing_config_json(admin, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    put_files(admin, model_id, {"model.safetensors": tiny_base_files()["model.safetensors"]})
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.validate_upload, model_id)
    assert "config.json" in body["message"]
    assert admin.models.get(model_id).state == "UPLOADING"


def test_missing_weights(admin, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    put_files(admin, model_id, {"config.json": tiny_base_files()["config.json"]})
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.validate_upload, model_id)
    assert "safetensors" in body["message"]


def _header_file(header: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


@pytest.mark.parametrize("payload", [
    b"\x00" * 4,                                                          # shorter than 8 bytes
    b"\xff" * 64,                                                         # absurd header length
    _header_file(b"not json at all"),                                      # header is not JSON
    _header_file(b'["a list"]'),                                           # not an object
    _header_file(b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\x00" * 8),  # past EOF
    _header_file(b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}', b"\x00" * 8),   # size != shape
    _header_file(b'{"w": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 2]}}', b"\x00" * 2),    # dtype
], ids=["short", "length", "json", "list", "offsets", "shape", "dtype"])
def test_bad_safetensors_is_refused(admin, unique, payload):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    put_files(admin, model_id, {"config.json": tiny_base_files()["config.json"], "model.safetensors": payload})
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.validate_upload, model_id)
    assert body["message"].startswith("model.safetensors:"), body
    assert admin.models.get(model_id).state == "UPLOADING"


def test_index_may_name_only_uploaded_shards(admin, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    files = tiny_base_files()
    files["model.safetensors.index.json"] = json.dumps({"weight_map": {
        "a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}).encode()
    put_files(admin, model_id, files)
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.validate_upload, model_id)
    assert "model-00002-of-00002.safetensors" in body["message"]


def test_declared_but_not_uploaded(admin, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    files = tiny_base_files()
    urls = signed_urls(admin, model_id, files)
    httpx.put(urls["config.json"], content=files["config.json"]).raise_for_status()
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.validate_upload, model_id)
    assert "model.safetensors" in body["message"] and "not uploaded" in body["message"]


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", ".hidden", "a\\b", "x" * 300, "", "con fig.json"])
def test_unsafe_file_names_are_refused(admin, unique, name):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.get_upload_endpoint, model_id,
                        filename_to_size={name: "1"})
    assert "file name" in body["message"]


def test_traversal_in_the_upload_path_writes_nothing(admin, server, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    urls = signed_urls(admin, model_id, {"config.json": b"{}"})
    good = urls["config.json"]
    for bad in ("..%2F..%2Fescape", "%2e%2e", "..", "a%2Fb"):
        url = good.replace("/config.json?", f"/{bad}?")
        r = httpx.put(url, content=b"{}")
        assert r.status_code in (400, 403, 404), (bad, r.status_code, r.text)
    assert not list(Path(server.home).rglob("escape"))


# ---- the signed PUT itself ------------------------------------------------------------------

def test_bad_or_expired_signatures_are_refused(admin, server, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    files = tiny_base_files()
    urls = signed_urls(admin, model_id, files)
    url = urls["config.json"]
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    bad = [
        with_query(url, sig="0" * 64),                              # forged
        with_query(url, sig=None),                                  # unsigned
        with_query(url, expires="1000"),                            # expired (and so no longer matching)
        with_query(url, expires=str(int(parse_qs(urlsplit(url).query)["expires"][0]) + 10)),  # extended
        urls["model.safetensors"].replace("model.safetensors?", "config.json?"),  # another file's signature
        url.replace(f"/{model_id}/", f"/{unique('other')}/"),                      # another model
    ]
    for target in bad:
        r = httpx.put(target, content=files["config.json"])
        assert r.status_code in (401, 403), (target, r.status_code, r.text)
        assert r.json()["code"] in (7, 16)
    assert sig  # the good one still works
    assert httpx.put(url, content=files["config.json"]).status_code == 200
    # a download URL is not an upload URL, and vice versa
    assert httpx.get(url.replace("/v1/uploads/", "/v1/downloads/")).status_code in (401, 403)


def test_put_larger_than_declared_is_413_and_publishes_nothing(admin, server, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    files = tiny_base_files()
    urls = signed_urls(admin, model_id, files)
    url = urls["model.safetensors"]
    too_big = files["model.safetensors"] + b"\x00" * 100
    r = httpx.put(url, content=too_big)                       # with Content-Length: refused up front
    assert r.status_code == 413 and r.json()["code"] == 3, r.text

    def chunks():                                             # chunked: refused while streaming
        for i in range(0, len(too_big), 64):
            yield too_big[i:i + 64]
    r = httpx.put(url, content=chunks())
    assert r.status_code == 413 and r.json()["code"] == 3, r.text
    r = httpx.put(url, content=files["model.safetensors"][:-1])   # and fewer bytes: 400
    assert r.status_code == 400 and r.json()["code"] == 3, r.text
    assert blob_files(server, "uploads", "models", server.account_id, model_id) == []
    assert blob_files(server, "models", server.account_id, model_id) == []
    assert blob_files(server, ".tmp") == []
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.validate_upload, model_id)
    assert "model.safetensors" in body["message"]
    # the same URL still takes the right bytes
    assert httpx.put(url, content=files["model.safetensors"]).status_code == 200


def test_put_of_an_undeclared_file_is_refused(admin, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    files = tiny_base_files()
    url = signed_urls(admin, model_id, {"config.json": files["config.json"]})["config.json"]
    r = httpx.put(url, content=files["config.json"])
    assert r.status_code == 200
    admin.models.delete(model_id)
    r = httpx.put(url, content=files["config.json"])
    assert r.status_code == 403 and r.json()["code"] == 7     # bound to the deleted instance


def test_delete_removes_the_files(admin, server, unique):
    base = ready_base(admin, unique("base"))
    model_id = base.name.split("/")[-1]
    downloads = admin.models.get_download_endpoint(model_id).filename_to_signed_urls
    assert blob_files(server, "models", server.account_id, model_id)
    admin.models.delete(model_id)
    assert blob_files(server, "models", server.account_id, model_id) == []
    assert blob_files(server, "uploads", "models", server.account_id, model_id) == []
    r = httpx.get(downloads["config.json"])
    assert r.status_code == 403 and r.json()["code"] == 7     # bound to the deleted instance


def test_download_needs_a_ready_model(admin, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    expect_error(fireworks.BadRequestError, 400, 9, admin.models.get_download_endpoint, model_id)


# ---- registering local files (the bundled catalog, fine-tuning outputs) ---------------------

def test_register_local_model_is_idempotent(tmp_path, tiny_model_dir, tiny_adapter_dir):
    from fireplace.control.models.registry import register_local_model
    from fireplace.control.models.tables import ModelFileRow, ModelRow
    from fireplace.db.engine import make_engine, make_session_factory
    from fireplace.db.migrate import upgrade
    from fireplace.storage import BlobStore

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    factory = make_session_factory(engine)
    blobs = BlobStore(str(tmp_path / "blobs"))
    with factory() as session:
        row = register_local_model(session, blobs, "fireplace", "tiny-base", tiny_model_dir,
                                   kind="HF_BASE_MODEL", display_name="Tiny", public=True)
        assert row.state == "READY" and row.spec["base_model_details"]["parameter_count"] == \
            safetensors_params(tiny_model_dir)
        again = register_local_model(session, blobs, "fireplace", "tiny-base", tiny_model_dir,
                                     kind="HF_BASE_MODEL", display_name="Tiny")
        assert again.etag == row.etag
        addon = register_local_model(session, blobs, "fireplace", "tiny-lora", tiny_adapter_dir,
                                     kind="HF_PEFT_ADDON", base_model="accounts/fireplace/models/tiny-base")
        assert addon.state == "READY" and addon.spec["peft_details"]["r"] == 8
        assert session.get(ModelRow, ("fireplace", "tiny-lora")).base_model == "accounts/fireplace/models/tiny-base"
        names = {f.filename for f in session.query(ModelFileRow).filter_by(model_id="tiny-base")}
    assert names == {p.name for p in tiny_model_dir.iterdir()}
    for name in names:
        assert blobs.read_bytes(f"models/fireplace/tiny-base/{name}") == (tiny_model_dir / name).read_bytes()
    # files a trainer already wrote under the model's blob prefix
    from fireplace.control.models.registry import register_model_files
    for p in tiny_adapter_dir.iterdir():
        blobs.write_bytes(f"models/acct/trained/{p.name}", p.read_bytes())
    with factory() as session:
        trained = register_model_files(session, blobs, "acct", "trained", kind="HF_PEFT_ADDON",
                                       base_model="accounts/fireplace/models/tiny-base",
                                       fine_tuning_job="accounts/acct/supervisedFineTuningJobs/j1")
        assert trained.state == "READY" and trained.spec["peft_details"]["r"] == 8
        assert trained.spec["fine_tuning_job"] == "accounts/acct/supervisedFineTuningJobs/j1"
    engine.dispose()
